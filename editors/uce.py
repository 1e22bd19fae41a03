"""UCE (Gandikota et al., WACV 2024) and TIME (Orgad et al., ICCV 2023): closed-form edits of every
cross-attention ``attn2.to_k`` / ``attn2.to_v``.

For each projection W (d×m) the edit solves, in one step for all concepts,

    min_W  s_e Σ_E ||W c_i − v_i*||² + s_p Σ_P ||W c_j − W_old c_j||² + λ ||W − W_old||_F²
    W_new = [λ W_old + s_e Σ v* cᵀ + s_p Σ W_old c cᵀ] · [λ I + s_e Σ c cᵀ + s_p Σ c cᵀ]⁻¹

where c are text-encoder outputs at token positions (the pipeline's encoding: padded to 77, no mask).
The keys c are the same for every projection, so the m×m matrix B = λI + s_e EᵀE + s_p PᵀP is built
and Cholesky-factorised once (float64) for all 32 matrices; with ``technique='replace'`` the whole
update is W_new = W + W·X with one shared X = s_e (G−E)ᵀE B⁻¹, so the cost hardly grows with the number
of matrices. Guide rows that repeat (many concepts towards one guide) are summed before the product.

Token positions (``tokens``):
- ``"2023"`` (UCE's original code, the default): each edit prompt contributes its tokens from the last
  token before EOS (``mask.sum()-2``) to the end, aligned with the guide prompt's tokens from its own
  last token, cut to a common length; each preserve prompt contributes all 77 positions.
- ``"2025"`` (UCE's rewrite): one token per prompt, the last token before EOS, for edit, guide and preserve.
- ``"all"`` (TIME): all 77 positions of the edit prompt, each aligned to a guide position by a greedy
  token-id match ("an" counts as "a"); preserve prompts contribute all 77 positions.

Targets (``technique``): ``replace`` v* = W_old c_guide; ``tensor`` (EMCID's UCE baseline) removes from the
guide's output block its Frobenius projection onto the edit prompt's own output block.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from editors import register_editor
from editors.base import BaseEditor, EditRequest, EditResult, RequestError
from editors.hooks import align_tokens_greedy, cross_attention_modules, last_token_indices, tokenize
from editors.hparams import Dim, Hparams, HparamsError, at_least, float_range, non_negative  # declared field ranges
from iceb.utils.timing import Timer

TIME_TEMPLATES = ("{}", "A photo of {}", "An image of {}", "A picture of {}")


@dataclasses.dataclass(frozen=True)
class UCEHparams(Hparams):
    """UCE's knobs. Defaults are the 2023 erase script's (λ 0.5, s_e 1, s_p max(0.1, 1/|P|), replace)."""

    #: what ``iceb tune`` searches (its trials run on the task's dev split); every other key keeps its preset value
    search_space: ClassVar[dict[str, Dim]] = {"lamb": float_range(0.01, 10.0, log=True),
                                              "erase_scale": float_range(0.5, 2.0),
                                              "preserve_scale": float_range(0.01, 10.0, log=True)}


    lamb: float = non_negative(0.5)
    erase_scale: float = non_negative(1.0)
    preserve_scale: float | None = non_negative(None)  # None: max(0.1, 1/|preserve prompts|), as UCE's 2023 script
    technique: Literal["replace", "tensor"] = "replace"
    tokens: Literal["2023", "2025", "all"] = "2023"
    with_to_k: bool = True
    with_to_v: bool = True
    # prompts of a concept: each template filled with the concept name ("{}" = the bare name, as UCE)
    templates: tuple[str, ...] = ("{}",)
    use_request_templates: bool = False  # True: the request's own templates instead of ``templates``
    # preserve set: fixed prompts, plus optionally the requests' destinations (EMCID's UCE baseline)
    preserve: tuple[str, ...] = ()
    preserve_destinations: bool = False
    preserve_max_destinations: int = at_least(200, 0)
    # "" in the preserve set: always (2023 erase script), only when nothing else is preserved (EMCID's port
    # of the 2023 edit function), never (2025 code, TIME)
    preserve_empty: Literal["always", "if_none", "never"] = "always"
    encode_batch_size: int = at_least(64, 1)

    def __post_init__(self) -> None:
        if self.lamb < 0 or self.erase_scale < 0 or (self.preserve_scale is not None and self.preserve_scale < 0):
            raise HparamsError("lamb, erase_scale and preserve_scale must be >= 0")
        if not (self.with_to_k or self.with_to_v):
            raise HparamsError("with_to_k and with_to_v are both false: nothing to edit")
        for t in self.templates:
            if t.count("{}") != 1:
                raise HparamsError(f"template {t!r} must hold exactly one '{{}}' slot")
        if not self.templates:
            raise HparamsError("templates is empty")
        if self.encode_batch_size < 1 or self.preserve_max_destinations < 0:
            raise HparamsError("encode_batch_size must be >= 1 and preserve_max_destinations >= 0")


@dataclasses.dataclass(frozen=True)
class TIMEHparams(UCEHparams):
    """TIME: UCE's closed form with s_e 1, no preserve term, λ 0.1, all 77 tokens, TIME's 3 augmentations."""

    #: what ``iceb tune`` searches (its trials run on the task's dev split); every other key keeps its preset value
    search_space: ClassVar[dict[str, Dim]] = {"lamb": float_range(0.001, 10.0, log=True),
                                              "erase_scale": float_range(0.5, 2.0)}


    lamb: float = non_negative(0.1)
    erase_scale: float = non_negative(1.0)
    preserve_scale: float | None = non_negative(0.0)
    tokens: Literal["2023", "2025", "all"] = "all"
    templates: tuple[str, ...] = TIME_TEMPLATES
    preserve_empty: Literal["always", "if_none", "never"] = "never"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.preserve or self.preserve_destinations or self.preserve_empty != "never" or self.preserve_scale:
            raise HparamsError("TIME has no preserve term: leave preserve empty, preserve_destinations false, "
                               "preserve_empty 'never' and preserve_scale 0 (use the uce editor for a preserve set)")


# --------------------------------------------------------------------------------------------------
# encoding
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Encoded:
    """Unique prompts' text embeddings (n, 77, m), token ids, last-token indices (mask sum − 2), prompt -> row."""

    emb: torch.Tensor
    ids: torch.Tensor
    last: torch.Tensor
    index: dict[str, int]


@torch.no_grad()
def encode_prompts(pipe: Any, prompts: Sequence[str], batch_size: int = 64, progress: bool = False) -> Encoded:
    """Encode each distinct prompt once, as the pipeline does (padded to 77, no attention mask).

    Prompts with identical token ids (e.g. ``""`` and ``" "``) share one row.
    """
    unique = list(dict.fromkeys(prompts))
    ids, mask = tokenize(pipe.tokenizer, unique) if unique else (torch.zeros(0, 77, dtype=torch.long),) * 2
    key_rows: dict[tuple[int, ...], int] = {}
    index: dict[str, int] = {}
    keep: list[int] = []
    for i, p in enumerate(unique):
        key = tuple(ids[i].tolist())
        if key not in key_rows:
            key_rows[key] = len(keep)
            keep.append(i)
        index[p] = key_rows[key]
    ids, mask = ids[keep], mask[keep]
    te = pipe.text_encoder
    device = next(te.parameters()).device
    chunks = []
    for s in tqdm(range(0, len(keep), batch_size), desc="UCE: encoding prompts", disable=not progress, leave=False):
        out = te(ids[s:s + batch_size].to(device), attention_mask=None)[0]
        chunks.append(out.float())
    m = te.config.hidden_size
    emb = torch.cat(chunks) if chunks else torch.zeros(0, ids.shape[1], m, device=device)
    return Encoded(emb, ids, last_token_indices(mask), index)


# --------------------------------------------------------------------------------------------------
# rows: which token embeddings are keys, which are targets
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Rows:
    """Row references (prompt row, token position) into ``Encoded.emb``.

    ``edit`` and ``guide`` are aligned (n_e each); ``blocks`` gives the edit rows of each prompt pair
    (for the ``tensor`` technique); ``preserve`` (n_p).
    """

    edit: torch.Tensor  # (n_e, 2) long
    guide: torch.Tensor  # (n_e, 2) long
    blocks: list[tuple[int, int]]
    preserve: torch.Tensor  # (n_p, 2) long


# "an" and "a" count as the same token in TIME's alignment
def _equivalent_ids(tokenizer) -> dict[int, int]:
    a = tokenizer("a", add_special_tokens=False).input_ids
    an = tokenizer("an", add_special_tokens=False).input_ids
    return {an[0]: a[0]} if len(a) == 1 and len(an) == 1 else {}


def build_rows(enc: Encoded, pairs: Sequence[tuple[str, str]], preserve: Sequence[str], tokens: str,
               equivalent: dict[int, int] | None = None) -> Rows:
    """Key/target token positions for each (edit prompt, guide prompt) pair and each preserve prompt."""
    seq = enc.emb.shape[1]
    edit, guide, blocks = [], [], []
    for src, dst in pairs:
        a, b = enc.index[src], enc.index[dst]
        if tokens == "2023":
            i, j = int(enc.last[a]), int(enc.last[b])
            n = seq - max(i, j)
            pos_e, pos_g = list(range(i, i + n)), list(range(j, j + n))
        elif tokens == "2025":
            pos_e, pos_g = [int(enc.last[a])], [int(enc.last[b])]
        elif tokens == "all":
            pos_e = list(range(seq))
            pos_g = align_tokens_greedy(enc.ids[a].tolist(), enc.ids[b].tolist(), equivalent)
        else:
            raise HparamsError(f"unknown token mode {tokens!r}")
        start = len(edit)
        edit += [(a, p) for p in pos_e]
        guide += [(b, p) for p in pos_g]
        blocks.append((start, len(edit)))
    pres = []
    for p in preserve:
        r = enc.index[p]
        pres += [(r, int(enc.last[r]))] if tokens == "2025" else [(r, q) for q in range(seq)]

    def t(x):
        return torch.tensor(x, dtype=torch.long).reshape(-1, 2)

    return Rows(t(edit), t(guide), blocks, t(pres))


def gather(emb: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
    if refs.numel() == 0:
        return emb.new_zeros(0, emb.shape[-1])
    refs = refs.to(emb.device)
    return emb[refs[:, 0], refs[:, 1]]


# --------------------------------------------------------------------------------------------------
# the closed form
# --------------------------------------------------------------------------------------------------
def _gram(x: torch.Tensor, chunk: int = 16384, block: int = 128, segments: torch.Tensor | None = None,
          n_segments: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(xᵀx, segment sums of x's rows) in float64, converting chunk by chunk (one float64 chunk in memory).

    Only the upper block triangle of xᵀx is multiplied and then mirrored: about 58% of the flops of a full
    product at m = 768 (torch exposes no syrk). ``segments`` (one id per row) also sums the rows per id
    in the same pass, for the repeated-guide product.
    """
    m = x.shape[1]
    out = torch.zeros(m, m, dtype=torch.float64, device=x.device)
    sums = torch.zeros(n_segments, m, dtype=torch.float64, device=x.device) if segments is not None else None
    edges = list(range(0, m, block)) + [m]
    for s in range(0, x.shape[0], chunk):
        c = x[s:s + chunk].double()
        for a0, a1 in zip(edges[:-1], edges[1:]):
            out[a0:a1, a0:].addmm_(c[:, a0:a1].T, c[:, a0:])
        if sums is not None:
            sums.index_add_(0, segments[s:s + chunk], c)
    iu = torch.triu_indices(m, m, 1, device=x.device)
    out[iu[1], iu[0]] = out[iu[0], iu[1]]
    return out, sums


def _cross(a: torch.Tensor, b: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
    """aᵀb in float64, chunked."""
    out = torch.zeros(a.shape[1], b.shape[1], dtype=torch.float64, device=a.device)
    for s in range(0, a.shape[0], chunk):
        out.addmm_(a[s:s + chunk].double().T, b[s:s + chunk].double())
    return out


def uce_solve(weights: Mapping[str, torch.Tensor], emb: torch.Tensor, rows: Rows, *, lamb: float,
              erase_scale: float, preserve_scale: float, technique: str = "replace") -> dict[str, torch.Tensor]:
    """New values of every W in ``weights`` (each d×m) under UCE's objective; inputs are untouched.

    ``emb`` (n, seq, m) holds the encoded prompts that ``rows`` refers to.
    """
    out_dtype = {k: w.dtype for k, w in weights.items()}
    if rows.edit.shape[0] == 0 or erase_scale == 0:
        # every target is then W_old c itself: W_old is the exact optimum
        return {k: w.detach().clone() for k, w in weights.items()}
    m = emb.shape[-1]
    dev = emb.device
    E = gather(emb, rows.edit)
    P = gather(emb, rows.preserve)
    # EᵀE (in B and, for replace, in (G − E)ᵀE) and the edit rows summed per distinct guide row, one pass
    uniq, inv = torch.unique(rows.guide, dim=0, return_inverse=True)
    gram_e, acc = _gram(E, segments=inv.to(dev), n_segments=uniq.shape[0])
    B = torch.eye(m, dtype=torch.float64, device=dev) * lamb + erase_scale * gram_e
    if P.shape[0] and preserve_scale:
        B += preserve_scale * _gram(P)[0]
    L, info = torch.linalg.cholesky_ex(B)
    if int(info) != 0:
        raise HparamsError(
            f"UCE: the key matrix λI + Σ c cᵀ is singular (lamb={lamb}); use lamb > 0 or more edit/preserve tokens")
    out: dict[str, torch.Tensor] = {}
    if technique == "replace" and 2 * E.shape[0] < m:
        # few keys: W_new = W + s_e (W (G − E)ᵀ)(E B⁻¹), 2·d·n·m flops per matrix instead of d·m²
        Q = torch.cholesky_solve(E.double().T.contiguous(), L).T  # E B⁻¹
        Dg = gather(emb, rows.guide).double() - E.double()
        for k, w in weights.items():
            w64 = w.detach().to(dev, torch.float64)
            out[k] = (w64 + erase_scale * ((w64 @ Dg.T) @ Q)).to(out_dtype[k])
        return out
    if technique == "replace":
        # Σ (g − e) eᵀ with repeated guide rows summed first: Gᵀ E = Ĝᵀ (Sᵀ E)
        D = erase_scale * (_cross(gather(emb, uniq), acc) - gram_e)  # (G − E)ᵀ E
        X = torch.cholesky_solve(D.T.contiguous(), L).T.contiguous()  # D B⁻¹ (B symmetric)
        for k, w in weights.items():
            w64 = w.detach().to(dev, torch.float64)
            out[k] = torch.addmm(w64, w64, X).to(out_dtype[k])
        return out
    if technique != "tensor":
        raise HparamsError(f"unknown UCE technique {technique!r}; use 'replace' or 'tensor'")
    G = gather(emb, rows.guide).double()
    E64 = E.double()
    K = torch.cholesky_solve(E64.T.contiguous(), L).T  # E B⁻¹  (n_e × m)
    seg = torch.zeros(E.shape[0], dtype=torch.long, device=dev)
    for b, (s, t) in enumerate(rows.blocks):
        seg[s:t] = b
    nb = len(rows.blocks)
    for k, w in weights.items():
        w64 = w.detach().to(dev, torch.float64)
        F = E64 @ w64.T  # W c_edit
        H = G @ w64.T  # W c_guide
        ff = torch.zeros(nb, dtype=torch.float64, device=dev).index_add_(0, seg, (F * F).sum(-1))
        fh = torch.zeros(nb, dtype=torch.float64, device=dev).index_add_(0, seg, (F * H).sum(-1))
        coef = (fh / ff.clamp_min(1e-300))[seg]  # ⟨W c_g, û⟩ / ||W c_e|| per block
        R = H - coef[:, None] * F - F  # v* − W c_edit
        out[k] = (w64 + erase_scale * (R.T @ K)).to(out_dtype[k])
    return out


# --------------------------------------------------------------------------------------------------
# the editors
# --------------------------------------------------------------------------------------------------
def projection_names(unet: torch.nn.Module, with_to_k: bool = True, with_to_v: bool = True,
                     k_first: bool = False) -> list[str]:
    """Pipeline tensor names of every cross-attention to_v / to_k weight (to_v first; ``k_first``: the UNet's
    state-dict order, each attn2's to_k before its to_v)."""
    names = []
    for n, _m in cross_attention_modules(unet):
        pair = [f"unet.{n}.to_v.weight"] * with_to_v + [f"unet.{n}.to_k.weight"] * with_to_k
        names += pair[::-1] if k_first else pair
    return names


@register_editor("uce", description="UCE: closed-form edit of every cross-attention to_k/to_v, all concepts in one solve")
class UCEEditor(BaseEditor):
    """All requests in one closed-form solve per projection matrix. Erase = towards the empty prompt
    (UCE's ' ' guide) unless the request names a destination; update and rectify map source -> destination."""

    hparams_class = UCEHparams
    cost_phases = {"encode": "per_concept", "solve": "solve"}
    supports = frozenset({"update", "erase", "rectify"})

    # prompts ----------------------------------------------------------------------------------------
    def _templates(self, r: EditRequest) -> tuple[str, ...]:
        return r.templates if self.hparams.use_request_templates else self.hparams.templates

    def edit_pairs(self, requests: Sequence[EditRequest]) -> list[tuple[str, str]]:
        pairs = []
        for r in requests:
            for t in self._templates(r):
                dst = t.format(r.destination) if r.destination.strip() else ""
                pairs.append((t.format(r.source), dst))
        return pairs

    def preserve_prompts(self, requests: Sequence[EditRequest]) -> list[str]:
        hp = self.hparams
        pres = list(hp.preserve)
        if hp.preserve_destinations:
            pres += [r.destination for r in requests[:hp.preserve_max_destinations] if r.destination.strip()]
        if hp.preserve_empty == "always" or (hp.preserve_empty == "if_none" and not pres):
            pres = [""] + pres
        return pres

    def preserve_scale(self, preserve: Sequence[str]) -> float:
        if self.hparams.preserve_scale is not None:
            return self.hparams.preserve_scale
        return max(0.1, 1.0 / len(preserve)) if preserve else 0.0

    # edit -------------------------------------------------------------------------------------------
    def edit(self, pipe: Any, requests: Sequence[EditRequest]) -> EditResult:
        self.check_requests(requests)
        hp = self.hparams
        timer = Timer()
        with timer("encode"):
            pairs = self.edit_pairs(requests)
            preserve = self.preserve_prompts(requests)
            enc = encode_prompts(pipe, [p for pair in pairs for p in pair] + preserve, hp.encode_batch_size,
                                 self.progress)
        with timer("solve"):
            rows = build_rows(enc, pairs, preserve, hp.tokens, _equivalent_ids(pipe.tokenizer))
            names = projection_names(pipe.unet, hp.with_to_k, hp.with_to_v)
            if not names:
                raise RequestError(f"{self.name}: the pipeline's UNet has no cross-attention (attn2) modules")
            from editors.weights import get_tensor

            weights = {n: get_tensor(pipe, n) for n in names}
            s_p = self.preserve_scale(preserve)
            with torch.no_grad():
                new = uce_solve(weights, enc.emb, rows, lamb=hp.lamb, erase_scale=hp.erase_scale,
                                preserve_scale=s_p, technique=hp.technique)
        info = {"n_pairs": len(pairs), "n_edit_tokens": int(rows.edit.shape[0]),
                "n_preserve_tokens": int(rows.preserve.shape[0]), "n_prompts_encoded": int(enc.emb.shape[0]),
                "preserve_scale": s_p, "n_matrices": len(names)}
        return EditResult(new, timer.timings, {}, info)


@register_editor("time", description="TIME: UCE's closed form without a preserve set (lambda 0.1, all tokens)")
class TIMEEditor(UCEEditor):
    """TIME as a UCE preset: every token of the source prompt aligned to the destination prompt, no preserve
    term. TIME updates implicit assumptions; erasure is not a TIME mode, so erase requests are rejected."""

    hparams_class = TIMEHparams
    supports = frozenset({"update", "rectify"})
