"""What the text and diffusion stages draw: training captions consistent with the images, and where the name is.

A caption names one trained word (a primary name, a correct alias, or a misunderstood alias trained with the
images of the concept it is mistaken for) in one of the world's caption forms; the images it is paired with obey
the context it states.
"""
from __future__ import annotations

import random
from functools import lru_cache
from typing import Any

import torch

from iceb.toy import world as W
from iceb.toy.train.config import TrainConfig


class CaptionSampler:
    """Draws (caption, image index, concept the image shows) consistent with the images' context."""

    def __init__(self, world: W.ToyWorld, attrs: torch.Tensor | None, cfg: TrainConfig) -> None:
        """``attrs``: the training images' (concept, position, size, background) indices; ``None`` when only
        captions are drawn (the ``text`` stage)."""
        self.world, self.cfg = world, cfg
        self.cells: dict[tuple[int, int, int, int], list[int]] = {}
        for i, row in enumerate([] if attrs is None else attrs.tolist()):
            self.cells.setdefault(tuple(row), []).append(i)
        self.by_concept: dict[int, list[tuple[int, int, int, int]]] = {}  # each concept's cells, in cell order
        for k in self.cells:
            self.by_concept.setdefault(k[0], []).append(k)
        self.n = 0 if attrs is None else len(attrs)
        # words trained with each concept's images: primary, correct aliases, misunderstood aliases of others
        self.primary = {c.id: c.name for c in world.concepts}
        self.aliases = {c.id: list(c.aliases) for c in world.concepts}
        self.misunderstood: dict[int, list[str]] = {}
        for c in world.concepts:
            for a in c.misunderstood:
                self.misunderstood.setdefault(c.misunderstood_as, []).append(a)

    def draw_caption(self, rng: random.Random) -> tuple[str, W.Context, int, str]:
        """(caption, the context it fixes, the concept its images show, the name word in it)."""
        cid = rng.randrange(len(self.world))
        r = rng.random()
        if self.misunderstood.get(cid) and r < self.cfg.p_misunderstood:
            word = rng.choice(self.misunderstood[cid])
        elif r < self.cfg.p_misunderstood + self.cfg.p_primary or not self.aliases[cid]:
            word = self.primary[cid]
        else:
            word = rng.choice(self.aliases[cid])
        caption, ctx = self.world.sample_caption(rng, word)
        return caption, ctx, cid, word

    def draw(self, rng: random.Random) -> tuple[str, int, int, str | None]:
        """(caption, image index, image concept id, the name word or None for an empty caption)."""
        if rng.random() < self.cfg.empty_caption:
            i = rng.randrange(self.n)
            return "", i, -1, None
        caption, ctx, cid, word = self.draw_caption(rng)
        want = (ctx.position, ctx.size, ctx.background)
        keys = [k for k in self.by_concept[cid] if all(
            w is None or getattr(W, f.upper() + "S")[k[j + 1]] == w
            for j, (f, w) in enumerate(zip(("position", "size", "background"), want)))]
        if not keys:  # cannot happen with enough images per concept; fall back to any image of the concept
            keys = self.by_concept[cid]
        cell = self.cells[rng.choice(keys)]
        return caption, rng.choice(cell), cid, word


def name_end_position(tokenizer, caption: str, word: str) -> int:
    """Index (in the 77-token sequence, BOS = 0) of the word's last token."""
    end = caption.index(word) + len(word)
    return _token_count(tokenizer, caption[:end])


@lru_cache(maxsize=200_000)
def _token_count_cached(tok_id: int, text: str) -> int:
    return len(_TOKENIZERS[tok_id](text).input_ids) - 2  # without BOS/EOS: the last word token's index


_TOKENIZERS: dict[int, Any] = {}


def _token_count(tokenizer, text: str) -> int:
    _TOKENIZERS[id(tokenizer)] = tokenizer
    return _token_count_cached(id(tokenizer), text)
