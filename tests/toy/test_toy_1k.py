"""The 1,536-concept toy world (issue #18): its registry entry, its split and tasks at 1,000 edits, and its shipped
bundle when present (weights against the recorded config, size budget, widths, quality gates)."""
from __future__ import annotations

import json

import pytest
import torch

from iceb.toy import world as W
from iceb.toy.worlds import toy_world_dir

TOY_1K = toy_world_dir("toy-1k")
SHIPPED = (TOY_1K / "train_config.json").is_file()
needs_shipped = pytest.mark.skipif(not SHIPPED, reason="the trained toy-1k bundle is not in data/toy-1k")


def test_toy_worlds_are_named_in_one_place():
    from iceb.models import WORLDS, model_world
    from iceb.toy.worlds import TOY_WORLDS, is_toy_world

    assert set(TOY_WORLDS) == {"toy", "toy-1k"} and set(TOY_WORLDS) <= set(WORLDS)
    assert is_toy_world("toy-1k") and not is_toy_world("imagenet") and model_world("toy-1k") == "toy-1k"
    with pytest.raises(KeyError, match="did you mean 'toy-1k'"):
        toy_world_dir("toy-1")


def test_shipped_split_is_the_generators_and_tasks_list_1000_requests():
    from iceb.data.split_bundle import SplitBundle
    from iceb.tasks import get_task
    from iceb.toy.split import build_scaled_split
    from iceb.toy.train.config import recipe

    world = W.ToyWorld(**recipe("toy-1k").world)
    shipped = SplitBundle.load(TOY_1K / "split.json")
    assert shipped.checksum() == build_scaled_split(world, name="toy-1k").checksum()
    ace = get_task("ace", world="toy-1k")
    assert ace.default_edits == (1, 10, 100, 300, 1000) and ace.max_edits == 1000
    inst = ace.build(1000)
    assert len(inst.requests) == 1000
    holdout = set(shipped.holdout)
    sources = {r.source_id for r in inst.requests}
    assert len(sources) == 1000 and len(holdout) >= 250 and not sources & holdout
    rect = get_task("rectification", world="toy-1k")
    assert rect.max_edits >= 300 and rect.default_edits == (1, 10, 100, 300, rect.max_edits)


def test_toy_1k_names_resolve_in_task_files():
    from iceb.tasks.user import ClassNames
    from iceb.toy.train.config import recipe

    world = W.ToyWorld(**recipe("toy-1k").world)
    far = world.concepts[1400]
    names = ClassNames("toy-1k")
    assert names.class_count() == 1536
    assert names.resolve(far.name, "test") == far.id and names.resolve(far.aliases[0], "test") == far.id


@pytest.mark.skipif(not (TOY_1K / "parts.json").is_file(), reason="no toy-1k parts committed")
def test_committed_parts_match_their_record_and_the_recipe():
    """The stages before diffusion, committed for a later sitting (``iceb toy train --stage parts``): every file
    as recorded, the recipe's config upstream of diffusion, SD-1.x's text widths, the gates' classifier numbers."""
    from iceb.toy.train.config import TrainConfig, recipe
    from iceb.toy.train.parts import DOWNSTREAM_FIELDS
    from iceb.utils.download import sha256_file

    record = json.loads((TOY_1K / "parts.json").read_text())
    rewritten = set()
    if SHIPPED:  # the export rewrites the VAE's config with the scaling factor the diffusion stage measured
        rewritten = {"model/vae/config.json"}
        shipped = json.loads((TOY_1K / "train_config.json").read_text())
        vae = json.loads((TOY_1K / "model" / "vae" / "config.json").read_text())
        assert vae["scaling_factor"] == shipped["stages"]["diffusion"]["scaling_factor"]
    for rel, digest in record["files_sha256"].items():
        if rel not in rewritten:
            assert sha256_file(TOY_1K / rel) == digest, f"{rel} does not match parts.json"
    recorded, now = TrainConfig.from_json(record["config"]).to_json(), recipe("toy-1k").to_json()
    assert {k for k in now if recorded[k] != now[k]} <= DOWNSTREAM_FIELDS
    te = json.loads((TOY_1K / "model" / "text_encoder" / "config.json").read_text())
    assert (te["hidden_size"], te["intermediate_size"], te["num_hidden_layers"]) == (768, 3072, 3)
    assert record["stages"]["text"]["step"] == now["text_steps"] and record["stages"]["text"]["eval"]["primary"] > 0.9


@needs_shipped
def test_shipped_weights_match_the_recorded_config_size_and_widths():
    from iceb.toy.train.config import TrainConfig, recipe
    from iceb.utils.download import sha256_file

    record = json.loads((TOY_1K / "train_config.json").read_text())
    recorded = TrainConfig.from_json(record["config"]).to_json()
    assert recorded == recipe("toy-1k").to_json(), "data/toy-1k was trained with another config"
    for rel, digest in record["weights_sha256"].items():
        assert sha256_file(TOY_1K / rel) == digest, f"{rel} does not match train_config.json"
    parts = json.loads((TOY_1K / "parts.json").read_text())["files_sha256"]
    for rel in ("classifier.safetensors", "model/text_encoder/model.safetensors",
                "model/vae/diffusion_pytorch_model.safetensors"):  # the parts ship as they were trained on, bit for bit
        assert record["weights_sha256"][rel] == parts[rel], rel
    model_bytes = sum(p.stat().st_size for p in (TOY_1K / "model").rglob("*") if p.is_file())
    assert model_bytes <= 60 * 1024 * 1024, model_bytes
    te = json.loads((TOY_1K / "model" / "text_encoder" / "config.json").read_text())
    assert (te["hidden_size"], te["intermediate_size"]) == (768, 3072)  # SD-1.x's: 1,000 edits fill the same fractions


@needs_shipped
def test_load_model_toy_1k_rebuilds_its_token_table_and_generates():
    from iceb.generation import generate
    from iceb.models import load_model

    loaded = load_model("toy-1k", device="cpu")
    assert (loaded.world, loaded.family, loaded.classifier) == ("toy-1k",) * 3
    table = loaded.pipe.text_encoder.get_input_embeddings().weight
    assert table.shape[0] == 49408 and 1500 < int((table.abs().sum(-1) > 0).sum()) < 3000
    world = W.ToyWorld(**loaded.info["world_config"])
    ims = generate(loaded.pipe, [f"A photo of {world.concepts[1500].name}"], [0],
                   loaded.generation.replace(num_inference_steps=2))
    assert ims[0].shape == (32, 32, 3) and torch.isfinite(table).all()


# Measured on the shipped toy-1k model with exactly this run (UCE, its untuned toy-1k preset, N = 100, 40 scored
# requests, at most 100 prompts per subset; 151 s on this project's 2-core CPU, 2026-12-06): Source2Dest 0.635
# (SE 0.060), Holdout Delta -0.798 (SE 0.035). UCE's 100 edits overflow the 768-wide cross-attention keys and wipe
# the holdout, as the issue expects past a few hundred concepts on SD (here already at 100, untuned). The bounds:
# at least half the measured Source2Dest, and at least half the measured holdout damage (a run that edits nothing,
# or edits without the closed form's reach, fails both).
MEASURED_100 = {"uce_source2dest": 0.6349, "uce_holdout_delta": -0.7977}


@needs_shipped
def test_uce_edits_100_requests_on_toy_1k(tmp_path):
    """One hundred simultaneous edits on the world at ImageNet scale, through the benchmark's own harness."""
    import pandas as pd

    from iceb.harness import EvalConfig, evaluate

    cfg = EvalConfig(editor="uce", task="ace", model="toy-1k", edits=(100,), out=str(tmp_path), device="cpu",
                     progress=False, score_requests=40, limit=100, log_samples=False)
    df = pd.read_csv(evaluate(cfg) / "results.csv")
    v = {(r.subset, r.metric): r.value for r in df.itertuples()}
    assert v[("edit", "source2dest")] >= 0.5 * MEASURED_100["uce_source2dest"]
    assert v[("holdout", "holdout_delta")] <= 0.5 * MEASURED_100["uce_holdout_delta"]
