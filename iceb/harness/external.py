"""Edits made elsewhere, scored by the same harness: ``--editor file:PATH``.

``PATH`` is one of

- an ICEB edit file (``edit.safetensors`` with its JSON sidecar, or the copy embedded in its header; see
  :mod:`iceb.editfile`): its tensors are applied as they are, and its recorded base values and requests are
  checked against the model and the task;
- a safetensors file of changed tensors without ICEB metadata (another tool's): only names and shapes can
  be checked, tensors equal to the base are dropped, and the rows say ``sidecar: false``;
- a diffusers pipeline folder that another tool edited (``model_index.json``, ``<component>/*.safetensors``):
  its weights are compared with the base model's, and the tensors that differ are the edit (pickle ``.bin``
  weights are never read).

The harness then applies those tensors where it would have run an editor; the task's requests still define
what is scored. The rows carry ``editor = "file:<basename>"``, ``external = true`` and ``sidecar``
(whether the edit came with ICEB's metadata: its ``.json`` sidecar, or the copy embedded in the safetensors
header when the ``.json`` is gone); the run's ``config.json`` records where the tensors came from.
Every problem (no such file, a tensor the model does not have, another shape, another base model, other
requests) is one :class:`~iceb.editfile.EditFileError` line before any image is generated.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

PREFIX = "file:"
#: problems listed in one error line before "and K more"
_SHOWN = 3


def is_external(editor: Any) -> bool:
    """Whether an ``--editor`` value names an edit made elsewhere (``file:PATH``) rather than an editor."""
    return isinstance(editor, str) and editor.startswith(PREFIX)


def _error(msg: str):
    from iceb.editfile import EditFileError

    return EditFileError(msg)


def external_path(editor: str) -> Path:
    """The path of ``file:PATH``, checked without reading it: it exists and is an edit file or a pipeline folder.

    Args:
        editor: The ``--editor`` value, ``file:PATH``.

    Returns:
        The path.

    Raises:
        EditFileError: No path, no such file or folder, a file that is not ``.safetensors``, or a folder
            without ``model_index.json`` or a LoRA file.
    """
    text = editor[len(PREFIX):]
    if not text.strip():
        raise _error(f"--editor {editor}: give a path: file:edit.safetensors or file:PIPELINE_FOLDER")
    path = Path(text).expanduser()
    if not path.exists():
        raise _error(f"--editor {editor}: no such file or folder")
    from iceb.export import LORA_FILE

    if path.is_dir():
        if not (path / "model_index.json").is_file() and not (path / LORA_FILE).is_file():
            raise _error(f"--editor {editor}: the folder is no diffusers pipeline (no model_index.json) and no LoRA "
                         f"({LORA_FILE}); pass an "
                         f"edit file (.safetensors) or an edited pipeline folder")
        return path
    if path.suffix != ".safetensors":
        raise _error(f"--editor {editor}: expected a .safetensors edit file or a diffusers pipeline folder, got "
                     f"{path.name!r}")
    return path


def check_options(editor: str, *, hparams: Any = None, editor_args: Any = None, preset: Any = None,
                  mode: str = "batch", cold_cost: bool = False) -> Path:
    """The cheap checks of a ``file:`` run, before a model loads: the path, and no flag that only an editor uses.

    Args:
        editor: ``file:PATH``.
        hparams: ``--hparams`` (must be None: the edit is already made).
        editor_args: ``--editor-args`` (must be empty).
        preset: ``--preset`` (must be None).
        mode: ``--mode`` (must be ``batch``: the file is one edit, however it was made).
        cold_cost: ``--cold-cost`` (must be off: nothing is edited, so there is no cost to measure).

    Returns:
        The path (see :func:`external_path`).

    Raises:
        EditFileError: the first problem, naming the flag.
    """
    path = external_path(editor)
    for flag, value in (("--hparams", hparams), ("--editor-args", editor_args), ("--preset", preset)):
        if value:
            raise _error(f"{flag} does not apply to --editor {editor}: the edit is already made")
    if mode != "batch":
        raise _error(f"--mode {mode} does not apply to --editor {editor}: the file is one finished edit")
    if cold_cost:
        raise _error(f"--cold-cost does not apply to --editor {editor}: nothing is edited, so no cost is measured")
    return path


@dataclass
class ExternalEdit:
    """An edit made elsewhere, as the harness applies it.

    Attributes:
        path: The edit file or pipeline folder.
        kind: ``edit-file`` (ICEB metadata), ``safetensors`` (none) or ``diffusers-folder``.
        tensors: The changed tensors by pipeline name.
        meta: ICEB's sidecar (``{}`` without one).
        digest: A hash of the tensors' names and bytes: the edit's identity in the run id.
        metadata: Where ICEB's metadata was read: ``sidecar-file`` (``PATH.json``), ``header`` (the copy in
            the safetensors header, the ``.json`` being gone) or None.
    """

    path: Path
    kind: str
    tensors: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    digest: str = ""
    metadata: str | None = None

    @property
    def sidecar(self) -> bool:
        """Whether the edit came with ICEB's metadata (editor, base model, requests)."""
        return self.kind == "edit-file"

    @property
    def name(self) -> str:
        """The rows' editor name: ``file:<basename>``."""
        return f"{PREFIX}{self.path.name}"

    def identity(self) -> dict[str, Any]:
        """What enters the run id: the tensors (not where the file lies) and whether metadata came along."""
        return {"kind": self.kind, "digest": self.digest, "sidecar": self.sidecar}

    def describe(self) -> dict[str, Any]:
        """Where the edit came from, for ``config.json`` and the run's edit sidecar."""
        m = self.meta
        return {"external": True, "sidecar": self.sidecar, "metadata": self.metadata, "kind": self.kind,
                "path": str(self.path.resolve()),
                "digest": self.digest, "n_tensors": len(self.tensors), "editor": m.get("editor"),
                "hparams": m.get("hparams"), "mode": m.get("mode"), "n_requests": m.get("n_requests"),
                "requests_hash": m.get("requests_hash"), "base_model": m.get("base_model")}

    def result(self):
        """The edit as an :class:`~editors.base.EditResult` for the run's edit file: the tensors, the
        recorded edit time (None where unknown) and, with a sidecar, the cost measured when it was made."""
        from editors.base import EditResult

        info: dict[str, Any] = {"external": self.describe()}
        cost = (self.meta.get("info") or {}).get("cost")
        if cost:
            info["cost"] = cost
        seconds = self.meta.get("edit_seconds", (self.meta.get("timings") or {}).get("edit_seconds"))
        return EditResult(dict(self.tensors), {"edit_seconds": seconds}, {}, info)


def load_external(editor: str, model: Any) -> ExternalEdit:
    """Read ``file:PATH`` and check that it fits ``model``, before any image is generated.

    Args:
        editor: ``file:PATH`` (see the module docstring for what PATH may be).
        model: The unedited :class:`~iceb.models.LoadedModel` the run evaluates.

    Returns:
        The :class:`ExternalEdit`.

    Raises:
        EditFileError: the file cannot be read, names tensors the model does not have, holds other shapes,
            or (with ICEB metadata) was made on another base model.
    """
    from iceb.editfile import FORMAT, check_base, load_edit, sidecar_path

    path = external_path(editor)
    pipe = model.pipe
    metadata = None
    if is_lora(path):
        tensors, kind, meta = lora_delta(path, pipe, editor), "lora", {}
    elif path.is_dir():
        tensors, kind, meta = folder_delta(path, pipe, editor), "diffusers-folder", {}
    else:
        try:
            ef = load_edit(path)
        except FileNotFoundError:
            raise _error(f"--editor {editor}: no such file") from None
        kind = "edit-file" if ef.meta.get("format") == FORMAT else "safetensors"
        meta = ef.meta if kind == "edit-file" else {}
        if kind == "edit-file":
            metadata = "sidecar-file" if sidecar_path(path).is_file() else "header"
        hard, soft = check_base(pipe, ef, model_id=model.model_id)
        problems = hard + (soft if kind == "edit-file" else [])
        if problems:
            raise _error(f"--editor {editor} does not fit model {model.spec}: {_join(problems)}")
        tensors = dict(ef.tensors) if kind == "edit-file" else _changed(pipe, ef.tensors)
    return ExternalEdit(path, kind, tensors, meta, tensor_digest(tensors), metadata)


def check_requests(ext: ExternalEdit, requests: Sequence[Any], task: str, n: int) -> None:
    """An edit file with ICEB metadata must have served the task's requests for ``n`` edits.

    Without metadata nothing can be checked: the user vouches that the edit serves these requests.

    Raises:
        EditFileError: the recorded requests differ from the task's.
    """
    from iceb.data.request_files import requests_hash

    recorded = ext.meta.get("requests_hash")
    if not ext.sidecar or not recorded or recorded == requests_hash(requests):
        return
    raise _error(f"--editor {ext.name}: the edit file records {ext.meta.get('n_requests', '?')} request(s) that are "
                 f"not task {task}'s {len(requests)} at N={n}, so the rows would score concepts it did not edit; "
                 f"edit the task's requests ('iceb tasks export {task} --edits {n} --format requests-csv') or pass "
                 f"the --edits N it was made for")


def default_edits(ext: ExternalEdit) -> tuple[int, ...]:
    """The edit count a ``file:`` run evaluates without ``--edits``: the recorded request count.

    Raises:
        EditFileError: the file records none (no ICEB metadata).
    """
    n = ext.meta.get("n_requests")
    if isinstance(n, int) and n >= 1:
        return (n,)
    raise _error(f"--editor {ext.name}: the edit records no request count; pass --edits N (the task's first N "
                 f"requests it serves)")


def folder_delta(folder: Path, pipe: Any, editor: str = "") -> dict[str, Any]:
    """The tensors of an edited pipeline folder that differ from ``pipe``'s (the unedited base).

    Each component of the base (``text_encoder``, ``unet``, ...) is compared tensor by tensor with the
    folder's ``<component>/*.safetensors``; a component the folder lacks counts as unchanged. A folder saved
    in another dtype is compared in that dtype (a base tensor that rounds to the folder's value is unchanged).

    Args:
        folder: The edited pipeline folder.
        pipe: The base pipeline.
        editor: The ``--editor`` value, for messages.

    Returns:
        The changed tensors by pipeline name, in the folder's dtype.

    Raises:
        EditFileError: a component holds only pickle weights, a tensor the base lacks or another shape, or
            the folder holds no weights of the base's components.
    """
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    from editors.weights import COMPONENTS, WeightNameError, get_tensor

    out: dict[str, Any] = {}
    problems: list[str] = []
    compared = 0
    for comp in COMPONENTS:
        if not isinstance(getattr(pipe, comp, None), torch.nn.Module) or not (folder / comp).is_dir():
            continue
        files = sorted((folder / comp).glob("*.safetensors"))
        if not files and any((folder / comp).glob("*.bin")):
            raise _error(f"--editor {editor}: {folder / comp} holds only pickle (.bin) weights, which ICEB never "
                         f"loads; save the pipeline with safe_serialization=True")
        for f in files:
            try:
                with safe_open(str(f), framework="pt") as fh:
                    for key in fh.keys():
                        name = f"{comp}.{key}"
                        try:
                            live = get_tensor(pipe, name)
                        except WeightNameError as err:
                            problems.append(str(err))
                            continue
                        value = fh.get_tensor(key)
                        if tuple(value.shape) != tuple(live.shape):
                            problems.append(f"shape mismatch for {name!r}: pipeline {tuple(live.shape)}, folder "
                                            f"{tuple(value.shape)}")
                            continue
                        compared += 1
                        if not torch.equal(live.detach().to("cpu", value.dtype), value):
                            out[name] = value
            except (SafetensorError, OSError) as err:
                raise _error(f"--editor {editor}: {f} is not a readable safetensors file: {err}") from None
    if problems:
        raise _error(f"--editor {editor} does not fit the model: {_join(problems)}")
    if not compared:
        raise _error(f"--editor {editor}: the folder holds no safetensors weights of the model's components "
                     f"({', '.join(c for c in COMPONENTS if getattr(pipe, c, None) is not None)})")
    return out


_LORA_PARTS = (".lora_A.weight", ".lora_B.weight", ".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight",
               ".lora.up.weight", ".lora.down.weight")


def _lora_keys(path: Path) -> list[str]:
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    from iceb.export import LORA_FILE

    f = path / LORA_FILE if path.is_dir() else path
    if not f.is_file() or f.suffix != ".safetensors":
        return []
    try:
        with safe_open(str(f), framework="pt") as fh:
            return list(fh.keys())
    except (SafetensorError, OSError):
        return []


def is_lora(path: Path) -> bool:
    """A diffusers LoRA: a folder with ``pytorch_lora_weights.safetensors`` (and no pipeline), or such a file."""
    if path.is_dir() and (path / "model_index.json").is_file():
        return False
    keys = _lora_keys(path)
    return bool(keys) and all(any(p in k for p in _LORA_PARTS) or k.endswith(".alpha") for k in keys)


def lora_delta(path: Path, pipe: Any, editor: str = "") -> dict[str, Any]:
    """The weights a LoRA gives the base pipeline at strength 1 (what ``load_lora_weights`` + ``fuse_lora`` make).

    The LoRA is loaded with diffusers' own loader and fused; the changed weights are read off and the pipeline is
    put back bit for bit from copies taken before (unfusing subtracts, which is not exact).

    Args:
        path: The LoRA folder or file.
        pipe: The base pipeline (left as it was).
        editor: The ``--editor`` value, for messages.

    Returns:
        The changed weights by pipeline name.

    Raises:
        EditFileError: diffusers cannot load the LoRA into this pipeline.
    """
    import torch

    from editors.weights import WeightNameError, get_tensor, restore_tensors

    names = set()
    for k in _lora_keys(path):
        for part in _LORA_PARTS:
            if part in k:
                names.add(k.split(part)[0] + ".weight")
    originals = {}
    for n in sorted(names):
        try:
            originals[n] = get_tensor(pipe, n).detach().clone()
        except WeightNameError as err:
            raise _error(f"--editor {editor}: the LoRA targets a tensor the model lacks: {err}") from None
    try:
        pipe.load_lora_weights(str(path.parent if path.is_file() else path),
                               **({"weight_name": path.name} if path.is_file() else {}), adapter_name="iceb-file")
        pipe.fuse_lora(lora_scale=1.0, adapter_names=["iceb-file"])
        out = {n: get_tensor(pipe, n).detach().clone() for n in originals}
    except Exception as err:  # noqa: BLE001 - diffusers raises many kinds for a LoRA that does not fit
        raise _error(f"--editor {editor}: diffusers could not load this LoRA into the model: {err}") from None
    finally:
        try:
            pipe.unload_lora_weights()
        finally:
            with torch.no_grad():
                restore_tensors(pipe, originals)
    return {n: v for n, v in out.items() if not torch.equal(v, originals[n])}


def _changed(pipe: Any, tensors: Mapping[str, Any]) -> dict[str, Any]:
    """The tensors that differ from the pipeline's (names and shapes already checked)."""
    import torch

    from editors.weights import get_tensor

    return {k: v for k, v in tensors.items() if not torch.equal(get_tensor(pipe, k).detach().to("cpu", v.dtype), v)}


def tensor_digest(tensors: Mapping[str, Any]) -> str:
    """A hash of the tensors' names, dtypes, shapes and bytes (16 hex): the same edit, wherever it lies."""
    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update((t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().tobytes())
    return h.hexdigest()[:16]


def _join(problems: Sequence[str]) -> str:
    shown = "; ".join(problems[:_SHOWN])
    return shown + (f"; and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else "")


__all__ = ["PREFIX", "ExternalEdit", "check_options", "check_requests", "default_edits", "external_path",
           "folder_delta", "is_external", "load_external", "tensor_digest"]
