"""Edit files: bitwise round trips, base-model checks, composition, sidecar contents."""
from __future__ import annotations

import json
from typing import Any, Sequence

import pytest
import torch

from editors import EDITORS, EditRequest
from editors.base import BaseEditor, EditResult
from editors.weights import applied, checkpoint_name, get_tensor
from iceb.editfile import (
    EditFile,
    EditFileError,
    apply_edit,
    edit_model,
    edited,
    load_edit,
    merge_edits,
    restore_edit,
    save_edit,
    sidecar_path,
)

TO_V = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v.weight"
TO_K = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"


class NudgeEditor(BaseEditor):
    """Test-only: adds seeded noise to chosen tensors; the seed comes from the requests."""

    name = "test-nudge"
    targets: Sequence[str] = (TO_V,)

    def edit(self, pipe: Any, requests: Sequence[EditRequest]) -> EditResult:
        self.check_requests(requests)
        g = torch.Generator().manual_seed(sum(r.seed + len(r.source) for r in requests))
        out = {}
        for name in self.targets:
            w = get_tensor(pipe, name).detach()
            out[name] = (w + 0.05 * torch.randn(w.shape, generator=g)).to(w.dtype)
        return EditResult(out, timings={"solve": 0.0}, losses={"loss": [1.0, 0.5]}, info={"note": "test"})


EDITORS.register("test-nudge", NudgeEditor, overwrite=True)


REQS = [EditRequest("cat", "dog", seed=3), EditRequest("apple", "orange", ("A photo of {}",), seed=4)]


def fc2_name(pipe) -> str:
    from editors.hooks import fc2_name as name

    return name(pipe.text_encoder, 3)


def full_state(pipe) -> dict[str, torch.Tensor]:
    return {f"{c}.{k}": v.clone() for c in ("text_encoder", "unet", "vae")
            for k, v in getattr(pipe, c).state_dict().items()}


@pytest.fixture()
def made_edit(tiny_model, tmp_path):
    result, hp = edit_model("test-nudge", tiny_model, REQS)
    path = save_edit(tmp_path / "e.safetensors", result, editor="test-nudge", hparams=hp, model=tiny_model,
                     requests=REQS)
    return result, path


def test_round_trip_into_a_fresh_pipeline_is_bitwise(tiny_model, tiny_pipe, made_edit):
    from iceb.models import build_tiny_pipeline

    result, path = made_edit
    with applied(tiny_pipe, result.tensors):
        in_memory = full_state(tiny_pipe)
    fresh = build_tiny_pipeline()
    before = full_state(fresh)
    originals = apply_edit(fresh, path)
    after = full_state(fresh)
    assert after.keys() == in_memory.keys()
    assert all(torch.equal(after[k], in_memory[k]) for k in after)
    assert not torch.equal(after[TO_V], before[TO_V])
    changed = [k for k in after if not torch.equal(after[k], before[k])]
    assert changed == [TO_V]
    restore_edit(fresh, originals)
    assert all(torch.equal(v, before[k]) for k, v in full_state(fresh).items())


def test_file_holds_exactly_the_changed_tensors_and_a_complete_sidecar(tiny_model, made_edit):
    from safetensors.torch import load_file

    from iceb.data.request_files import requests_hash

    result, path = made_edit
    raw = load_file(str(path))
    assert set(raw) == set(result.tensors) and torch.equal(raw[TO_V], result.tensors[TO_V])
    meta = json.loads(sidecar_path(path).read_text())
    assert meta["editor"] == "test-nudge" and meta["hparams"] == {}
    assert meta["base_model"]["id"] == tiny_model.model_id
    assert meta["base_model"]["fingerprint"] == tiny_model.fingerprint
    assert meta["requests_hash"] == requests_hash(REQS) and meta["n_requests"] == 2
    assert meta["requests"][1] == {"source": "apple", "destination": "orange", "templates": ["A photo of {}"],
                                   "seed": 4, "kind": "update"}
    assert meta["tensors"][TO_V]["shape"] == list(result.tensors[TO_V].shape)
    assert meta["versions"]["iceb"] and meta["created"] and "edit_seconds" in meta["timings"]
    assert meta["losses_last"] == {"loss": 0.5} and meta["history"][0]["editor"] == "test-nudge"
    ef = load_edit(path)
    assert ef.requests == REQS
    # the header carries the same metadata: a file without its sidecar still loads with it
    sidecar_path(path).unlink()
    assert load_edit(path).meta == meta


def test_other_base_model_refused_unless_forced(tiny_model, made_edit):
    from iceb.models import build_tiny_pipeline

    _, path = made_edit
    other = build_tiny_pipeline(seed=1)  # same architecture, other weights
    with pytest.raises(EditFileError, match="does not hold the base values"):
        apply_edit(other, path)
    before = get_tensor(other, TO_V).detach().clone()
    originals = apply_edit(other, path, force=True)
    assert torch.equal(get_tensor(other, TO_V), load_edit(path).tensors[TO_V])
    restore_edit(other, originals)
    assert torch.equal(get_tensor(other, TO_V), before)
    # a recorded model id that differs is refused as well
    with pytest.raises(EditFileError, match="made on model 'iceb/tiny-random', not 'someone/else'"):
        apply_edit(tiny_model.pipe, path, model_id="someone/else")


def test_base_check_across_dtypes(made_edit):
    from iceb.models import build_tiny_pipeline

    _, path = made_edit
    same_bf16 = build_tiny_pipeline().to(dtype=torch.bfloat16)
    with edited(same_bf16, path):  # the same base in another dtype passes (sampled values, tolerance)
        assert get_tensor(same_bf16, TO_V).dtype == torch.bfloat16
    other_bf16 = build_tiny_pipeline(seed=1).to(dtype=torch.bfloat16)
    with pytest.raises(EditFileError, match="base values"):
        apply_edit(other_bf16, path)


def test_wrong_names_or_shapes_refused_even_with_force(tiny_pipe):
    bad_shape = EditFile({TO_V: torch.zeros(3, 3)}, {})
    with pytest.raises(EditFileError, match="shape mismatch"):
        apply_edit(tiny_pipe, bad_shape, force=True)
    bad_name = EditFile({"unet.no.such.weight": torch.zeros(1)}, {})
    with pytest.raises(EditFileError, match="no tensor"):
        apply_edit(tiny_pipe, bad_name, force=True)


def test_sidecar_from_another_edit_is_detected(made_edit, tmp_path):
    _, path = made_edit
    meta = json.loads(sidecar_path(path).read_text())
    meta["tensors"] = {TO_K: meta["tensors"][TO_V]}
    sidecar_path(path).write_text(json.dumps(meta))
    with pytest.raises(EditFileError, match="different edits"):
        load_edit(path)


def test_composition_in_sequence_equals_merged(tiny_model, tiny_pipe, tmp_path):
    fc2 = fc2_name(tiny_pipe)
    ed_a, ed_b = NudgeEditor(), NudgeEditor()
    ed_a.targets, ed_b.targets = (TO_V, fc2), (TO_V, TO_K)  # TO_V shared: b's value must win
    ra = [EditRequest("cat", "dog", seed=1)]
    rb = [EditRequest("tree", "flower", seed=2)]
    res_a, _ = edit_model(ed_a, tiny_model, ra)
    res_b, _ = edit_model(ed_b, tiny_model, rb)
    pa = save_edit(tmp_path / "a.safetensors", res_a, editor="a", model=tiny_model, requests=ra)
    pb = save_edit(tmp_path / "b.safetensors", res_b, editor="b", model=tiny_model, requests=rb)
    clean = full_state(tiny_pipe)
    # in sequence: b was made on the clean base, so its shared tensor needs force after a
    oa = apply_edit(tiny_pipe, pa)
    with pytest.raises(EditFileError, match="base values"):
        apply_edit(tiny_pipe, pb)
    ob = apply_edit(tiny_pipe, pb, force=True)
    sequential = full_state(tiny_pipe)
    restore_edit(tiny_pipe, ob)
    restore_edit(tiny_pipe, oa)
    assert all(torch.equal(v, clean[k]) for k, v in full_state(tiny_pipe).items())
    merged = merge_edits([pa, pb])
    assert set(merged.tensors) == {TO_V, TO_K, checkpoint_name(None, fc2)}  # files keep the checkpoint layout
    assert torch.equal(merged.tensors[TO_V], res_b.tensors[TO_V])
    assert [h["editor"] for h in merged.meta["history"]] == ["a", "b"]
    assert merged.meta["composition"]["shared_tensors"] == [TO_V]
    assert [r["source"] for r in merged.meta["requests"]] == ["cat", "tree"]
    # the merged edit fits the clean base without force, and saves/loads like any edit file
    pm = save_edit(tmp_path / "ab.safetensors", merged, editor="a+b")
    with edited(tiny_pipe, pm):
        assert all(torch.equal(v, sequential[k]) for k, v in full_state(tiny_pipe).items())
    with edited(tiny_pipe, [pa, pb]):  # a list means the composition
        assert torch.equal(get_tensor(tiny_pipe, TO_K), sequential[TO_K])
    assert load_edit(pm).meta["history"][1]["file"] == pb.name  # a name, not a local path


def test_merge_refuses_different_base_models(tmp_path):
    a = EditFile({TO_V: torch.zeros(1)}, {"base_model": {"id": "x/one"}, "editor": "a"})
    b = EditFile({TO_V: torch.zeros(1)}, {"base_model": {"id": "x/two"}, "editor": "b"})
    with pytest.raises(EditFileError, match="different base models"):
        merge_edits([a, b])


def test_sequential_mode_records_rounds(tiny_model, tmp_path):
    reqs = REQS + [EditRequest("car", "bicycle", seed=5)]
    res, _ = edit_model("test-nudge", tiny_model, reqs, mode="sequential", rounds=3)
    # three rounds of noise on the same tensor, each on the previous round's model
    assert {k: v for k, v in res.info.items() if k != "cost"} == {"mode": "sequential", "rounds": 3}
    assert res.info["cost"]["seconds"]["edit"] == res.timings["edit_seconds"]
    one, _ = edit_model("test-nudge", tiny_model, reqs[:1])
    assert not torch.equal(res.tensors[TO_V], one.tensors[TO_V])
    with pytest.raises(ValueError, match="rounds needs mode 'sequential'"):
        edit_model("test-nudge", tiny_model, reqs, rounds=2)


def test_save_refuses_non_finite_and_wrong_suffix(tmp_path):
    with pytest.raises(FloatingPointError):
        save_edit(tmp_path / "x.safetensors", {TO_V: torch.tensor([float("nan")])}, editor="x")
    with pytest.raises(EditFileError, match=".safetensors"):
        save_edit(tmp_path / "x.pt", {TO_V: torch.zeros(1)}, editor="x")


def test_save_applied_writes_the_edited_folder_and_leaves_the_model_clean(tiny_model, made_edit, tmp_path):
    from iceb.editfile import save_applied
    from iceb.models import load_model

    result, path = made_edit
    before = full_state(tiny_model.pipe)
    info = save_applied(tiny_model, [path], tmp_path / "edited")
    assert all(torch.equal(v, before[k]) for k, v in full_state(tiny_model.pipe).items())
    assert info["model_id"].startswith(f"{tiny_model.model_id}+test-nudge:")
    assert info["edits"]["files"] == [{"name": path.name, "digest": info["model_id"].rsplit(":", 1)[1]}]  # no local path
    reloaded = load_model(str(tmp_path / "edited"), device="cpu")
    assert torch.equal(get_tensor(reloaded.pipe, TO_V), result.tensors[TO_V])
    with pytest.raises(ValueError, match="not empty"):
        save_applied(tiny_model, [path], tmp_path / "edited")
