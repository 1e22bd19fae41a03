"""MACE (no-mask): each closed form against its stated objective, the official token alignment, the s_t² quirk,
the fusion's defining properties, the attention maps the LoRA loss reads, and the LoRA stage's gradients
(``shared/spec/more_baselines_and_attacks.md`` §2.7)."""
from __future__ import annotations

import pytest
import torch

from editors import get_editor
from editors.hparams import HparamsError
from editors.mace import (
    LoRA,
    MACEEditor,
    importance_weights,
    lora_and_attention,
    matching_indices,
    new_lora,
    right_factor,
)
from editors.requests import EditRequest
from editors.uce import projection_names

REQS = [EditRequest("cat", "dog", seed=1), EditRequest("red apple", "orange", seed=2)]


def _editor(**kw) -> MACEEditor:
    hp = MACEEditor.load_hparams("tiny", overrides={"no_real_image": True, **kw})
    return MACEEditor(hp, progress=False)


def test_cfr_solve_satisfies_its_normal_equations_and_lambda_to_infinity_keeps_w():
    g = torch.Generator().manual_seed(0)
    m, d = 6, 5
    e = torch.randn(20, m, generator=g, dtype=torch.float64)
    e_map = torch.randn(20, m, generator=g, dtype=torch.float64)
    c = torch.randn(30, m, generator=g, dtype=torch.float64)
    w = torch.randn(d, m, generator=g, dtype=torch.float64)
    cross, gram, prior = e_map.T @ e, e.T @ e, c.T @ c
    lamb, s = 0.7, 0.3
    w_new = w @ right_factor(lamb, cross, gram, prior, s)
    lhs = w_new @ (lamb * torch.eye(m, dtype=torch.float64) + gram + s * prior)
    rhs = lamb * w + (w @ e_map.T) @ e + s * (w @ c.T) @ c  # λW + Σ v eᵀ + s Σ (W c) cᵀ
    assert torch.allclose(lhs, rhs, atol=1e-10)
    assert torch.allclose(w @ right_factor(1e12, cross, gram, prior, s), w, atol=1e-9)
    with pytest.raises(HparamsError, match="singular"):
        right_factor(0.0, cross[:2, :2] * 0, gram[:2, :2] * 0, None, 0.0)


def test_alignment_keeps_every_token_but_the_two_concepts(tiny_pipe):
    tok = tiny_pipe.tokenizer
    a, b = tok("a photo of cat").input_ids, tok("a photo of red apple").input_ids
    pa, pb = matching_indices(a, b)
    assert len(pa) == len(pb)
    cat = len(tok("a photo of", add_special_tokens=False).input_ids) + 1  # BOS first
    assert cat not in pa and all(q not in pb for q in range(cat, cat + 2))  # "red apple": two tokens
    assert [a[i] for i in pa[:cat]] == [b[i] for i in pb[:cat]]  # the common prefix, BOS included
    assert a[pa[cat]] == b[pb[cat]] == tok.eos_token_id  # then EOS, then the padding
    assert pb[-1] == 76 and pa[-1] == 76 - (len(b) - len(a))  # the longer prompt reaches the end


def test_preservation_cache_is_weighted_by_the_square_of_the_train_scale(tiny_pipe):
    """The official ≤ max_memory path applies s_t twice: captions once at s_t = 1 equal the same captions four
    times at s_t = 0.5 (0.5² · 4 = 1); a linear scale would need them twice."""
    caps = ["a dog on the grass", "a red car in the street", "a bowl of soup"]
    kw = {"lora_steps": 0, "fuse_preserve_scale": 0.0, "lamb": 0.5}
    once = _editor(preserve=caps, train_preserve_scale=1.0, **kw).edit(tiny_pipe, REQS).tensors
    four = _editor(preserve=caps * 4, train_preserve_scale=0.5, **kw).edit(tiny_pipe, REQS).tensors
    twice = _editor(preserve=caps * 2, train_preserve_scale=0.5, **kw).edit(tiny_pipe, REQS).tensors
    for k in once:
        assert torch.allclose(once[k].double(), four[k].double(), atol=1e-5), k
    assert any(not torch.allclose(once[k], twice[k], atol=1e-4) for k in once)


def test_fusion_reproduces_each_lora_on_its_own_keys():
    g = torch.Generator().manual_seed(1)
    m, d = 6, 4
    name = "unet.x.to_v.weight"
    w = torch.randn(d, m, generator=g)
    editor = _editor(lamb=0.0, fuse_preserve_scale=0.0)
    q, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    u1, u2 = q[:, :3], q[:, 3:]

    def lora() -> LoRA:
        return LoRA({name: torch.nn.Parameter(torch.randn(1, m, generator=g))},
                    {name: torch.nn.Parameter(torch.randn(d, 1, generator=g))})

    one = lora()
    # one concept whose keys span the space: W* = W_base + ΔW
    full = q @ q.T * 3.0
    out = editor.fuse({name: w}, {name: w}, [one], [full], None)[name]
    assert torch.allclose(out.double(), w.double() + one.delta(name), atol=1e-5)
    # two concepts on complementary subspaces: each LoRA's map holds on its own keys
    two = lora()
    out = editor.fuse({name: w}, {name: w}, [one, two], [u1 @ u1.T, u2 @ u2.T], None)[name].double()
    assert torch.allclose(out @ u1, (w.double() + one.delta(name)) @ u1, atol=1e-5)
    assert torch.allclose(out @ u2, (w.double() + two.delta(name)) @ u2, atol=1e-5)


def test_attention_maps_from_the_hooks_equal_the_processors(tiny_pipe):
    unet = tiny_pipe.unet
    names = projection_names(unet)
    weights = {n: dict(unet.named_parameters())[n[len("unet."):]].detach() for n in names}
    lora = new_lora(weights, 1, torch.Generator().manual_seed(0))
    store: list[torch.Tensor] = []
    attn_mod = next(m for n, m in unet.named_modules() if n.endswith("attn2"))
    seen: dict[str, torch.Tensor] = {}
    h1 = attn_mod.to_q.register_forward_hook(lambda _m, _a, out: seen.__setitem__("q", out))
    h2 = attn_mod.to_k.register_forward_hook(lambda _m, _a, out: seen.__setitem__("k", out))
    x = torch.randn(1, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size,
                    generator=torch.Generator().manual_seed(2))
    cond = torch.randn(1, 77, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(3))
    try:
        with torch.no_grad(), lora_and_attention(unet, lora, store):
            unet(x, torch.tensor([10]), encoder_hidden_states=cond)
    finally:
        h1.remove()
        h2.remove()
    ref = attn_mod.get_attention_scores(attn_mod.head_to_batch_dim(seen["q"]), attn_mod.head_to_batch_dim(seen["k"]))
    assert len(store) == len(names) // 2
    assert torch.allclose(store[0], ref, atol=1e-6)  # the first attn2 call is the first module's
    assert torch.allclose(store[0].sum(-1), torch.ones_like(store[0][..., 0]), atol=1e-5)


def test_lora_stage_moves_only_the_loras_and_lowers_the_attention_on_the_concept(tiny_pipe):
    editor = _editor(lora_steps=6, lora_lr=5e-2)
    unet = tiny_pipe.unet
    weights = {n: dict(unet.named_parameters())[n[len("unet."):]].detach() for n in projection_names(unet)}
    params = [*unet.parameters(), *tiny_pipe.text_encoder.parameters(), *tiny_pipe.vae.parameters()]
    grads = [None if p.grad is None else p.grad.clone() for p in params]  # the session's pipe: compare, not assume
    latents = editor.image_latents(tiny_pipe, REQS[0], torch.Generator().manual_seed(0))
    lora, hist = editor.train_lora(tiny_pipe, REQS[0], latents, weights, torch.Generator().manual_seed(0))
    assert len(hist) == 6 and all(torch.isfinite(torch.tensor(hist)))
    for p, g in zip(params, grads):  # no gradient reached a pipeline parameter
        assert (p.grad is None) if g is None else torch.equal(p.grad, g)
    assert any(float(p.detach().abs().max()) > 0 for p in lora.up.values())  # up starts at 0: the gradient reached it
    assert min(hist[1:]) < hist[0]


def test_importance_sampling_weights_peak_between_200_and_400():
    w = importance_weights()
    assert abs(float(w.sum()) - 1) < 1e-12 and 200 <= int(w.argmax()) <= 400
    assert float(w[:100].sum()) < 0.01 and float(w[600:].sum()) < 0.01


def test_edit_is_deterministic_and_bad_hparams_are_refused(tiny_pipe):
    a = _editor().edit(tiny_pipe, REQS).tensors
    b = _editor().edit(tiny_pipe, REQS).tensors
    assert a.keys() == set(projection_names(tiny_pipe.unet)) and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(HparamsError, match="slot"):
        MACEEditor.load_hparams("tiny", overrides={"train_prompt": "no slot"})
    with pytest.raises(HparamsError):
        MACEEditor.load_hparams("tiny", overrides={"aug_length": 40})
    assert "no-mask" in get_editor("mace").description


def test_cached_images_and_prior_give_the_same_edit(tiny_pipe, tmp_path):
    """The second edit reads the concept latents and the preservation Gram from the cache: same tensors, bitwise."""
    hp = MACEEditor.load_hparams("tiny", overrides={"preserve": ["a dog on the grass"], "train_preserve_scale": 0.1})
    first = MACEEditor(hp, cache_dir=tmp_path, progress=False)
    a = first.edit(tiny_pipe, REQS).tensors
    assert first.image_cache.puts == len(REQS) and first.prior_cache.puts == 1
    second = MACEEditor(hp, cache_dir=tmp_path, progress=False)
    b = second.edit(tiny_pipe, REQS).tensors
    assert second.image_cache.hits == len(REQS) and second.prior_cache.hits == 1 and second.image_cache.puts == 0
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cfr_on_tiny_equals_an_independent_least_squares_solution(tiny_pipe):
    """With no LoRA step and no fusion cache, the edit is stage 1 alone: each W_new is the float64 least-squares
    minimiser of Σ ||W e − W₀ e'||² + λ ||W − W₀||² + s_t² Σ_captions ||W c − W₀ c||² (solved here by lstsq on the
    stacked rows, not by the editor's normal equations)."""
    from editors.mace import OBJECT_TEMPLATES
    from editors.uce import encode_prompts
    from editors.weights import get_tensor

    caps = ["a dog on the grass", "a bowl of soup"]
    lamb, s_t, n_tpl = 0.3, 0.5, 3
    ed = _editor(lora_steps=0, fuse_preserve_scale=0.0, lamb=lamb, preserve=caps, train_preserve_scale=s_t,
                 aug_length=n_tpl)
    new = ed.edit(tiny_pipe, REQS).tensors
    tok = tiny_pipe.tokenizer
    keys, targets_from = [], []
    for r in REQS:
        for t in OBJECT_TEMPLATES[:n_tpl]:
            c, p = t.format(r.source), t.format(r.destination)
            enc = encode_prompts(tiny_pipe, [c, p])
            po, pn = matching_indices(tok(c).input_ids, tok(p).input_ids)
            keys.append(enc.emb[enc.index[c], po].double())
            targets_from.append(enc.emb[enc.index[p], pn].double())
    e, e_map = torch.cat(keys), torch.cat(targets_from)
    cap = encode_prompts(tiny_pipe, caps).emb.reshape(-1, e.shape[1]).double()
    m = e.shape[1]
    a = torch.cat([e, lamb ** 0.5 * torch.eye(m, dtype=torch.float64), s_t * cap])
    for name in list(new)[:3] + list(new)[-2:]:
        w0 = get_tensor(tiny_pipe, name).double()
        b = torch.cat([e_map @ w0.T, lamb ** 0.5 * w0.T, s_t * cap @ w0.T])
        ref = torch.linalg.lstsq(a, b).solution.T
        assert torch.allclose(new[name].double(), ref, atol=1e-4, rtol=1e-4), name
