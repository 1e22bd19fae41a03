"""EMCID (Xiong et al., ECCV 2024): massive concept editing of the text encoder in two stages.

Stage I (:mod:`editors.emcid.stage1`) finds, per concept, the block-L output ``z* = v_src + δ*`` at the last
source token that makes the frozen UNet denoise the source prompt as it denoises the destination prompt.
Stage II (:mod:`editors.emcid.stage2`) writes all concepts' ``z*`` into the fc2 weights of ``layers`` with one
closed-form, preservation-weighted least-squares update per layer. Hyperparameters: ``editors/hparams/emcid/``.

Stage I results are cached per concept on disk (``<cache_dir>/emcid/stage1``, a content cache of
:mod:`iceb.utils.cache`), keyed by the model's weights, the scheduler config, the stage-I hparams and the
request (one key in every process), so an interrupted edit resumes; the second-moment statistics are cached by
:mod:`editors.stats` (``<cache_dir>/stats``) and their Cholesky factors in ``<cache_dir>/emcid/cholesky``.

Debiasing mode (``debias`` requests, :mod:`editors.emcid.debias`): stage I once per destination (cached like any
update towards that destination), the concept's value a weighted sum of those targets with weights tuned by the
official loop, each trial written for that concept alone and judged by the :data:`~editors.base.Judge` given with
:meth:`~editors.base.BaseEditor.set_judge`; then one stage II for every request. Update, erase and rectify
requests may share the edit.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar, Literal, Sequence

import torch
from tqdm.auto import tqdm

from editors import register_editor
from editors.base import BaseEditor, EditRequest, EditResult, RequestError
from editors.emcid.debias import balance_weights, judge_images, shares_of
from editors.emcid.stage1 import ConceptTarget, Stage1Settings, auto_batch_size, optimise_batch
from editors.emcid.stage2 import closed_form_delta, compute_deltas, cov_factor
from editors.hooks import fc2_name, subject_last_positions, text_layers
from editors.hparams import (  # declared field ranges
    Dim,
    Hparams,
    HparamsError,
    at_least,
    bounded,
    float_range,
    non_negative,
    positive,
)
from iceb.utils.cache import ContentCache
from iceb.utils.fingerprint import pipeline_fingerprint, weights_fingerprint
from iceb.utils.hashing import stable_hash
from iceb.utils.timing import Timer


@dataclasses.dataclass(frozen=True)
class EMCIDHparams(Hparams):
    """EMCID's hyperparameters; defaults are the ICEB headline configuration on SD-1.4."""

    #: what ``iceb tune`` searches (its trials run on the task's dev split); every other key keeps its preset value
    search_space: ClassVar[dict[str, Dim]] = {"v_lr": float_range(0.05, 0.5, log=True),
                                              "clamp_norm_factor": float_range(0.5, 4.0),
                                              "mom2_update_weight": float_range(10.0, 1.0e5, log=True),
                                              "edit_weight": float_range(0.2, 1.0)}


    layers: tuple[int, ...] = at_least(tuple(range(11)), 0)  # fc2 of these blocks are edited; δ sits at the last one
    # stage I
    v_num_grad_steps: int = at_least(200, 0)
    v_lr: float = positive(0.2)
    clamp_norm_factor: float = positive(1.5)
    v_weight_decay: float = non_negative(5.0e-4)
    text_align_weight: float = non_negative(0.01)  # 0 switches the text-alignment loss off
    train_steps: int | None = at_least(None, 1)  # sampling steps of the training images (None: 50, the pipeline default)
    train_size: int | None = at_least(None, 1)  # training-image size in pixels (None: the model's default)
    train_guidance: float = non_negative(7.5)
    random_flip: bool = True
    concepts_per_batch: int = at_least(0, 0)  # 0: fill the device (see stage1.auto_batch_size)
    # stage II
    mom2_update_weight: float = non_negative(4000.0)  # λ
    edit_weight: float = bounded(0.6, min=0, exclusive_min=True, max=1)  # α: λ_eff = λ(1-α)/α
    residual: Literal["fc2_output", "hidden"] = "fc2_output"  # official parity, or MEMIT's block-L residual
    mom2_dataset: str = "ccs"  # a name in editors.corpora.CORPORA (ICEB: coco, ccs, toy, mini) or a caption file
    mom2_n_samples: int = at_least(100000, 1)
    stats_batch_size: int = at_least(100, 1)
    model_fingerprint: str | None = None  # None: computed from the weights
    # debiasing mode (debias requests; editors.emcid.debias): official get_factors defaults
    debias_images: int = at_least(25, 1)  # judged images per trial of the weights
    debias_iterations: int = at_least(10, 1)  # the cap (sh_scripts/debias.sh: --max_iters=10)
    debias_step: float = positive(0.4)  # the first step; it decays cumulatively
    debias_tolerance: float = non_negative(0.02)  # stop at max |share - 1/k| <= this (0.019: never, as released)
    debias_prompt: str = "an image of {}"  # the judged prompt, the source in its slot

    def __post_init__(self) -> None:
        layers = list(self.layers)
        if not layers or layers != sorted(set(layers)) or layers[0] < 0:
            raise HparamsError(f"emcid: key 'layers' must be a non-empty ascending list of block indices, got {layers}")
        if not 0.0 < self.edit_weight <= 1.0:
            raise HparamsError(f"emcid: key 'edit_weight' must be in (0, 1], got {self.edit_weight}")
        if self.v_num_grad_steps < 0 or self.concepts_per_batch < 0 or self.mom2_n_samples < 1:
            raise HparamsError("emcid: v_num_grad_steps and concepts_per_batch must be >= 0, mom2_n_samples >= 1")
        if self.mom2_update_weight < 0:
            raise HparamsError(f"emcid: key 'mom2_update_weight' must be >= 0, got {self.mom2_update_weight}")
        if self.debias_prompt.count("{}") != 1:
            raise HparamsError(f"emcid: key 'debias_prompt' must hold exactly one '{{}}' slot, got {self.debias_prompt!r}")

    def stage1(self) -> Stage1Settings:
        return Stage1Settings(layer=self.layers[-1], steps=self.v_num_grad_steps, lr=self.v_lr,
                              clamp_norm_factor=self.clamp_norm_factor, v_weight_decay=self.v_weight_decay,
                              text_align_weight=self.text_align_weight, train_steps=self.train_steps,
                              train_size=self.train_size, train_guidance=self.train_guidance,
                              random_flip=self.random_flip)


# --------------------------------------------------------------------------------------------------
# cache keys: fingerprints are cheap and change whenever a weight changes (iceb.utils.fingerprint); every key is
# a stable_hash, the same in every process
# --------------------------------------------------------------------------------------------------
def base_fingerprint(pipe, hp: EMCIDHparams) -> str:
    """The text encoder without the fc2 weights EMCID writes: keys the statistics, so sequential rounds reuse
    the base model's statistics as the official code does."""
    return hp.model_fingerprint or weights_fingerprint(pipe.text_encoder, skip=("mlp.fc2.weight",))


def full_fingerprint(pipe, hp: EMCIDHparams) -> str:
    """Everything stage I depends on: text encoder (fc2 included), UNet, VAE, scheduler config.

    :func:`iceb.utils.fingerprint.pipeline_fingerprint` (the scheduler config with ``drop_private``: its private
    ``_use_default_values`` list follows PYTHONHASHSEED, which once made this key change in every process).
    """
    if hp.model_fingerprint:
        fc2 = [weights_fingerprint(text_layers(pipe.text_encoder)[l].mlp.fc2) for l in hp.layers]
        return stable_hash("emcid-model", hp.model_fingerprint, fc2)
    return pipeline_fingerprint(pipe, "emcid-model")


def stage1_key(fingerprint: str, s: Stage1Settings, r: EditRequest) -> str:
    """Cache key of one concept's stage-I result: the model, the stage-I settings and what the request asks."""
    return stable_hash("emcid-stage1", fingerprint, dataclasses.asdict(s), r.source, r.destination,
                       list(r.templates), r.seed, r.kind)


@register_editor("emcid", description="EMCID: dual self-distillation (stage I) + multi-layer closed form on "
                                      "text-encoder fc2 (stage II)")
class EMCIDEditor(BaseEditor):
    """EMCID on any CLIP-text-encoder diffusers pipeline; edits ``text_encoder ... layers.{l}.mlp.fc2.weight``."""

    hparams_class = EMCIDHparams
    supports = frozenset({"update", "erase", "rectify", "debias"})
    cost_phases = {"stats": "precompute", "stage1": "per_concept", "debias": "per_concept", "stage2": "solve"}
    cache_phases = {"stats": "precompute", "emcid-cholesky": "precompute", "emcid-stage1": "per_concept"}

    def __init__(self, hparams: EMCIDHparams | None = None, *, cache_dir: str | Path | None = None,
                 progress: bool = True) -> None:
        super().__init__(hparams, cache_dir=cache_dir, progress=progress)
        from editors.stats import stats_cache

        emcid_dir = self.cache_dir / "emcid" if self.cache_dir is not None else None
        self.stats_cache = stats_cache(self.cache_dir)
        self.stage1_cache = ContentCache(emcid_dir / "stage1" if emcid_dir else None, "emcid-stage1")
        self.factor_cache = ContentCache(emcid_dir / "cholesky" if emcid_dir else None, "emcid-cholesky")
        self._factors: dict[str, torch.Tensor] = {}  # stats key -> Cholesky factor of C

    # -- stage I ------------------------------------------------------------------------------------
    def compute_targets(self, pipe, requests: Sequence[EditRequest]) -> list[ConceptTarget]:
        """Stage I for every request: cached ones are loaded, the rest optimised in batches and cached."""
        hp = self.hparams
        s = hp.stage1()
        fp = full_fingerprint(pipe, hp)
        keys = [stage1_key(fp, s, r) for r in requests]
        out: list[ConceptTarget | None] = []
        for k in keys:
            d = self.stage1_cache.get(k)
            out.append(ConceptTarget(d["delta"], d["v_src"], d["losses"]) if d is not None else None)
        todo = [i for i, t in enumerate(out) if t is None]
        if not todo:
            return out  # type: ignore[return-value]
        per_batch = hp.concepts_per_batch or auto_batch_size(pipe, len(todo))
        # one bar of optimisation steps over every batch (a batch of 32 concepts takes minutes: a bar of
        # concepts would sit at 0/32 all that time); the postfix counts the concepts finished
        batches = -(-len(todo) // per_batch)
        bar = tqdm(total=batches * s.steps, desc=f"EMCID stage I ({len(todo)} concepts)", unit="step",
                   disable=not self.progress, leave=False)
        bar.set_postfix_str(f"0/{len(todo)} concepts")
        done = 0
        for start in range(0, len(todo), per_batch):
            idx = todo[start:start + per_batch]
            results = optimise_batch(pipe, [requests[i] for i in idx], s, on_step=lambda: bar.update(1))
            for i, res in zip(idx, results):
                out[i] = res
                self.stage1_cache.put(keys[i], {"delta": res.delta, "v_src": res.v_src, "losses": res.losses},
                                      {"source": requests[i].source, "destination": requests[i].destination,
                                       "model": fp})
            done += len(idx)
            bar.set_postfix_str(f"{done}/{len(todo)} concepts")
        bar.close()
        return out  # type: ignore[return-value]

    # -- statistics -------------------------------------------------------------------------------------
    def layer_stats(self, pipe) -> tuple[dict[int, torch.Tensor], dict[int, str]]:
        """C_l = E[k kᵀ] of each edited fc2's inputs over the hparams' corpus (cached on disk), and their keys."""
        from editors.corpora import load_corpus
        from editors.stats import second_moments, stats_key

        hp = self.hparams
        te = pipe.text_encoder
        blocks = text_layers(te)
        modules = {fc2_name(te, l).removesuffix(".weight"): blocks[l].mlp.fc2 for l in hp.layers}

        def loader():
            try:
                return load_corpus(hp.mom2_dataset)
            except (FileNotFoundError, ValueError) as err:
                raise FileNotFoundError(f"emcid: the statistics corpus of hparam mom2_dataset={hp.mom2_dataset!r} "
                                        f"is not available: {err}") from None

        fp = base_fingerprint(pipe, hp)
        moms = second_moments(te, pipe.tokenizer, modules, model_fingerprint=fp,
                              corpus_name=hp.mom2_dataset, n_samples=hp.mom2_n_samples, cache=self.stats_cache,
                              batch_size=hp.stats_batch_size, progress=self.progress, corpus_loader=loader)
        names = {l: fc2_name(te, l).removesuffix(".weight") for l in hp.layers}
        return ({l: moms[names[l]] for l in hp.layers},
                {l: stats_key(fp, names[l], hp.mom2_dataset, hp.mom2_n_samples) for l in hp.layers})

    def layer_factors(self, covs: dict[int, torch.Tensor], keys: dict[int, str]) -> dict[int, torch.Tensor]:
        """Cholesky factors of the C_l, on disk in float32 beside the statistics and in memory in float64 (the
        solves' precision, converted once per model rather than once per layer and edit): computed once per
        model, they make every later edit's solve O(d_k² N) instead of O(d_k³)."""
        return {l: self.per_model(self.factor_cache, self._factors, stable_hash("cholesky", keys[l]),
                                  lambda cov=cov: {"chol": cov_factor(cov)}, lambda d: d["chol"].to(torch.float64),
                                  {"stats_key": keys[l]})
                for l, cov in covs.items()}

    @staticmethod
    def per_model(cache: ContentCache, memo: dict, key: str, compute, to_memory, meta: dict) -> Any:
        """What is computed once per model: from memory, else the disk cache, else ``compute()`` (then stored);
        ``to_memory`` turns the stored form into the one the solves use, the same way on a hit and a miss."""
        if key not in memo:
            stored = cache.get(key)
            if stored is None:
                stored = compute()
                cache.put(key, stored, meta)
            memo[key] = to_memory(stored)
        return memo[key]

    # -- the edit ---------------------------------------------------------------------------------------
    def check_requests(self, requests: Sequence[EditRequest]) -> None:
        """The base checks, and a judge for debias requests (before any work)."""
        super().check_requests(requests)
        if any(r.kind == "debias" for r in requests) and self.judge is None:
            raise RequestError(
                f"{self.name}: debias requests need a judge to score the trial images (a callable(images, labels) "
                f"-> probabilities, see editors.base.Judge); give it with editor.set_judge(...). `iceb evaluate "
                f"--task debias` builds it from the task's metric (gender-clip)")

    def _positions(self, tok, requests: Sequence[EditRequest]) -> tuple[list[str], list[int], list[int]]:
        prompts, owners, positions = [], [], []
        for c, r in enumerate(requests):
            try:
                positions += subject_last_positions(tok, r.templates, r.source)
            except ValueError as err:
                raise RequestError(f"emcid: request {c} ({r.source!r}): {err}") from None
            prompts += r.source_prompts()
            owners += [c] * len(r.templates)
        return prompts, owners, positions

    def write(self, pipe, requests: Sequence[EditRequest], z: torch.Tensor, covs, factors, solver,
              progress: bool | None = None):
        """Stage II: the new fc2 weights writing ``z[c]`` for ``requests[c]`` (the pipeline is not changed).

        Returns:
            ``(tensors, res)``: the new weights keyed by pipeline name, and :func:`compute_deltas`'s output.
        """
        hp = self.hparams
        te, tok = pipe.text_encoder, pipe.tokenizer
        prompts, owners, positions = self._positions(tok, requests)
        res = compute_deltas(te, tok, prompts, owners, positions, z.float(), hp.layers, covs, hp.mom2_update_weight,
                             hp.edit_weight, residual=hp.residual, z_layer=hp.layers[-1],
                             progress=self.progress if progress is None else progress,
                             factors=factors, solver=solver, diagnostics=self.stage2_diagnostics)
        tensors = {}
        with torch.no_grad():
            for l, update in res.updates.items():  # W + L Rᵀ, no d×d_k float64 temporary
                tensors[fc2_name(te, l)] = update.added_to(text_layers(te)[l].mlp.fc2.weight)
        return tensors, res

    def balance(self, pipe, request: EditRequest, parts: Sequence[ConceptTarget], covs, stat_keys):
        """A debias request's value: the official weight loop over its destinations' stage-I targets.

        Each trial writes ``Σ w_j z_j`` for this request alone, renders ``debias_images`` images of
        ``debias_prompt`` with the request's seed, and counts the judge's argmax over the destinations.

        Returns:
            ``(target, balance)``: the :class:`ConceptTarget` of ``Σ w_j z_j`` and the loop's
            :class:`~editors.emcid.debias.Balance`.
        """
        from editors.weights import applied

        hp = self.hparams
        zs = torch.stack([p.target for p in parts]).float()  # (k, d)
        labels = list(request.destinations)
        factors, solver = self.stage2_solver(covs, stat_keys, 1)
        prompt = hp.debias_prompt.format(request.source)

        def weighted(weights: list[float]) -> torch.Tensor:
            return sum(w * z for w, z in zip(weights, zs))  # the official sum(factor * z)

        def evaluate(weights: list[float]) -> list[float]:
            tensors, _ = self.write(pipe, [request], weighted(weights)[None], covs, factors, solver, progress=False)
            with applied(pipe, tensors):
                images = judge_images(pipe, prompt, hp.debias_images, request.seed, steps=hp.train_steps,
                                      size=hp.train_size, guidance=hp.train_guidance)
                probs = self.judge(images, labels)
            return shares_of(probs, len(labels))

        result = balance_weights(evaluate, len(labels), iterations=hp.debias_iterations, step=hp.debias_step,
                                 tolerance=hp.debias_tolerance)
        z = weighted(result.weights)
        v_src = parts[0].v_src.float()
        return ConceptTarget(z - v_src, v_src, torch.stack([p.losses for p in parts]).mean(0)), result

    def edit(self, pipe: Any, requests: Sequence[EditRequest]) -> EditResult:
        self.check_requests(requests)
        hp = self.hparams
        te, tok = pipe.text_encoder, pipe.tokenizer
        n_blocks = len(text_layers(te))
        if hp.layers[-1] >= n_blocks:
            raise HparamsError(f"emcid: layers {list(hp.layers)} do not fit the {n_blocks}-block text encoder")
        self._positions(tok, requests)  # a source missing from its prompts fails before any work
        # stage I: one target per request, or one per destination of a debias request
        stage1_requests, slots = [], []
        for r in requests:
            parts = [r.towards(d) for d in r.destinations] if r.kind == "debias" else [r]
            slots.append(range(len(stage1_requests), len(stage1_requests) + len(parts)))
            stage1_requests += parts
        timer = Timer()
        hits_before = self.stage1_cache.hits
        with timer("stage1"):
            flat = self.compute_targets(pipe, stage1_requests)
        with timer("stats"):
            covs, stat_keys = self.layer_stats(pipe)
            factors, solver = self.stage2_solver(covs, stat_keys, len(requests))
        targets, debias = [], {}
        with timer("debias"):
            for c, r in enumerate(requests):
                parts = [flat[j] for j in slots[c]]
                if r.kind != "debias":
                    targets.append(parts[0])
                    continue
                target, result = self.balance(pipe, r, parts, covs, stat_keys)
                targets.append(target)
                debias[r.request_id or f"{c}:{r.source}"] = {"destinations": list(r.destinations),
                                                              **result.to_info()}
        with timer("stage2"):
            z = torch.stack([t.target for t in targets]).float()
            tensors, res = self.write(pipe, requests, z, covs, factors, solver)
        ratios = [float(t.delta.norm() / t.v_src.norm()) for t in targets]
        at_clamp = [float(t.delta.norm() / t.v_src.norm()) >= hp.clamp_norm_factor * (1 - 1e-4) for t in flat]
        losses = {}
        for c, r in enumerate(requests):
            name = r.request_id or f"{c}:{r.source}"
            for j in slots[c]:
                key = f"stage1/{name}" if r.kind != "debias" else f"stage1/{name}->{stage1_requests[j].destination}"
                losses[key] = flat[j].losses.sum(1).tolist()
        info = {"requests": len(requests), "layers": list(hp.layers), "stage1_cache_hits": self.stage1_cache.hits - hits_before,
                "delta_norm_ratio": ratios,
                # how many δ ended on the norm clamp (‖δ‖ = clamp · ‖v_src‖): a sign that stage I wanted to go
                # further than allowed, which the tuning of clamp_norm_factor and the step count should see
                "stage1_at_clamp": sum(at_clamp),
                # per request (its id, else "index:source"): whether its δ ended on the clamp
                "stage1_at_clamp_by_request": {r.request_id or f"{c}:{r.source}": bool(at_clamp[c])
                                               for c, r in enumerate(requests)} if len(flat) == len(requests) else {},
                "stage2_prompts": res.n_prompts, "stage2_tokens": res.n_tokens,
                **({"debias": debias} if debias else {}),
                **self.stage2_info(pipe, res, covs)}
        return EditResult(tensors, timer.timings, losses, info)

    # -- stage II's solve: EMCID's; subclasses (emcid-ns) replace it ------------------------------------------
    stage2_diagnostics = False  # keep each layer's keys and residuals (for stage2_info)

    def stage2_solver(self, covs: dict[int, torch.Tensor], stat_keys: dict[int, str], n: int):
        """``(factors, solver)`` for :func:`~editors.emcid.stage2.compute_deltas`: EMCID's own solve, with the
        cached Cholesky factors when N fits under d_k."""
        fits = n <= min(c.shape[0] for c in covs.values())
        return (self.layer_factors(covs, stat_keys) if fits else None), None

    def stage2_info(self, pipe, res, covs) -> dict[str, Any]:
        """Extra per-edit information for the result's info (none for EMCID)."""
        return {}


__all__ = ["EMCIDEditor", "EMCIDHparams", "closed_form_delta"]
