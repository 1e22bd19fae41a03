"""``iceb tasks show NAME --edits N [--world imagenet|toy] [--json]``: what a task gives for N edits, with the
holdout's neighbour strata (:mod:`iceb.data.neighbours`: classes and prompts per stratum)."""
from __future__ import annotations


def register(sub) -> None:
    from iceb.commands import _args as A

    p = sub.add_parser("tasks", help="inspect tasks")
    tsub = p.add_subparsers(dest="tasks_command", metavar="ACTION", required=True)
    s = tsub.add_parser("show", help="prompt counts per subset for N edits")
    s.add_argument("name")
    s.add_argument("--edits", type=A.positive_int, default=None, help="number of edits (default: the task's largest default)")
    s.add_argument("--world", choices=["imagenet", "toy"], default="imagenet")
    s.add_argument("--data-dir", default=None, type=A.existing_folder, help="local folder with EMCID's data/iceb_data files")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=run_show)


def run_show(args) -> int:
    import json

    from iceb.tasks import get_task

    kwargs = {"data_dir": args.data_dir} if args.data_dir else {}
    task = get_task(args.name, world=args.world, **kwargs)
    n = args.edits if args.edits is not None else max(task.default_edits)
    inst = task.build(n)
    out = {"task": task.name, "world": args.world, "edits": n, "max_edits": task.max_edits,
           "default_edits": list(task.default_edits), "counts": inst.counts(),
           "classes": {"sources": len({r.source_id for r in inst.requests}),
                       "destinations": len({r.destination_id for r in inst.requests}),
                       "holdout": len({p.true_class for p in inst.subset("holdout")}),
                       "alias_requests": len({p.group for p in inst.subset("alias")})},
           "strata": _ordered(inst.strata(), args.world),
           "info": inst.info}
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    else:
        print(f"{task.name} ({args.world}), {n} of at most {task.max_edits} edits")
        for k, v in {**out["counts"], **{f"{k} classes": v for k, v in out["classes"].items()}}.items():
            print(f"  {k:<22} {v}")
        if out["strata"]:
            print("  holdout strata (nearest edited source):")
            for k, v in out["strata"].items():
                print(f"    {k:<20} {v['classes']} classes, {v['prompts']} prompts")
    return 0


def _ordered(strata: dict[str, dict[str, int]], world: str) -> dict[str, dict[str, int]]:
    """``strata`` nearest first (unknown names last, alphabetically)."""
    from iceb.data.neighbours import strata_order

    order = {s: i for i, s in enumerate(strata_order(world))}
    return {k: strata[k] for k in sorted(strata, key=lambda s: (order.get(s, len(order)), s))}
