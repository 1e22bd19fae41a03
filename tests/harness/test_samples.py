"""Per-sample logs (``--log-samples``): one row per scored post-edit image, kept PNGs, resume, the reader."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _cfg(out, **kw):
    from iceb.harness import EvalConfig

    base = {"editor": "test_harness:ScaleVEditor", "task": "smoke", "model": "tiny", "edits": (1, 3),
            "out": str(out), "device": "cpu", "progress": False, "batch_size": 4}
    return EvalConfig(**{**base, **kw})


def _files(run):
    """The sample files: name -> rows (JSONL parsed), and the kept PNGs (name, bytes)."""
    rows = {str(p.relative_to(run)): [json.loads(x) for x in p.read_text().splitlines()]
            for p in sorted((run / "samples").rglob("c*.jsonl"))}
    pngs = sorted((str(p.relative_to(run)), p.read_bytes()) for p in (run / "samples").rglob("*.png"))
    return rows, pngs


@pytest.fixture(scope="module")
def logged(tiny_model, tmp_path_factory):
    from iceb.harness import evaluate

    return evaluate(_cfg(tmp_path_factory.mktemp("samples")), model=tiny_model)


def test_one_row_per_scored_image_read_back_by_read_samples(logged):
    from iceb import read_samples

    cfg = json.loads((logged / "config.json").read_text())
    df = read_samples(logged)
    assert len(df) == sum(cfg["data"]["prompts"].values())  # every scored post-edit image, every N
    assert set(df.n_edits) == {1, 3}
    assert len(read_samples(logged, n=3)) == cfg["data"]["prompts"]["3"]
    assert list(df.index) == list(range(len(df)))
    for col in ("n_edits", "index", "group", "subset", "prompt", "seed", "true_class", "dest_class", "image",
                "image_change"):
        assert col in df.columns
    assert df.image_path.map(lambda p: Path(p).is_file()).all()  # every post-edit PNG is kept
    assert (df[df.n_edits == 3].image_change > 0).any()  # the edit acted on some image
    assert not (logged / "work").exists()  # the work folder still goes; the samples stay
    # chunked as the manifest: 13 prompts in chunks of 4 at N=3
    assert len(list((logged / "samples" / "n3").glob("c*.jsonl"))) == 4


def test_log_samples_is_not_part_of_the_run_id_and_can_be_turned_off(tiny_model, tmp_path):
    from iceb.harness import evaluate

    assert _cfg(tmp_path).identity() == _cfg(tmp_path, log_samples=False).identity()
    run = evaluate(_cfg(tmp_path, edits=(1,), log_samples=False), model=tiny_model)
    assert not (run / "samples").exists()
    # turned on when resuming a finished N: nothing is redone (rows are complete), so no samples appear;
    # turned on while a chunk is missing: the earlier chunks are backfilled without images (see below)


def test_resumed_run_backfills_chunks_rendered_with_logging_off(tiny_model, tmp_path, monkeypatch):
    import iceb.harness.run as harness
    from iceb import read_samples

    class Killed(BaseException):
        pass

    def crash(name):
        if name == "post-chunk:1":
            raise Killed(name)

    monkeypatch.setattr(harness, "_crash_point", crash)
    with pytest.raises(Killed):
        harness.evaluate(_cfg(tmp_path, edits=(1,), log_samples=False), model=tiny_model)
    monkeypatch.undo()
    run = harness.evaluate(_cfg(tmp_path, edits=(1,)), model=tiny_model)
    df = read_samples(run)
    cfg = json.loads((run / "config.json").read_text())
    assert len(df) == cfg["data"]["prompts"]["1"]
    assert df[df["index"] < 4].image.isna().all()  # chunk 0 was rendered with logging off
    assert df[df["index"] >= 4].image_path.map(lambda p: Path(p).is_file()).all()


def test_kill_9_then_resume_gives_the_sample_files_of_an_uninterrupted_run(logged, tmp_path):
    cmd = [sys.executable, "-m", "iceb", "evaluate", "--model", "tiny", "--task", "smoke", "--edits", "1,3",
           "--editor", "test_harness:ScaleVEditor", "--batch-size", "4", "--device", "cpu", "--no-progress",
           "--log-samples", "--out", str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests' / 'harness'}",
           "OMP_NUM_THREADS": str(torch.get_num_threads()), "ICEB_CRASH_AT": "post-chunk:3"}
    first = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 86, first.stderr[-2000:]
    (run,) = [d for d in tmp_path.iterdir() if d.name != "cache"]
    assert len(list((run / "samples" / "n3").glob("c*.jsonl"))) == 1  # one chunk survived the kill
    env.pop("ICEB_CRASH_AT")
    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    assert _files(run) == _files(logged)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    from iceb.harness import EvalConfig, evaluate
    from iceb.models import toy_quality_passed

    if not toy_quality_passed():
        pytest.skip("no toy world here")
    return evaluate(EvalConfig(editor="uce", task="ace", model="toy", edits=(1,), limit=2,
                               out=str(tmp_path_factory.mktemp("toy")), device="cpu", progress=False,
                               metrics=("iceb-cls",)))


def test_toy_panel_rows_carry_probabilities_and_top5(toy_run):
    from iceb import read_samples

    run = toy_run
    df = read_samples(run)
    assert len(df) == json.loads((run / "config.json").read_text())["data"]["prompts"]["1"]
    edit = df[df.subset == "edit"]
    assert edit.p_source_pre.notna().all() and edit.p_dest_post.notna().all()
    assert (edit.p_source_pre == edit.p_true_pre).all()
    assert df.top5_pre.map(len).eq(5).all() and df.top5_post.map(len).eq(5).all()
    assert df[df.subset == "holdout"].p_dest_post.isna().all()
    assert (edit.p_dest_post > edit.p_dest_pre).all()  # UCE moves the source toward the destination


def test_the_which_prompts_failed_snippet_in_the_docs_runs(toy_run, capsys):
    import re

    text = (ROOT / "docs" / "python_api.md").read_text()
    (block,) = re.findall(r"```py\n(.*?)```", text, flags=re.S)
    code = re.sub(r'read_samples\("[^"]*"\)', f"read_samples({str(toy_run)!r})", block)
    namespace: dict = {}
    exec(compile(code, "python_api.md", "exec"), namespace)  # noqa: S102 - our own documentation
    assert len(namespace["failed"]) <= len(namespace["df"]) and "p_dest_post" in capsys.readouterr().out
