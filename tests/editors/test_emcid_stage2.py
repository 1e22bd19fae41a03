"""EMCID stage II: the closed form, the single-pass layer walk, and the claims it rests on (tiny model, CPU)."""
from __future__ import annotations

import pytest
import torch

from editors.emcid.stage2 import closed_form_delta, compute_deltas, cov_factor
from editors.hooks import capture, fc2_name, layer_call, subject_last_positions, text_layers, tokenize
from editors.requests import EditRequest

REQS = [EditRequest("cat", "dog", seed=1), EditRequest("red apple", "orange", seed=2),
        EditRequest("sports car", "bicycle", seed=3), EditRequest("wooden chair", "table", seed=4),
        EditRequest("tree", "", kind="erase", seed=5)]



def _flatten(tok, reqs):
    prompts, owners, positions = [], [], []
    for c, r in enumerate(reqs):
        prompts += r.source_prompts()
        owners += [c] * len(r.templates)
        positions += subject_last_positions(tok, r.templates, r.source)
    return prompts, owners, positions


@pytest.fixture(scope="module")
def covs(tiny_model):
    """Real second moments of the tiny encoder's fc2 inputs over the shipped mini corpus."""
    from editors.corpora import load_corpus
    from editors.stats import collect_second_moments

    te = tiny_model.pipe.text_encoder
    mods = {str(l): text_layers(te)[l].mlp.fc2 for l in range(11)}
    moms, _ = collect_second_moments(te, tiny_model.pipe.tokenizer, mods, load_corpus("mini")[:200], progress=False)
    return {int(k): v for k, v in moms.items()}


def test_truncated_replay_equals_padded_forward_at_subject_tokens(tiny_pipe):
    """CLIP attention is causal: cutting a prompt to its real length and replaying the blocks one by one with
    ``layer_call`` gives the padded-to-77 pipeline forward's fc2 inputs/outputs at the subject token."""
    te, tok = tiny_pipe.text_encoder, tiny_pipe.tokenizer
    prompts, _, positions = _flatten(tok, REQS)
    blocks = text_layers(te)
    mods = {l: blocks[l].mlp.fc2 for l in range(12)}
    ids77, _ = tokenize(tok, prompts)
    with torch.no_grad(), capture(mods, inputs=True, outputs=True) as full:
        te(ids77)
    for j, p in enumerate(prompts):
        ids = torch.tensor([tok(p).input_ids])
        assert ids.shape[1] < 77
        call = layer_call(te, ids, 0)
        h = call.hidden
        for l in range(12):
            with torch.no_grad(), capture({l: mods[l]}, inputs=True, outputs=True) as rec:
                h = call.run(blocks[l], h)
            pos = positions[j]
            torch.testing.assert_close(rec.inputs[l][0, pos], full.inputs[l][j, pos], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(rec.outputs[l][0, pos], full.outputs[l][j, pos], rtol=1e-5, atol=1e-6)


def test_closed_form_matches_lstsq_and_official_scaling():
    """ΔW minimises α||ΔW K − R||² + (1−α)λ tr(ΔW C ΔWᵀ): compare with lstsq on the stacked weighted system,
    and with the official code's scaled form (C·(1−α)/0.5, K and R by √(α/0.5))."""
    g = torch.Generator().manual_seed(0)
    d, dk, n, lam, alpha = 6, 20, 7, 3.0, 0.6
    keys = torch.randn(dk, n, generator=g, dtype=torch.float64)
    resid = torch.randn(d, n, generator=g, dtype=torch.float64)
    a = torch.randn(dk, 2 * dk, generator=g, dtype=torch.float64)
    cov = a @ a.T / (2 * dk) + 0.01 * torch.eye(dk, dtype=torch.float64)
    delta = closed_form_delta(resid, keys, cov, lam, alpha)
    chol = torch.linalg.cholesky(cov)  # tr(Δ C Δᵀ) = ||Δ L||²
    lam_eff = lam * (1 - alpha) / alpha
    lhs = torch.cat([keys.T, lam_eff ** 0.5 * chol.T])  # (n + dk, dk)
    rhs = torch.cat([resid.T, torch.zeros(dk, d, dtype=torch.float64)])
    ref = torch.linalg.lstsq(lhs, rhs).solution.T
    torch.testing.assert_close(delta, ref, rtol=1e-9, atol=1e-10)
    s = (alpha / 0.5) ** 0.5
    adj = torch.linalg.solve(lam * (1 - alpha) / 0.5 * cov + (s * keys) @ (s * keys).T, s * keys)
    torch.testing.assert_close(delta, (s * resid) @ adj.T, rtol=1e-9, atol=1e-10)
    # the push-through path with C's Cholesky factor: exact with a float64 factor, ~1e-6 with the float32 one
    exact = closed_form_delta(resid, keys, cov, lam, alpha, chol_c=torch.linalg.cholesky(cov))
    torch.testing.assert_close(exact, ref, rtol=1e-8, atol=1e-9)
    stored = closed_form_delta(resid, keys, cov, lam, alpha, chol_c=cov_factor(cov))
    torch.testing.assert_close(stored, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("residual,factored", [("fc2_output", False), ("hidden", False), ("fc2_output", True)])
def test_small_lambda_writes_every_key_and_reaches_the_target(tiny_pipe, covs, residual, factored):
    """λ → 0: at each layer ΔW k = r for every concept's key; after all layers the edited model's averaged
    fc2 output (official residual) or block-L output (MEMIT residual) at the subject token is z*."""
    te, tok = tiny_pipe.text_encoder, tiny_pipe.tokenizer
    prompts, owners, positions = _flatten(tok, REQS)
    layers = [2, 5, 7]
    z = torch.randn(len(REQS), te.config.hidden_size, generator=torch.Generator().manual_seed(1))
    factors = {l: cov_factor(covs[l]) for l in layers} if factored else None
    out = compute_deltas(te, tok, prompts, owners, positions, z, layers, covs, lam=1e-7, alpha=0.5,
                         residual=residual, diagnostics=True, factors=factors)
    assert sorted(out.deltas) == layers
    for i, diag in enumerate(out.diagnostics):
        torch.testing.assert_close(diag.delta @ diag.keys, diag.resid, rtol=1e-5, atol=1e-6)
        if i == 0:  # the first layer takes 1/|layers| of the residual
            torch.testing.assert_close(diag.resid, (z.double() - diag.cur).T / len(layers))
    blocks = text_layers(te)
    from editors.weights import applied

    new = {fc2_name(te, l): blocks[l].mlp.fc2.weight + out.deltas[l].float() for l in layers}
    target_mod = blocks[7].mlp.fc2 if residual == "fc2_output" else blocks[7]
    with applied(tiny_pipe, new), torch.no_grad(), capture({"m": target_mod}, inputs=False, outputs=True) as rec:
        te(tokenize(tok, prompts)[0])
    got = torch.zeros_like(z)
    for j, (c, p) in enumerate(zip(owners, positions)):
        got[c] += rec.outputs["m"][j, p] / 3
    torch.testing.assert_close(got, z, rtol=1e-3, atol=1e-3)


def test_heavily_preserved_direction_moves_less_than_its_bound(tiny_pipe, covs):
    """For a unit eigenvector u of C with eigenvalue c, optimality gives λ'·c·||ΔW u||² ≤ ||R||², so
    ||ΔW u|| ≤ ||R||_F / sqrt(λ' c); and the top direction of C moves far less than an edited key."""
    te, tok = tiny_pipe.text_encoder, tiny_pipe.tokenizer
    prompts, owners, positions = _flatten(tok, REQS)
    z = torch.randn(len(REQS), te.config.hidden_size, generator=torch.Generator().manual_seed(2)) * 3
    lam, alpha = 2.0, 0.6
    out = compute_deltas(te, tok, prompts, owners, positions, z, [4], covs, lam, alpha, diagnostics=True)
    diag = out.diagnostics[0]
    evals, evecs = torch.linalg.eigh(covs[4].double())
    u, c = evecs[:, -1], float(evals[-1])
    lam_eff = lam * (1 - alpha) / alpha
    moved = float((diag.delta @ u).norm())
    bound = float(diag.resid.norm()) / (lam_eff * c) ** 0.5
    assert moved <= bound * (1 + 1e-9)
    edited = float((diag.delta @ (diag.keys / diag.keys.norm(dim=0))).norm(dim=0).min())
    assert moved < edited


def test_walk_equals_naive_per_layer_full_forwards(tiny_pipe, covs):
    """The single pass equals the official structure: per layer, full padded forwards with the weights
    updated so far, keys and fc2 outputs read there, then the update applied."""
    from editors.weights import applied

    te, tok = tiny_pipe.text_encoder, tiny_pipe.tokenizer
    prompts, owners, positions = _flatten(tok, REQS)
    layers = [0, 3, 4, 8]
    lam, alpha = 5.0, 0.6
    z = torch.randn(len(REQS), te.config.hidden_size, generator=torch.Generator().manual_seed(3))
    fast = compute_deltas(te, tok, prompts, owners, positions, z, layers, covs, lam, alpha,
                          factors={l: torch.linalg.cholesky(covs[l].double()) for l in layers}).deltas
    blocks = text_layers(te)
    ids = tokenize(tok, prompts)[0]
    own = torch.tensor(owners)
    pos = torch.tensor(positions)
    new: dict[str, torch.Tensor] = {}
    for i, l in enumerate(layers):
        fc2 = blocks[l].mlp.fc2
        with applied(tiny_pipe, new), torch.no_grad(), capture({"f": fc2}, inputs=True, outputs=True) as rec:
            te(ids)
        ar = torch.arange(len(prompts))
        k = torch.zeros(len(REQS), fc2.in_features, dtype=torch.float64).index_add_(
            0, own, rec.inputs["f"][ar, pos].double()) / 3
        cur = torch.zeros(len(REQS), fc2.out_features, dtype=torch.float64).index_add_(
            0, own, rec.outputs["f"][ar, pos].double()) / 3
        delta = closed_form_delta(((z.double() - cur) / (len(layers) - i)).T, k.T, covs[l], lam, alpha)
        # float32 forwards in a different order (grouped, truncated): agree to 1e-4 of the update's scale
        assert float((fast[l] - delta).abs().max()) <= 1e-4 * float(delta.abs().max())
        new[fc2_name(te, l)] = fc2.weight + delta.float()


def test_small_edits_run_on_one_thread_and_leave_the_count_as_found(tiny_pipe, covs, monkeypatch):
    """The loaded-machine thread policy: a small edit's walk and solves run on one torch thread (two threads'
    barriers collapse when another process holds a core), a large solve keeps every thread, and the caller's
    thread count is restored whatever happens."""
    from editors.emcid import stage2

    te, tok = tiny_pipe.text_encoder, tiny_pipe.tokenizer
    prompts, owners, positions = _flatten(tok, REQS)
    z = torch.randn(len(REQS), te.config.hidden_size, generator=torch.Generator().manual_seed(0))
    seen = []
    real = torch.linalg.solve_triangular

    def spy(*a, **k):
        seen.append(torch.get_num_threads())
        return real(*a, **k)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.setattr(torch.linalg, "solve_triangular", spy)
        monkeypatch.setattr(stage2, "cpu_busy", lambda *a, **k: True)  # another process holds a core
        ref = compute_deltas(te, tok, prompts, owners, positions, z, [0, 3], covs, 100.0, 0.6,
                             factors={l: cov_factor(covs[l]) for l in (0, 3)})
        assert seen and set(seen) == {1} and torch.get_num_threads() == 2
        monkeypatch.setattr(stage2, "SMALL_WALK_PROMPTS", 0)
        monkeypatch.setattr(stage2, "SMALL_SOLVE_WORK", 0)
        seen.clear()
        big = compute_deltas(te, tok, prompts, owners, positions, z, [0, 3], covs, 100.0, 0.6,
                             factors={l: cov_factor(covs[l]) for l in (0, 3)})
        assert set(seen) == {2} and torch.get_num_threads() == 2
        for l in (0, 3):  # threads change the order of the walk's float32 sums, not the answer
            assert float((big.deltas[l] - ref.deltas[l]).norm()) <= 1e-5 * float(ref.deltas[l].norm())
        monkeypatch.undo()
        monkeypatch.setattr(torch.linalg, "solve_triangular", spy)
        monkeypatch.setattr(stage2, "cpu_busy", lambda *a, **k: False)  # idle: the walk keeps both threads
        threads_in_walk = []
        real_run = stage2.layer_call

        def call_spy(*a, **k):
            threads_in_walk.append(torch.get_num_threads())
            return real_run(*a, **k)

        monkeypatch.setattr(stage2, "layer_call", call_spy)
        seen.clear()
        compute_deltas(te, tok, prompts, owners, positions, z, [0, 3], covs, 100.0, 0.6,
                       factors={l: cov_factor(covs[l]) for l in (0, 3)})
        assert set(threads_in_walk) == {2} and set(seen) == {1}  # small solves: one thread regardless
        assert isinstance(stage2.cpu_busy(samples=2, interval=0.0), bool)
        with pytest.raises(RuntimeError), stage2.one_cpu_thread(True):
            raise RuntimeError
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("n", [3, 40])  # factored product (N(d + d_k) < d·d_k) and dense
def test_low_rank_update_is_its_dense_matrix(n):
    """The factors stand for ΔW exactly: applied to activations and added to W as the dense float64 ΔW would."""
    from editors.emcid.stage2 import LowRankDelta

    g = torch.Generator().manual_seed(n)
    d, d_k = 32, 48
    u = LowRankDelta(torch.randn(d, n, generator=g, dtype=torch.float64),
                     torch.randn(d_k, n, generator=g, dtype=torch.float64) * 1e-2)
    dense = u.dense()
    assert dense.shape == (d, d_k) and int(torch.linalg.matrix_rank(dense)) == min(n, d)
    assert u._factored() == (n * (d + d_k) < d * d_k)
    x = torch.randn(5, 7, d_k, generator=g)
    torch.testing.assert_close(u.apply(x), x @ dense.float().T, rtol=1e-5, atol=1e-5)
    w = torch.randn(d, d_k, generator=g)
    new = u.added_to(w)
    exact = w.double() + dense
    assert new.dtype == w.dtype and new.shape == w.shape
    # float32 multiply-add error bound (γ_{n+1}): eps·(|W + ΔW| + (n + 1)·|L||R|ᵀ) per entry, never a lost ΔW
    bound = torch.finfo(torch.float32).eps * (exact.abs() + (n + 1) * (u.left.abs() @ u.right.abs().T))
    assert bool(((new.double() - exact).abs() <= bound).all())
    assert not torch.equal(new, w)
