"""Efficacy curves on the toy world: every editor, 1 edit to the maximum, both tasks; then leaderboard files.

    python scripts/toy_curves.py [--editors emcid,uce,...] [--edits 1,2,4,16,24] [--out runs/toy]
                                 [--leaderboard leaderboard/toy] [--cold-cost] [--model toy|toy-1k]
                                 [--score-requests K]
                                 [--attacks unlearndiff,ringabell,aliases,misspell] [--attack-requests 16] [--attack-vocab seen]

The 1,536-concept world (issue #18): ``--model toy-1k --score-requests 200 --out runs/toy-1k
--leaderboard leaderboard/toy-1k`` (every request edited, the prompts of a fixed 200 of them scored where N > 200).

Resumable (each run is an `iceb evaluate` run folder). ESD is erase-only: on `ace` it runs with
`treat_updates_as_erase=true` and only its Forget and Holdout panels are meaningful, as in EMCID's figure.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ALL = ["noop", "emcid", "emcid-ns", "uce", "time", "speed", "rome", "mace", "esd-x", "esd-u"]
ERASE_ONLY = {"esd-x", "esd-u"}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--editors", default=",".join(ALL))
    ap.add_argument("--tasks", default="ace,rectification")
    ap.add_argument("--edits", default=None, help="default: the task's own sweep")
    ap.add_argument("--out", default="runs/toy")
    ap.add_argument("--model", default="toy", help="a toy world: toy (default) or toy-1k")
    ap.add_argument("--score-requests", type=int, default=None, help="score a fixed sample of K requests where N > K")
    ap.add_argument("--leaderboard", default="leaderboard/toy")
    ap.add_argument("--cold-cost", action="store_true",
                    help="measure every edit from empty editor caches, then again warm (cost:cold / cost:warm rows)")
    ap.add_argument("--attacks", default="", help="attacks run on every edit count (ASR rows; ace only)")
    ap.add_argument("--attack-requests", type=int, default=16, help="attacked requests per edit count at most")
    ap.add_argument("--attack-vocab", default="seen", choices=["seen", "full"], help="token ids the attacks may use")
    args = ap.parse_args()

    from iceb import EvalConfig, evaluate
    from iceb.leaderboard.tables import build_leaderboard

    edits = tuple(int(x) for x in args.edits.split(",")) if args.edits else None
    runs = []
    for task in args.tasks.split(","):
        for editor in args.editors.split(","):
            if editor in ERASE_ONLY and task == "rectification":
                continue  # erasing a misunderstood alias is not rectifying it
            t0 = time.perf_counter()
            cfg = EvalConfig(editor=editor, task=task, model=args.model, edits=edits, out=args.out, device="cpu",
                             score_requests=args.score_requests,
                             editor_args={"treat_updates_as_erase": True} if editor in ERASE_ONLY else {},
                             cold_cost=args.cold_cost,
                             attacks=tuple(a for a in args.attacks.split(",") if a) if task == "ace" else (),
                             attack_requests=args.attack_requests, attack_vocab=args.attack_vocab)
            runs.append(evaluate(cfg))
            print(f"[toy-curves] {editor} on {task}: {time.perf_counter() - t0:.0f}s", flush=True)
    for path in build_leaderboard(runs, args.leaderboard):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
