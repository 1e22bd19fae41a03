"""SPEED (Li et al., ICLR 2026): a null-space closed form on the UNet's cross-attention value projections.

Written from the official ``train_erase_null.py`` (Ouxiang-Li/SPEED @ 6d3df0c) as described in
``shared/spec/more_baselines_and_attacks.md`` §1 (section numbers below are that file's); no code is copied.
Column convention (§0): a projection W is d×m, a text-encoder output token c is a column.

**Keys (§1.2).** Each target and its anchor are encoded bare (no template) and only the last subject token is
kept (index ``mask.sum() − 2``; 0 = BOS for the anchor ``""``). When the targets are exactly ``["nudity"]`` all
tokens 1..76 (EOS and padding, not BOS) are used instead. Per concept ``T_i = c_i c_iᵀ``, ``A_i = a_i c_iᵀ``
(summed over tokens in the all-token case) and ``T = mean_i T_i``, ``A = mean_i A_i`` — **means over concepts**,
so the edit's weight against ``αI`` shrinks as 1/N (§1.8; the official 100-celebrity runs use α = 0.05).

**Retain set (§1.3).** The retain texts, minus every text holding a target as a whole word (case-insensitive), each
encoded bare at its last subject token; with no retain texts, ``[""]`` and all its 76 non-BOS tokens. The rows are
shuffled once (``randperm``). Then per matrix W:

1. ``E_W = W (A − T)(I + T)⁻¹``, UCE's erase delta without preservation (λ = 1).
2. IPF (when ``aug_num > 0`` and not ``disable_filter``): keep the retain keys whose influence ``‖E_W c‖`` is
   strictly above the mean influence.
3. DPA (when ``aug_num > 0``): ``v`` = the last right-singular vector of ``torch.svd(W)``; each kept key gets
   ``aug_num`` copies ``c + z v``, z ~ N(0, 1); within each chunk of ``chunk_size`` (128) keys the copies whose
   ``‖E_W c̃‖`` is above that chunk's mean are kept.
4. ``C_r = (1/n) Σ c cᵀ`` over the kept keys and kept copies (a mean).

**Projector (§1.4).** ``P = U_s U_sᵀ`` over the eigenvectors of C_r with eigenvalue below ``threshold``
(absolute, 0.1), built by :func:`editors.emcid.nullspace.null_basis` (the project's one projector).

**IEC (§1.5).** ``K2 = [BOS, k-means centres]`` of the empty prompt's outputs: its row 0 and three k-means centres
of rows 1..76 (Euclidean, kmeans_pytorch 0.3's Lloyd iteration, tolerance 1e-4, random init of distinct rows).

**Closed form (§1.6).** With ``M = (T P + αI)⁻¹``, α = ``retain_scale``, λ₂ = ``lamb``::

    Δ = W (A − T) P (I − M K2 (K2ᵀ P M K2 + λ₂ I)⁻¹ K2ᵀ P) M,        W_new = W + Δ

With λ₂ = 0 it is the exact minimiser of ``mean_i ‖(W + Δ) c_i − W a_i‖² + α ‖Δ‖²`` subject to ``Δ(I − P) = 0``
and ``Δ K2 = 0`` [derived, §1.6]. By the push-through identity (§0) ``P (TP + αI)⁻¹ = U (UᵀTU + αI)⁻¹ Uᵀ``, so
ICEB solves in the r-dimensional basis U of range(P): ``N = (UᵀTU + αI)⁻¹`` (Cholesky), ``K̃ = Uᵀ K2`` and
``Δ = W(A − T) U (N − N K̃ (K̃ᵀ N K̃ + λ₂I)⁻¹ K̃ᵀ N) Uᵀ`` — an r×r system instead of an m×m inverse, and
``Δ (I − P) = 0`` holds by construction. T and A − T have rank n_t (the target keys), so with fewer keys than r
the same Δ comes from n_t×n_t systems (Woodbury, :func:`speed_delta_lowrank`) and E_W = W(A − T)(I + T)⁻¹ is kept as
its rank-n_t factors. Every matrix is solved independently (§1.1); many concepts are one solve.

Official quirks kept: only ``attn2.to_v`` by default (``params: V``; ``K`` and ``KV`` as ablations), layers in the
UNet's state-dict order (to_k before to_v within a module); the reduced-SVD ``v_min`` (§1.3.5: for d < m it is the
d-th right-singular direction, not a null direction of W; ``dpa_direction: smallest`` takes the true smallest);
IPF only when ``aug_num > 0``; the DPA filter's mean per chunk of 128 keys; the nudity all-token special case; the
absolute threshold (re-tune it for the toy encoder, §1.11); means over concepts.

Where ICEB differs:

- **Request kinds (§1.12).** ``erase``: the anchor is the request's destination if it names one, else
  ``erase_anchor`` (``""`` as the official instance and nudity runs; the official uses "art" for styles and
  "person" for celebrities). ``update`` and ``rectify``: the anchors are the per-request destinations (the
  official list form of ``--anchor_concepts``), so ``W a_i`` is the destination's value.
- **Retain texts** come from the hparams, as UCE's preserve list (``preserve``, ``preserve_corpus`` — a caption
  file or a registered corpus, one name a line as the official CSVs' columns — and optionally the requests'
  destinations), never from the task; filtered of the targets as the official does; if nothing is left, ``[""]``
  (the official would fail on an empty list).
- **Arithmetic.** float64 on the device of the weights (the official runs float32 on CUDA): the projector by
  ``eigh`` of the symmetric C_r (the official's ``torch.svd``: the same decomposition), v_min from the
  eigendecomposition of the smaller Gram matrix (W Wᵀ or Wᵀ W).
- **Randomness.** One ``torch.Generator`` seeded with ``seed`` draws the shuffle and then the DPA noise, layer by
  layer; k-means starts from ``numpy.random.RandomState(seed).choice`` (what the official's seeded global numpy RNG
  draws if nothing draws before it [unverified]). The official DPA draws a full m-dimensional Gaussian ``noise``
  and adds ``noise · v vᵀ``; ICEB draws the scalar ``z = noise · v`` ~ N(0, 1) directly (the same distribution,
  m times fewer draws; the official's CUDA stream cannot be reproduced on a CPU anyway) and never builds the copies:
  ``‖E_W(c + z v)‖²`` and ``Σ (c + z v)(c + z v)ᵀ`` expand into products of the kept keys.
- **Degenerate constraints.** With λ₂ = 0, IEC directions with no component in range(P) (already invariant) are
  dropped from the 4×4 system (SVD of K̃, relative tolerance 1e-9) instead of inverting a singular matrix; where K̃
  has full column rank this is the official formula exactly.
- ``templates`` (default ``["{}"]``, the bare name as the official) and ``all_tokens`` are ICEB options.

The result's ``info`` holds, per matrix, the retained-set sizes (raw, after IPF, DPA copies kept), the projector's
rank, the target keys' mass inside range(P) (edit capacity), the edit residual left
``‖(W + Δ)C − W C_a‖ / ‖W C − W C_a‖`` over the target keys, the drift of the retained outputs
``‖Δ R‖ / ‖W R‖`` and the IEC violation ``‖Δ K2‖ / (‖W‖ ‖K2‖)``; and ``tr(T)/α`` (§1.8).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, ClassVar, Literal, Sequence

import numpy as np
import torch

from editors import register_editor
from editors.base import BaseEditor, EditRequest, EditResult, RequestError
from editors.emcid.nullspace import eig_of, null_basis
from editors.emcid.stage2 import cpu_busy, one_cpu_thread
from editors.hparams import (  # declared field ranges
    Dim,
    Hparams,
    HparamsError,
    at_least,
    float_range,
    non_negative,
    positive,
)
from editors.uce import encode_prompts, projection_names
from iceb.utils.timing import Timer


@dataclasses.dataclass(frozen=True)
class SPEEDHparams(Hparams):
    """SPEED's knobs; defaults are the official argparse defaults (§1.7)."""

    #: what ``iceb tune`` searches (its trials run on the task's dev split); every other key keeps its preset value
    search_space: ClassVar[dict[str, Dim]] = {"threshold": float_range(1.0e-3, 1.0, log=True),
                                              "retain_scale": float_range(0.1, 10.0, log=True),
                                              "lamb": float_range(0.0, 1.0)}


    params: Literal["V", "K", "KV"] = "V"
    aug_num: int = at_least(10, 0)  # DPA copies per retain key; 0 turns DPA *and* IPF off (as the official)
    threshold: float = non_negative(0.1)  # eigenvalues of C_r below this span the null space (absolute)
    retain_scale: float = positive(1.0)  # α
    lamb: float = non_negative(0.0)  # λ₂, relaxes the IEC equality
    disable_filter: bool = False  # IPF off (the official celebrity runs)
    seed: int = at_least(0, 0)
    chunk_size: int = at_least(128, 1)  # DPA filter's chunk (and the official's encoding chunk)
    iec_clusters: int = at_least(3, 0)  # k-means centres of the empty prompt's tokens 1..76; 0: no IEC
    dpa_direction: Literal["reduced_svd", "smallest"] = "reduced_svd"
    all_tokens: Literal["nudity", "always", "never"] = "nudity"  # "nudity": only when the targets are ["nudity"]
    erase_anchor: str = ""  # anchor of erase requests without a destination
    templates: tuple[str, ...] = ("{}",)  # ICEB option; the official encodes the bare name
    # retain set, as UCE's preserve list: fixed texts, a caption file / corpus, optionally the destinations
    preserve: tuple[str, ...] = ()
    preserve_corpus: str | None = None
    preserve_destinations: bool = False
    preserve_max_destinations: int = at_least(200, 0)
    encode_batch_size: int = at_least(128, 1)
    kmeans_max_iter: int = at_least(300, 1)  # the official loops until converged

    def __post_init__(self) -> None:
        if not self.templates:
            raise HparamsError("templates is empty")
        for t in self.templates:
            if t.count("{}") != 1:
                raise HparamsError(f"template {t!r} must hold exactly one '{{}}' slot")
        if self.iec_clusters > 76:
            raise HparamsError(f"iec_clusters {self.iec_clusters} exceeds the empty prompt's 76 non-BOS tokens")


# --------------------------------------------------------------------------------------------------
# pieces of the method (pure functions, float64)
# --------------------------------------------------------------------------------------------------
def kmeans_centres(x: torch.Tensor, k: int, seed: int = 0, tol: float = 1e-4, max_iter: int = 300) -> torch.Tensor:
    """kmeans_pytorch 0.3's Euclidean Lloyd iteration (float32): ``k`` distinct rows of ``x`` drawn by
    ``RandomState(seed).choice`` start it; it stops when (Σ centre shifts)² < ``tol``. An empty cluster keeps its
    centre (kmeans_pytorch would write NaN)."""
    x = x.float()
    idx = np.random.RandomState(seed).choice(x.shape[0], k, replace=False)
    c = x[torch.as_tensor(idx, device=x.device)].clone()
    for _ in range(max_iter):
        assign = ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1).argmin(1)
        prev = c.clone()
        for j in range(k):
            sel = x[assign == j]
            if sel.shape[0]:
                c[j] = sel.mean(0)
        if float((c - prev).pow(2).sum(1).sqrt().sum()) ** 2 < tol:
            break
    return c


def dpa_direction(weight: torch.Tensor, mode: str = "reduced_svd") -> torch.Tensor:
    """The unit input direction DPA moves along: the last right-singular vector of the *reduced* SVD of W (d×m),
    i.e. the min(d, m)-th (``reduced_svd``, the official quirk), or W's weakest of all m (``smallest``).

    Its sign is fixed (largest-magnitude entry positive), so a seeded z gives the same copy everywhere."""
    w = weight.double()
    d, m = w.shape
    if mode == "smallest" or d >= m:
        v = torch.linalg.eigh(w.T @ w)[1][:, 0]
    elif mode == "reduced_svd":
        u = torch.linalg.eigh(w @ w.T)[1][:, 0]  # the d-th singular pair: v = Wᵀu / σ_d
        v = w.T @ u
        v = v / v.norm()
    else:
        raise HparamsError(f"unknown dpa_direction {mode!r}; use 'reduced_svd' or 'smallest'")
    return v * torch.sign(v[v.abs().argmax()])


@dataclasses.dataclass
class RetainMoment:
    """C_r of one matrix and how it was built."""

    moment: torch.Tensor  # m×m, float64
    kept: torch.Tensor  # bool (n_r,): the keys IPF kept
    n_copies: int  # DPA copies kept
    n_total: int  # keys + copies: C_r's denominator


@dataclasses.dataclass
class SpeedKeys:
    """Everything SPEED reads from the text encoder (rows are keys, float64)."""

    target: torch.Tensor  # n_t×m: the target keys c (one per pair, or 76 per pair in the all-token case)
    anchor: torch.Tensor  # n_t×m: the aligned anchor keys a
    retain: torch.Tensor  # n_r×m: the shuffled retain keys
    k2: torch.Tensor | None  # m×(1 + clusters): IEC's invariant keys, or None
    n_pairs: int  # T and A are sums over keys divided by this (means over concepts)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


def retain_moment(weight: torch.Tensor, erase_map: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
                  retain: torch.Tensor, *, aug_num: int, use_filter: bool, chunk_size: int, direction: str,
                  generator: torch.Generator, retain_map: torch.Tensor | None = None) -> RetainMoment:
    """IPF, DPA and the retain second moment of one matrix (§1.3 steps 3–6).

    Args:
        weight: W, d×m.
        erase_map: H = (A − T)(I + T)⁻¹ (m×m), so E_W = W H; or its factors (H_l, H_r), H = H_l H_r (m×k, k×m:
            rank k = the number of target keys when that is below m, so nothing m×m is formed per matrix).
        retain: The shuffled retain keys, n_r×m (rows).
        aug_num: DPA copies per kept key (0: neither IPF nor DPA).
        use_filter: IPF on (with ``aug_num > 0``).
        chunk_size: DPA's filter chunk.
        direction: :func:`dpa_direction`'s mode.
        generator: Draws DPA's z, chunk after chunk.
        retain_map: ``retain @ H_r.T`` when the factors are given (the same for every matrix: computed once).

    Returns:
        C_r and its bookkeeping.
    """
    w = weight.double()
    r = retain.double()
    if isinstance(erase_map, torch.Tensor):
        hl, hr = erase_map.double(), None
    else:
        hl, hr = erase_map[0].double(), erase_map[1].double()
    left = w @ hl  # E_W = left @ H_r
    if hr is None:
        rmap = r
    else:
        rmap = retain_map.double() if retain_map is not None else r @ hr.T
    infl = rmap @ left.T  # E_W c for every retain key, n_r×d
    kept = torch.ones(r.shape[0], dtype=torch.bool, device=r.device)
    if aug_num > 0 and use_filter:
        norms = infl.norm(dim=1)
        kept = norms > norms.mean()
    rk, ek = r[kept], infl[kept]
    weights = torch.ones(rk.shape[0], dtype=torch.float64, device=r.device)
    n_copies = 0
    extra = torch.zeros(r.shape[1], r.shape[1], dtype=torch.float64, device=r.device)
    if aug_num > 0 and rk.shape[0]:
        v = dpa_direction(w, direction)
        ev = left @ (v if hr is None else hr @ v)  # E_W v
        e_dot, ev2, e2 = ek @ ev, float(ev @ ev), (ek * ek).sum(1)
        s = torch.zeros_like(weights)  # Σ z over each key's kept copies
        q = 0.0  # Σ z² over all kept copies
        for a in range(0, rk.shape[0], chunk_size):
            b = min(a + chunk_size, rk.shape[0])
            z = torch.randn(b - a, aug_num, generator=generator, dtype=torch.float64).to(r.device)
            norm = (e2[a:b, None] + 2 * z * e_dot[a:b, None] + z * z * ev2).clamp_min(0).sqrt()
            keep = norm > norm.mean()  # the chunk's mean over all its copies
            zk = z * keep
            weights[a:b] += keep.sum(1)
            s[a:b] = zk.sum(1)
            q += float((zk * zk).sum())
            n_copies += int(keep.sum())
        bvec = rk.T @ s  # Σ z c over kept copies
        extra = torch.outer(v, bvec) + torch.outer(bvec, v) + q * torch.outer(v, v)
    moment = (rk.T * weights) @ rk + extra
    n_total = rk.shape[0] + n_copies
    return RetainMoment(moment / max(n_total, 1), kept, n_copies, n_total)


def speed_delta(weight: torch.Tensor, gap: torch.Tensor, target: torch.Tensor, basis: torch.Tensor,
                k2: torch.Tensor | None, alpha: float, lamb: float) -> torch.Tensor:
    """Δ of §1.6 for one matrix, in the basis U of range(P) (module docstring), float64.

    Args:
        weight: W, d×m.
        gap: A − T (m×m).
        target: T (m×m).
        basis: U, m×r orthonormal (r = 0: Δ = 0).
        k2: K2, m×k (IEC), or None.
        alpha: α > 0.
        lamb: λ₂ ≥ 0.

    Returns:
        Δ, d×m, with Δ (I − UUᵀ) = 0.
    """
    w = weight.double()
    u = basis.double()
    if u.shape[1] == 0:
        return torch.zeros_like(w)
    tu = u.T @ target.double() @ u
    tu.diagonal().add_(alpha)
    chol = torch.linalg.cholesky(tu)
    y = torch.cholesky_solve((w @ (gap.double() @ u)).T, chol).T  # W(A − T) U N
    if k2 is not None and k2.shape[1]:
        kt = u.T @ k2.double()  # K̃, r×k
        if lamb == 0:
            # drop constraint directions with no component in range(P): they hold already (docstring)
            q, sv, _ = torch.linalg.svd(kt, full_matrices=False)
            kt = q[:, sv > 1e-9 * float(k2.double().norm(dim=0).max())]
        if kt.shape[1]:
            nk = torch.cholesky_solve(kt, chol)  # N K̃
            s = kt.T @ nk
            s.diagonal().add_(lamb)
            y = y - (y @ kt) @ torch.linalg.solve(s, nk.T)
    return y @ u.T


def speed_delta_lowrank(weight: torch.Tensor, keys: torch.Tensor, diffs: torch.Tensor, basis: torch.Tensor,
                        k2: torch.Tensor | None, alpha: float, lamb: float) -> torch.Tensor:
    """The same Δ as :func:`speed_delta` when T and A − T have rank n below r, through n×n systems only.

    With ``T = Ĉᵀ Ĉ`` and ``A − T = D̂ᵀ Ĉ`` (``keys`` Ĉ = C/√n_pairs, ``diffs`` D̂ = (C_a − C)/√n_pairs, n×m rows) and
    ``B = Ĉ U``: ``N = (BᵀB + αI)⁻¹`` and, by push-through, ``B N = (BBᵀ + αI)⁻¹ B =: F``, ``N K̃ = (K̃ − Bᵀ F K̃)/α``,
    so ``Δ = (W D̂ᵀ) (F − F K̃ S⁻¹ (N K̃)ᵀ) Uᵀ`` with ``S = K̃ᵀ N K̃ + λ₂ I``: Δ has rank <= n.
    """
    w = weight.double()
    u = basis.double()
    if u.shape[1] == 0:
        return torch.zeros_like(w)
    b = keys.double() @ u  # n×r
    inner = b @ b.T
    inner.diagonal().add_(alpha)
    chol = torch.linalg.cholesky(inner)
    f = torch.cholesky_solve(b, chol)  # (BBᵀ + αI)⁻¹ B = B N
    fz = f
    if k2 is not None and k2.shape[1]:
        kt = u.T @ k2.double()
        if lamb == 0:
            q, sv, _ = torch.linalg.svd(kt, full_matrices=False)
            kt = q[:, sv > 1e-9 * float(k2.double().norm(dim=0).max())]
        if kt.shape[1]:
            fk = f @ kt  # B N K̃
            nk = (kt - b.T @ fk) / alpha  # N K̃
            s = kt.T @ nk
            s.diagonal().add_(lamb)
            fz = f - fk @ torch.linalg.solve(s, nk.T)
    return (w @ diffs.double().T) @ (fz @ u.T)


# --------------------------------------------------------------------------------------------------
# the editor
# --------------------------------------------------------------------------------------------------
def speed_names(unet: torch.nn.Module, params: str = "V") -> list[str]:
    """The edited tensors in the UNet's state-dict order: each attn2's to_k before its to_v (§1.1)."""
    return projection_names(unet, with_to_k="K" in params, with_to_v="V" in params, k_first=True)


def without_targets(texts: Sequence[str], targets: Sequence[str]) -> list[str]:
    """Distinct ``texts`` that hold no target as a whole word (case-insensitive), as the official filter."""
    texts = list(dict.fromkeys(texts))
    targets = [t.lower() for t in dict.fromkeys(targets)]
    if not targets:
        return texts
    pattern = re.compile(r"\b(?:" + "|".join(re.escape(t) for t in targets) + r")\b")
    return [t for t in texts if not pattern.search(t.lower())]


@register_editor("speed", description="SPEED: null-space closed form on the cross-attention values (IPF, DPA, IEC), "
                                      "all concepts in one solve per matrix")
class SPEEDEditor(BaseEditor):
    """SPEED on every cross-attention ``to_v`` (``params``). Erase = towards ``erase_anchor`` (``""``) unless the
    request names a destination; update and rectify map each source onto its own destination (§1.12)."""

    hparams_class = SPEEDHparams
    cost_phases = {"encode": "per_concept", "projector": "solve", "solve": "solve"}
    supports = frozenset({"update", "erase", "rectify"})

    # prompts ----------------------------------------------------------------------------------------
    def anchor(self, r: EditRequest) -> str:
        return r.destination if r.destination.strip() else self.hparams.erase_anchor

    def edit_pairs(self, requests: Sequence[EditRequest]) -> list[tuple[str, str]]:
        """(target prompt, anchor prompt) per request and template."""
        pairs = []
        for r in requests:
            a = self.anchor(r)
            for t in self.hparams.templates:
                pairs.append((t.format(r.source), t.format(a) if a.strip() else ""))
        return pairs

    def retain_texts(self, requests: Sequence[EditRequest]) -> list[str]:
        """The retain set: the hparams' texts (and destinations) minus those holding a target; ``[""]`` if empty."""
        hp = self.hparams
        texts = list(hp.preserve)
        if hp.preserve_corpus:
            from editors.corpora import load_corpus

            texts += load_corpus(hp.preserve_corpus)
        if hp.preserve_destinations:
            texts += [r.destination for r in requests[:hp.preserve_max_destinations] if r.destination.strip()]
        return without_targets(texts, [r.source for r in requests]) or [""]

    def all_tokens(self, requests: Sequence[EditRequest]) -> bool:
        mode = self.hparams.all_tokens
        return mode == "always" or (mode == "nudity" and [r.source for r in requests] == ["nudity"])

    # edit -------------------------------------------------------------------------------------------
    def edit(self, pipe: Any, requests: Sequence[EditRequest]) -> EditResult:
        self.check_requests(requests)
        hp = self.hparams
        timer = Timer()
        names = speed_names(pipe.unet, hp.params)
        if not names:
            raise RequestError(f"{self.name}: the pipeline's UNet has no cross-attention (attn2) modules")
        from editors.weights import get_tensor

        weights = {n: get_tensor(pipe, n) for n in names}
        gen = torch.Generator().manual_seed(hp.seed)
        with timer("encode"):
            keys = self.encode_keys(pipe, requests, gen, next(iter(weights.values())).device)
        new, info = self.solve(weights, keys, gen, timer)
        return EditResult(new, timer.timings, {}, info)

    @torch.no_grad()
    def encode_keys(self, pipe: Any, requests: Sequence[EditRequest], generator: torch.Generator,
                    device: torch.device | str = "cpu") -> SpeedKeys:
        """Encode the targets, anchors, retain texts and ``""`` once; pick the tokens; shuffle the retain keys (the
        generator's first draw); k-means for IEC."""
        hp = self.hparams
        pairs = self.edit_pairs(requests)
        retain = self.retain_texts(requests)
        enc = encode_prompts(pipe, [p for pair in pairs for p in pair] + retain + [""], hp.encode_batch_size,
                             self.progress)
        emb = enc.emb.to(device)
        all_tok = self.all_tokens(requests)
        ct, ca = [], []
        for src, dst in pairs:
            i, j = enc.index[src], enc.index[dst]
            if all_tok:
                ct.append(emb[i, 1:])
                ca.append(emb[j, 1:])
            else:
                ct.append(emb[i, int(enc.last[i])][None])
                ca.append(emb[j, int(enc.last[j])][None])
        if retain == [""]:
            rk = emb[enc.index[""], 1:]
        else:
            rows = torch.tensor([enc.index[t] for t in retain], device=device)
            rk = emb[rows, enc.last.to(device)[rows]]
        rk = rk[torch.randperm(rk.shape[0], generator=generator).to(device)]
        null = emb[enc.index[""]]
        k2 = None
        if hp.iec_clusters:
            centres = kmeans_centres(null[1:], hp.iec_clusters, hp.seed, max_iter=hp.kmeans_max_iter)
            k2 = torch.cat([null[:1], centres.to(null.dtype)]).T.double()
        return SpeedKeys(torch.cat(ct).double(), torch.cat(ca).double(), rk.double(), k2, len(pairs),
                         {"all_tokens": all_tok, "n_retain_texts": len(retain), "n_prompts_encoded": int(emb.shape[0])})

    @torch.no_grad()
    def solve(self, weights: dict[str, torch.Tensor], keys: SpeedKeys, generator: torch.Generator,
              timer: Timer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """New values of every matrix in ``weights`` (times ``projector`` and ``solve``) and the result's info."""
        hp = self.hparams
        ct, ca = keys.target, keys.anchor
        dev = ct.device
        n_t, m = ct.shape
        low_rank = n_t < m
        with timer("solve"):
            eye = torch.eye(m, dtype=torch.float64, device=dev)
            c_hat = ct / keys.n_pairs ** 0.5
            d_hat = (ca - ct) / keys.n_pairs ** 0.5
            target = c_hat.T @ c_hat  # T = mean_i Σ_tokens c cᵀ
            gap = d_hat.T @ c_hat  # A − T
            if low_rank:  # (A − T)(I + T)⁻¹ = D̂ᵀ [Ĉ (I + T)⁻¹], rank n_t: keep the factors
                erase_map = (d_hat.T, torch.linalg.solve(eye + target, c_hat.T).T)
                retain_map = keys.retain @ erase_map[1].T
            else:
                erase_map, retain_map = torch.linalg.solve(eye + target, gap.T).T, None  # I + T symmetric
        new: dict[str, torch.Tensor] = {}
        per_layer: dict[str, dict[str, Any]] = {}
        # m×m float64 work in many short parallel regions: on a CPU another process is using, two torch threads wait
        # at each region's barrier (5-6x slower measured, bench/README.md); one thread then, as EMCID's stage II
        with one_cpu_thread(dev.type == "cpu" and torch.get_num_threads() > 1 and cpu_busy()):
            for name, w in weights.items():
                w64 = w.detach().to(dev, torch.float64)
                with timer("projector"):
                    rm = retain_moment(w64, erase_map, keys.retain, aug_num=hp.aug_num,
                                       use_filter=not hp.disable_filter, chunk_size=hp.chunk_size,
                                       direction=hp.dpa_direction, generator=generator, retain_map=retain_map)
                    nb = null_basis(*eig_of(rm.moment), threshold=hp.threshold)
                with timer("solve"):
                    basis = nb.basis.to(dev)
                    if n_t < basis.shape[1]:  # n×n systems instead of r×r
                        delta = speed_delta_lowrank(w64, c_hat, d_hat, basis, keys.k2, hp.retain_scale, hp.lamb)
                    else:
                        delta = speed_delta(w64, gap, target, basis, keys.k2, hp.retain_scale, hp.lamb)
                    new[name] = (w64 + delta).to(w.dtype)
                    per_layer[name] = self._diagnostics(w64, delta, nb.basis, ct, ca, keys.retain, keys.k2, rm)
        info = {"n_pairs": keys.n_pairs, "n_target_tokens": int(ct.shape[0]), **keys.info,
                "n_retain_keys": int(keys.retain.shape[0]), "n_matrices": len(weights),
                "trace_T_over_alpha": float(target.trace()) / hp.retain_scale, "per_layer": per_layer}
        return new, info

    @staticmethod
    def _diagnostics(w, delta, basis, ct, ca, rk, k2, rm: RetainMoment) -> dict[str, Any]:
        want = (ca - ct) @ w.T  # W a − W c per target key
        got = ct @ delta.T
        den = float(want.norm())
        proj = ct @ basis
        out = {"retain_keys": int(rk.shape[0]), "retain_after_ipf": int(rm.kept.sum()),
               "dpa_copies_kept": rm.n_copies, "retain_total": rm.n_total, "projector_rank": int(basis.shape[1]),
               "edit_capacity": float((proj.norm(dim=1) / ct.norm(dim=1).clamp_min(1e-30)).mean()),
               "edit_residual": float((got - want).norm()) / den if den > 0 else 0.0,
               "retain_drift": float((rk @ delta.T).norm()) / max(float((rk @ w.T).norm()), 1e-30)}
        if k2 is not None:
            out["iec_violation"] = float((delta @ k2).norm()) / max(float(w.norm() * k2.norm()), 1e-30)
        return out


__all__ = ["SPEEDEditor", "SPEEDHparams", "SpeedKeys", "dpa_direction", "kmeans_centres", "retain_moment", "speed_delta",
           "speed_delta_lowrank", "speed_names", "without_targets"]
