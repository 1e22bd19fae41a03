"""EMCID-NS stage II: EMCID's keys and residuals, solved in the null space of the preserved keys (AlphaEdit).

EMCID's solve ``ΔW = R Kᵀ (λ'C + K Kᵀ)⁻¹`` keeps the edit small on the preserved keys only softly (λ'C). AlphaEdit
(Fang et al., ICLR 2025) instead projects the update onto the approximate null space of the preserved keys'
second moment ``C``, so it cannot move them at all (shared/spec/more_baselines_and_attacks.md §3.3):

    ΔW = R Kᵀ P ((K Kᵀ + K_p K_pᵀ) P + β I)⁻¹,   P = U Uᵀ,  U = eigenvectors of C with eigenvalue < τ

(or the ``dim`` smallest, or a fraction of them: an absolute τ transfers badly between encoders). ``K_p`` are
keys of earlier rounds (sequential editing); batch edits have none.

Why it is cheap. With ``K̃ = Uᵀ K`` (r×N) and no ``K_p``, the push-through identity gives
``ΔW = R (K̃ᵀK̃ + βI)⁻¹ (P K)ᵀ``: an N×N system and the rank-N factors ``(R A⁻¹, P K)`` — never a d_k×d_k inverse
(derivation: ``ΔW = ΔW P = Y Uᵀ`` and ``Y (UᵀQU + βI) = R K̃ᵀ``). With ``K_p``, Woodbury on
``G = [K̃, K̃_p]`` keeps it at (N + N_p)²: ``ΔW = R Z Uᵀ``, ``Z = (K̃ᵀ − K̃ᵀG (GᵀG + βI)⁻¹ Gᵀ) / β``.
Either way ``ΔW (I − P) = 0``: the update is blind to the preserved directions, the first thing the tests check.

The eigendecomposition of each ``C_l`` is computed once per model and cached (float64 eigenvalues, float32
eigenvectors: any τ or rank reuses it).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from editors.emcid.stage2 import LowRankDelta


@dataclass
class NullBasis:
    """An orthonormal basis ``U`` (d_k×r, float64) of the approximate null space of one layer's C."""

    basis: torch.Tensor
    eigenvalues: torch.Tensor  # all of C's, ascending (float64)

    @property
    def rank(self) -> int:
        return self.basis.shape[1]


def eig_of(cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (ascending, float64) and eigenvectors (columns, float64) of a symmetric C."""
    c = cov.double()
    evals, evecs = torch.linalg.eigh((c + c.T) / 2)
    return evals, evecs


def null_basis(evals: torch.Tensor, evecs: torch.Tensor, *, threshold: float | None = None,
               dim: int | None = None, frac: float | None = None) -> NullBasis:
    """The eigen-directions of C that the edit may use.

    Args:
        evals: C's eigenvalues, ascending.
        evecs: The matching eigenvectors (columns).
        threshold: Directions with eigenvalue below this (absolute; AlphaEdit's 2e-2).
        dim: Instead, the ``dim`` smallest directions (ACE-zero's fixed rank).
        frac: Instead, this fraction of all directions (rounded).

    Returns:
        The basis and the eigenvalues.
    """
    d_k = evals.shape[0]
    if dim is not None:
        r = max(0, min(int(dim), d_k))
    elif frac is not None:
        r = max(0, min(round(float(frac) * d_k), d_k))
    else:
        r = int((evals < float(threshold if threshold is not None else 2e-2)).sum())
    return NullBasis(evecs[:, :r].double().contiguous(), evals.double())


def _spd_solve(a: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    chol, info = torch.linalg.cholesky_ex(a)
    if int(info) == 0:
        return torch.cholesky_solve(rhs, chol)
    return torch.linalg.pinv(a, hermitian=True) @ rhs


def null_space_factors(resid: torch.Tensor, keys: torch.Tensor, basis: torch.Tensor, beta: float,
                       prev_keys: torch.Tensor | None = None) -> LowRankDelta:
    """``ΔW = R Kᵀ P ((K Kᵀ + K_p K_pᵀ) P + βI)⁻¹`` with ``P = U Uᵀ`` as rank-N factors (float64).

    Args:
        resid: R, d×N (the share of the residual written at this layer).
        keys: K, d_k×N.
        basis: U, d_k×r orthonormal (r = 0: no direction may move, ΔW = 0).
        beta: β ≥ 0 (β = 0 needs no ``prev_keys`` and falls back to a pseudo-inverse where K̃ is deficient).
        prev_keys: K_p, d_k×N_p, keys of earlier rounds to protect (sequential editing), or None.

    Returns:
        The update's factors: ``ΔW = left @ right.T``.

    Raises:
        ValueError: ``beta`` < 0, or ``prev_keys`` with β = 0.
    """
    if beta < 0:
        raise ValueError(f"emcid-ns: beta must be >= 0, got {beta}")
    resid, keys, u = resid.double(), keys.double(), basis.double()
    n = keys.shape[1]
    if u.shape[1] == 0 or n == 0:
        return LowRankDelta(torch.zeros_like(resid), torch.zeros(keys.shape[0], n, dtype=torch.float64,
                                                                 device=keys.device))
    kt = u.T @ keys  # K̃ = Uᵀ K, r×N
    if prev_keys is None or prev_keys.shape[1] == 0:
        a = kt.T @ kt
        a.diagonal().add_(beta)
        left = _spd_solve(a, resid.T).T  # R A⁻¹ (A symmetric)
        return LowRankDelta(left, u @ kt)  # right = P K
    if beta == 0:
        raise ValueError("emcid-ns: protecting earlier rounds' keys needs beta > 0")
    g = torch.cat([kt, u.T @ prev_keys.double()], dim=1)  # r×(N + N_p)
    inner = g.T @ g
    inner.diagonal().add_(beta)
    z = (kt.T - (kt.T @ g) @ _spd_solve(inner, g.T)) / beta  # N×r
    return LowRankDelta(resid, u @ z.T)


def layer_diagnostics(update: LowRankDelta, resid: torch.Tensor, keys: torch.Tensor, nb: NullBasis,
                      cov: torch.Tensor, weight: torch.Tensor) -> dict[str, float]:
    """What the projection cost at one layer: the projector's rank, the edit keys' mass inside its range (edit
    capacity), the edit residual left, and the drift on the preserved keys ``√(tr(ΔW C ΔWᵀ) / tr(W C Wᵀ))``.

    Args:
        update: The layer's ΔW.
        resid: R (d×N).
        keys: K (d_k×N).
        nb: The null-space basis used.
        cov: C (d_k×d_k).
        weight: The layer's W before the update.

    Returns:
        JSON-able numbers.
    """
    k, r = keys.double(), resid.double()
    kt = nb.basis.T @ k
    capacity = float((kt.norm(dim=0) / k.norm(dim=0).clamp_min(1e-30)).mean()) if k.numel() else 0.0
    got = update.left @ (update.right.T @ k)
    residual = float(((got - r).norm(dim=0) / r.norm(dim=0).clamp_min(1e-30)).mean()) if k.numel() else 0.0
    c = cov.double()
    w = weight.detach().double()
    delta_c = float(((update.left.T @ update.left) * (update.right.T @ c @ update.right)).sum())
    base_c = float(((w @ c) * w).sum())
    return {"projector_rank": nb.rank, "projector_frac": nb.rank / nb.eigenvalues.shape[0],
            "edit_capacity": capacity, "edit_residual": residual,
            "preserved_drift": (max(delta_c, 0.0) / base_c) ** 0.5 if base_c > 0 else 0.0}


__all__ = ["NullBasis", "eig_of", "layer_diagnostics", "null_basis", "null_space_factors"]
