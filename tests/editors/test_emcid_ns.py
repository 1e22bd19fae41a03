"""EMCID-NS: the null-space solve against independent float64 solutions of its stated objective, the projector's
invariants (spec more_baselines_and_attacks.md §3.4), and the editor on the tiny model."""
from __future__ import annotations

import pytest
import torch

from editors.emcid.nullspace import eig_of, null_basis, null_space_factors
from editors.emcid.stage2 import compute_deltas
from editors.requests import EditRequest

G = torch.Generator().manual_seed(0)
D, DK, N = 12, 40, 5


def _problem(n=N, preserved=25):
    """R, K, and a rank-deficient C = K0 K0ᵀ / m from `preserved` keys (its null space is real)."""
    r = torch.randn(D, n, generator=G, dtype=torch.float64)
    k = torch.randn(DK, n, generator=G, dtype=torch.float64)
    k0 = torch.randn(DK, preserved, generator=G, dtype=torch.float64)
    return r, k, k0, k0 @ k0.T / preserved


def _reference(r, k, p, beta, kp=None):
    """The stated objective's closed form, as written: R Kᵀ P ((K Kᵀ + K_p K_pᵀ) P + βI)⁻¹ (d_k×d_k solve)."""
    q = k @ k.T + (kp @ kp.T if kp is not None else 0)
    m = q @ p + beta * torch.eye(DK, dtype=torch.float64)
    return torch.linalg.solve(m.T, (r @ k.T @ p).T).T


@pytest.mark.parametrize("beta", [10.0, 0.3])
def test_solve_equals_the_dense_formula_and_is_blind_to_preserved_directions(beta):
    r, k, k0, c = _problem()
    evals, evecs = eig_of(c)
    nb = null_basis(evals, evecs, threshold=1e-8)
    assert nb.rank == DK - 25  # C has rank 25: the rest is its null space
    p = nb.basis @ nb.basis.T
    torch.testing.assert_close(p @ p, p, rtol=0, atol=1e-12)  # a projector
    torch.testing.assert_close(p @ k0, torch.zeros_like(k0), rtol=0, atol=1e-10)  # it annihilates the preserved keys
    delta = null_space_factors(r, k, nb.basis, beta).dense()
    torch.testing.assert_close(delta, _reference(r, k, p, beta), rtol=1e-9, atol=1e-11)
    eye = torch.eye(DK, dtype=torch.float64)
    assert float((delta @ (eye - p)).abs().max()) < 1e-10  # ΔW (I − P) = 0
    assert float((delta @ k0).norm()) < 1e-9 * float(delta.norm())  # the preserved keys do not move


def test_p_identity_is_ridge_least_squares_and_p_zero_changes_nothing():
    r, k, _, _ = _problem()
    eye = torch.eye(DK, dtype=torch.float64)
    full = null_space_factors(r, k, eye, 2.0).dense()  # P = I, no earlier keys: R Kᵀ (K Kᵀ + βI)⁻¹
    torch.testing.assert_close(full, r @ k.T @ torch.linalg.inv(k @ k.T + 2.0 * eye), rtol=1e-9, atol=1e-11)
    none = null_space_factors(r, k, eye[:, :0], 2.0)
    assert torch.equal(none.dense(), torch.zeros(D, DK, dtype=torch.float64))


def test_small_beta_writes_every_key_when_p_keeps_their_rank():
    r, k, _, c = _problem()
    nb = null_basis(*eig_of(c), threshold=1e-8)
    assert int(torch.linalg.matrix_rank(nb.basis.T @ k)) == N
    delta = null_space_factors(r, k, nb.basis, 1e-10).dense()
    torch.testing.assert_close(delta @ k, r, rtol=1e-6, atol=1e-6)  # (W + ΔW) kᵢ = W kᵢ + rᵢ


def test_sequential_rounds_protect_the_earlier_keys():
    r1, k1, _, c = _problem()
    r2, k2, _, _ = _problem()
    nb = null_basis(*eig_of(c), threshold=1e-8)
    p = nb.basis @ nb.basis.T
    for beta in (1.0, 1e-3):
        d2 = null_space_factors(r2, k2, nb.basis, beta, prev_keys=k1).dense()
        torch.testing.assert_close(d2, _reference(r2, k2, p, beta, kp=k1), rtol=1e-8, atol=1e-10)
    small = null_space_factors(r2, k2, nb.basis, 1e-7, prev_keys=k1).dense()
    assert float((small @ p @ k1).norm()) < 1e-4 * float((small @ p @ k2).norm())  # Δ₂ P K₁ → 0 as β → 0
    with pytest.raises(ValueError, match="beta > 0"):
        null_space_factors(r2, k2, nb.basis, 0.0, prev_keys=k1)


def test_rank_choices():
    evals = torch.tensor([1e-5, 1e-3, 1e-1, 1.0, 10.0], dtype=torch.float64)
    evecs = torch.eye(5, dtype=torch.float64)
    assert null_basis(evals, evecs, threshold=2e-2).rank == 2
    assert null_basis(evals, evecs, dim=4).rank == 4 and null_basis(evals, evecs, dim=9).rank == 5
    assert null_basis(evals, evecs, frac=0.6).rank == 3


REQS = [EditRequest("cat", "dog", seed=1), EditRequest("red apple", "orange", seed=2),
        EditRequest("sports car", "bicycle", seed=3)]


def test_walk_with_p_identity_is_emcid_with_c_identity(tiny_pipe):
    """The whole multi-layer walk: EMCID-NS with P = I and β equals EMCID with C = I and λ' = β (α = 0.5); the
    first layer takes 1/L of the residual as in EMCID."""
    from editors.hooks import subject_last_positions

    te, tok = tiny_pipe.text_encoder, tiny_pipe.tokenizer
    prompts, owners, positions = [], [], []
    for c, r in enumerate(REQS):
        prompts += r.source_prompts()
        owners += [c] * len(r.templates)
        positions += subject_last_positions(tok, r.templates, r.source)
    layers = [1, 4, 6]
    d_k = text_layers_width(te)
    eye = {l: torch.eye(d_k) for l in layers}
    z = torch.randn(len(REQS), te.config.hidden_size, generator=torch.Generator().manual_seed(3))
    beta = 0.7
    ref = compute_deltas(te, tok, prompts, owners, positions, z, layers, eye, lam=beta, alpha=0.5)
    ns = compute_deltas(te, tok, prompts, owners, positions, z, layers, eye, lam=0.0, alpha=0.5,
                        solver=lambda l, resid, keys: null_space_factors(resid, keys, torch.eye(d_k,
                                                                                 dtype=torch.float64), beta))
    for l in layers:  # the same maths; the walk's float32 sums differ in order only
        assert float((ns.deltas[l] - ref.deltas[l]).norm()) <= 1e-5 * float(ref.deltas[l].norm())


def text_layers_width(te) -> int:
    from editors.hooks import text_layers

    return text_layers(te)[0].mlp.fc2.in_features


def test_editor_on_tiny_records_diagnostics_and_rank_zero_leaves_the_model(tiny_model, tmp_path):
    from editors.hooks import fc2_name, text_layers
    from iceb.editfile import edit_model

    args = {"layers": [2, 4], "v_num_grad_steps": 2, "train_steps": 1, "train_size": 8, "mom2_n_samples": 100}
    res, hp = edit_model("emcid-ns", tiny_model, REQS, overrides={**args, "nullspace_frac": 0.5}, progress=False,
                         cache_dir=tmp_path)
    te = tiny_model.pipe.text_encoder
    info = res.info["nullspace"]
    assert set(info) == {"2", "4"} and set(res.tensors) == {fc2_name(te, 2), fc2_name(te, 4)}
    d_k = text_layers(te)[2].mlp.fc2.in_features
    for d in info.values():
        assert d["projector_rank"] == round(0.5 * d_k) and 0 <= d["edit_capacity"] <= 1 + 1e-9
        assert d["edit_residual"] >= 0 and d["preserved_drift"] >= 0
    none, _ = edit_model("emcid-ns", tiny_model, REQS, overrides={**args, "nullspace_dim": 0, "nullspace_frac": None}, progress=False,
                         cache_dir=tmp_path)  # no direction may move: the weights stay as they were
    for name, t in none.tensors.items():
        assert torch.equal(t, dict(te.named_parameters())[name.split(".", 1)[1]].detach())
    assert none.info["nullspace"]["2"]["projector_rank"] == 0
