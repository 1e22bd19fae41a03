"""``iceb cache``: what the shared cache holds (``ls``) and removing it (``clear``)."""
from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("cache", help="list or clear the shared cache (editor statistics, stage I, downloads)",
                       description="The one cache root of the CLI, the harness and the Python API: $ICEB_CACHE, "
                                   "else $XDG_CACHE_HOME/iceb, else ~/.cache/iceb ('iceb env' shows it).")
    s = p.add_subparsers(dest="cache_command", required=True, metavar="{ls,clear}")
    ls = s.add_parser("ls", help="kinds, entries and sizes")
    ls.set_defaults(func=run_ls)
    cl = s.add_parser("clear", help="remove cached entries (all, or one --kind)")
    cl.add_argument("--kind", default=None, help="one kind shown by 'iceb cache ls' (or a folder above kinds, "
                                                 "e.g. editors); default: everything")
    cl.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    cl.set_defaults(func=run_clear)


def run_ls(args) -> int:
    from iceb.utils.cache_usage import cache_usage, human_bytes
    from iceb.utils.paths import cache_dir

    root = cache_dir()
    usage = cache_usage(root)
    print(f"iceb cache: {root}")
    if not usage:
        print("(empty)")
        return 0
    width = max(5, *(len(u.kind) for u in usage))
    print(f"{'kind':<{width}}  {'entries':>8}  {'size':>10}")
    for u in usage:
        print(f"{u.kind:<{width}}  {u.entries:>8}  {human_bytes(u.bytes):>10}")
    print(f"{'total':<{width}}  {sum(u.entries for u in usage):>8}  {human_bytes(sum(u.bytes for u in usage)):>10}")
    return 0


def run_clear(args) -> int:
    from iceb.commands._args import UsageError
    from iceb.utils.cache_usage import clear_cache, human_bytes, kind_folder
    from iceb.utils.paths import cache_dir

    root = cache_dir()
    what = f"kind {args.kind!r}" if args.kind else "everything"
    if args.kind:
        kind_folder(root, args.kind)  # an unknown kind fails before asking
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError(f"iceb cache clear would remove {what} in {root}; pass --yes to confirm")
        answer = input(f"remove {what} in {root}? [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            print("nothing removed")
            return 1
    gone = clear_cache(root, args.kind)
    print(f"[iceb] removed {gone.entries} file(s), {human_bytes(gone.bytes)} ({what}) from {root}")
    return 0
