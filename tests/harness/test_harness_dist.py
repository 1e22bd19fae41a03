"""Two processes (torch.distributed over gloo, as `accelerate launch` sets it up on GPUs) give the rows of one.

`accelerate launch --cpu` starts one process unless MPI is installed, so the CPU test uses `torchrun`, which
sets the same environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*) that accelerate's multi-GPU launcher
sets; the harness reads it through accelerate's PartialState either way.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
EDITOR = "test_harness:ScaleVEditor"  # defined in tests/harness/test_harness.py




def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows(run_dir):
    from iceb.leaderboard.results import comparable, read_rows

    return comparable(read_rows(Path(run_dir) / "results.jsonl"))


@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun not installed")
def test_two_processes_give_the_rows_of_one(tiny_model, tmp_path):
    from iceb.generation import ImageCache
    from iceb.harness import EvalConfig, evaluate

    one = evaluate(EvalConfig(editor=EDITOR, task="smoke", model="tiny", edits=(1, 3), out=str(tmp_path / "one"),
                              device="cpu", progress=False, batch_size=4), model=tiny_model)
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    # each rank with this process's thread count: CPU kernels may sum in another order with another count
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests' / 'harness'}",
           "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
         "-m", "iceb", "evaluate", "--model", "tiny", "--task", "smoke", "--edits", "1,3", "--editor", EDITOR,
         "--batch-size", "4", "--device", "cpu", "--no-progress", "--out", str(tmp_path / "two")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = tmp_path / "two" / one.name  # same config, same run id
    assert json.loads((two / "config.json").read_text())["processes"] == 2
    assert _rows(two) == _rows(one)
    # rank 0 alone logs; both ranks rendered: every pre-edit image is in the cache, bit for bit the same
    assert proc.stdout.count("[iceb] N=3:") == 1
    c1, c2 = ImageCache(tmp_path / "one" / "cache" / "images"), ImageCache(tmp_path / "two" / "cache" / "images")
    keys = sorted(p.stem for p in c1.root.rglob("*.png"))
    assert len(keys) == 13 and keys == sorted(p.stem for p in c2.root.rglob("*.png"))
    assert all(np.array_equal(c1.get(k), c2.get(k)) for k in keys)
