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


#: A small OpenCLIP architecture (1.7M parameters, most of them the token table) for runs that go through
#: CLIPScore's real loader: registered with open_clip and named by $ICEB_CLIP_ARCH, its random weights saved as
#: the .safetensors file $ICEB_CLIP_WEIGHTS names. In-process only (a subprocess does not see the registration).
TINY_CLIP_CONFIG = {"embed_dim": 32, "quick_gelu": True,
                    "vision_cfg": {"image_size": 224, "layers": 1, "width": 32, "patch_size": 32, "head_width": 16},
                    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="session")
def tiny_clip_files(tmp_path_factory):
    """(architecture name, weights path) of a random-weight tiny OpenCLIP model, registered with open_clip."""
    import json

    open_clip = pytest.importorskip("open_clip")
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("tiny-clip")
    (d / "iceb-tiny-clip.json").write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(d)
    torch.manual_seed(0)
    model = open_clip.create_model("iceb-tiny-clip", pretrained=None)
    path = d / "tiny-clip.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return "iceb-tiny-clip", str(path)


@pytest.fixture()
def tiny_clip_env(tiny_clip_files, monkeypatch):
    """$ICEB_CLIP_ARCH and $ICEB_CLIP_WEIGHTS set to the tiny random CLIP (the metric's real loading path)."""
    arch, path = tiny_clip_files
    monkeypatch.setenv("ICEB_CLIP_ARCH", arch)
    monkeypatch.setenv("ICEB_CLIP_WEIGHTS", path)
    return arch, path


@pytest.fixture(scope="session")
def random_alexnet_file(tmp_path_factory):
    """A random-weight torchvision AlexNet as .safetensors, for LPIPS's real loading path ($ICEB_LPIPS_ALEXNET)."""
    pytest.importorskip("lpips")
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    # only the convolutional features enter LPIPS; the classifier's 58M weights are left out of the file
    feats = {k: v.contiguous() for k, v in torchvision.models.alexnet(weights=None).state_dict().items()
             if k.startswith("features.")}
    path = tmp_path_factory.mktemp("alexnet") / "alexnet.safetensors"
    save_file(feats, str(path))
    return str(path)


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
