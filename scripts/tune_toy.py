"""Tune every editor on the toy world's ``ace`` dev split by one budget, and ship the results as ``toy`` presets.

    python scripts/tune_toy.py [--editors uce,time,...] [--trials 12] [--edits 6] [--out runs/tune]
                               [--save-as toy]

Every study starts from the editor's untuned first guess (``--preset toy-untuned``) with the same trial budget,
edit counts and objective rule (:mod:`iceb.harness.tune`); resumable (each study's SQLite file). Fixed, not
searched: ESD's ``treat_updates_as_erase`` (it takes no destination), and UCE's preservation set, the names of
the toy split's dev concepts (never a test concept).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ALL = ["uce", "time", "speed", "rome", "emcid", "emcid-ns", "esd-x", "esd-u", "mace"]


def dev_concept_names() -> list[str]:
    from iceb.tasks.ace import load_world_bundle

    b = load_world_bundle("toy")
    return [b.concept(i).name for i in sorted(b.dev_concepts())]


def fixed_args(editor: str) -> dict:
    if editor in ("esd-x", "esd-u"):
        return {"treat_updates_as_erase": True}
    if editor == "uce":
        return {"preserve": dev_concept_names()}
    return {}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--editors", default=",".join(ALL))
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--edits", default="6")
    ap.add_argument("--out", default="runs/tune")
    ap.add_argument("--save-as", default="toy", help="preset name to write (empty: do not write)")
    args = ap.parse_args()

    from editors.hparams import HPARAMS_DIR
    from iceb.harness.tune import TuneConfig, tune
    from iceb.models import load_model

    loaded = load_model("toy", device="cpu")
    for editor in args.editors.split(","):
        t0 = time.perf_counter()
        cfg = TuneConfig(editor=editor, task="ace", model="toy", trials=args.trials,
                         edits=tuple(int(x) for x in args.edits.split(",")), preset="toy-untuned",
                         editor_args=fixed_args(editor), out=args.out, progress=False,
                         command=f"python scripts/tune_toy.py --editors {editor} --trials {args.trials} "
                                 f"--edits {args.edits}")
        res = tune(cfg, model=loaded)
        print(f"[tune-toy] {editor}: untuned {res.untuned_value:+.4f} -> {res.best_value:+.4f} "
              f"({res.trials} trials, {time.perf_counter() - t0:.0f} s this sitting) {res.best_params}", flush=True)
        if args.save_as:
            shutil.copyfile(res.preset_path, HPARAMS_DIR / editor / f"{args.save_as}.yaml")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
