"""A killed and resumed EMCID run writes bit-identical edit files to an uninterrupted one.

EMCID caches stage I per concept; a cache key that changed between processes (it once hashed diffusers'
scheduler config, whose ``_use_default_values`` follows Python's hash seed) made the resumed process
recompute stage I in another batch and write edits that differed by ~1e-5. Each process here gets its own
``PYTHONHASHSEED``, as separate invocations of ``iceb`` do.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
ARGS = ["--editor", "emcid", "--model", "tiny", "--task", "smoke", "--edits", "1,2", "--no-progress",
        "--device", "cpu", "--editor-args", "v_num_grad_steps=2,train_steps=1,mom2_n_samples=100"]


def _iceb(out: Path, hash_seed: int, crash: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONHASHSEED": str(hash_seed)}
    env.pop("ICEB_CRASH_AT", None)
    if crash:
        env["ICEB_CRASH_AT"] = crash
    return subprocess.run([sys.executable, "-m", "iceb", "evaluate", *ARGS, "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def _run_dir(out: Path) -> Path:
    (run,) = [d for d in out.iterdir() if d.name.startswith("emcid-smoke-")]
    return run


def test_emcid_killed_after_the_first_rows_resumes_to_bitwise_equal_edits(tmp_path):
    clean = _iceb(tmp_path / "clean", hash_seed=1)
    assert clean.returncode == 0, clean.stderr[-3000:]
    killed = _iceb(tmp_path / "killed", hash_seed=2, crash="appended:1")
    assert killed.returncode == 86, killed.stderr[-3000:]  # died like kill -9 right after N=1's rows
    assert not (_run_dir(tmp_path / "killed") / "edits" / "n2.safetensors").exists()
    resumed = _iceb(tmp_path / "killed", hash_seed=3)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "N=1: already done" in resumed.stdout
    for n in (1, 2):
        a = load_file(str(_run_dir(tmp_path / "clean") / "edits" / f"n{n}.safetensors"))
        b = load_file(str(_run_dir(tmp_path / "killed") / "edits" / f"n{n}.safetensors"))
        assert sorted(a) == sorted(b)
        for k in a:
            assert torch.equal(a[k], b[k]), f"N={n} {k}: max |diff| {(a[k] - b[k]).abs().max().item():.3g}"
