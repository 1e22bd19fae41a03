"""``iceb list editors|tasks|metrics|attacks``: one entry per line, the name first, then a short description."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("list", help="list registered editors, tasks, metrics or attacks")
    p.add_argument("what", choices=["editors", "tasks", "metrics", "attacks"])
    p.set_defaults(func=run)


def run(args) -> int:
    from iceb.utils.registry import describe_all

    if args.what == "editors":
        from editors import EDITORS as reg
    elif args.what == "tasks":
        from iceb.tasks import TASKS as reg
    elif args.what == "attacks":
        from iceb.attacks import ATTACKS as reg
    else:
        from iceb.metrics import METRICS as reg
    entries = describe_all(reg)
    width = max(len(n) for n, _ in entries)
    for name, desc in entries:
        print(f"{name:<{width}}  {desc}".rstrip())
    return 0
