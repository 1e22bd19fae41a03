"""Named tensors of a diffusers pipeline: read, apply an edit, restore bit for bit.

Names are ``<component>.<parameter name inside that module>``, e.g.
``text_encoder.text_model.encoder.layers.3.mlp.fc2.weight`` or
``unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight``.

Two layouts of the CLIP text encoder's names exist: transformers 4 keeps the blocks under ``text_model.``
(``text_encoder.text_model.encoder.layers.3…``), as every Stable Diffusion checkpoint on the hub stores them;
transformers 5 drops that level (``text_encoder.encoder.layers.3…``) in its modules *and* in the files its
``save_pretrained`` writes, which transformers 4 then loads as fresh random weights with only a warning.
Live names (``EditResult`` keys) are the running version's; what is written for others to read — edit files,
exported models — uses the checkpoint layout (:func:`checkpoint_name`), and every lookup here accepts either
(:func:`live_name`), so an edit made under one version applies under the other.
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator, Mapping

import torch

from iceb.utils.text_layout import checkpoint_key, unprefixed_key

COMPONENTS = ("text_encoder", "text_encoder_2", "unet", "vae")


class WeightNameError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def component(pipe, name: str) -> tuple[torch.nn.Module, str]:
    """Split a pipeline tensor name into (module component, name inside it)."""
    comp_name, _, inner = name.partition(".")
    module = getattr(pipe, comp_name, None)
    if not isinstance(module, torch.nn.Module) or not inner:
        raise WeightNameError(
            f"{name!r} does not name a tensor of the pipeline; names start with one of "
            f"{[c for c in COMPONENTS if isinstance(getattr(pipe, c, None), torch.nn.Module)]}"
        )
    return module, inner


def _clip_text(module: torch.nn.Module) -> bool:
    return type(module).__name__.startswith("CLIPText")


def checkpoint_name(pipe, name: str) -> str:
    """``name`` in the checkpoint layout: the text encoder's blocks under ``text_model.`` (module docstring).

    Args:
        pipe: The pipeline the name belongs to; ``None``: ``text_encoder`` and ``text_encoder_2`` are taken
            to be CLIP text encoders (as in every Stable Diffusion 1.x, 2.x and XL pipeline).
        name: A pipeline tensor name in either layout.

    Returns:
        The name as Stable Diffusion checkpoints (and transformers 4 and 5 alike) read it.
    """
    comp_name, _, inner = name.partition(".")
    module = getattr(pipe, comp_name, None) if pipe is not None else None
    clip = _clip_text(module) if isinstance(module, torch.nn.Module) else comp_name in ("text_encoder", "text_encoder_2")
    return f"{comp_name}.{checkpoint_key(inner)}" if clip else name


def live_name(pipe, name: str) -> str:
    """``name`` as the running transformers version names the module (either layout accepted).

    Args:
        pipe: The pipeline to look the name up in.
        name: A pipeline tensor name in the checkpoint layout or in the live one.

    Returns:
        The name of the live parameter (unchanged where the layouts agree, e.g. for the UNet).
    """
    comp_name, _, inner = name.partition(".")
    module = getattr(pipe, comp_name, None)
    if not isinstance(module, torch.nn.Module) or not _clip_text(module):
        return name
    has_level = isinstance(getattr(module, "text_model", None), torch.nn.Module)
    return f"{comp_name}.{checkpoint_key(inner) if has_level else unprefixed_key(inner)}"


def get_tensor(pipe, name: str) -> torch.Tensor:
    """The live parameter (or buffer) called ``name`` in the pipeline (either name layout)."""
    module, inner = component(pipe, live_name(pipe, name))
    try:
        return module.get_parameter(inner)
    except AttributeError:
        try:
            return module.get_buffer(inner)
        except AttributeError:
            raise WeightNameError(f"the pipeline has no tensor {name!r}") from None


def check_compatible(pipe, tensors: Mapping[str, torch.Tensor]) -> None:
    """Every name exists and every shape matches, before anything is written."""
    for name, value in tensors.items():
        live = get_tensor(pipe, name)
        if tuple(live.shape) != tuple(value.shape):
            raise ValueError(f"shape mismatch for {name!r}: pipeline {tuple(live.shape)}, edit {tuple(value.shape)}")
        if not torch.isfinite(value).all():
            raise FloatingPointError(f"the edit holds non-finite values (NaN or inf) in {name!r}; nothing was applied")


@torch.no_grad()
def apply_tensors(pipe, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Write new values into the pipeline; return exact copies of what they replaced."""
    check_compatible(pipe, tensors)
    originals: dict[str, torch.Tensor] = {}
    for name, value in tensors.items():
        live = get_tensor(pipe, name)
        originals[name] = live.detach().clone()
        live.copy_(value.to(device=live.device, dtype=live.dtype))
    return originals


@torch.no_grad()
def restore_tensors(pipe, originals: Mapping[str, torch.Tensor]) -> None:
    """Put back the exact tensors saved by :func:`apply_tensors` (bit for bit)."""
    for name, value in originals.items():
        get_tensor(pipe, name).copy_(value)


@contextlib.contextmanager
def applied(pipe, tensors: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """``with applied(pipe, result.tensors): ...`` runs the body on the edited pipeline, then restores it."""
    originals = apply_tensors(pipe, tensors)
    try:
        yield
    finally:
        restore_tensors(pipe, originals)


@contextlib.contextmanager
def frozen(*modules: torch.nn.Module, trainable: Iterable[torch.nn.Parameter] = ()) -> Iterator[None]:
    """``requires_grad`` off for every parameter of ``modules`` (no gradient lands on the pipeline) except the
    ``trainable`` ones, which are switched on; on exit every parameter gets back its previous flag."""
    params: dict[int, torch.nn.Parameter] = {}
    for m in modules:
        for p in m.parameters():
            params.setdefault(id(p), p)
    train = list(trainable)
    for p in train:
        params.setdefault(id(p), p)
    flags = [(p, p.requires_grad) for p in params.values()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        for p in train:
            p.requires_grad_(True)
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)
