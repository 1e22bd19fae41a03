"""Shared fixtures: tiny random-weight models built from configs (never a download)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

#: EMCID's released data, beside the checkout as ../shared/reference (present on dev machines and CI)
SHARED_REF = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
ICEB_REF = SHARED_REF / "emcid" / "data" / "iceb_data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One torch thread in tests, here and in subprocesses: the models are tiny (more threads only add overhead,
# 10-30x slower on a loaded 2-core machine, measured), CI runs `-n 2` workers on 2 cores, and multi-process
# tests compare bitwise with single-process runs, which needs the same kernels' summation order.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow test: set RUN_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model():
    from iceb.models import load_model

    return load_model("tiny", device="cpu")


@pytest.fixture()
def tiny_pipe(tiny_model):
    """The session's tiny pipeline; tests must leave it as they found it (checked here)."""
    pipe = tiny_model.pipe
    before = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    yield pipe
    for k, v in pipe.text_encoder.state_dict().items():
        assert torch.equal(v, before[k]), f"a test left the tiny text encoder changed at {k}"


@pytest.fixture(autouse=True)
def _own_iceb_cache(tmp_path_factory, monkeypatch):
    """Each test gets an empty shared cache root (``$ICEB_CACHE``, inherited by its subprocesses): editors now
    cache statistics there by default, and one test's entries must not turn another's cold edit warm."""
    monkeypatch.setenv("ICEB_CACHE", str(tmp_path_factory.mktemp("iceb-cache")))
