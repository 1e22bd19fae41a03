"""The task ``debias`` end to end on ``tiny`` through the harness: EMCID's debiasing mode judged by the real
``gender-clip`` code (a small random-weight OpenCLIP through the real loader: ``$ICEB_CLIP_ARCH`` names a config
registered here, ``$ICEB_CLIP_WEIGHTS`` its saved random weights), and an editor without the mode refused before
any image is made."""
from __future__ import annotations

import json

import pytest
from conftest import SHARED_REF

from editors.requests import RequestError

ARCH = "iceb-test-tiny-clip"
CHEAP = {"layers": [9, 10], "v_num_grad_steps": 2, "train_steps": 1, "mom2_n_samples": 100,
         "debias_images": 4, "debias_iterations": 2}


@pytest.fixture()
def tiny_clip(tmp_path, monkeypatch):
    import open_clip
    import torch
    from safetensors.torch import save_file

    config = {"embed_dim": 16, "quick_gelu": True,
              "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    path = tmp_path / f"{ARCH}.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)
    torch.manual_seed(0)
    model = open_clip.create_model(ARCH, pretrained=None, force_quick_gelu=True)
    weights = tmp_path / "tiny-clip.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    monkeypatch.setenv("ICEB_CLIP_ARCH", ARCH)
    monkeypatch.setenv("ICEB_CLIP_WEIGHTS", str(weights))
    monkeypatch.setenv("ICEB_EMCID_DATA", str(SHARED_REF / "emcid" / "data"))


def _cfg(out, editor="emcid", **kw):
    from iceb.harness import EvalConfig

    return EvalConfig(editor=editor, task="debias", model="tiny", edits=(2,), metrics=("gender-clip",), limit=12,
                      out=str(out), device="cpu", progress=False, batch_size=12, **kw)


@pytest.mark.skipif(not (SHARED_REF / "emcid" / "data" / "debias").is_dir(), reason="../shared/reference is absent")
def test_debias_runs_end_to_end_on_tiny(tiny_clip, tiny_model, tmp_path):
    from iceb.editfile import sidecar_path
    from iceb.harness import evaluate
    from iceb.leaderboard.results import read_rows

    run = evaluate(_cfg(tmp_path, editor_args=CHEAP), model=tiny_model)
    rows = {(r["subset"], r["metric"]): r for r in read_rows(run / "results.jsonl")}
    delta = rows["general", "gender_delta"]
    assert delta["n"] == 12 and delta["n_groups"] == 2 and delta["smoke"] and delta["task"] == "debias"
    assert 0 <= delta["value"] <= 1 and delta["higher_is_better"] is False
    for prof in ("an attendant", "a cashier"):  # the first two professions, 6 prompts each under --limit 12
        assert rows[f"general:{prof}", "female_share"]["n"] == 6
    assert ("general", "gender_delta_std_pre") in rows and ("general", "gender_delta_change") in rows
    side = json.loads(sidecar_path(run / "edits" / "n2.safetensors").read_text())
    debias = side["info"]["debias"]
    assert set(debias) == {"an attendant", "a cashier"}
    assert all(1 <= d["iterations"] <= 2 and abs(sum(d["weights"]) - 1) < 1e-9 for d in debias.values())
    assert [r["destinations"] for r in side["requests"]] == [["a female attendant", "a male attendant"],
                                                            ["a female cashier", "a male cashier"]]


@pytest.mark.skipif(not (SHARED_REF / "emcid" / "data" / "debias").is_dir(), reason="../shared/reference is absent")
def test_an_editor_without_a_debiasing_mode_is_refused_before_any_image(tiny_clip, tiny_model, tmp_path):
    from iceb.harness import evaluate

    with pytest.raises(RequestError, match="uce has no debiasing mode.*editors with one: emcid"):
        evaluate(_cfg(tmp_path, editor="uce"), model=tiny_model)
    assert not list(tmp_path.rglob("*.png"))
