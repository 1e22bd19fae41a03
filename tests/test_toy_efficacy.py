"""Editors on the trained toy world, for real: do they move sources to destinations, erase, rectify?

Thresholds come from measured runs (scripts/toy_curves.py; values in leaderboard/toy/) with a stated margin
below each measurement, so a regression that halves an editor's effect fails. Every run here is
deterministic on the CPU (fixed seeds), so the margin is for platform differences, not noise.
"""
from __future__ import annotations

import pandas as pd
import pytest

from iceb.models import TOY_DIR

pytestmark = pytest.mark.skipif(not (TOY_DIR / "model_index.json").is_file(), reason="toy world not shipped")


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("toy-efficacy")  # one pre-edit cache for the whole module


def run(out, editor: str, task: str, n: int, **editor_args) -> dict[tuple[str, str], float]:
    from iceb.harness import EvalConfig, evaluate

    cfg = EvalConfig(editor=editor, task=task, model="toy", edits=(n,), out=str(out), device="cpu",
                     editor_args=editor_args, progress=False)
    run_dir = evaluate(cfg, log=lambda *_: None)
    df = pd.read_csv(run_dir / "results.csv")
    return {(r.subset, r.metric): r.value for r in df.itertuples()}
