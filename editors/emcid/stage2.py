"""EMCID stage II: write every concept's target into the fc2 weights of several text-encoder blocks at once.

Same update as the official code (``execute_emcid_text_encoder``), computed with one pass over the layers:

- keys ``K_l`` = fc2 input at the last subject token, averaged over each concept's prompts (one column per
  concept); ``cur`` = the current fc2 *output* there, averaged likewise (the official "parity" residual;
  ``residual="hidden"`` uses MEMIT's block-``z_layer`` output instead);
- at the i-th of ``n`` layers, ``R = (Z* - cur) / (n - i)`` and ``ΔW_l = R Kᵀ (λ(1-α)/α · C_l + K Kᵀ)⁻¹``,
  solved in float64 by Cholesky; layers are updated in ascending order, each seeing the earlier updates.

Why it is fast: the official code runs two full 12-block forwards of all prompts padded to the batch's
longest per edited layer. Here each prompt is cut to its real length (CLIP attention is causal, so the tokens
after EOS never reach the subject token), prompts of equal length share a dense batch, and the hidden states
at the input of block ``l`` are kept: block ``l`` runs once, its fc2 inputs give keys and ``cur``, and its
output under the new weights is the old output plus ``act @ ΔWᵀ`` — no block is ever run twice (hidden mode
re-runs blocks ``l..z_layer`` to read the current block-``z_layer`` state, as MEMIT must). Memory is linear in
the number of prompts; the only N² term is ``K Kᵀ``-sized solves that do not grow with N at all.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Literal, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from editors.hooks import capture, layer_call, text_layers
from iceb.utils.timing import Timer

Residual = Literal["fc2_output", "hidden"]


#: Thread policy for a busy CPU. When other processes are running, small solves and small layer walks run on
#: one torch thread: once another process holds a core, the threads' barriers collapse. Measured on the 2-core
#: machine: a 3072² triangular solve at load ~3.6 took 1.0 s on 2 threads against 3 ms on 1 for one column
#: (0.2 s against 6 ms for 10 columns, 0.23 s against 26 ms for 100); the whole N = 10 edit with 3 busy-loop
#: processes beside it 5.0–6.0 s on 2 threads against 2.3–2.5 s on 1. On an idle machine 2 threads win
#: (N = 10: 0.67 s against 0.88 s), so the policy asks the kernel first (:func:`cpu_busy`). Solve work is
#: rows² × right-hand sides.
SMALL_SOLVE_WORK = 3072 * 3072 * 256
SMALL_WALK_PROMPTS = 128  # N ≈ 40 concepts of 3 prompts


def _runnable() -> int | None:
    try:
        with open("/proc/loadavg") as f:
            return int(f.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None


def cpu_busy(samples: int = 5, interval: float = 0.01) -> bool:
    """Whether another process is running now: the kernel's count of runnable tasks (``/proc/loadavg``, 4th
    field, this one included) is above one, in the median of ``samples`` looks ``interval`` s apart. The
    1-minute load average lags by a minute; this count does not. A first look at one (idle: the usual case)
    answers at once, without the further looks. False where ``/proc`` is not there."""
    first = _runnable()
    if first is None or first <= 1:
        return False
    counts = [first]
    for _ in range(samples - 1):
        time.sleep(interval)
        n = _runnable()
        if n is None:
            return False
        counts.append(n)
    return sorted(counts)[len(counts) // 2] > 1


@contextlib.contextmanager
def one_cpu_thread(when: bool) -> Iterator[None]:
    """Run the block on one torch thread when ``when`` (and more than one is set); restore the count after."""
    before = torch.get_num_threads()
    if not when or before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _chol_solve(chol: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``A⁻¹ B`` from A's lower Cholesky factor: two triangular solves (torch.cholesky_solve copies more on CPU),
    on one thread when the solve is small (:data:`SMALL_SOLVE_WORK`): memory-bound, it loses nothing by it idle."""
    with one_cpu_thread(rhs.device.type == "cpu" and chol.shape[0] ** 2 * rhs.shape[-1] <= SMALL_SOLVE_WORK):
        y = torch.linalg.solve_triangular(chol, rhs, upper=False)
        return torch.linalg.solve_triangular(chol.T, y, upper=True)


def cov_factor(cov: torch.Tensor) -> torch.Tensor:
    """Lower Cholesky factor of C (float64 compute, float32 storage): a per-model precomputation, like C itself.

    Storing it in float32 perturbs C by ~1e-7 relative, the precision C is stored in anyway. A C that is not
    positive definite (too small a corpus) gets a jitter of 1e-6 · mean diagonal.
    """
    c = cov.double()
    chol, info = torch.linalg.cholesky_ex(c)
    if int(info) != 0:
        jitter = 1e-6 * float(c.diagonal().mean())
        chol = torch.linalg.cholesky(c + jitter * torch.eye(c.shape[0], dtype=c.dtype, device=c.device))
    return chol.float().contiguous()


@dataclass
class LowRankDelta:
    """``ΔW = L Rᵀ`` kept as its two float64 factors (``left``: d×N, ``right``: d_k×N).

    Every EMCID update is exactly rank N (``R Kᵀ A⁻¹`` = ``R (A⁻¹K)ᵀ``), so the d×d_k float64 matrix is never
    needed: for few concepts its fresh pages cost more than all the arithmetic (measured ~27 ms per SD-size
    layer in a fresh process, 11 layers at N = 10). :meth:`dense` builds it when asked (tests, diagnostics).
    """

    left: torch.Tensor
    right: torch.Tensor

    @property
    def rank(self) -> int:
        return self.left.shape[1]

    def _factored(self) -> bool:
        d, d_k = self.left.shape[0], self.right.shape[0]
        return self.rank * (d + d_k) < d * d_k

    def dense(self) -> torch.Tensor:
        """ΔW as one float64 d×d_k matrix."""
        return self.left @ self.right.T

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ ΔWᵀ`` in ``x``'s dtype, through the factors when that is cheaper than the dense product."""
        if self._factored():
            return (x @ self.right.to(x.dtype)) @ self.left.to(x.dtype).T
        return x @ self.dense().to(x.dtype).T

    def added_to(self, w: torch.Tensor) -> torch.Tensor:
        """``W + ΔW`` in W's dtype and device: one fused multiply-add, no d×d_k float64 temporary.

        Within float32's multiply-add error bound of ``W.double() + ΔW`` per entry (``eps·(|W + ΔW| + (N + 1)·
        |L||R|ᵀ)``, tested): last-bit differences from rounding the float64 sum once, never a lost update.
        """
        return torch.addmm(w.detach(), self.left.to(w.device, w.dtype), self.right.to(w.device, w.dtype).T)


def closed_form_factors(resid: torch.Tensor, keys: torch.Tensor, cov: torch.Tensor, lam: float,
                        alpha: float, chol_c: torch.Tensor | None = None) -> LowRankDelta:
    """``ΔW = R Kᵀ (λ(1-α)/α · C + K Kᵀ)⁻¹`` in float64 as rank-N factors (``resid``: d×N, ``keys``:
    d_k×N, ``cov``: d_k×d_k).

    It minimises ``(1-α)·λ·tr(ΔW C ΔWᵀ) + α·||ΔW K - R||²`` (the paper's preserve/edit weighting).

    - Direct: Cholesky of the SPD d_k×d_k system ``λ'C + K Kᵀ`` (a singular system, λ(1-α) = 0 with
      N < d_k, falls back to the pseudo-inverse); ``ΔW = R (A⁻¹K)ᵀ``.
    - With ``chol_c`` (the Cholesky factor of C, see :func:`cov_factor`) and N <= d_k: the push-through
      identity ``(λ'C + KKᵀ)⁻¹K = C⁻¹K (λ'I + KᵀC⁻¹K)⁻¹`` replaces the d_k³ factorisation per edit by two
      triangular solves and an N×N system — the same ΔW, far cheaper for few concepts:
      ``ΔW = (M⁻¹Rᵀ)ᵀ (C⁻¹K)ᵀ`` with ``M = λ'I + KᵀC⁻¹K``.
    """
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"edit_weight (alpha) must be in (0, 1], got {alpha}")
    resid, keys = resid.double(), keys.double()
    lam_eff = float(lam) * (1.0 - alpha) / alpha
    n, d_k = keys.shape[1], keys.shape[0]
    if chol_c is not None and lam_eff > 0 and n <= d_k:
        y = _chol_solve(chol_c.to(device=keys.device, dtype=torch.float64), keys)  # C⁻¹K
        m = keys.T @ y
        m.diagonal().add_(lam_eff)
        chol_m, info = torch.linalg.cholesky_ex(m)
        if int(info) == 0:
            s = _chol_solve(chol_m, resid.T)  # M⁻¹Rᵀ (N×d)
            return LowRankDelta(s.T, y)
    a = cov.to(device=keys.device, dtype=torch.float64) * lam_eff
    a.addmm_(keys, keys.T)
    chol, info = torch.linalg.cholesky_ex(a)
    if int(info) == 0:
        x = _chol_solve(chol, keys)  # (d_k, N) = A⁻¹ K
    else:
        x = torch.linalg.pinv(a, hermitian=True) @ keys
    return LowRankDelta(resid, x)


def closed_form_delta(resid: torch.Tensor, keys: torch.Tensor, cov: torch.Tensor, lam: float,
                      alpha: float, chol_c: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`closed_form_factors` as one dense float64 d×d_k matrix."""
    return closed_form_factors(resid, keys, cov, lam, alpha, chol_c).dense()


@dataclass
class LayerDiagnostics:
    """What one layer's update saw (kept only when asked for: tests check the closed form against it)."""

    layer: int
    keys: torch.Tensor  # (d_k, N)
    cur: torch.Tensor  # (N, d)
    resid: torch.Tensor  # (d, N), the share written at this layer
    update: LowRankDelta  # ΔW as its factors

    @property
    def delta(self) -> torch.Tensor:
        """ΔW (d × d_k, float64), built when asked."""
        return self.update.dense().cpu()


@dataclass
class Stage2Output:
    updates: dict[int, LowRankDelta]  # layer -> ΔW as its rank-N factors
    diagnostics: list[LayerDiagnostics] = field(default_factory=list)
    n_prompts: int = 0
    n_tokens: int = 0
    solve_seconds: float = 0.0  # of the total, the float64 solves (the rest is the layer walk)

    @property
    def deltas(self) -> dict[int, torch.Tensor]:
        """Every layer's ΔW as a dense float64 matrix (built on each call: for tests and inspection)."""
        return {l: u.dense() for l, u in self.updates.items()}


@dataclass
class _Group:
    """Prompts of one token length: a dense batch (no padding) and where their subject tokens are."""

    rows: torch.Tensor  # (n,) global prompt indices
    owners: torch.Tensor  # (n,) concept index of each prompt
    positions: torch.Tensor  # (n,) token index of the last subject token
    call: object  # LayerCall: mask/kwargs for this batch shape
    hidden: torch.Tensor  # (n, T, d), input of the current block


def _groups(text_encoder, tokenizer, prompts: Sequence[str], owners: Sequence[int], positions: Sequence[int],
            device) -> tuple[list[_Group], int]:
    ids = tokenizer(list(prompts), truncation=True, max_length=tokenizer.model_max_length).input_ids
    by_len: dict[int, list[int]] = {}
    for j, seq in enumerate(ids):
        if positions[j] >= len(seq):
            raise ValueError(f"subject position {positions[j]} lies outside prompt {prompts[j]!r} ({len(seq)} tokens)")
        by_len.setdefault(len(seq), []).append(j)
    groups = []
    for length in sorted(by_len):
        rows = by_len[length]
        batch = torch.tensor([ids[j] for j in rows], device=device)
        call = layer_call(text_encoder, batch, 0)
        groups.append(_Group(torch.tensor(rows), torch.tensor([owners[j] for j in rows], device=device),
                             torch.tensor([positions[j] for j in rows], device=device), call, call.hidden))
        call.hidden = None  # the group keeps the live copy
    return groups, sum(len(s) for s in ids)


def compute_deltas(text_encoder, tokenizer, prompts: Sequence[str], owners: Sequence[int],
                   positions: Sequence[int], targets: torch.Tensor, layers: Sequence[int],
                   covs: Mapping[int, torch.Tensor], lam: float, alpha: float, *,
                   residual: Residual = "fc2_output", z_layer: int | None = None, diagnostics: bool = False,
                   progress: bool = False, factors: Mapping[int, torch.Tensor] | None = None,
                   solver: Solver | None = None) -> Stage2Output:
    """ΔW for every layer in ``layers`` (ascending), writing ``targets[c]`` (the block-``z_layer`` output
    wanted for concept ``c``) for the concepts that own the ``prompts`` at token ``positions``.

    The text encoder is not modified; the updates are returned, as rank-N factors, for the caller to add to the
    fc2 weights (:meth:`LowRankDelta.added_to`).
    ``factors`` (layer -> Cholesky factor of C, :func:`cov_factor`) selects the cheaper solve for N <= d_k.
    ``solver(layer, resid, keys)`` replaces EMCID's solve (EMCID-NS: :mod:`editors.emcid.nullspace`); the walk,
    keys, residuals and their 1/(n − i) spread stay the same.
    A small edit (:data:`SMALL_WALK_PROMPTS`) on a busy CPU (:func:`cpu_busy`) runs on one thread, which keeps it
    fast there; on an idle one it uses every thread.
    """
    small = next(text_encoder.parameters()).device.type == "cpu" and len(prompts) <= SMALL_WALK_PROMPTS
    with one_cpu_thread(small and torch.get_num_threads() > 1 and cpu_busy()):
        return _compute_deltas(text_encoder, tokenizer, prompts, owners, positions, targets, layers, covs, lam,
                               alpha, residual=residual, z_layer=z_layer, diagnostics=diagnostics,
                               progress=progress, factors=factors, solver=solver)


#: a stage-II solve: (layer, R (d×N), K (d_k×N)) -> ΔW
Solver = Callable[[int, torch.Tensor, torch.Tensor], LowRankDelta]


@torch.no_grad()
def _compute_deltas(text_encoder, tokenizer, prompts: Sequence[str], owners: Sequence[int],
                    positions: Sequence[int], targets: torch.Tensor, layers: Sequence[int],
                    covs: Mapping[int, torch.Tensor], lam: float, alpha: float, *,
                    residual: Residual, z_layer: int | None, diagnostics: bool, progress: bool,
                    factors: Mapping[int, torch.Tensor] | None, solver: Solver | None = None) -> Stage2Output:
    layers = list(layers)
    if layers != sorted(set(layers)) or not layers:
        raise ValueError(f"layers must be a non-empty ascending list without repeats, got {layers}")
    z_layer = layers[-1] if z_layer is None else z_layer
    blocks = text_layers(text_encoder)
    if z_layer >= len(blocks) or layers[-1] >= len(blocks) or layers[0] < 0:
        raise ValueError(f"layers {layers} / z_layer {z_layer} do not fit a {len(blocks)}-block text encoder")
    if residual not in ("fc2_output", "hidden"):
        raise ValueError(f"residual must be 'fc2_output' or 'hidden', got {residual!r}")
    device = next(text_encoder.parameters()).device
    timer = Timer()
    n_concepts = targets.shape[0]
    owners_t = torch.as_tensor(list(owners), device=device)
    counts = torch.bincount(owners_t, minlength=n_concepts).to(torch.float64)
    if (counts == 0).any():
        raise ValueError("every concept needs at least one prompt")
    targets = targets.to(device=device, dtype=torch.float64)
    groups, n_tokens = _groups(text_encoder, tokenizer, prompts, owners, positions, device)
    out = Stage2Output({}, n_prompts=len(prompts), n_tokens=n_tokens)
    edit_set = set(layers)
    for l in tqdm(range(layers[-1] + 1), desc="EMCID stage II layers", disable=not progress, leave=False):
        block = blocks[l]
        if l not in edit_set:
            for g in groups:
                g.hidden = g.call.run(block, g.hidden)
            continue
        i = layers.index(l)
        fc2 = block.mlp.fc2
        d_k = fc2.in_features
        k_sum = torch.zeros(n_concepts, d_k, device=device, dtype=torch.float64)
        cur_sum = torch.zeros(n_concepts, targets.shape[1], device=device, dtype=torch.float64)
        acts = []
        for g in groups:
            with capture({"fc2": fc2}, inputs=True, outputs=True) as rec:
                new_hidden = g.call.run(block, g.hidden)
            act = rec.inputs["fc2"]
            ar = torch.arange(act.shape[0], device=device)
            k_sum.index_add_(0, g.owners, act[ar, g.positions].double())
            if residual == "fc2_output":
                cur_sum.index_add_(0, g.owners, rec.outputs["fc2"][ar, g.positions].double())
            else:  # MEMIT: the block-z_layer output under the current weights (earlier updates are in g.hidden)
                h = new_hidden
                for m in range(l + 1, z_layer + 1):
                    h = g.call.run(blocks[m], h)
                cur_sum.index_add_(0, g.owners, h[ar, g.positions].double())
            g.hidden = new_hidden
            acts.append(act)
        keys = (k_sum / counts[:, None]).T  # (d_k, N)
        cur = cur_sum / counts[:, None]  # (N, d)
        resid = ((targets - cur) / (len(layers) - i)).T  # (d, N)
        with timer("solve"):
            update = (solver(l, resid, keys) if solver is not None
                      else closed_form_factors(resid, keys, covs[l], lam, alpha, (factors or {}).get(l)))
        out.solve_seconds = timer["solve"]
        out.updates[l] = update
        if diagnostics:
            out.diagnostics.append(LayerDiagnostics(l, keys.cpu(), cur.cpu(), resid.cpu(), update))
        for g, act in zip(groups, acts):  # the block's output under W + ΔW (fc2 is linear in W)
            g.hidden = g.hidden + update.apply(act)
        del acts
    return out
