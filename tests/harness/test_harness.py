"""The harness at scale: resume after kills, the run lock, the shared pre-edit cache, full disks and NaNs.

Two small test-only editors live here so subprocesses can name them as ``test_harness:ScaleVEditor``
(with ``tests/harness/`` on PYTHONPATH, as ``pythonpath`` in pyproject.toml sets it for pytest: a
site-packages ``tests`` package shadows ``tests.harness.test_harness``).
"""
from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

from editors.base import BaseEditor, EditResult
from editors.hparams import Hparams
from editors.weights import get_tensor

ROOT = Path(__file__).resolve().parents[2]
TO_V = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v.weight"




@dataclasses.dataclass(frozen=True)
class ScaleHparams(Hparams):
    strength: float = 0.05
    nan_at: int = 0  # >0: return NaN once there are this many requests (tests the NaN stop)


class ScaleVEditor(BaseEditor):
    """Scales one cross-attention to_v weight by a factor that depends on the requests' sources."""

    name = "test-scale-v"
    hparams_class = ScaleHparams

    def tensor_name(self, pipe) -> str:
        return TO_V

    def edit(self, pipe, requests):
        self.check_requests(requests)
        name = self.tensor_name(pipe)
        w = get_tensor(pipe, name).detach().clone()
        factor = 1.0 + self.hparams.strength * sum(zlib.crc32(r.source.encode()) % 7 + 1 for r in requests)
        new = w * factor
        if self.hparams.nan_at and len(requests) >= self.hparams.nan_at:
            new[0, 0] = float("nan")
        return EditResult({name: new})  # EditResult itself rejects NaN


class ScaleFc2Editor(ScaleVEditor):
    """The same on a text-encoder MLP weight (a second, different editor)."""

    name = "test-scale-fc2"

    def tensor_name(self, pipe) -> str:  # transformers 5 has no text_model level; the shared hooks know
        from editors.hooks import fc2_name

        return fc2_name(pipe.text_encoder, 3)


def _cfg(out, editor="test_harness:ScaleVEditor", edits=(1, 3), **kw):
    from iceb.harness import EvalConfig

    return EvalConfig(editor=editor, task="smoke", model="tiny", edits=edits, out=str(out), device="cpu",
                      progress=False, batch_size=4, **kw)


def _rows(run_dir):
    """Result rows without the cost measurements (wall time, memory, cache state)."""
    from iceb.leaderboard.results import comparable, read_rows

    return comparable(read_rows(Path(run_dir) / "results.jsonl"))


class _Killed(BaseException):
    pass


@pytest.fixture(scope="module")
def reference(tiny_model, tmp_path_factory):
    from iceb.harness import evaluate

    run = evaluate(_cfg(tmp_path_factory.mktemp("ref")), model=tiny_model)
    return run, _rows(run)


def test_reference_run_is_sane(reference):
    run, rows = reference
    by = {(r["n_edits"], r["subset"], r["metric"]): r for r in rows}
    assert {n for n, _, _ in by} == {1, 3}
    assert by[(3, "edit", "image_change")]["value"] > 0  # the edit acted
    assert by[(3, "edit", "image_change")]["n"] == 9 and by[(3, "holdout", "image_change")]["n"] == 4
    assert all(not r["smoke"] for r in rows)
    man = json.loads((run / "manifest.json").read_text())
    assert man["chunk_size"] == 4 and man["edit_counts"]["3"]["chunks"] == 4  # 13 prompts in chunks of 4
    cfg = json.loads((run / "config.json").read_text())
    assert set(cfg["data"]["task_fingerprints"]) == {"1", "3"} and cfg["hparams_hash"]
    assert (run / "grids" / "n3.png").is_file() and not (run / "work").exists()


@pytest.mark.parametrize("point", ["pre-chunk", "pre-records", "edit:3", "saved:3", "post-chunk:3", "append:3",
                                   "appended:1"])
def test_resume_after_a_kill_gives_the_rows_of_an_uninterrupted_run(point, reference, tiny_model, tmp_path,
                                                                     monkeypatch):
    import iceb.harness.run as harness

    def crash(name):
        if name == point:
            raise _Killed(name)

    monkeypatch.setattr(harness, "_crash_point", crash)
    with pytest.raises(_Killed):
        harness.evaluate(_cfg(tmp_path), model=tiny_model)
    monkeypatch.undo()
    run = harness.evaluate(_cfg(tmp_path), model=tiny_model)
    assert _rows(run) == reference[1]


def test_kill_9_in_a_subprocess_then_resume(reference, tmp_path):
    """A real os._exit (no cleanup, no finally) in the middle of N=3's post-edit chunks."""
    cmd = [sys.executable, "-m", "iceb", "evaluate", "--model", "tiny", "--task", "smoke", "--edits", "1,3",
           "--editor", "test_harness:ScaleVEditor", "--batch-size", "4", "--device", "cpu", "--no-progress",
           "--out", str(tmp_path)]
    # the same thread count as this process: CPU kernels may sum in another order with another count
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests' / 'harness'}",
           "OMP_NUM_THREADS": str(torch.get_num_threads()), "ICEB_CRASH_AT": "post-chunk:3"}
    first = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 86, first.stderr[-2000:]
    (run,) = [d for d in tmp_path.iterdir() if d.name != "cache"]
    assert {r["n_edits"] for r in _rows(run)} == {1}  # N=1 finished, N=3 not
    assert len(list((run / "work" / "n3").glob("c*.json"))) == 1  # one chunk survived the kill
    env.pop("ICEB_CRASH_AT")
    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "N=1: already done" in second.stdout
    assert _rows(run) == reference[1]


def test_a_second_process_on_the_same_run_folder_gets_a_clear_error(reference, tiny_model, tmp_path, capsys):
    from iceb.cli import main
    from iceb.harness import evaluate
    from iceb.leaderboard.results import RunLockedError

    run = evaluate(_cfg(tmp_path, editor="noop", edits=(1,)), model=tiny_model)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from filelock import FileLock; "
                               "lock = FileLock(sys.argv[1]); lock.acquire(); print('held', flush=True); time.sleep(120)",
                               str(run / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match="another process is running"):
            evaluate(_cfg(tmp_path, editor="noop", edits=(1,)), model=tiny_model)
        rc = main(["evaluate", "--model", "tiny", "--task", "smoke", "--edits", "1", "--batch-size", "4",
                   "--device", "cpu", "--no-progress", "--out", str(tmp_path)])
        assert rc == 2 and "another process is running" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    # once the other process is gone, the same command runs (and finds everything done)
    evaluate(_cfg(tmp_path, editor="noop", edits=(1,)), model=tiny_model)


def test_pre_edit_images_and_records_are_shared_by_editors_and_edit_counts(tiny_model, tmp_path, monkeypatch,
                                                                           caplog):
    import iceb.harness.run as harness
    from iceb.metrics.image_change import ImageChange

    rendered, scored = [], []
    real_generate, real_score = harness._generate, ImageChange.score

    def counting_generate(pipe, prompts, seeds, cfg, **kw):
        rendered.extend(zip(prompts, seeds))
        return real_generate(pipe, prompts, seeds, cfg, **kw)

    def counting_score(self, images, prompts):
        scored.extend(prompts)
        return real_score(self, images, prompts)

    monkeypatch.setattr(harness, "_generate", counting_generate)
    monkeypatch.setattr(ImageChange, "score", counting_score)
    caplog.set_level(logging.INFO, logger="iceb.harness")
    noop = harness.evaluate(_cfg(tmp_path, editor="noop"), model=tiny_model)
    # 13 distinct (prompt, seed) pairs over N=1 (7 prompts) and N=3 (13): rendered once (chunks 4+4+4+1);
    # noop's post-edit images are the pre-edit ones (an empty delta changes nothing), so nothing else
    assert len(rendered) == 13 and len(set(rendered)) == 13 and len(scored) == 13
    assert all(r["value"] == 0 for r in _rows(noop) if r["metric"] == "image_change")
    rendered.clear(), scored.clear()
    caplog.clear()
    harness.evaluate(_cfg(tmp_path), model=tiny_model)
    logs = caplog.messages
    # a second editor: no pre-edit image or record is recomputed; post-edit = 7 + 13 images
    assert len(rendered) == 20 and len(scored) == 20
    assert any("13 cached, 0 generated here" in line for line in logs)


def test_a_full_disk_stops_with_a_clear_message_and_loses_nothing(reference, tiny_model, tmp_path, monkeypatch):
    import iceb.utils.io
    from iceb.harness import evaluate
    from iceb.utils.io import DiskFullError

    real_open = open
    appends = []

    def full_disk_open(path, mode="r", *a, **kw):
        if "a" in mode and str(path).endswith("results.jsonl"):
            appends.append(path)
            if len(appends) == 2:  # the second edit count's rows do not fit
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *a, **kw)

    monkeypatch.setattr(iceb.utils.io, "open", full_disk_open, raising=False)
    with pytest.raises(DiskFullError, match="no space left while writing .*results.jsonl.*run the same command"):
        evaluate(_cfg(tmp_path), model=tiny_model)
    monkeypatch.undo()
    (run,) = [d for d in tmp_path.iterdir() if d.name != "cache"]
    assert _rows(run) == [r for r in reference[1] if r["n_edits"] == 1]  # N=1 kept intact
    evaluate(_cfg(tmp_path), model=tiny_model)
    assert _rows(run) == reference[1]


def test_a_nan_from_the_editor_stops_with_a_clear_message_and_keeps_finished_rows(reference, tiny_model, tmp_path):
    from iceb.harness import evaluate

    cfg = _cfg(tmp_path, editor_args={"nan_at": 3})
    with pytest.raises(FloatingPointError, match=r"non-finite values at N=3.*already finished are kept"):
        evaluate(cfg, model=tiny_model)
    (run,) = [d for d in tmp_path.iterdir() if d.name != "cache"]
    got = [{**r, "run_id": None, "run_hash": None} for r in _rows(run)]  # another config: another run id
    want = [{**r, "run_id": None, "run_hash": None} for r in reference[1] if r["n_edits"] == 1]
    assert got == want
    assert not (run / "edits" / "n3.safetensors").exists()
    assert torch.isfinite(get_tensor(tiny_model.pipe, TO_V)).all()  # the pipeline is clean


def test_sequential_mode_and_smoke_marks(tiny_model, tmp_path):
    from iceb.harness import evaluate

    run = evaluate(_cfg(tmp_path, edits=(3,), mode="sequential", rounds=3, limit=2),
                   model=tiny_model)
    assert run.name.endswith("-smoke")
    rows = _rows(run)
    assert rows and all(r["smoke"] and r["mode"] == "sequential-3" for r in rows)
    assert {r["n"] for r in rows if r["metric"] == "image_change"} == {2}  # --limit 2 prompts per subset
    assert json.loads((run / "config.json").read_text())["smoke"] is True
    # three rounds of the scaling editor compose: the saved delta is the product of the three factors
    from safetensors.torch import load_file

    delta = load_file(str(run / "edits" / "n3.safetensors"))[TO_V]
    w = get_tensor(tiny_model.pipe, TO_V)
    from iceb.tasks.smoke import PAIRS

    factor = 1.0
    for src, _ in PAIRS[:3]:
        factor *= 1.0 + 0.05 * (zlib.crc32(src.encode()) % 7 + 1)
    torch.testing.assert_close(delta, w * factor, rtol=1e-5, atol=0)


def test_the_first_line_names_the_built_in_model_and_how_to_switch_to_stable_diffusion():
    from types import SimpleNamespace

    from iceb.harness import model_banner

    toy = model_banner(SimpleNamespace(spec="toy", model_id="iceb/toy-world", world="toy"))
    assert "'toy'" in toy and "world: toy" in toy and "--model CompVis/stable-diffusion-v1-4" in toy
    assert "mean nothing" in model_banner(SimpleNamespace(spec="tiny", model_id="iceb/tiny-random", world="imagenet"))
    sd = model_banner(SimpleNamespace(spec="/m/sd14", model_id="CompVis/stable-diffusion-v1-4", world="imagenet"))
    assert "CompVis/stable-diffusion-v1-4" in sd and "pass --model" not in sd
