"""MACE (Lu et al., CVPR 2024), **no-mask** variant: closed-form cross-attention refinement (CFR), one rank-1
LoRA per concept trained without segmentation masks, then a closed-form fusion of the LoRAs. Facts:
``shared/spec/more_baselines_and_attacks.md`` §2 (the official ``src/cfr_utils.py``, ``cfr_lora_training.py``,
``src/fuse_lora_close_form.py``).

Every cross-attention ``attn2.to_v`` and ``to_k`` (W, d×m) is edited. With E the text-encoder outputs used as
keys, all three steps share one form, solved for all matrices with one m×m factor:

1. **CFR** (stage 1). For each concept and each of its ``aug_length`` object templates, the concept prompt and
   the same template with the *mapping concept* (the request's destination; ``erase_anchor`` for an erase) are
   tokenised; their common prefix (from BOS) and common suffix (through EOS) are kept and extended over the
   padding to equal length (``find_matching_indices`` and its extension: every token *except* the two concepts'
   own). Keys e are the concept prompt's outputs there, values v = W e' the original W on the mapped prompt's
   outputs at the aligned positions. With the preservation cache C_p = Σ e eᵀ over every token of every caption
   of ``preserve_corpus`` / ``preserve`` (values W e: pinned to the original outputs)::

       W_cfr = W (λI + Σ e' eᵀ + s_t² C_p) (λI + Σ e eᵀ + s_t² C_p)⁻¹

   s_t² and not s_t: the official ≤ ``max_memory`` path scales the cache by s_t and then passes s_t again as the
   solver's preserve scale (a quirk reproduced, as the spec asks).
2. **LoRA** (stage 2), per concept on the CFR-refined UNet: rank-``rank`` LoRAs on every to_k / to_v (down ~
   N(0, 1/r), up = 0, diffusers' ``LoRALinearLayer`` init), trained ``lora_steps`` steps (AdamW, weight decay 0.01,
   gradient clip 1, batch 1) to minimise Σ over every attn2 call of ‖A[:, :, concept positions]‖_F, A the
   attention probabilities, concept positions = the concept's tokens in ``train_prompt`` plus its EOS token
   (``use_pooler``). Inputs: noisy latents of ``n_images`` images the *unedited* model draws from ``image_prompt``
   (``no_real_image``: zero latents, pure noise after noising), timesteps importance-sampled,
   p(t) ∝ σ(0.05(t−200)) − σ(0.05(t−400)). **No mask**: every pixel of A counts (``use_gsam_mask: false``); the
   published object and celebrity results restrict A to Grounded-SAM masks, which need a 24 GB GPU and are not
   implemented, so this is not the published setting.
3. **Fusion** (stage 3): keys E_i = all 77 output tokens of concept i's augmented prompts, values
   (W_cfr + ΔW_i) e::

       W* = (λ W_cfr + Σ_i (W_cfr + ΔW_i) K_i + s_f W C_p) (λI + Σ_i K_i + s_f C_p)⁻¹,   K_i = Σ_{e∈E_i} e eᵀ

   each LoRA's behaviour kept on its own concept's tokens, the caption cache pinned to the original outputs, λ
   pulling toward W_cfr.

Caches (with a ``cache_dir``): the preservation Gram C_p (per text encoder and caption list) and each concept's
clean image latents (per unedited model, prompt, sampling settings and seed), so a tuning study or a sweep over
edit counts pays them once; the LoRAs are trained on every edit (they depend on λ, s_t and the learning rate).

Not implemented: the domain cache (``preserve_weight``, prebuilt for celebrities and artists), GPT captions, the
> ``max_memory`` chunked path (with its ``[i:i+5]`` slice bug). The LoRA images are generated with the pipeline's
own scheduler (the official generates them with SD-1.4's default, 30 steps, CFG 7.5: the sd-1.4 preset's values).
"""
from __future__ import annotations

import dataclasses
import math
from contextlib import contextmanager
from typing import Any, ClassVar, Iterator, Literal, Sequence

import torch

from editors import register_editor
from editors.base import BaseEditor, EditRequest, EditResult, RequestError
from editors.hooks import cross_attention_modules, subject_token_positions
from editors.hparams import Dim, Hparams, HparamsError, at_least, bounded, float_range, non_negative, positive
from editors.uce import encode_prompts, projection_names
from iceb.utils.cache import ContentCache
from iceb.utils.fingerprint import pipeline_fingerprint, weights_fingerprint
from iceb.utils.hashing import stable_hash
from iceb.utils.timing import Timer

#: MACE's object augmentation templates (``prompt_augmentation``, concept_type "object"), in the official order;
#: the official samples ``aug_length`` of the first 30 (all 30 in every config, so order does not change the sums)
OBJECT_TEMPLATES: tuple[str, ...] = (
    "{} in a photo", "{} in a snapshot", "A snapshot of {}", "A photograph showcasing {}", "An illustration of {}",
    "A digital rendering of {}", "A visual representation of {}", "A graphic of {}", "A shot of {}", "A photo of {}",
    "A black and white image of {}", "A depiction in portrait form of {}",
    "A scene depicting {} during a public gathering", "{} captured in an image",
    "A depiction created with oil paints capturing {}", "An image of {}", "A drawing capturing the essence of {}",
    "An official photograph featuring {}", "A detailed sketch of {}", "{} during sunset/sunrise",
    "{} in a detailed portrait", "An official photo of {}", "Historic photo of {}", "Detailed portrait of {}",
    "A painting of {}", "HD picture of {}", "Magazine cover capturing {}", "Painting-like image of {}",
    "Hand-drawn art of {}", "An oil portrait of {}", "{} in a sketch painting",
)


@dataclasses.dataclass(frozen=True)
class MACEHparams(Hparams):
    """MACE's knobs; defaults are the official object configs' (``configs/object/erase_automobile.yaml``)."""

    #: what ``iceb tune`` searches (its trials run on the task's dev split); every other key keeps its preset value
    search_space: ClassVar[dict[str, Dim]] = {"lamb": float_range(0.01, 1000.0, log=True),
                                              "train_preserve_scale": float_range(1.0e-4, 1.0, log=True),
                                              "fuse_preserve_scale": float_range(1.0e-4, 1.0, log=True),
                                              "lora_lr": float_range(1.0e-5, 1.0e-2, log=True)}

    lamb: float = non_negative(100.0)  # λ: erase_automobile 1e2 (ship 1e3, bird 1e1; celebrities 0 with caches)
    train_preserve_scale: float = non_negative(0.0)  # s_t (applied squared, see the module docstring)
    fuse_preserve_scale: float = non_negative(0.0)  # s_f
    preserve: tuple[str, ...] = ()  # captions of the preservation cache (the official: COCO-2014 train+val)
    preserve_corpus: str | None = None  # or a caption file / registered corpus
    aug_length: int = bounded(30, min=1, max=len(OBJECT_TEMPLATES))
    erase_anchor: str = ""  # the mapping concept of an erase request (official objects: 'sky', 'ground', ...)
    rank: int = at_least(1, 1)
    lora_steps: int = at_least(50, 0)
    lora_lr: float = positive(1.0e-5)  # objects 1e-5, celebrities and art 1e-4
    weight_decay: float = non_negative(0.01)
    grad_clip: float = positive(1.0)
    use_pooler: bool = True  # the EOS token joins the concept positions
    importance_sampling: bool = True
    no_real_image: bool = False  # zero latents instead of the model's own images
    n_images: int = at_least(8, 1)
    image_prompt: str = "a photo of the {}"
    image_steps: int = at_least(30, 1)
    image_guidance: float = non_negative(7.5)
    train_prompt: str = "a photo of the {}"
    seed: int = bounded(2024, min=0, max=2**31 - 1)
    encode_batch_size: int = at_least(64, 1)
    solve_dtype: Literal["float64"] = "float64"

    def __post_init__(self) -> None:
        for key in ("image_prompt", "train_prompt"):
            if getattr(self, key).count("{}") != 1:
                raise HparamsError(f"{key} {getattr(self, key)!r} must hold exactly one '{{}}' slot")


# --------------------------------------------------------------------------------------------------
# stage 1: token alignment and the shared closed form
# --------------------------------------------------------------------------------------------------
def matching_indices(old: Sequence[int], new: Sequence[int], length: int = 77) -> tuple[list[int], list[int]]:
    """Aligned positions of two unpadded token-id lists (BOS and EOS included): the common prefix, the common
    suffix (through EOS), then both extended over the padding to ``length`` with equal counts (the official
    ``find_matching_indices`` and its extension in ``prepare_k_v``).

    Returns:
        (positions in ``old``, positions in ``new``), of equal length.
    """
    start = 0
    for a, b in zip(old, new):
        if a != b:
            break
        start += 1
    eo, en = len(old) - 1, len(new) - 1
    while eo >= start and en >= start and old[eo] == new[en]:
        eo -= 1
        en -= 1
    pos_o = list(range(start)) + list(range(eo + 1, len(old)))
    pos_n = list(range(start)) + list(range(en + 1, len(new)))
    lo, ln = pos_o[-1], pos_n[-1]
    if lo >= ln:
        pos_o += list(range(lo + 1, length))
        pos_n += list(range(ln + 1, length - (lo - ln)))
    else:
        pos_n += list(range(ln + 1, length))
        pos_o += list(range(lo + 1, length - (ln - lo)))
    return pos_o, pos_n


def right_factor(lamb: float, cross: torch.Tensor, gram: torch.Tensor, prior: torch.Tensor | None,
                 prior_scale: float) -> torch.Tensor:
    """X with W_new = W X for ``W_new = (λ W + W·cross + s W C_p)(λI + gram + s C_p)⁻¹``, in float64.

    Raises:
        HparamsError: The right-hand matrix is singular (λ = 0 and too few keys or cache).
    """
    m = gram.shape[0]
    eye = torch.eye(m, dtype=torch.float64, device=gram.device)
    num = lamb * eye + cross
    den = lamb * eye + gram
    if prior is not None and prior_scale:
        num = num + prior_scale * prior
        den = den + prior_scale * prior
    try:
        return torch.linalg.solve(den.T, num.T).T  # num · den⁻¹
    except torch.linalg.LinAlgError:
        raise HparamsError(f"MACE: λI + Σ e eᵀ + s C is singular (lamb={lamb}); use lamb > 0 or a preservation "
                           f"cache") from None


# --------------------------------------------------------------------------------------------------
# stage 2: LoRAs on to_k / to_v and the attention loss
# --------------------------------------------------------------------------------------------------
def importance_weights(n_train_t: int = 1000) -> torch.Tensor:
    """MACE's timestep distribution, p(t) ∝ σ(0.05(t − 200)) − σ(0.05(t − 400)), t = 0 … n−1 (normalised)."""
    t = torch.arange(n_train_t, dtype=torch.float64)
    w = torch.sigmoid(0.05 * (t - 200)) - torch.sigmoid(0.05 * (t - 400))
    return w / w.sum()


@dataclasses.dataclass
class LoRA:
    """Rank-r LoRAs of every edited projection: ``down`` (r×m), ``up`` (d×r); ΔW = up · down."""

    down: dict[str, torch.nn.Parameter]
    up: dict[str, torch.nn.Parameter]

    def parameters(self) -> list[torch.nn.Parameter]:
        return [*self.down.values(), *self.up.values()]

    def delta(self, name: str) -> torch.Tensor:
        return (self.up[name] @ self.down[name]).detach().double()


def new_lora(weights: dict[str, torch.Tensor], rank: int, generator: torch.Generator) -> LoRA:
    down, up = {}, {}
    for name, w in weights.items():
        d, m = w.shape
        down[name] = torch.nn.Parameter(torch.randn(rank, m, generator=generator).to(w) / rank)
        up[name] = torch.nn.Parameter(torch.zeros(d, rank, dtype=w.dtype, device=w.device))
    return LoRA(down, up)


@contextmanager
def lora_and_attention(unet: torch.nn.Module, lora: LoRA, store: list) -> Iterator[None]:
    """While open: every attn2 to_k / to_v adds its LoRA to its output, and every attn2 call appends
    (attention probabilities over the text tokens, (batch·heads, pixels, 77)) to ``store``. Hooks only: the
    UNet's weights and processors stay as they were."""
    handles = []
    q_out: dict[str, torch.Tensor] = {}

    def add_lora(key: str):
        def hook(_m, args, out):
            return out + (args[0] @ lora.down[key].T) @ lora.up[key].T
        return hook

    for n, attn in cross_attention_modules(unet):
        for proj in ("to_k", "to_v"):
            key = f"unet.{n}.{proj}.weight"
            if key in lora.down:
                handles.append(getattr(attn, proj).register_forward_hook(add_lora(key)))

        def keep_q(_m, _a, out, n=n):
            q_out[n] = out

        def attention(_m, _a, out, n=n, attn=attn):
            q, k = q_out.pop(n), out  # to_k runs after to_q in diffusers' processors
            h = attn.heads
            b, p, inner = q.shape
            qh = q.reshape(b, p, h, inner // h).transpose(1, 2)
            kh = k.reshape(b, k.shape[1], h, inner // h).transpose(1, 2)
            store.append(torch.softmax(qh @ kh.transpose(-1, -2) * attn.scale, dim=-1).reshape(b * h, p, -1))

        handles.append(attn.to_q.register_forward_hook(keep_q))
        handles.append(attn.to_k.register_forward_hook(attention))
    try:
        yield
    finally:
        for hd in handles:
            hd.remove()


# --------------------------------------------------------------------------------------------------
# the editor
# --------------------------------------------------------------------------------------------------
@register_editor("mace", description="MACE (no-mask): closed-form cross-attention refinement, per-concept LoRAs "
                                     "trained without segmentation masks, closed-form multi-LoRA fusion")
class MACEEditor(BaseEditor):
    """MACE without Grounded-SAM masks on every cross-attention to_k / to_v; erase maps onto ``erase_anchor``,
    update and rectify onto the request's destination (the mapping concept)."""

    hparams_class = MACEHparams
    cost_phases = {"preserve": "precompute", "encode": "per_concept", "cfr": "solve", "images": "per_concept",
                   "lora": "per_concept", "fusion": "solve"}
    cache_phases = {"mace-prior": "precompute", "mace-images": "per_concept"}
    supports = frozenset({"update", "erase", "rectify"})

    def __init__(self, hparams: MACEHparams | None = None, *, cache_dir=None, progress: bool = True) -> None:
        super().__init__(hparams, cache_dir=cache_dir, progress=progress)
        root = self.cache_dir / "mace" if self.cache_dir is not None else None
        self.prior_cache = ContentCache(root / "prior" if root else None, "mace-prior")
        self.image_cache = ContentCache(root / "images" if root else None, "mace-images")

    def mapping(self, r: EditRequest) -> str:
        return r.destination if r.destination.strip() else self.hparams.erase_anchor

    def templates(self) -> tuple[str, ...]:
        return OBJECT_TEMPLATES[:self.hparams.aug_length]

    def preserve_texts(self) -> list[str]:
        hp = self.hparams
        texts = list(hp.preserve)
        if hp.preserve_corpus:
            from editors.corpora import load_corpus

            texts += load_corpus(hp.preserve_corpus)
        return texts

    def check_requests(self, requests: Sequence[EditRequest]) -> None:
        super().check_requests(requests)
        for r in requests:
            if not r.source.strip():
                raise RequestError(f"{self.name}: a request with an empty source has no concept tokens")

    def edit(self, pipe: Any, requests: Sequence[EditRequest]) -> EditResult:
        from editors.weights import applied, get_tensor

        self.check_requests(requests)
        hp = self.hparams
        timer = Timer()
        names = projection_names(pipe.unet)
        if not names:
            raise RequestError(f"{self.name}: the pipeline's UNet has no cross-attention (attn2) modules")
        weights = {n: get_tensor(pipe, n).detach() for n in names}
        dev = next(iter(weights.values())).device
        tpl = self.templates()
        with timer("preserve"):
            texts = self.preserve_texts()
            prior = self.prior_gram(pipe, texts, dev)
        with timer("encode"):
            keys = self.cfr_keys(pipe, requests, tpl, dev)
        with timer("cfr"):
            s_t2 = hp.train_preserve_scale ** 2
            x_cfr = right_factor(hp.lamb, keys["cross"], keys["gram"], prior, s_t2)
            w_cfr = {n: (w.double() @ x_cfr).to(w.dtype) for n, w in weights.items()}
        loras, losses = [], {}
        for i, r in enumerate(requests):
            gen = torch.Generator().manual_seed((hp.seed * 1_000_003 + int(r.seed) * 7919 + i) % 2**31)
            with timer("images"):
                latents = self.image_latents(pipe, r, gen)
            with applied(pipe, w_cfr), timer("lora"):
                lora, hist = self.train_lora(pipe, r, latents, w_cfr, gen)
            loras.append(lora)
            losses[f"lora/{r.request_id or f'{i}:{r.source}'}"] = hist
        with timer("fusion"):
            new = self.fuse(weights, w_cfr, loras, keys["concept_grams"], prior)
        info = {"requests": len(requests), "matrices": len(names), "cfr_keys": keys["n_keys"],
                "fusion_keys": keys["n_fusion_keys"], "preserve_texts": len(texts),
                "lora_final_loss": {k: (v[-1] if v else None) for k, v in losses.items()},
                "mask": "none (no-mask variant: every pixel of the attention maps)"}
        return EditResult(new, timer.timings, losses, info)

    # -- stage 1 -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def prior_gram(self, pipe: Any, texts: Sequence[str], device) -> torch.Tensor | None:
        """C_p = Σ e eᵀ over all 77 tokens of every caption of ``texts`` (None without captions)."""
        if not texts:
            return None
        key = stable_hash("mace-prior", weights_fingerprint(pipe.text_encoder), list(texts))
        hit = self.prior_cache.get(key)
        if hit is not None:
            return hit["gram"].to(device)
        enc = encode_prompts(pipe, texts, self.hparams.encode_batch_size, self.progress)
        e = enc.emb.to(device).reshape(-1, enc.emb.shape[-1]).double()
        counts = torch.bincount(torch.tensor([enc.index[t] for t in texts]), minlength=enc.emb.shape[0])
        w = counts.to(device).double().repeat_interleave(enc.emb.shape[1])  # a repeated caption counts each time
        gram = (e * w[:, None]).T @ e
        self.prior_cache.put(key, {"gram": gram.cpu()}, {"captions": len(texts)})
        return gram

    @torch.no_grad()
    def cfr_keys(self, pipe: Any, requests: Sequence[EditRequest], templates: Sequence[str], device) -> dict:
        """Σ e' eᵀ and Σ e eᵀ of the CFR keys (aligned positions) and each concept's fusion Gram (all tokens)."""
        tok = pipe.tokenizer
        concept = [[t.format(r.source) for t in templates] for r in requests]
        mapped = [[t.format(self.mapping(r)).strip() for t in templates] for r in requests]
        enc = encode_prompts(pipe, [p for ps in concept + mapped for p in ps], self.hparams.encode_batch_size,
                             self.progress)
        emb = enc.emb.to(device).double()
        m = emb.shape[-1]
        cross = torch.zeros(m, m, dtype=torch.float64, device=device)
        gram = torch.zeros_like(cross)
        grams, n_keys = [], 0
        seq = emb.shape[1]
        for cs, ms in zip(concept, mapped):
            k_i = torch.zeros_like(cross)
            for c, p in zip(cs, ms):
                a, b = enc.index[c], enc.index[p]
                po, pn = matching_indices(tok(c).input_ids, tok(p).input_ids, seq)
                e, e_map = emb[a, po], emb[b, pn]
                cross += e_map.T @ e
                gram += e.T @ e
                k_i += emb[a].T @ emb[a]
                n_keys += len(po)
            grams.append(k_i)
        return {"cross": cross, "gram": gram, "concept_grams": grams, "n_keys": n_keys,
                "n_fusion_keys": len(requests) * len(templates) * seq}

    # -- stage 2 -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def image_latents(self, pipe: Any, r: EditRequest, gen: torch.Generator) -> torch.Tensor:
        """(n_images, c, h, w) clean latents (UNet space) of the unedited model's images of the concept (zeros:
        no_real_image). The official VAE-encodes its saved images; the pipeline's own latents skip that round trip."""
        hp = self.hparams
        unet = pipe.unet
        size = unet.config.sample_size
        shape = (hp.n_images, unet.config.in_channels, size, size)
        if hp.no_real_image:
            return torch.zeros(shape, dtype=unet.dtype, device=unet.device)
        seed = int(torch.randint(2**31, (1,), generator=gen))
        key = stable_hash("mace-images", pipeline_fingerprint(pipe), hp.image_prompt.format(r.source), hp.n_images,
                          hp.image_steps, hp.image_guidance, seed)
        hit = self.image_cache.get(key)
        if hit is not None:
            return hit["latents"].to(device=unet.device, dtype=unet.dtype)
        saved = dict(getattr(pipe, "_progress_bar_config", {}) or {})
        pipe.set_progress_bar_config(disable=True)
        try:
            out = pipe(hp.image_prompt.format(r.source), num_inference_steps=hp.image_steps,
                       guidance_scale=hp.image_guidance, num_images_per_prompt=hp.n_images,
                       generator=torch.Generator(unet.device).manual_seed(seed), output_type="latent")
        finally:
            pipe._progress_bar_config = saved
        self.image_cache.put(key, {"latents": out.images.detach().cpu()}, {"source": r.source})
        return out.images  # the pipeline's latents (already × the VAE's scaling factor): the UNet's input space

    def train_lora(self, pipe: Any, r: EditRequest, latents: torch.Tensor, w_cfr: dict[str, torch.Tensor],
                   gen: torch.Generator) -> tuple[LoRA, list[float]]:
        """One concept's LoRA on the CFR-refined UNet (applied by the caller); its loss per step."""
        from diffusers import DDPMScheduler

        from editors.hooks import tokenize
        from editors.weights import frozen

        hp = self.hparams
        unet, te = pipe.unet, pipe.text_encoder
        lora = new_lora(w_cfr, hp.rank, gen)
        if hp.lora_steps == 0:
            return lora, []
        prompt = hp.train_prompt.format(r.source)
        pos = subject_token_positions(pipe.tokenizer, hp.train_prompt, r.source)
        ids, mask = tokenize(pipe.tokenizer, [prompt], te.device)
        if hp.use_pooler:
            pos = pos + [int(mask.sum()) - 1]  # the EOS token
        with torch.no_grad():
            cond = te(ids, attention_mask=None)[0].to(unet.dtype)
        ddpm = DDPMScheduler.from_config(pipe.scheduler.config)
        n_t = int(ddpm.config.num_train_timesteps)
        probs = importance_weights(n_t).float() if hp.importance_sampling else torch.full((n_t,), 1.0 / n_t)
        opt = torch.optim.AdamW(lora.parameters(), lr=hp.lora_lr, betas=(0.9, 0.999), weight_decay=hp.weight_decay)
        store: list[torch.Tensor] = []
        hist = []
        pos_t = torch.tensor(pos, device=unet.device)
        with frozen(te, unet, pipe.vae, trainable=lora.parameters()), lora_and_attention(unet, lora, store):
            for step in range(hp.lora_steps):
                x0 = latents[step % latents.shape[0]][None]
                t = torch.multinomial(probs, 1, generator=gen).to(unet.device)
                noise = torch.randn(x0.shape, generator=gen).to(x0)
                xt = ddpm.add_noise(x0, noise, t)
                store.clear()
                unet(xt, t, encoder_hidden_states=cond)
                loss = sum(torch.linalg.norm(a[:, :, pos_t]) for a in store)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(lora.parameters(), hp.grad_clip)
                opt.step()
                hist.append(float(loss.detach()))
                if not math.isfinite(hist[-1]):
                    raise FloatingPointError(f"{self.name}: the LoRA loss of {r.source!r} is not finite at step {step}")
        store.clear()
        return lora, hist

    # -- stage 3 -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def fuse(self, weights: dict[str, torch.Tensor], w_cfr: dict[str, torch.Tensor], loras: Sequence[LoRA],
             grams: Sequence[torch.Tensor], prior: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """W* per matrix (stage 3's closed form); one denominator for all matrices."""
        hp = self.hparams
        m = grams[0].shape[0]
        eye = torch.eye(m, dtype=torch.float64, device=grams[0].device)
        k_sum = sum(grams)
        den = hp.lamb * eye + k_sum
        if prior is not None and hp.fuse_preserve_scale:
            den = den + hp.fuse_preserve_scale * prior
        try:
            chol = torch.linalg.cholesky(den)
        except torch.linalg.LinAlgError:
            raise HparamsError(f"MACE fusion: λI + Σ K_i + s_f C is singular (lamb={hp.lamb})") from None
        out = {}
        for name, w in weights.items():
            base = w_cfr[name].double()
            num = base @ (hp.lamb * eye + k_sum)
            for lora, k_i in zip(loras, grams):
                num += lora.delta(name) @ k_i
            if prior is not None and hp.fuse_preserve_scale:
                num += hp.fuse_preserve_scale * (w.double() @ prior)
            out[name] = torch.cholesky_solve(num.T.contiguous(), chol).T.to(w.dtype)  # num · den⁻¹ (den symmetric)
        return out
