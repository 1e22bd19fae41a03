"""``iceb leaderboard RUNS... --out DIR``: CSVs per task plus a combined one, leaderboard.md, plots, report.html."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("leaderboard", help="turn run folders into leaderboard CSVs, Markdown, plots and HTML",
                       description="Collect the rows of run folders into DIR/<task>.csv and DIR/combined.csv, "
                                   "DIR/leaderboard.md, DIR/plots/*.png (metric vs number of edits, log x, one "
                                   "line per editor) and DIR/report.html (with before/after grids).")
    p.add_argument("runs", nargs="+", help="run folders, or output roots holding run folders")
    p.add_argument("--out", "-o", default="leaderboard", help="folder for the outputs")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-report", action="store_true", help="skip report.html")
    p.set_defaults(func=run)


def run(args) -> int:
    from iceb.leaderboard.tables import build_leaderboard

    written = build_leaderboard(args.runs, args.out, plots=not args.no_plots, report=not args.no_report)
    for path in written:
        print(path)
    return 0
