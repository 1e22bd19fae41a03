"""``emcid-ns``: EMCID with stage II solved in the null space of the preserved keys (:mod:`editors.emcid.nullspace`).

Stage I, the statistics (the same cached C_l), the keys, the residual and its 1/(n − i) spread over the layers
are EMCID's, through the same one-pass layer walk; only each layer's solve changes. ``mom2_update_weight`` and
``edit_weight`` (EMCID's λ and α) are not used by this solve: β replaces λ'C (spec §3.3: "expose β directly and
keep α only for the baseline EMCID row"). Per layer the result's info records the projector's rank, the edit
keys' mass inside its range, the edit residual left and the drift on the preserved keys.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch

from editors import register_editor
from editors.emcid import EMCIDEditor, EMCIDHparams
from editors.emcid.nullspace import NullBasis, eig_of, layer_diagnostics, null_basis, null_space_factors
from editors.hooks import text_layers
from editors.hparams import Dim, HparamsError, at_least, float_range, non_negative
from iceb.utils.cache import ContentCache
from iceb.utils.hashing import stable_hash


@dataclasses.dataclass(frozen=True)
class EMCIDNSHparams(EMCIDHparams):
    """EMCID's hyperparameters plus the null-space solve's: which directions of C the edit may use, and β."""

    #: what ``iceb tune`` searches (its trials run on the task's dev split); every other key keeps its preset value
    search_space: ClassVar[dict[str, Dim]] = {"clamp_norm_factor": float_range(0.5, 4.0),
                                              "mom2_update_weight": float_range(10.0, 1.0e5, log=True),
                                              "nullspace_frac": float_range(0.3, 0.98),
                                              "beta": float_range(0.01, 10.0, log=True)}


    nullspace_threshold: float = non_negative(2.0e-2)  # AlphaEdit: eigenvalues of C below this (absolute)
    nullspace_dim: int | None = at_least(None, 0)  # or: the dim smallest directions (ACE-zero style)
    nullspace_frac: float | None = non_negative(None)  # or: this fraction of all directions
    beta: float = non_negative(10.0)  # AlphaEdit's L2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.nullspace_dim is not None and self.nullspace_frac is not None:
            raise HparamsError("emcid-ns: give at most one of nullspace_dim and nullspace_frac")
        if self.nullspace_frac is not None and not 0.0 <= self.nullspace_frac <= 1.0:
            raise HparamsError(f"emcid-ns: key 'nullspace_frac' must be in [0, 1], got {self.nullspace_frac}")


@register_editor("emcid-ns", description="EMCID with stage II in the null space of the preserved keys "
                                         "(AlphaEdit's projection; threshold or rank, and beta)")
class EMCIDNSEditor(EMCIDEditor):
    """EMCID-NS; edits the same ``text_encoder ... layers.{l}.mlp.fc2.weight`` as EMCID."""

    hparams_class = EMCIDNSHparams
    # no debiasing mode: EMCID's weight loop with this solve is untested (editors.emcid.debias)
    supports = frozenset({"update", "erase", "rectify"})
    cache_phases = {**EMCIDEditor.cache_phases, "emcid-eigh": "precompute"}
    stage2_diagnostics = True

    def __init__(self, hparams: EMCIDNSHparams | None = None, **kw: Any) -> None:
        super().__init__(hparams, **kw)
        eig_dir = self.cache_dir / "emcid" / "eigh" if self.cache_dir is not None else None
        self.eig_cache = ContentCache(eig_dir, "emcid-eigh")
        self._bases: dict[int, NullBasis] = {}
        self._eigs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # in memory too: read once per model

    def layer_bases(self, covs: dict[int, torch.Tensor], stat_keys: dict[int, str]) -> dict[int, NullBasis]:
        """Each layer's null-space basis, from C's eigendecomposition (cached per model: any τ or rank reuses it)."""
        hp = self.hparams
        out = {}
        for l, cov in covs.items():
            def compute(cov=cov):
                evals, evecs = eig_of(cov)
                return {"evals": evals, "evecs": evecs.float()}  # float32 on disk; a hit and a miss read the same

            evals, evecs = self.per_model(self.eig_cache, self._eigs, stable_hash("eigh", stat_keys[l]), compute,
                                          lambda d: (d["evals"].double(), d["evecs"].double()),
                                          {"stats_key": stat_keys[l]})
            out[l] = null_basis(evals, evecs, threshold=hp.nullspace_threshold, dim=hp.nullspace_dim,
                                frac=hp.nullspace_frac)
        return out

    def stage2_solver(self, covs, stat_keys, n):
        bases = self.layer_bases(covs, stat_keys)
        self._bases = bases
        beta = float(self.hparams.beta)
        return None, lambda l, resid, keys: null_space_factors(resid, keys, bases[l].basis.to(keys.device), beta)

    def stage2_info(self, pipe, res, covs) -> dict[str, Any]:
        blocks = text_layers(pipe.text_encoder)
        per_layer = {}
        for d in res.diagnostics:
            per_layer[str(d.layer)] = layer_diagnostics(res.updates[d.layer], d.resid, d.keys, self._bases[d.layer],
                                                        covs[d.layer], blocks[d.layer].mlp.fc2.weight)
        return {"nullspace": per_layer}
