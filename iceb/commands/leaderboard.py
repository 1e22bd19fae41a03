"""``iceb leaderboard RUNS... --out DIR``: CSVs per task plus a combined one, leaderboard.md, plots, report.html."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("leaderboard", help="turn run folders into leaderboard CSVs, Markdown, plots and HTML",
                       description="Collect the rows of run folders into DIR/<task>.csv and DIR/combined.csv, "
                                   "DIR/leaderboard.md, DIR/plots/*.png (metric vs number of edits, log x, one "
                                   "line per editor) and DIR/report.html (with before/after grids).")
    p.add_argument("runs", nargs="+", help="run folders, output roots holding run folders, or leaderboard CSVs")
    p.add_argument("--out", "-o", default="leaderboard", help="folder for the outputs")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-report", action="store_true", help="skip report.html")
    p.set_defaults(func=run)


def run(args) -> int:
    from editors import EDITORS
    from iceb.leaderboard.tables import build_leaderboard

    supports = {}
    for name in EDITORS.names():
        try:
            supports[name] = sorted(EDITORS.get(name).supports)
        except Exception:  # noqa: BLE001 - an editor that does not import only loses its erase-only mark
            continue
    written = build_leaderboard(args.runs, args.out, plots=not args.no_plots, report=not args.no_report,
                                editor_supports=supports)
    for path in written:
        print(path)
    return 0
