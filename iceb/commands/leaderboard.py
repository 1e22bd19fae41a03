"""``iceb leaderboard RUNS... --out DIR``: tidy CSVs from run folders (one per task plus a combined one)."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("leaderboard", help="turn run folders into leaderboard CSVs")
    p.add_argument("runs", nargs="+", help="run folders, or output roots holding run folders")
    p.add_argument("--out", "-o", default="leaderboard", help="folder for the CSVs")
    p.set_defaults(func=run)


def run(args) -> int:
    from iceb.leaderboard import build_leaderboard

    written = build_leaderboard(args.runs, args.out)
    for path in written:
        print(path)
    return 0
