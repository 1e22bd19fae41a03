"""Edits and model folders travel between transformers 4 and 5: names in the checkpoint layout on disk, either
layout accepted on apply, and a folder that the running version would load as random weights refused."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import safe_open, save_file

from editors.hooks import fc2_name
from editors.weights import checkpoint_name, get_tensor, live_name
from iceb.editfile import apply_edit, load_edit, restore_edit, save_applied, save_edit, sidecar_path
from iceb.weight_layout import WeightLayoutError, check_text_encoder_readable, write_checkpoint_layout


def _v4(name: str) -> str:
    """The transformers-4 (hub checkpoint) spelling of a text-encoder name."""
    comp, _, inner = name.partition(".")
    return name if inner.startswith("text_model.") else f"{comp}.text_model.{inner}"


def test_names_map_both_ways(tiny_pipe):
    live = fc2_name(tiny_pipe.text_encoder, 2)
    hub = _v4(live)
    assert checkpoint_name(tiny_pipe, live) == hub and checkpoint_name(None, live) == hub
    assert live_name(tiny_pipe, hub) == live and live_name(tiny_pipe, live) == live
    assert get_tensor(tiny_pipe, hub) is get_tensor(tiny_pipe, live)
    unet = "unet.conv_in.weight"
    assert checkpoint_name(tiny_pipe, unet) == unet == live_name(tiny_pipe, unet)


def test_edit_files_store_the_checkpoint_layout_and_apply_in_either(tiny_model, tmp_path):
    pipe = tiny_model.pipe
    live = fc2_name(pipe.text_encoder, 1)
    w = get_tensor(pipe, live).detach()
    new = w + 0.01
    path = save_edit(tmp_path / "e.safetensors", {live: new}, editor="manual", model=tiny_model)
    with safe_open(str(path), framework="pt") as fh:
        assert list(fh.keys()) == [_v4(live)]
    assert list(json.loads(sidecar_path(path).read_text())["tensors"]) == [_v4(live)]
    # a file written before the layout was fixed (live transformers-5 names) reads back canonical
    save_file({live: new}, str(tmp_path / "old.safetensors"))
    assert list(load_edit(tmp_path / "old.safetensors").tensors) == [_v4(live)]
    for f in (path, tmp_path / "old.safetensors"):
        before = w.clone()
        originals = apply_edit(tiny_model, f)
        assert torch.equal(get_tensor(pipe, live), new)
        restore_edit(tiny_model, originals)
        assert torch.equal(get_tensor(pipe, live), before)


def test_apply_folder_is_in_the_hub_layout_and_loads_the_edited_weights(tiny_model, tmp_path):
    from iceb.models import load_model

    live = fc2_name(tiny_model.pipe.text_encoder, 0)
    new = get_tensor(tiny_model.pipe, live).detach() * 1.5
    path = save_edit(tmp_path / "e.safetensors", {live: new}, editor="manual", model=tiny_model)
    info = save_applied(tiny_model, [path], tmp_path / "out")
    assert "note" not in info and info["dtype"] == "float32"
    with safe_open(str(tmp_path / "out" / "text_encoder" / "model.safetensors"), framework="pt") as fh:
        keys = list(fh.keys())
    assert keys and all(k.startswith("text_model.") for k in keys)
    import os

    umask = os.umask(0)
    os.umask(umask)
    modes = {f.name: f.stat().st_mode & 0o777 for f in (tmp_path / "out").rglob("*") if f.is_file()}
    assert set(modes.values()) == {0o666 & ~umask}, modes  # weight files too (the libraries write them 0600)
    reloaded = load_model(str(tmp_path / "out"), device="cpu")
    assert torch.equal(get_tensor(reloaded.pipe, live), new)  # the edited values, not fresh random ones
    base = tiny_model.pipe.text_encoder.state_dict()
    for k, v in reloaded.pipe.text_encoder.state_dict().items():
        if f"text_encoder.{k}" != live:
            assert torch.equal(v, base[k]), k


def test_write_checkpoint_layout_keeps_values_and_is_idempotent(tmp_path):
    sub = tmp_path / "text_encoder"
    sub.mkdir()
    t = {"encoder.layers.0.mlp.fc2.weight": torch.randn(3, 4), "embeddings.token_embedding.weight": torch.randn(5, 3)}
    save_file(t, str(sub / "model.safetensors"), metadata={"format": "pt"})
    assert write_checkpoint_layout(tmp_path) == [sub / "model.safetensors"]
    with safe_open(str(sub / "model.safetensors"), framework="pt") as fh:
        got = {k: fh.get_tensor(k) for k in fh.keys()}
        assert fh.metadata() == {"format": "pt"}
    assert sorted(got) == sorted(f"text_model.{k}" for k in t)
    assert all(torch.equal(got[f"text_model.{k}"], v) for k, v in t.items())
    assert write_checkpoint_layout(tmp_path) == []


class _Lin(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc2 = torch.nn.Linear(2, 2)


def _folder(tmp_path, keys):
    sub = tmp_path / "text_encoder"
    sub.mkdir(parents=True, exist_ok=True)
    save_file({k: torch.zeros(2, 2) for k in keys}, str(sub / "model.safetensors"))
    return tmp_path


@pytest.mark.parametrize("reads_both", [True, False])
def test_a_folder_the_running_transformers_cannot_read_is_refused(tmp_path, monkeypatch, reads_both):
    """transformers 4 names its modules under text_model. and reads only that; 5 reads both spellings."""
    import iceb.weight_layout as wl

    monkeypatch.setattr(wl, "_reads_unprefixed", lambda: reads_both)
    v4_module = torch.nn.Module()
    v4_module.text_model = torch.nn.Module()
    v4_module.text_model.encoder = _Lin()
    v5_module = torch.nn.Module()
    v5_module.encoder = _Lin()
    live = v5_module if reads_both else v4_module
    pipe = SimpleNamespace(text_encoder=live)
    hub = _folder(tmp_path / "hub", ["text_model.encoder.fc2.weight", "text_model.encoder.fc2.bias"])
    check_text_encoder_readable(pipe, hub)  # the hub layout: every version reads it
    v5_files = _folder(tmp_path / "v5", ["encoder.fc2.weight", "encoder.fc2.bias"])
    if reads_both:
        with pytest.raises(WeightLayoutError, match="random"):
            check_text_encoder_readable(pipe, _folder(tmp_path / "bad", ["other.fc2.weight", "other.fc2.bias"]))
    else:  # transformers 4 on a folder transformers 5 wrote: an error naming the fix, not random weights
        with pytest.raises(WeightLayoutError, match="write_checkpoint_layout"):
            check_text_encoder_readable(pipe, v5_files)


def test_sidecars_hold_no_local_paths_and_still_check_the_base(tiny_model, tmp_path):
    import dataclasses

    local = dataclasses.replace(tiny_model, spec="/home/me/models/sd14-local", model_id="/home/me/models/sd14-local")
    live = fc2_name(tiny_model.pipe.text_encoder, 1)
    path = save_edit(tmp_path / "e.safetensors", {live: get_tensor(tiny_model.pipe, live).detach() + 0.01},
                     editor="manual", model=local)
    text = sidecar_path(path).read_text()
    assert "/home/me" not in text and json.loads(text)["base_model"]["id"] == "sd14-local"
    restore_edit(local, apply_edit(local, path))  # the same folder still fits without --force
    with pytest.raises(Exception, match="made on model"):
        apply_edit(dataclasses.replace(tiny_model, model_id="other/model"), path)


def test_a_token_table_stored_as_rows_encodes_its_own_words_bit_for_bit(tiny_pipe, tmp_path):
    """write_token_rows keeps the rows a model's vocabulary uses; the loaded folder encodes prompts of those words
    exactly as the full table did, reads every other token as a zero row, and passes the readability check."""
    from iceb.models import _load_folder
    from iceb.weight_layout import TOKEN_ROWS, write_token_rows

    folder = tmp_path / "m"
    tiny_pipe.save_pretrained(folder, safe_serialization=True)
    write_checkpoint_layout(folder)
    tok = tiny_pipe.tokenizer
    words = ["a photo of kege", "dorip on the left"]
    keep = sorted({t for seq in tok(words).input_ids for t in seq})
    assert write_token_rows(folder, keep) == len(keep)
    with safe_open(str(folder / "text_encoder" / "model.safetensors"), framework="pt") as fh:
        assert not any("token_embedding" in k for k in fh.keys())
    assert (folder / "text_encoder" / TOKEN_ROWS).is_file()
    loaded = _load_folder(folder, str(folder), torch.float32)
    table = loaded.pipe.text_encoder.get_input_embeddings().weight
    full = tiny_pipe.text_encoder.get_input_embeddings().weight
    assert torch.equal(table[keep], full[keep])
    others = torch.ones(len(table), dtype=torch.bool)
    others[keep] = False
    assert torch.count_nonzero(table[others]) == 0
    ids = tok(words, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        a = tiny_pipe.text_encoder(ids).last_hidden_state
        b = loaded.pipe.text_encoder(ids).last_hidden_state
    assert torch.equal(a, b)
