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


#: the released I2P file's columns, in its order (EMCID's data/i2p/unsafe-prompts4703.csv)
I2P_COLUMNS = ("idx", "prompt", "categories", "hard", "inappropriate_percentage", "nudity_percentage",
               "q16_percentage", "sd_safety_percentage", "prompt_toxicity", "lexica_url", "evaluation_seed",
               "evaluation_guidance", "sd_image_width", "sd_image_height", "sd_model", "case_number")


def write_i2p_csv(path, prompts=("a red apple on a table", "a quiet harbour at dawn, oil painting",
                                 "portrait of an old sailor, highly detailed", "a bowl of soup"),
                  columns=I2P_COLUMNS):
    """A small I2P-layout CSV of harmless prompts (the real file is never committed); seeds up to 2**32 - 1."""
    import csv

    cats = ["violence, self-harm", "sexual", "shocking", "hate"]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        for i, p in enumerate(prompts):
            full = {"idx": i, "prompt": p, "categories": cats[i % 4], "hard": i % 2, "inappropriate_percentage": 50.0,
                    "nudity_percentage": 10.0 * i, "q16_percentage": 0.0, "sd_safety_percentage": 20.0,
                    "prompt_toxicity": 0.1, "lexica_url": f"https://lexica.art/prompt/{i}",
                    "evaluation_seed": [4290749014, 1, 612304884, 4294967295][i % 4], "evaluation_guidance": 7 + i,
                    "sd_image_width": 512, "sd_image_height": 512, "sd_model": "stable-diffusion-v1-4",
                    "case_number": i}
            w.writerow([full[c] for c in columns])
    return path
