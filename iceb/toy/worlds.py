"""The built-in trained toy worlds, in one place: each one's name and data folder.

A toy world's folder under ``data/`` holds its model (``model/``, a diffusers folder whose ``iceb_model.json``
names the world), its classifier, split, caption corpus and ``quality.json``. ``toy`` is the 64-concept default;
``toy-1k`` (issue #18) the 1,536-concept world whose text encoder has Stable Diffusion 1.x's widths. Every part
that serves a toy world (model loading, tasks, classifiers, corpora, attacks) asks here instead of naming one.
"""
from __future__ import annotations

from pathlib import Path

from iceb.utils.paths import DATA_DIR

#: world name -> one line on what it is
TOY_WORLDS: dict[str, str] = {
    "toy": "the trained toy world: 64 made-up concepts, scored by its own classifier",
    "toy-1k": "the trained 1,536-concept toy world (SD-1.x text widths), scored by its own classifier",
}


def is_toy_world(world: str | None) -> bool:
    """Whether ``world`` names a built-in toy world."""
    return world in TOY_WORLDS


def toy_world_dir(world: str) -> Path:
    """The data folder of a toy world (``data/toy``, ``data/toy-1k``).

    Args:
        world: A name in :data:`TOY_WORLDS`.

    Returns:
        The folder (it may not exist yet: the world may not be trained).

    Raises:
        KeyError: For a name that is not a toy world (with the known ones).
    """
    if world not in TOY_WORLDS:
        from iceb.utils.registry import closest

        near = closest(str(world), list(TOY_WORLDS))
        raise KeyError(f"unknown toy world {world!r}" + (f" (did you mean {near!r}?)" if near else "")
                       + f"; known: {sorted(TOY_WORLDS)}")
    return DATA_DIR / world


__all__ = ["TOY_WORLDS", "is_toy_world", "toy_world_dir"]
