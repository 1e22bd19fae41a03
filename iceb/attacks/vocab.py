"""Which token ids an attack may place (``attack_vocab``, pinned in every attack row).

- ``full``: every id of the tokenizer but its special tokens (BOS, EOS/padding).
- ``seen``: the ids the model's text encoder was trained on. The toy encoder was trained from scratch on the
  toy captions only, so every other row of its 49,408-token table keeps its random initialisation: an attack
  over the full vocabulary can exploit those off-distribution vectors (spec §4.4), which says nothing about
  the edit. In the toy world ``seen`` is the ids of ``data/toy/captions.txt`` (the corpus made by the same
  caption sampler over every trained name, so every trained name, template and context word is in it, and no
  untrained alias). Stable Diffusion's CLIP encoder was trained on the whole vocabulary: there ``seen`` is
  ``full``.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from iceb.toy.worlds import is_toy_world, toy_world_dir
from iceb.utils.paths import DATA_DIR

VOCABS = ("seen", "full")
TOY_CAPTIONS = DATA_DIR / "toy" / "captions.txt"  # the default toy world's; each toy world's in its folder


def attack_vocab(tokenizer, world: str, kind: str = "seen") -> np.ndarray:
    """The sorted token ids an attack may use.

    Args:
        tokenizer: The pipeline's tokenizer.
        world: The model's world (a toy world: ``seen`` is the ids of its captions).
        kind: ``"seen"`` or ``"full"``.

    Returns:
        Sorted unique int64 ids, special tokens excluded.

    Raises:
        ValueError: An unknown ``kind``.
    """
    if kind not in VOCABS:
        raise ValueError(f"attack vocabulary {kind!r} is not one of {', '.join(VOCABS)}")
    special = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    if kind == "full" or not is_toy_world(world):
        ids = np.arange(len(tokenizer), dtype=np.int64)
    else:
        ids = np.asarray(_caption_ids(tokenizer, world), dtype=np.int64)
    return np.asarray(sorted(set(ids.tolist()) - special), dtype=np.int64)


@lru_cache(maxsize=4)
def _caption_ids(tokenizer, world: str = "toy") -> tuple[int, ...]:
    """The ids of a toy world's captions (once per tokenizer object: 4,000 captions take a second to tokenize)."""
    path = TOY_CAPTIONS if world == "toy" else toy_world_dir(world) / "captions.txt"
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    seen: set[int] = set()
    for ids in tokenizer(lines).input_ids:
        seen.update(ids)
    return tuple(sorted(seen))
