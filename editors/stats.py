"""Second-moment statistics C = E[k kᵀ] of a layer's inputs over a caption corpus, cached on disk.

Used by EMCID stage II, ROME-style/ReFACT and any MEMIT-like editor. One pass over the corpus fills the
statistics of every requested layer at once (hooks on all of them). Every non-padding token of every
caption counts (BOS and EOS included), captions are truncated to 77 tokens, and the moment is divided by
the token count, as EMCID's ``layer_stats``. Results are cached as safetensors keyed by
(model fingerprint, module, corpus, sample count).
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from editors.hooks import capture
from iceb.utils.cache import ContentCache
from iceb.utils.hashing import stable_hash


def stats_key(model_fingerprint: str, module_name: str, corpus: str, n_samples: int) -> str:
    """Cache key of one module's statistics: the weights that feed it, its name, the corpus and sample count."""
    return stable_hash("second-moments", model_fingerprint, module_name, corpus, int(n_samples))


def stats_cache(cache_dir: str | Path | None) -> ContentCache:
    """The statistics cache of an editor's ``cache_dir`` (``<cache_dir>/stats``; disabled for None): entries
    hold ``mom2`` (d×d, float32) and ``count``."""
    return ContentCache(Path(cache_dir) / "stats" if cache_dir is not None else None, "stats")


@torch.no_grad()
def collect_second_moments(text_encoder: torch.nn.Module, tokenizer, modules: dict[str, torch.nn.Module],
                           texts: Sequence[str], batch_size: int = 100, progress: bool = True,
                           desc: str = "layer statistics") -> tuple[dict[str, torch.Tensor], int]:
    """Uncentred second moment of the *inputs* of each module over all non-padding tokens of ``texts``."""
    device = next(text_encoder.parameters()).device
    sums: dict[str, torch.Tensor] = {}
    count = 0
    bar = tqdm(total=len(texts), desc=desc, unit="caption", disable=not progress, leave=False)
    for i in range(0, len(texts), batch_size):
        batch = list(texts[i:i + batch_size])
        enc = tokenizer(batch, padding="longest", truncation=True, max_length=tokenizer.model_max_length,
                        return_tensors="pt")
        ids, mask = enc.input_ids.to(device), enc.attention_mask.to(device).bool()
        with capture(modules, inputs=True) as rec:
            text_encoder(ids, attention_mask=None)  # SD encodes without a mask; CLIP attention is causal
        for name in modules:
            k = rec.inputs[name][mask].float()  # (tokens, d)
            s = (k.T @ k).double()  # per-batch product in fp32 (as EMCID), running sum in fp64
            sums[name] = sums[name] + s if name in sums else s
        count += int(mask.sum())
        bar.update(len(batch))
    bar.close()
    return {n: (s / max(count, 1)).float() for n, s in sums.items()}, count


def second_moments(text_encoder: torch.nn.Module, tokenizer, modules: dict[str, torch.nn.Module], *,
                   model_fingerprint: str, corpus_name: str, texts: Sequence[str] | None = None,
                   n_samples: int, cache: ContentCache | None = None, batch_size: int = 100,
                   progress: bool = True, seed: int = 0, corpus_loader=None) -> dict[str, torch.Tensor]:
    """Cached statistics for each named module; computes the missing ones in one pass over the corpus.

    ``texts`` (or ``corpus_loader()``, called only on a cache miss) is sampled down to ``n_samples``
    captions with a fixed seed.
    """
    out: dict[str, torch.Tensor] = {}
    keys = {name: stats_key(model_fingerprint, name, corpus_name, n_samples) for name in modules}
    if cache is not None:
        for name, key in keys.items():
            hit = cache.get(key)
            if hit is not None:
                out[name] = hit["mom2"]
    missing = {n: m for n, m in modules.items() if n not in out}
    if not missing:
        return out
    if texts is None:
        if corpus_loader is None:
            raise ValueError("no corpus texts and no corpus loader given for the layer statistics")
        texts = corpus_loader()
    texts = list(texts)
    if len(texts) > n_samples:
        texts = random.Random(seed).sample(texts, n_samples)
    computed, count = collect_second_moments(text_encoder, tokenizer, missing, texts, batch_size, progress)
    for name, mom2 in computed.items():
        if cache is not None:
            cache.put(keys[name], {"mom2": mom2.float(), "count": torch.tensor([count])},
                      {"module": name, "corpus": corpus_name, "n_samples": n_samples, "model": model_fingerprint})
        out[name] = mom2
    return out
