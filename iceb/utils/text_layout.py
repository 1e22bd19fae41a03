"""The two spellings of a CLIP text encoder's tensor names, in one place.

transformers 4 keeps the blocks under ``text_model.`` (``text_model.encoder.layers.3.mlp.fc2.weight``), as every
Stable Diffusion checkpoint on the hub stores them; transformers 5 drops that level in its modules and in what its
``save_pretrained`` writes. transformers 5 reads both; 4 reads only the first. :func:`checkpoint_key` turns a name
inside a text encoder into the checkpoint spelling (``editors.weights`` for pipeline names, ``iceb.weight_layout``
for whole files).
"""
from __future__ import annotations

#: the top-level children of a CLIP text transformer, under ``text_model.`` in the checkpoint layout
TEXT_TOP = ("embeddings", "encoder", "final_layer_norm")
PREFIX = "text_model."


def checkpoint_key(key: str) -> str:
    """A name inside a CLIP text encoder, in the checkpoint layout (unchanged when it is already, or names a
    tensor outside the transformer, e.g. ``text_projection.weight``)."""
    return PREFIX + key if key.split(".", 1)[0] in TEXT_TOP else key


def unprefixed_key(key: str) -> str:
    """The same name without the ``text_model.`` level (transformers 5's modules)."""
    return key[len(PREFIX):] if key.startswith(PREFIX) else key
