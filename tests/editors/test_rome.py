"""ReFACT (ROME-style): the rank-one update maps the key to the optimised value and nothing orthogonal moves."""
from __future__ import annotations

import pytest
import torch

from editors import get_editor
from editors.hooks import capture, subject_last_positions, text_layers, tokenize
from editors.requests import EditRequest, RequestError
from editors.rome import ROMEEditor, ROMEHparams, synthetic_corpus
from editors.weights import applied, get_tensor

REQS = [EditRequest("cat", "dog"), EditRequest("racing car", "bicycle")]
STATS_DIR = None


@pytest.fixture(scope="module", autouse=True)
def _stats_dir(tmp_path_factory):
    global STATS_DIR
    STATS_DIR = tmp_path_factory.mktemp("rome-cache")  # statistics computed once, then loaded


def _rome(**kw) -> ROMEEditor:
    base = ROMEEditor.load_hparams("tiny").to_dict()
    base.update({"v_max_grad_steps": 5, "v_lr": 0.5, "mom2_n_samples": 200}, **kw)
    return ROMEEditor(ROMEHparams.from_dict(base), cache_dir=STATS_DIR, progress=False)


@torch.no_grad()
def _fc2_output(pipe, layer, prompt, subject):
    pos = subject_last_positions(pipe.tokenizer, ["{}"], subject)[0]
    ids, _ = tokenize(pipe.tokenizer, [prompt], pad_to_max=True)
    fc2 = text_layers(pipe.text_encoder)[layer].mlp.fc2
    with capture({"f": fc2}, inputs=True, outputs=True) as rec:
        pipe.text_encoder(ids)
    return rec.inputs["f"][0, pos].double(), rec.outputs["f"][0, pos].double()


def test_key_maps_to_optimised_value_and_update_is_rank_one(tiny_pipe):
    ed = _rome()
    res = ed.edit(tiny_pipe, REQS[:1])
    (name,) = res.tensors
    assert name == "text_encoder.encoder.layers.7.mlp.fc2.weight"
    W0 = get_tensor(tiny_pipe, name).detach().double()
    W1 = res.tensors[name].double()
    e = ed.last_edits[0]
    b = text_layers(tiny_pipe.text_encoder)[7].mlp.fc2.bias.double()
    # W_new k* + b = v* (the optimised MLP output h0 + δ) ...
    assert torch.allclose(W1 @ e["key"] + b, e["target"], rtol=1e-5, atol=1e-5)
    assert (e["target"] - (W0 @ e["key"] + b)).norm() > 1e-3  # ... and that is a real change
    # ... also through the edited encoder (the key is the layer's own input, unchanged by the edit)
    with applied(tiny_pipe, res.tensors):
        k, out = _fc2_output(tiny_pipe, 7, "cat", "cat")
    assert torch.allclose(k, e["key"], atol=1e-5) and torch.allclose(out, e["target"], rtol=1e-4, atol=1e-4)
    s = torch.linalg.svdvals(W1 - W0)
    assert s[1] < 1e-5 * s[0]  # rank one (up to float32 storage)


def test_keys_orthogonal_in_the_statistics_metric_are_untouched(tiny_pipe):
    ed = _rome()
    res = ed.edit(tiny_pipe, REQS[:1])
    (name,) = res.tensors
    dW = res.tensors[name].double() - get_tensor(tiny_pipe, name).detach().double()
    C = ed.second_moment(tiny_pipe).double()
    k_bar = ed.last_edits[0]["k_bar"]
    cinv_k = torch.linalg.solve(C, k_bar)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        k = torch.randn(k_bar.shape[0], generator=g, dtype=torch.float64)
        k_orth = k - (k @ cinv_k) / (cinv_k @ cinv_k) * cinv_k  # kᵀ C⁻¹ k̄ = 0
        assert abs(float(k_orth @ cinv_k)) < 1e-8 * k.norm() * cinv_k.norm()
        assert (dW @ k_orth).norm() < 1e-5 * dW.norm() * k_orth.norm()
    # the edit direction itself moves: ΔW C⁻¹k̄ = v ||C⁻¹k̄|| (u is C⁻¹k̄ normalised)
    assert torch.allclose((dW @ cinv_k).norm(), dW.norm() * cinv_k.norm(), rtol=1e-4)


def test_sequential_edits_each_add_rank_one_on_the_edited_model(tiny_pipe):
    ed = _rome()
    res = ed.edit(tiny_pipe, REQS)
    (name,) = res.tensors
    W0 = get_tensor(tiny_pipe, name).detach().double()
    dW = res.tensors[name].double() - W0
    s = torch.linalg.svdvals(dW)
    assert s[1] > 1e-4 * s[0] and s[2] < 1e-5 * s[0]  # two edits, two rank-one terms
    # the last edit was computed on the model the first produced: its key maps exactly to its target
    e = ed.last_edits[1]
    b = text_layers(tiny_pipe.text_encoder)[7].mlp.fc2.bias.double()
    assert torch.allclose(res.tensors[name].double() @ e["key"] + b, e["target"], rtol=1e-5, atol=1e-5)


def test_no_optimisation_steps_changes_nothing(tiny_pipe):
    res = _rome(v_max_grad_steps=0).edit(tiny_pipe, REQS)
    for name, t in res.tensors.items():
        assert torch.equal(t, get_tensor(tiny_pipe, name))


def test_contrastive_loss_decreases(tiny_pipe):
    res = _rome(v_weight_decay=0.0, v_max_grad_steps=15).edit(tiny_pipe, REQS[:1])
    (ls,) = res.losses.values()
    assert min(ls[1:]) < ls[0] - 0.05


def test_joint_solve_is_the_memit_solve(tiny_pipe):
    ed = _rome(solve="joint", mom2_update_weight=1e-7)
    res = ed.edit(tiny_pipe, REQS[:1])
    (name,) = res.tensors
    W0 = get_tensor(tiny_pipe, name).detach().double()
    dW = res.tensors[name].double() - W0
    e = ed.last_edits[0]
    _, out = _fc2_output(tiny_pipe, 7, "cat", "cat")
    r = e["target"] - out  # residual at the request prompt, written onto the averaged key
    assert torch.allclose(dW @ e["k_bar"], r, rtol=1e-3, atol=1e-4)
    far = _rome(solve="joint", mom2_update_weight=1e9).edit(tiny_pipe, REQS[:1])
    assert (far.tensors[name].double() - W0).norm() < 1e-3 * dW.norm()


def test_erase_is_rejected_with_a_clear_error(tiny_pipe):
    with pytest.raises(RequestError, match="no erase mode"):
        _rome().edit(tiny_pipe, [EditRequest("cat", kind="erase")])
    with pytest.raises(Exception, match="out of range"):
        _rome(layer=40).edit(tiny_pipe, REQS[:1])


def test_presets_and_registry():
    assert get_editor("rome") is ROMEEditor
    sd = ROMEEditor.load_hparams("sd-1.4")
    got = (sd.layer, sd.v_lr, sd.v_max_grad_steps, sd.v_prob_threshold, sd.v_weight_decay, sd.clamp_norm_factor)
    assert got == (7, 0.05, 100, 0.99, 0.1, 4.0)
    assert len(sd.context_templates) == 9 and sd.solve == "chained"
    assert ROMEEditor.load_hparams("toy").layer == 2
    assert len(synthetic_corpus()) == 400 and len(set(synthetic_corpus())) > 50
