"""ESD (Gandikota et al., ICCV 2023): erase a concept by fine-tuning the UNet against a frozen teacher.

The student's noise prediction for the concept c is regressed onto the frozen model's prediction with
*negative* classifier-free guidance away from c::

    target = eps*(x_t, "", t) - eta * (eps*(x_t, c, t) - eps*(x_t, "", t))
    loss   = || eps_student(x_t, c, t) - target ||^2

No data is needed: x_t comes from a partial DDIM run (guidance ``start_guidance``) of the frozen model on c,
stopped at a random DDIM level j (0 = least noisy); the training timestep is drawn from the DDPM bin of that
level, ``[round(j/S*T), round((j+1)/S*T))``, as the original code does (or is the DDIM timestep itself with
``timestep_sampling: exact``, as the newer diffusers script does). Several concepts are erased in one run by
drawing one concept per iteration from a seeded generator.

Memory: only one UNet is held. The teacher is the same module called through
:func:`torch.func.functional_call` with a frozen copy of the *trainable* tensors, so the teacher never changes
and the extra memory is one copy of the trained parameters (plus Adam's state).

ESD-x trains every UNet parameter whose name contains ``attn2`` (the cross-attentions); ESD-u trains
everything except ``attn2``, the time embedding (``time_embedding.*``) and the output norm/conv
(``conv_norm_out.*``, ``conv_out.*``), the original code's ``xattn``/``noxattn`` sets in diffusers names.

ESD only erases (``supports == {"erase"}``). A request with a destination is rejected unless
``treat_updates_as_erase: true``, which erases the source towards the unconditional prompt and ignores the
destination.

Training checkpoints (the trained tensors, Adam's state, the RNG state and the losses) are written every
``checkpoint_every`` iterations into the content cache ``<cache_dir>/esd`` (:mod:`iceb.utils.cache`) under a
key that hashes the model weights, the hparams and the requests; the same edit started again resumes from there and gives the same result, bit
for bit on the same device, as an uninterrupted run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from editors import register_editor
from editors.base import BaseEditor, EditRequest, EditResult, RequestError
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
from editors.weights import frozen
from iceb.utils.cache import ContentCache
from iceb.utils.fingerprint import weights_fingerprint
from iceb.utils.hashing import seed_from, stable_hash
from iceb.utils.timing import Timer

CHECKPOINT_FORMAT = "iceb-esd-1"


@dataclasses.dataclass(frozen=True)
class ESDHparams(Hparams):
    """Defaults are the original paper's (CompVis code): 1000 iterations of Adam at lr 1e-5, eta 1,
    sampling guidance 3, 50 DDIM steps, 512 px."""

    #: what ``iceb tune`` searches (its trials run on the task's dev split); every other key keeps its preset value
    search_space: ClassVar[dict[str, Dim]] = {"lr": float_range(5.0e-5, 1.0e-3, log=True),
                                              "negative_guidance": float_range(0.5, 3.0)}


    iterations: int = at_least(1000, 1)
    lr: float = positive(1.0e-5)
    negative_guidance: float = 1.0  # eta
    start_guidance: float = non_negative(3.0)  # CFG scale of the DDIM run that makes x_t
    ddim_steps: int = at_least(50, 1)
    image_size: int | None = at_least(512, 1)  # None: the pipeline's default size (unet sample_size * vae scale factor)
    timestep_sampling: Literal["bin", "exact"] = "bin"  # bin: original code; exact: the DDIM timestep itself
    sample_with: Literal["teacher", "student"] = "teacher"  # who runs the DDIM that makes x_t
    use_templates: bool = False  # False: the bare concept name as prompt (the paper); True: a random template
    treat_updates_as_erase: bool = False  # accept update/rectify requests: erase their source, ignore the dest
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # autocast, on CUDA only
    gradient_checkpointing: bool = False
    checkpoint_every: int = at_least(100, 0)  # iterations between resumable checkpoints (0: none)
    seed: int = bounded(0, min=0, max=2**63 - 1)

    def __post_init__(self) -> None:
        for key in ("iterations", "ddim_steps"):
            if getattr(self, key) < 1:
                raise HparamsError(f"ESD hparam {key!r} must be >= 1, got {getattr(self, key)}")
        if self.lr <= 0:
            raise HparamsError(f"ESD hparam 'lr' must be > 0, got {self.lr}")
        if self.checkpoint_every < 0:
            raise HparamsError(f"ESD hparam 'checkpoint_every' must be >= 0, got {self.checkpoint_every}")
        if self.image_size is not None and self.image_size < 1:
            raise HparamsError(f"ESD hparam 'image_size' must be positive or null, got {self.image_size}")


# --------------------------------------------------------------------------------------------------
# parameter sets
# --------------------------------------------------------------------------------------------------
def esd_x_selector(name: str) -> bool:
    """ESD-x (``xattn``): every parameter of a cross-attention module."""
    return "attn2" in name


_U_EXCLUDED_PREFIXES = ("time_embedding.", "conv_norm_out.", "conv_out.")


def esd_u_selector(name: str) -> bool:
    """ESD-u (``noxattn``): all but cross-attention, the time embedding and the output norm/conv."""
    return "attn2" not in name and not name.startswith(_U_EXCLUDED_PREFIXES)


def select_parameters(unet: torch.nn.Module, method: str) -> list[str]:
    """UNet parameter names (without the ``unet.`` prefix) trained by ``method`` ("esd-x" or "esd-u")."""
    selector = {"esd-x": esd_x_selector, "esd-u": esd_u_selector}.get(method)
    if selector is None:
        raise ValueError(f"unknown ESD parameter set {method!r}; use 'esd-x' or 'esd-u'")
    names = [n for n, _ in unet.named_parameters() if selector(n)]
    if not names:
        raise ValueError(f"{method}: the UNet has no parameters in this set (no attn2 modules?)")
    return names


# --------------------------------------------------------------------------------------------------
# one training run
# --------------------------------------------------------------------------------------------------
def ddim_level_timestep(level: int, steps: int, train_timesteps: int, mode: str,
                        generator: torch.Generator, ddim_timestep: int) -> int:
    """The DDPM timestep for DDIM level ``level`` (0 = least noisy) of ``steps``.

    ``bin``: uniform in ``[round(level/steps*T), round((level+1)/steps*T))`` (the original code);
    ``exact``: the DDIM scheduler's own timestep for that level.
    """
    if mode == "exact":
        return int(ddim_timestep)
    lo = round(level / steps * train_timesteps)
    hi = max(lo + 1, round((level + 1) / steps * train_timesteps))
    t = int(torch.randint(lo, hi, (1,), generator=generator).item())
    return min(t, train_timesteps - 1)


class ESDRun:
    """The state of one ESD fine-tuning: the UNet (student), the frozen originals (teacher), the optimizer,
    the prompt embeddings and the RNG. Exposed so tests can check the teacher and the target directly."""

    def __init__(self, unet: torch.nn.Module, scheduler_config: Any, names: Sequence[str],
                 concept_embeds: list[torch.Tensor], uncond_embed: torch.Tensor, hp: ESDHparams,
                 latent_shape: tuple[int, int, int], seed: int) -> None:
        from diffusers import DDIMScheduler

        self.unet = unet
        self.hp = hp
        self.names = list(names)
        params = dict(unet.named_parameters())
        self.params = [params[n] for n in self.names]
        # The teacher: a frozen copy of only the trainable tensors; everything else is shared and frozen.
        self.originals = {n: p.detach().clone() for n, p in zip(self.names, self.params)}
        self.concept_embeds = concept_embeds  # per concept: (n_prompts, 77, d)
        self.uncond_embed = uncond_embed  # (1, 77, d)
        self.latent_shape = latent_shape
        self.device = self.params[0].device
        self.generator = torch.Generator("cpu").manual_seed(seed)
        self.scheduler = DDIMScheduler.from_config(scheduler_config)
        self.scheduler.set_timesteps(hp.ddim_steps)
        self.train_timesteps = int(self.scheduler.config.num_train_timesteps)
        self.optimizer = torch.optim.Adam(self.params, lr=hp.lr)
        amp = hp.mixed_precision != "no" and self.device.type == "cuda"
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(hp.mixed_precision)
        self.amp = amp
        self.scaler = torch.amp.GradScaler("cuda") if amp and hp.mixed_precision == "fp16" else None
        self.iteration = 0
        self.losses: list[float] = []

    # -- forwards ---------------------------------------------------------------------------------
    def _autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _t(self, t: int, batch: int) -> torch.Tensor:
        return torch.full((batch,), int(t), device=self.device, dtype=torch.long)

    @torch.no_grad()
    def teacher(self, z: torch.Tensor, t: int, emb: torch.Tensor) -> torch.Tensor:
        """The frozen model's noise prediction: the UNet with the original trainable tensors swapped in."""
        with self._autocast():
            out = torch.func.functional_call(self.unet, self.originals, (z, self._t(t, z.shape[0])),
                                             {"encoder_hidden_states": emb, "return_dict": False})[0]
        return out.float()

    def student(self, z: torch.Tensor, t: int, emb: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            out = self.unet(z, self._t(t, z.shape[0]), encoder_hidden_states=emb, return_dict=False)[0]
        return out.float()

    @torch.no_grad()
    def target(self, z: torch.Tensor, t: int, emb_c: torch.Tensor) -> torch.Tensor:
        """``eps*(x_t, "", t) - eta (eps*(x_t, c, t) - eps*(x_t, "", t))`` from the teacher (one batched call)."""
        n = z.shape[0]
        e = self.teacher(torch.cat([z, z]), t, torch.cat([self.uncond_embed.expand(n, -1, -1), emb_c]))
        e_u, e_c = e.chunk(2)
        return e_u - self.hp.negative_guidance * (e_c - e_u)

    @torch.no_grad()
    def sample_xt(self, emb_c: torch.Tensor, level: int, noise: torch.Tensor) -> tuple[torch.Tensor, int]:
        """DDIM with CFG from ``noise`` down to DDIM level ``level`` (0 = least noisy); returns (x_t, the
        DDIM timestep of that level)."""
        steps = self.scheduler.timesteps  # descending
        n_run = len(steps) - 1 - level
        z = noise
        predict = self.teacher if self.hp.sample_with == "teacher" else self._student_nograd
        g = self.hp.start_guidance
        for t in steps[:n_run]:
            e = predict(torch.cat([z, z]), int(t), torch.cat([self.uncond_embed, emb_c]))
            e_u, e_c = e.chunk(2)
            z = self.scheduler.step(e_u + g * (e_c - e_u), int(t), z, eta=0.0, return_dict=False)[0]
        return z, int(steps[n_run])

    @torch.no_grad()
    def _student_nograd(self, z, t, emb):
        return self.student(z, t, emb)

    # -- one iteration ----------------------------------------------------------------------------
    def draw(self) -> dict[str, Any]:
        """All randomness of one iteration, from the run's generator, in a fixed order."""
        g = self.generator
        concept = int(torch.randint(len(self.concept_embeds), (1,), generator=g).item())
        prompt = int(torch.randint(self.concept_embeds[concept].shape[0], (1,), generator=g).item())
        level = int(torch.randint(self.hp.ddim_steps, (1,), generator=g).item())
        noise = torch.randn((1, *self.latent_shape), generator=g)
        return {"concept": concept, "prompt": prompt, "level": level, "noise": noise}

    def step(self, timer: Timer | None = None) -> float:
        timer = timer or Timer()
        d = self.draw()
        emb_c = self.concept_embeds[d["concept"]][d["prompt"]:d["prompt"] + 1]
        noise = d["noise"].to(self.device, dtype=self.uncond_embed.dtype)
        with timer("sample_xt"):
            z, ddim_t = self.sample_xt(emb_c, d["level"], noise)
        t = ddim_level_timestep(d["level"], self.hp.ddim_steps, self.train_timesteps, self.hp.timestep_sampling,
                                self.generator, ddim_t)
        with timer("teacher"):
            target = self.target(z, t, emb_c)
        with timer("student"):
            pred = self.student(z, t, emb_c)
            loss = F.mse_loss(pred, target)
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                self.optimizer.step()
        self.iteration += 1
        value = float(loss.detach())
        self.losses.append(value)
        return value

    # -- checkpoints ------------------------------------------------------------------------------
    def save(self, cache: ContentCache, key: str, final: bool = False) -> None:
        """Trainable tensors, Adam state, RNG state and losses as one cache entry (atomic write)."""
        tensors: dict[str, torch.Tensor] = {}
        for n, p in zip(self.names, self.params):
            tensors[f"param/{n}"] = p.detach().cpu().contiguous()
            st = self.optimizer.state.get(p)
            if st and not final:
                tensors[f"adam/{n}/exp_avg"] = st["exp_avg"].detach().cpu().contiguous()
                tensors[f"adam/{n}/exp_avg_sq"] = st["exp_avg_sq"].detach().cpu().contiguous()
                tensors[f"adam/{n}/step"] = torch.as_tensor(st["step"]).detach().cpu().reshape(1).clone()
        tensors["rng"] = self.generator.get_state().clone()
        tensors["losses"] = torch.tensor(self.losses, dtype=torch.float64).reshape(-1)
        meta = {"format": CHECKPOINT_FORMAT, "iteration": str(self.iteration), "final": str(bool(final)),
                "scaler": json.dumps(self.scaler.state_dict() if self.scaler else None)}
        cache.put(key, tensors, meta)

    def load(self, cache: ContentCache, key: str) -> bool:
        """Restore the checkpoint :meth:`save` wrote under ``key``; False if there is none or it is unusable
        (an unreadable entry is warned about and removed by the cache)."""
        found = cache.entry(key)
        if found is None:
            return False
        tensors, meta = found
        path = cache.path(key)
        if meta.get("format") != CHECKPOINT_FORMAT:
            warnings.warn(f"ESD: ignoring checkpoint {path}: format {meta.get('format')!r}", stacklevel=2)
            return False
        missing = [n for n in self.names if f"param/{n}" not in tensors]
        if missing:
            warnings.warn(f"ESD: ignoring checkpoint {path}: it lacks {missing[:3]}", stacklevel=2)
            return False
        final = meta.get("final") == "True"
        with torch.no_grad():
            for n, p in zip(self.names, self.params):
                p.copy_(tensors[f"param/{n}"].to(p.device, p.dtype))
        if not final:
            for n, p in zip(self.names, self.params):
                if f"adam/{n}/exp_avg" in tensors:
                    self.optimizer.state[p] = {
                        "step": tensors[f"adam/{n}/step"].reshape(()).clone(),
                        "exp_avg": tensors[f"adam/{n}/exp_avg"].to(p.device, p.dtype),
                        "exp_avg_sq": tensors[f"adam/{n}/exp_avg_sq"].to(p.device, p.dtype),
                    }
        self.generator.set_state(tensors["rng"])
        self.losses = [float(x) for x in tensors["losses"].tolist()]
        self.iteration = int(meta["iteration"])
        scaler_state = json.loads(meta.get("scaler") or "null")
        if self.scaler is not None and scaler_state:
            self.scaler.load_state_dict(scaler_state)
        return True


# --------------------------------------------------------------------------------------------------
# the editors
# --------------------------------------------------------------------------------------------------
def _pipe_fingerprint(pipe) -> list[str]:
    """Identity of the text-encoder and UNet weights (part of the checkpoint key)."""
    return [weights_fingerprint(pipe.text_encoder), weights_fingerprint(pipe.unet)]


@torch.no_grad()
def _encode(pipe, prompts: Sequence[str], device: torch.device) -> torch.Tensor:
    """Text embeddings exactly as the pipeline computes them for generation."""
    embeds, _ = pipe.encode_prompt(list(prompts), device, 1, False)
    return embeds.float()


class ESDEditor(BaseEditor):
    """ESD: erase concepts by fine-tuning the UNet onto the frozen model's negatively guided prediction.

    Supports ``erase`` requests only (see ``treat_updates_as_erase``): it has no destination.
    """

    cost_phases = {"encode": "per_concept", "train": "per_concept"}
    cache_phases = {"esd-checkpoint": "per_concept"}

    hparams_class = ESDHparams
    supports: ClassVar[frozenset[str]] = frozenset({"erase"})
    #: "esd-x" or "esd-u": which UNet parameters are trained.
    parameter_set: ClassVar[str] = ""

    def __init__(self, hparams: Hparams | None = None, *, cache_dir: str | Path | None = None,
                 progress: bool = True, callback: Callable[[ESDRun], None] | None = None) -> None:
        super().__init__(hparams, cache_dir=cache_dir, progress=progress)
        #: Called after every iteration (after any checkpoint) with the run; tests use it to interrupt.
        self.callback = callback

    def check_requests(self, requests: Sequence[EditRequest]) -> None:
        hp: ESDHparams = self.hparams  # type: ignore[assignment]
        if not requests:
            raise RequestError(f"{self.name}: no edit requests given")
        for i, r in enumerate(requests):
            if not isinstance(r, EditRequest):
                raise RequestError(f"{self.name}: request {i} is a {type(r).__name__}, not an EditRequest")
            if hp.treat_updates_as_erase:
                continue
            if r.kind != "erase" or r.destination.strip():
                raise RequestError(
                    f"{self.name} only erases (towards the unconditional prompt); request {i} ({r.source!r} -> "
                    f"{r.destination!r}, kind {r.kind!r}) has a destination. Make it an erase request without a "
                    f"destination, or set the hparam treat_updates_as_erase=true to erase its source and ignore "
                    f"the destination.")

    def cache_key(self, pipe, requests: Sequence[EditRequest]) -> str:
        """Hash of what determines the result: model weights, dtype, scheduler, parameter set, hparams, requests
        (the same in every process)."""
        hp = self.hparams.to_dict()
        hp.pop("checkpoint_every")
        reqs = [[r.source, r.templates if self.hparams.use_templates else None, r.seed] for r in requests]
        # the scheduler config without diffusers' private keys (``_use_default_values`` is built from a set)
        return stable_hash("esd", {"editor": self.parameter_set, "model": _pipe_fingerprint(pipe),
                                   "dtype": str(pipe.unet.dtype), "scheduler": dict(pipe.scheduler.config),
                                   "hparams": hp, "requests": reqs}, drop_private=True)

    def _seed(self, requests: Sequence[EditRequest]) -> int:
        return seed_from("esd", self.hparams.seed, [r.seed for r in requests])

    def edit(self, pipe: Any, requests: Sequence[EditRequest]) -> EditResult:
        self.check_requests(requests)
        hp: ESDHparams = self.hparams  # type: ignore[assignment]
        unet = pipe.unet
        device = unet.device
        timer = Timer()
        key = self.cache_key(pipe, requests)
        ckpt = ContentCache(self.cache_dir / "esd" if self.cache_dir is not None else None, "esd-checkpoint")

        # Concept prompts: the bare name (paper) or every template (one drawn per iteration).
        with timer("encode"):
            concept_embeds = [_encode(pipe, r.source_prompts() if hp.use_templates else [r.source], device)
                              for r in requests]
            uncond = _encode(pipe, [""], device)
        vae_scale = getattr(pipe, "vae_scale_factor", 8)
        size = hp.image_size or int(unet.config.sample_size) * vae_scale
        if size % vae_scale:
            raise HparamsError(f"ESD image_size {size} is not a multiple of the VAE scale factor {vae_scale}")
        latent_shape = (int(unet.config.in_channels), size // vae_scale, size // vae_scale)

        names = select_parameters(unet, self.parameter_set)
        orig_dtype = unet.dtype
        orig_training = unet.training
        orig_ckpt = bool(getattr(unet, "is_gradient_checkpointing", False))
        resumed_from = 0
        run = None
        bar = None
        grads = contextlib.ExitStack()  # requires_grad: off for the UNet, on for the trained tensors; restored
        try:
            if orig_dtype != torch.float32:  # train in fp32; fp16/bf16 -> fp32 -> back is lossless
                unet.to(dtype=torch.float32)
            unet.eval()  # SD's UNet has no dropout; eval keeps runs deterministic
            if hp.gradient_checkpointing:
                unet.enable_gradient_checkpointing()
            run = ESDRun(unet, pipe.scheduler.config, names, concept_embeds, uncond, hp, latent_shape,
                         self._seed(requests))
            grads.enter_context(frozen(unet, trainable=run.params))
            if run.load(ckpt, key):
                resumed_from = run.iteration
            bar = tqdm(total=hp.iterations, initial=run.iteration, desc=f"{self.name} erase ({len(requests)})",
                       unit="it", disable=not self.progress, leave=False)
            with timer("train"):
                while run.iteration < hp.iterations:
                    loss = run.step(timer)
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4g}")
                    if (ckpt.enabled and hp.checkpoint_every and run.iteration % hp.checkpoint_every == 0
                            and run.iteration < hp.iterations):
                        with timer("checkpoint"):
                            run.save(ckpt, key)
                    if self.callback is not None:
                        self.callback(run)
            if ckpt.enabled and resumed_from < hp.iterations:
                with timer("checkpoint"):
                    run.save(ckpt, key, final=True)
            tensors: dict[str, torch.Tensor] = {}
            for n, p in zip(run.names, run.params):
                new = p.detach().to(orig_dtype)
                if not torch.equal(new, run.originals[n].to(orig_dtype)):
                    tensors[f"unet.{n}"] = new.cpu().clone()
        finally:
            if bar is not None:
                bar.close()
            with torch.no_grad():
                if run is not None:
                    params = dict(unet.named_parameters())
                    for n, value in run.originals.items():
                        params[n].copy_(value)
            if hp.gradient_checkpointing and not orig_ckpt:
                unet.disable_gradient_checkpointing()
            if unet.dtype != orig_dtype:
                unet.to(dtype=orig_dtype)
            for p in unet.parameters():
                p.grad = None
            grads.close()
            unet.train(orig_training)
        n_trained = sum(p.numel() for p in run.params)
        return EditResult(tensors, timings=timer.timings, losses={"esd": list(run.losses)}, info={
            "parameter_set": self.parameter_set, "trained_tensors": len(names), "trained_parameters": n_trained,
            "changed_tensors": len(tensors), "iterations": hp.iterations, "resumed_from": resumed_from,
            "image_size": size, "concepts": [r.source for r in requests],
            "checkpoint": str(ckpt.path(key)) if ckpt.enabled else None,
            "ignored_destinations": [r.destination for r in requests if r.destination.strip()],
            "mixed_precision": hp.mixed_precision if run.amp else "no"})


@register_editor("esd-x", description="ESD-x: erase by negative-guidance fine-tuning of the cross-attention layers")
class ESDXEditor(ESDEditor):
    """ESD-x: trains every ``attn2`` parameter (to_q, to_k, to_v, to_out.0); for styles and local concepts."""

    parameter_set = "esd-x"


@register_editor("esd-u", description="ESD-u: erase by negative-guidance fine-tuning of the non-cross-attention "
                                      "UNet layers")
class ESDUEditor(ESDEditor):
    """ESD-u: trains all but ``attn2``, ``time_embedding`` and the output norm/conv; for global concepts."""

    parameter_set = "esd-u"


__all__ = ["ESDEditor", "ESDHparams", "ESDRun", "ESDUEditor", "ESDXEditor", "esd_u_selector", "esd_x_selector",
           "select_parameters"]
