"""Model folders in the checkpoint layout, readable by transformers 4 and 5 alike.

transformers 5 names a CLIP text encoder's blocks without the ``text_model.`` level and its
``save_pretrained`` writes them so (``encoder.layers.0…``); transformers 4 loads such a file as fresh random
weights with only a warning. Every Stable Diffusion checkpoint on the hub keeps ``text_model.``, and
transformers 5 reads that layout too, so ICEB writes it (:func:`write_checkpoint_layout`: the toy model's
export, ``iceb apply``, ``iceb export``) and refuses, on load, a folder whose text-encoder names the running
transformers would not read (:func:`check_text_encoder_readable`) — an error, never random weights.
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
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


#: A text encoder's token-embedding table stored as the rows a model uses (``write_token_rows``): ``ids`` (int64)
#: and ``rows`` in this file beside the encoder's weights, which then lack the table.
TOKEN_ROWS = "token_rows.safetensors"
_TOKEN_TABLE = PREFIX + "embeddings.token_embedding.weight"


def write_token_rows(folder: str | Path, ids: list[int], component: str = "text_encoder") -> int:
    """Store only the rows ``ids`` of a folder's token-embedding table (in :data:`TOKEN_ROWS`).

    Why: a model that speaks a small vocabulary (the toy worlds) at CLIP's widths would otherwise ship
    49,408 x 768 rows it never reads (76 MB in fp16). :func:`read_token_rows` rebuilds the table on load with
    those rows exact and every other row zero, so a prompt of the model's own words encodes bit for bit as
    before, and a token it never saw reads as a zero vector (plus its position), not as a stale random row.

    Args:
        folder: A diffusers folder in the checkpoint layout (after :func:`write_checkpoint_layout`).
        ids: The token ids to keep.
        component: The text encoder's sub-folder.

    Returns:
        The number of rows kept.
    """
    from safetensors.torch import safe_open, save_file

    from iceb.utils.io import atomic_path

    sub = Path(folder) / component
    f = sub / "model.safetensors"
    with safe_open(str(f), framework="pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    table = tensors.pop(_TOKEN_TABLE)
    keep = torch.tensor(sorted(set(ids)), dtype=torch.int64)
    with atomic_path(sub / TOKEN_ROWS) as tmp:
        save_file({"ids": keep, "rows": table[keep].contiguous()}, str(tmp))
    with atomic_path(f) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return len(keep)


def read_token_rows(text_encoder: Any, folder: str | Path) -> bool:
    """Rebuild a text encoder's token-embedding table from :data:`TOKEN_ROWS` (zeros elsewhere), if present.

    Args:
        text_encoder: The encoder just loaded from ``folder`` (its table holds transformers' fresh initialisation).
        folder: The encoder's own folder (a pipeline's ``text_encoder/``).

    Returns:
        Whether the folder stores its table as rows.
    """
    from safetensors.torch import load_file

    path = Path(folder) / TOKEN_ROWS
    if not path.is_file():
        return False
    rows = load_file(str(path))
    table = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        table.zero_()
        table[rows["ids"]] = rows["rows"].to(table.dtype)
    return True


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
        if (sub / TOKEN_ROWS).is_file():  # the table is rebuilt from its rows (read_token_rows)
            keys |= {_TOKEN_TABLE, _TOKEN_TABLE[len(PREFIX):]}
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


__all__ = ["TEXT_COMPONENTS", "TOKEN_ROWS", "WeightLayoutError", "check_text_encoder_readable", "quiet_transformers",
           "read_token_rows",
           "write_checkpoint_layout", "write_token_rows"]


@contextlib.contextmanager
def quiet_transformers(quiet: bool) -> Iterator[None]:
    """transformers' logging at error level inside the block, when ``quiet``.

    Why: a text encoder stored as token rows has no full embedding table, which transformers reports as missing
    weights at warning level; :func:`read_token_rows` fills the table right after, so the warning misleads.

    Args:
        quiet: Whether to lower the level (False: a no-op block).
    """
    if not quiet:
        yield
        return
    from transformers.utils import logging as tlog

    level = tlog.get_verbosity()
    tlog.set_verbosity_error()
    try:
        yield
    finally:
        tlog.set_verbosity(level)
