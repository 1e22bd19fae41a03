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
# One thread per xdist worker (CI runs `-n 2` on 2 cores); otherwise honour OMP_NUM_THREADS, default 2.
_threads = 1 if os.environ.get("PYTEST_XDIST_WORKER") else int(os.environ.get("OMP_NUM_THREADS", "2"))
torch.set_num_threads(max(1, min(_threads, os.cpu_count() or 1)))


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
