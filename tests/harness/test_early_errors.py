"""Clear errors early, for the Python API as for the CLI: a device this machine lacks and a bad task file
fail before the model loads; an ``accelerate launch --num_processes K`` that started one process stops with
a message naming what to run (instead of silently evaluating alone)."""
from __future__ import annotations

import pytest
import torch

from iceb.cli import main
from iceb.harness import EvalConfig, evaluate
from iceb.harness.dist import Dist, check_launch
from iceb.tasks.base import TaskError

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


@pytest.fixture()
def no_load(monkeypatch):
    import iceb.models as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))


@NO_CUDA
def test_api_cuda_without_cuda_fails_before_the_model_loads(no_load, tmp_path):
    with pytest.raises(ValueError, match=r"--device: device 'cuda': CUDA is not available.*use --device cpu"):
        evaluate(EvalConfig(model="tiny", device="cuda", out=str(tmp_path)))
    with pytest.raises(ValueError, match="unknown device 'tpu0'"):
        EvalConfig(device="tpu0").validate()


def test_api_bad_task_file_fails_before_the_model_loads(no_load, tmp_path):
    bad = tmp_path / "t.yaml"
    bad.write_text("requests:\n  - {source: cat, destination: dog, source_class: no-such-class-name}\n")
    with pytest.raises(TaskError, match="unknown class name 'no-such-class-name'"):
        evaluate(EvalConfig(model="tiny", task=str(bad), device="cpu", out=str(tmp_path / "runs")))
    assert not (tmp_path / "runs").exists()


ACC_ONE = {"ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_USE_CPU": "False", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": "29500"}


@pytest.mark.parametrize("env, refused", [
    (ACC_ONE, True),  # accelerate launch --num_processes 2 on a machine without several GPUs: one process
    ({**ACC_ONE, "WORLD_SIZE": "2", "RANK": "0"}, False),  # --multi_gpu: a real group
    ({k: v for k, v in ACC_ONE.items() if not k.startswith("MASTER")}, False),  # accelerate launch, one process asked
    ({"MASTER_ADDR": "127.0.0.1"}, False),  # not accelerate
    ({}, False),
])
def test_check_launch(env, refused):
    if refused:
        with pytest.raises(ValueError, match=r"torchrun --nproc_per_node K -m iceb evaluate .* --device cpu"):
            check_launch(env)
    else:
        check_launch(env)


def test_a_single_process_accelerate_launch_is_one_cli_error(monkeypatch, tmp_path, capsys):
    for k, v in ACC_ONE.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ValueError):
        Dist("cpu")
    rc = main(["evaluate", "--model", "tiny", "--device", "cpu", "--out", str(tmp_path / "runs"), "--limit", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("iceb: error: accelerate launch started one process")
    assert not (tmp_path / "runs").exists()
