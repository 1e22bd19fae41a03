"""ReFACT (Arad, Orgad, Belinkov): ROME's rank-one update of one text-encoder ``mlp.fc2``.

Per request (source -> destination), on the model as the previous requests left it:

1. key: k̄ = the fc2 input at the subject's last token, averaged over ReFACT's 9 context templates;
   u = C⁻¹ k̄ / ||C⁻¹ k̄|| with C the uncentred second moment of fc2 inputs over a caption corpus
   (:mod:`editors.stats`).
2. value: δ added to the MLP output at the subject's last token of every rewriting prompt (the source
   itself plus the 9 templates) is found by Adam under ReFACT's ``contrastive_text`` objective:
   mean −log softmax_t(−||e(p) − f(t)||₂)[destination] over the prompts p, with t ∈ {destination, source}
   encoded by the *clean* model, plus v_weight_decay·||δ|| / ||h₀||²; δ is clamped to
   clamp_norm_factor·||h₀|| and the loop stops once the mean probability of the destination passes
   v_prob_threshold.
3. W ← W + v uᵀ with v = (h₀ + δ − fc2(k_r)) / (k_rᵀ u), so that fc2(k_r) = h₀ + δ exactly at the
   request prompt's key k_r, and keys with kᵀ C⁻¹ k̄ = 0 are untouched.

e(p) is the pooled (EOS) text feature, passed through ``text_projection`` when the encoder has one. SD's
``CLIPTextModel`` has none (ReFACT reads the projection of a full CLIPModel), so there the pooled feature
is used directly: a documented deviation.

Several requests in one edit (the harness's ``--mode batch``: all N requests in one :meth:`ROMEEditor.edit`
call) are solved as the ``solve`` hparam says:

- ``solve: chained`` (default; ReFACT's own ``multiple_edits.py``): steps 1-3 request after request, each
  key, value and rank-one update computed on the model the previous updates produced, inside the one edit:
  W_N = W_0 + Σ_i v_i u_iᵀ, a sum of N rank-one terms where term i depends on terms 1..i-1. This is the
  method's own multi-request algorithm, so it *is* ReFACT's batch edit; the harness never sees the
  intermediate models, and ``--mode sequential-R`` (R separate edits) is a different protocol.
- ``solve: joint``: every key and value computed on the clean model, then one MEMIT-style least-squares
  solve Δ = R K̄ᵀ (λ C + K̄ K̄ᵀ)⁻¹ for all requests at once (λ = ``mom2_update_weight``).
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, ClassVar, Literal, Sequence

import torch
from tqdm.auto import tqdm

from editors import register_editor
from editors.base import BaseEditor, EditRequest, EditResult, RequestError
from editors.hooks import (
    StopForward,
    add_at_positions,
    capture,
    fc2_name,
    stop_after,
    subject_last_positions,
    text_layers,
    tokenize,
)
from editors.hparams import (  # declared field ranges
    Dim,
    Hparams,
    HparamsError,
    at_least,
    bounded,
    float_range,
    int_range,
    non_negative,
    positive,
)
from editors.weights import applied, frozen, get_tensor
from iceb.utils.fingerprint import weights_fingerprint
from iceb.utils.timing import Timer

REFACT_TEMPLATES = (
    "{} in a realistic style portrait image", "{}, a portrait", "realistic painting of {}", "a current image of {}",
    "{}, news image", "a beautiful photograph of {}", "realistic drawing of {}", "{}, realistic portrait",
    "{} in a photo",
)
#: CLIP's trained logit scale (exp(4.6052)); used by the cosine metric, as ReFACT multiplies by the model's scale.
CLIP_LOGIT_SCALE = 100.0


@dataclasses.dataclass(frozen=True)
class ROMEHparams(Hparams):
    """ReFACT's defaults (README best RoAD command + its JSON hparams)."""

    #: what ``iceb tune`` searches (its trials run on the task's dev split); every other key keeps its preset value
    search_space: ClassVar[dict[str, Dim]] = {"layer": int_range(0, 2),
                                              "v_lr": float_range(0.01, 0.5, log=True),
                                              "clamp_norm_factor": float_range(1.0, 20.0, log=True),
                                              "mom2_update_weight": float_range(100.0, 1.0e5, log=True)}


    layer: int = at_least(7, 0)
    context_templates: tuple[str, ...] = REFACT_TEMPLATES
    v_lr: float = positive(0.05)
    v_max_grad_steps: int = at_least(100, 0)
    v_prob_threshold: float = bounded(0.99, min=0, max=1)
    v_weight_decay: float = non_negative(0.1)  # the JSON's value: the README's 0.01 flag is never read by compute_v
    clamp_norm_factor: float = positive(4.0)
    similarity: Literal["l2", "cosine"] = "l2"
    mom2_corpus: str = "coco"  # ReFACT: WikiText-103 (not available offline); "synthetic" for test models
    mom2_n_samples: int = at_least(100000, 1)
    mom2_batch_size: int = at_least(100, 1)
    # how the requests of one edit combine (see the module docstring); not the harness's --mode
    solve: Literal["chained", "joint"] = "chained"
    mom2_update_weight: float = non_negative(15000.0)  # λ of the joint (MEMIT-like) solve only

    def __post_init__(self) -> None:
        for t in self.context_templates:
            if t.count("{}") != 1:
                raise HparamsError(f"context template {t!r} must hold exactly one '{{}}' slot")
        if not self.context_templates:
            raise HparamsError("context_templates is empty")
        if self.v_max_grad_steps < 0 or self.v_lr <= 0 or self.clamp_norm_factor <= 0:
            raise HparamsError("v_max_grad_steps must be >= 0, v_lr and clamp_norm_factor > 0")
        if self.mom2_n_samples < 1 or self.mom2_update_weight < 0:
            raise HparamsError("mom2_n_samples must be >= 1 and mom2_update_weight >= 0")


def synthetic_corpus(n: int = 400) -> list[str]:
    """A deterministic caption list for test models that have no real corpus (numbers mean nothing)."""
    nouns = ["cat", "dog", "car", "tree", "house", "boat", "chair", "apple", "bird", "river", "mountain", "city",
             "person", "horse", "flower", "table", "road", "beach", "clock", "train"]
    adjs = ["red", "small", "old", "bright", "wooden", "large", "quiet", "blue", "dark", "sunny"]
    frames = ["a photo of a {a} {n}", "a {a} {n} next to a {m}", "an image of the {n}", "a {n} and a {m}",
              "painting of a {a} {n} in the {m}", "{n}"]
    out = []
    i = 0
    while len(out) < n:
        out.append(frames[i % len(frames)].format(a=adjs[i % len(adjs)], n=nouns[i % len(nouns)],
                                                  m=nouns[(7 * i + 3) % len(nouns)]))
        i += 1
    return out


@register_editor("rome", description="ReFACT (ROME-style): rank-one updates of one text-encoder fc2, chained "
                                     "request by request inside one edit (hparam solve)")
class ROMEEditor(BaseEditor):
    """ReFACT on the pipeline's text encoder. Updates and rectifications (source -> destination text);
    ReFACT has no erase mode, so erase requests are rejected."""

    hparams_class = ROMEHparams
    cost_phases = {"stats": "precompute", "per_concept": "per_concept", "solve": "solve"}
    supports = frozenset({"update", "rectify"})

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._mom2: dict[str, torch.Tensor] = {}
        self.last_edits: list[dict[str, torch.Tensor]] = []  # per request: key, u, target (for checks)

    def check_requests(self, requests: Sequence[EditRequest]) -> None:
        try:
            super().check_requests(requests)
        except RequestError as err:
            if any(isinstance(r, EditRequest) and r.kind == "erase" for r in requests):
                raise RequestError(f"{err}. ReFACT rewrites a prompt towards a destination text and has no "
                                   f"erase mode; use uce or esd-x/esd-u for erasure") from None
            raise

    # helpers ----------------------------------------------------------------------------------------
    def _modules(self, pipe):
        layers = text_layers(pipe.text_encoder)
        L = self.hparams.layer
        if not 0 <= L < len(layers):
            raise HparamsError(f"rome: layer {L} is out of range; the text encoder has {len(layers)} layers")
        return layers[L].mlp, layers[L].mlp.fc2, fc2_name(pipe.text_encoder, L)

    def second_moment(self, pipe) -> torch.Tensor:
        """C = E[k kᵀ] of the fc2 inputs of the edited layer, from the (cached) statistics."""
        from editors.stats import second_moments, stats_cache, stats_key

        hp = self.hparams
        _, fc2, name = self._modules(pipe)
        fp = weights_fingerprint(pipe.text_encoder)
        key = stats_key(fp, name, hp.mom2_corpus, hp.mom2_n_samples)
        if key not in self._mom2:
            def loader():
                if hp.mom2_corpus == "synthetic":
                    return synthetic_corpus()
                from editors.corpora import load_corpus

                return load_corpus(hp.mom2_corpus)

            cache = stats_cache(self.cache_dir)
            out = second_moments(pipe.text_encoder, pipe.tokenizer, {name: fc2}, model_fingerprint=fp,
                                 corpus_name=hp.mom2_corpus, n_samples=hp.mom2_n_samples, cache=cache,
                                 batch_size=hp.mom2_batch_size, progress=self.progress, corpus_loader=loader)
            self._mom2[key] = out[name]
        return self._mom2[key]

    @torch.no_grad()
    def _fc2_io(self, pipe, prompts: Sequence[str], positions: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(fc2 input, fc2 output) at ``positions[i]`` of ``prompts[i]``; stops the forward after fc2."""
        _, fc2, _ = self._modules(pipe)
        te = pipe.text_encoder
        dev = next(te.parameters()).device
        ids, _ = tokenize(pipe.tokenizer, prompts, dev, pad_to_max=False)  # causal: padding changes nothing here
        with capture({"fc2": fc2}, inputs=True, outputs=True) as rec, stop_after(fc2):
            try:
                te(ids, attention_mask=None)
            except StopForward:
                pass
        rows = torch.arange(len(prompts), device=dev)
        cols = torch.tensor(list(positions), device=dev)
        return rec.inputs["fc2"][rows, cols].double(), rec.outputs["fc2"][rows, cols].double()

    def _pooled(self, pipe, ids: torch.Tensor) -> torch.Tensor:
        te = pipe.text_encoder
        out = te(ids, attention_mask=None)
        pooled = out.pooler_output if hasattr(out, "pooler_output") else out[1]
        proj = getattr(te, "text_projection", None)
        return proj(pooled) if isinstance(proj, torch.nn.Module) else pooled

    def _scores(self, e: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        if self.hparams.similarity == "l2":
            return -torch.cdist(e.float(), f.float())
        return CLIP_LOGIT_SCALE * torch.nn.functional.normalize(e, dim=-1) @ torch.nn.functional.normalize(f, dim=-1).T

    @torch.no_grad()
    def text_targets(self, pipe, request: EditRequest) -> torch.Tensor:
        """f(destination), f(source) from the model as it is now (call on the clean model)."""
        dev = next(pipe.text_encoder.parameters()).device
        ids, _ = tokenize(pipe.tokenizer, [request.destination, request.source], dev, pad_to_max=False)
        return self._pooled(pipe, ids).float()

    def compute_key(self, pipe, request: EditRequest) -> torch.Tensor:
        """k̄: fc2 input at the subject's last token, averaged over the context templates."""
        tpl = list(self.hparams.context_templates)
        pos = subject_last_positions(pipe.tokenizer, tpl, request.source)
        k, _ = self._fc2_io(pipe, [t.format(request.source) for t in tpl], pos)
        return k.mean(0)

    def compute_delta(self, pipe, request: EditRequest, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
        """(δ, h₀, losses): ReFACT's contrastive_text optimisation of the MLP-output shift at the subject token."""
        hp = self.hparams
        mlp, _, _ = self._modules(pipe)
        te = pipe.text_encoder
        dev = next(te.parameters()).device
        templates = list(dict.fromkeys(["{}"] + list(hp.context_templates)))
        prompts = [t.format(request.source) for t in templates]
        pos = subject_last_positions(pipe.tokenizer, templates, request.source)
        ids, _ = tokenize(pipe.tokenizer, prompts, dev, pad_to_max=False)
        rows = torch.arange(len(prompts), device=dev)
        cols = torch.tensor(pos, device=dev)
        # h₀: the MLP (= fc2) output at the first prompt, the request prompt itself, encoded alone as in edit()
        h0 = self._fc2_io(pipe, prompts[:1], pos[:1])[1][0].float()
        h0_norm = h0.norm()
        delta = torch.zeros_like(h0, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=hp.v_lr)
        losses: list[float] = []
        max_norm = hp.clamp_norm_factor * h0_norm
        with frozen(te):
            for _step in range(hp.v_max_grad_steps):
                with add_at_positions(mlp, rows, cols, delta.unsqueeze(0).expand(len(prompts), -1)):
                    e = self._pooled(pipe, ids)
                logp = torch.log_softmax(self._scores(e, targets.to(dev)), dim=-1)[:, 0]
                loss = -logp.mean() + hp.v_weight_decay * delta.norm() / h0_norm ** 2
                losses.append(float(loss.detach()))
                if float(logp.detach().exp().mean()) > hp.v_prob_threshold:
                    break
                (grad,) = torch.autograd.grad(loss, [delta])
                delta.grad = grad
                opt.step()
                with torch.no_grad():
                    n = delta.norm()
                    if n > max_norm:
                        delta.mul_(max_norm / n)
        return delta.detach(), h0, losses

    # edit -------------------------------------------------------------------------------------------
    def edit(self, pipe: Any, requests: Sequence[EditRequest]) -> EditResult:
        self.check_requests(requests)
        hp = self.hparams
        _, fc2, name = self._modules(pipe)
        timer = Timer()
        with timer("stats"):
            C = self.second_moment(pipe).to(fc2.weight.device, torch.float64)
        with timer("edit"):
            with timer("per_concept"):
                targets = [self.text_targets(pipe, r) for r in requests]  # from the clean model, as ReFACT's fresh CLIP
            losses: dict[str, list[float]] = {}
            self.last_edits = []
            W0 = get_tensor(pipe, name).detach()
            W = W0.double().clone()
            bar = tqdm(total=len(requests), desc="ReFACT edits", disable=not self.progress, leave=False)
            if hp.solve == "chained":
                with contextlib.ExitStack() as stack:
                    for i, r in enumerate(requests):
                        with timer("per_concept"):
                            k_bar = self.compute_key(pipe, r)
                            delta, h0, ls = self.compute_delta(pipe, r, targets[i])
                            pos = subject_last_positions(pipe.tokenizer, ["{}"], r.source)
                            k_r, out_r = self._fc2_io(pipe, [r.source], pos)
                        with timer("solve"):
                            u = torch.linalg.solve(C, k_bar)
                            u = u / u.norm()
                            target = out_r[0] + delta.double()  # h₀ + δ (h₀ is the request prompt's fc2 output)
                            v = (target - out_r[0]) / (k_r[0] @ u)
                            W = W + torch.outer(v, u)
                        self.last_edits.append({"key": k_r[0], "u": u, "target": target, "k_bar": k_bar})
                        losses[r.request_id or f"{i}:{r.source}"] = ls
                        stack.enter_context(applied(pipe, {name: W.to(W0.dtype)}))
                        bar.update(1)
            else:
                keys, resid = [], []
                for i, r in enumerate(requests):
                    with timer("per_concept"):
                        k_bar = self.compute_key(pipe, r)
                        delta, h0, ls = self.compute_delta(pipe, r, targets[i])
                        pos = subject_last_positions(pipe.tokenizer, ["{}"], r.source)
                        _, out_r = self._fc2_io(pipe, [r.source], pos)
                    keys.append(k_bar)
                    resid.append(delta.double())  # h₀ + δ − fc2(k_r), with h₀ = fc2(k_r)
                    losses[r.request_id or f"{i}:{r.source}"] = ls
                    self.last_edits.append({"k_bar": k_bar, "target": out_r[0] + delta.double()})
                    bar.update(1)
                with timer("solve"):
                    K = torch.stack(keys, 1)  # (d_k, n)
                    R = torch.stack(resid, 1)  # (d, n)
                    A = hp.mom2_update_weight * C + K @ K.T
                    W = W + torch.linalg.solve(A, K @ R.T).T  # R Kᵀ A⁻¹ (A symmetric)
            bar.close()
        new = W.to(W0.dtype)
        delta_w = (W - W0.double())
        info = {"layer": hp.layer, "tensor": name, "solve": hp.solve, "n_requests": len(requests),
                "steps": [len(v) for v in losses.values()], "delta_norm": float(delta_w.norm())}
        return EditResult({name: new}, timer.timings, losses, info)
