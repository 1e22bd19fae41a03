"""Model folders in the checkpoint layout, readable by transformers 4 and 5 alike.

transformers 5 names a CLIP text encoder's blocks without the ``text_model.`` level and its
``save_pretrained`` writes them so (``encoder.layers.0…``); transformers 4 loads such a file as fresh random
weights with only a warning. Every Stable Diffusion checkpoint on the hub keeps ``text_model.``, and
transformers 5 reads that layout too, so ICEB writes it (:func:`write_checkpoint_layout`: the toy model's
export, ``iceb apply``, ``iceb export``) and refuses, on load, a folder whose text-encoder names the running
transformers would not read (:func:`check_text_encoder_readable`) — an error, never random weights.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from iceb.utils.text_layout import PREFIX, checkpoint_key

#: the text encoders of a Stable Diffusion folder (CLIP text models in SD 1.x, 2.x and XL)
TEXT_COMPONENTS = ("text_encoder", "text_encoder_2")
_INDEX = "model.safetensors.index.json"


class WeightLayoutError(RuntimeError):
    """A model folder whose tensor names this transformers version cannot read."""


def write_checkpoint_layout(folder: str | Path) -> list[Path]:
    """Rewrite the text encoders' safetensors files of a diffusers folder in the checkpoint layout.

    Values and metadata are kept bit for bit; only names change (and the shard index, if any). Files
    already in that layout are left untouched.

    Args:
        folder: A diffusers pipeline folder (as ``save_pretrained`` wrote it).

    Returns:
        The files rewritten.
    """
    from safetensors.torch import safe_open, save_file

    from iceb.utils.io import atomic_path, write_text

    changed = []
    for comp in TEXT_COMPONENTS:
        sub = Path(folder) / comp
        if not sub.is_dir():
            continue
        for f in sorted(sub.glob("*.safetensors")):
            with safe_open(str(f), framework="pt") as fh:
                keys = list(fh.keys())
                if all(checkpoint_key(k) == k for k in keys):
                    continue
                meta = fh.metadata()
                tensors = {checkpoint_key(k): fh.get_tensor(k) for k in keys}
            with atomic_path(f) as tmp:
                save_file(tensors, str(tmp), metadata=meta)
            changed.append(f)
        index = sub / _INDEX
        if index.is_file():
            data = json.loads(index.read_text())
            data["weight_map"] = {checkpoint_key(k): v for k, v in data.get("weight_map", {}).items()}
            write_text(index, json.dumps(data, indent=2, sort_keys=True) + "\n")
    return changed


def _reads_unprefixed() -> bool:
    """transformers >= 5 reads both layouts; 4.x only ``text_model.``."""
    import transformers
    from packaging.version import Version

    return Version(transformers.__version__).major >= 5


def _file_keys(sub: Path) -> set[str]:
    from safetensors.torch import safe_open

    keys: set[str] = set()
    for f in sub.glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as fh:
            keys.update(fh.keys())
    return keys


def check_text_encoder_readable(pipe: Any, folder: str | Path) -> None:
    """Refuse a loaded folder whose text encoder transformers filled with fresh weights for want of names.

    Args:
        pipe: The pipeline just loaded from ``folder``.
        folder: Its diffusers folder.

    Raises:
        WeightLayoutError: A parameter of a text encoder has no tensor of a name this transformers reads.
    """
    both = _reads_unprefixed()
    for comp in TEXT_COMPONENTS:
        module = getattr(pipe, comp, None)
        sub = Path(folder) / comp
        if not isinstance(module, torch.nn.Module) or not sub.is_dir():
            continue
        keys = _file_keys(sub)
        if not keys:
            continue
        missing = []
        for name, _ in module.named_parameters():
            if name in keys or (both and PREFIX + name in keys):
                continue
            missing.append(name)
        if missing:
            import transformers

            raise WeightLayoutError(
                f"{sub} stores {len(missing)} of the text encoder's tensors under names transformers "
                f"{transformers.__version__} does not read (e.g. {missing[0]!r}); loading it would leave them "
                f"random. The folder was written by another transformers version in the layout without "
                f"'text_model.': rewrite it with `python -c \"from iceb.weight_layout import "
                f"write_checkpoint_layout; write_checkpoint_layout('{folder}')\"` or load it with transformers >= 5")


__all__ = ["TEXT_COMPONENTS", "WeightLayoutError", "check_text_encoder_readable", "write_checkpoint_layout"]
