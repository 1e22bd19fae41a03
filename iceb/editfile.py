"""Portable edit files: an edit as a small safetensors file plus a JSON sidecar.

An edit file ``edit.safetensors`` holds exactly the tensors an editor changed (:attr:`EditResult.tensors`),
keyed by their pipeline names (``text_encoder.encoder.layers.7.mlp.fc2.weight``,
``unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v.weight``), so it is megabytes, not the
gigabytes of a full model, and loads without unpickling anything. ``edit.safetensors.json`` says what made
it: editor, hyperparameters, base model (id, revision, fingerprint), the requests and their hash, tool
versions, timings, creation time and the composition history. The same JSON is embedded in the
safetensors header (key ``iceb``), so a file that lost its sidecar still loads.

    from iceb.editfile import apply_edit, load_edit, restore_edit
    originals = apply_edit(pipe, "edit.safetensors")   # refuses a different base model
    ...                                                # generate with the edited model
    restore_edit(pipe, originals)                      # back to the base, bit for bit

Base-model checks: the sidecar records, for every changed tensor, its shape and a 64-value sample of the
base values it replaced. :func:`apply_edit` refuses a pipeline whose tensors are missing, have other shapes
(never overridable) or hold other base values, and a ``model_id`` that differs from the recorded one,
unless ``force=True``. Two edits in sequence are :func:`merge_edits` (later values win for shared tensors).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch

FORMAT = "iceb-edit"
FORMAT_VERSION = 1
HEADER_KEY = "iceb"
SAMPLE_SIZE = 8


class EditFileError(ValueError):
    """A malformed edit file, or one that does not fit the pipeline it is applied to."""


@dataclass
class EditFile:
    """An edit in memory: the changed tensors and the sidecar's metadata."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def editor(self) -> str:
        return str(self.meta.get("editor", "?"))

    @property
    def requests(self):
        """The recorded requests as :class:`~editors.base.EditRequest` objects."""
        from iceb.data.request_files import requests_from_data

        if not self.meta.get("requests"):
            return []
        return requests_from_data(self.meta["requests"], str(self.path or "<edit>")).requests


def sidecar_path(path: str | Path) -> Path:
    """``edit.safetensors`` -> ``edit.safetensors.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _sha256(t: torch.Tensor) -> str:
    """Hash of a tensor's exact bytes (in its own dtype): the strict base-model check."""
    import hashlib

    t = t.detach().to("cpu").contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return hashlib.sha256(t.numpy().tobytes()).hexdigest()


def _sample(t: torch.Tensor) -> list[float]:
    """A few evenly spaced values of a tensor: the check across dtypes (fp32 edit on an fp16 model)."""
    flat = t.detach().reshape(-1)
    if flat.numel() == 0:
        return []
    idx = torch.linspace(0, flat.numel() - 1, min(SAMPLE_SIZE, flat.numel())).round().long()
    return [float(v) for v in flat[idx.to(flat.device)].double().cpu()]


def _versions() -> dict[str, str]:
    from iceb import __version__

    out = {"iceb": __version__, "torch": torch.__version__}
    for name in ("diffusers", "transformers", "safetensors"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - versions are informative only
            pass
    return out


def shareable_id(value: Any) -> Any:
    """A model id or spec as it may be shared: a local folder's absolute path becomes its folder name (the
    fingerprint, recorded beside it, is what identifies the weights); hub ids and names pass unchanged."""
    if isinstance(value, str):
        head, at, tail = value.partition("@")  # a fingerprint is "<spec>@<hash>"
        if Path(head).is_absolute():
            return Path(head).name + at + tail
    return value


def _same_model(recorded: Any, model_id: Any) -> bool:
    return str(recorded) == str(model_id) or str(shareable_id(str(recorded))) == str(shareable_id(str(model_id)))


def _model_meta(model: Any) -> dict[str, Any]:
    """Base-model identity from a LoadedModel (or a bare pipeline: then only what it says of itself); no local
    absolute paths (:func:`shareable_id`): sidecars are meant to be shared."""
    if hasattr(model, "pipe"):
        return {"spec": shareable_id(model.spec), "id": shareable_id(model.model_id), "revision": model.revision,
                "fingerprint": shareable_id(model.fingerprint), "family": model.family, "world": model.world}
    name = getattr(getattr(model, "config", None), "_name_or_path", None) if model is not None else None
    return {"spec": None, "id": name, "revision": None, "fingerprint": None, "family": None, "world": None}


def _pipe_of(model: Any):
    return model.pipe if hasattr(model, "pipe") else model


def _hparams_dict(hparams: Any) -> Any:
    if hparams is None:
        return None
    if hasattr(hparams, "to_dict"):
        return hparams.to_dict()
    return dict(hparams) if isinstance(hparams, Mapping) else hparams


def build_meta(tensors: Mapping[str, torch.Tensor], *, editor: str, hparams: Any, model: Any,
               requests: Sequence[Any], timings: Mapping[str, float] | None = None,
               losses: Mapping[str, Sequence[float]] | None = None, info: Mapping[str, Any] | None = None,
               mode: str = "batch") -> dict[str, Any]:
    """The sidecar for an edit made now on ``model`` (whose tensors must still hold the base values)."""
    from editors.weights import get_tensor
    from iceb.data.request_files import requests_hash, requests_to_json

    pipe = _pipe_of(model)
    described = {}
    for name, value in tensors.items():
        entry: dict[str, Any] = {"shape": list(value.shape), "dtype": str(value.dtype).replace("torch.", "")}
        if pipe is not None:
            live = get_tensor(pipe, name)
            entry.update(base_dtype=str(live.dtype).replace("torch.", ""), base_sha256=_sha256(live),
                         base_sample=_sample(live))
        described[name] = entry
    created = _now()
    rhash = requests_hash(requests)
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "editor": editor, "hparams": _hparams_dict(hparams),
        "mode": mode, "base_model": _model_meta(model), "n_requests": len(requests), "requests_hash": rhash,
        "requests": requests_to_json(requests), "tensors": described, "timings": dict(timings or {}),
        "losses_last": {k: (float(v[-1]) if len(v) else None) for k, v in (losses or {}).items()},
        "info": _jsonable(dict(info or {})), "versions": _versions(), "created": created,
    }
    meta["history"] = [{"editor": editor, "requests_hash": rhash, "n_requests": len(requests), "created": created,
                        "mode": mode, "tensors": sorted(tensors)}]
    return meta


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def save_edit(path: str | Path, result: Any, *, editor: str, hparams: Any = None, model: Any = None,
              requests: Sequence[Any] = (), mode: str = "batch", extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``result`` (an EditResult, an EditFile, or a dict of tensors) as an edit file plus sidecar.

    ``model`` is the :class:`~iceb.models.LoadedModel` the edit was made on, still unedited: its identity
    and a sample of the replaced base values go into the sidecar so a wrong base is refused later.

    Args:
        path: The edit file to write; must end in ``.safetensors``. The JSON sidecar goes next to it.
        result: An :class:`~editors.base.EditResult`, an :class:`EditFile` (its metadata is kept), or a
            mapping of weight name to tensor.
        editor: The editor's registered name, recorded in the metadata.
        hparams: The editor's hyperparameters (a dataclass or mapping), recorded.
        model: The unedited :class:`~iceb.models.LoadedModel` the edit was made on.
        requests: The :class:`~editors.requests.EditRequest` values the edit served, recorded.
        mode: ``str()`` of the :class:`editors.run.EditMode` the edit ran in.
        extra: More JSON-able metadata, merged over the built metadata.

    Returns:
        ``path``, as a :class:`~pathlib.Path`.

    Raises:
        EditFileError: ``path`` does not end in ``.safetensors``.
        FloatingPointError: A tensor holds NaN or inf values.
    """
    from safetensors.torch import save_file

    from iceb.utils.io import atomic_path, write_text

    path = Path(path)
    if path.suffix != ".safetensors":
        raise EditFileError(f"edit files end in .safetensors; got {path}")
    if isinstance(result, EditFile):
        tensors, meta = result.tensors, dict(result.meta)
    else:
        tensors = result if isinstance(result, Mapping) else result.tensors
        meta = build_meta(tensors, editor=editor, hparams=hparams, model=model, requests=requests,
                          timings=getattr(result, "timings", None), losses=getattr(result, "losses", None),
                          info=getattr(result, "info", None), mode=mode)
    if extra:
        meta.update(_jsonable(dict(extra)))
    tensors, meta = _checkpoint_layout(_pipe_of(model), tensors, meta)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            raise FloatingPointError(f"refusing to save an edit with non-finite values in {name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    header = json.dumps(meta, sort_keys=True, default=str)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={HEADER_KEY: header})
    write_text(sidecar_path(path), json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    return path


def _checkpoint_layout(pipe: Any, tensors: Mapping[str, torch.Tensor],
                       meta: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensor names as checkpoints store them (:func:`editors.weights.checkpoint_name`), in the tensors, the
    sidecar's tensor table and its history: an edit made under transformers 5 applies under 4 and back."""
    from editors.weights import checkpoint_name

    def rename(name: str) -> str:
        return checkpoint_name(pipe, name)

    meta = dict(meta)
    if isinstance(meta.get("tensors"), Mapping):
        meta["tensors"] = {rename(k): v for k, v in meta["tensors"].items()}
    if isinstance(meta.get("history"), list):
        meta["history"] = [{**h, "tensors": sorted(rename(t) for t in h.get("tensors", []))}
                           if isinstance(h, Mapping) else h for h in meta["history"]]
    return {rename(k): v for k, v in tensors.items()}, meta


def load_edit(path: str | Path) -> EditFile:
    """Read an edit file (safetensors only, never pickle) and its sidecar (or the embedded copy).

    Args:
        path: The ``.safetensors`` edit file; its sidecar is read from :func:`sidecar_path`.

    Returns:
        The :class:`EditFile`: its tensors, its metadata and ``path``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        EditFileError: The file is not readable safetensors, the sidecar is malformed JSON, or the two
            list different tensors.
    """
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"edit file {path} does not exist")
    try:
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
            for k in fh.keys():
                tensors[k] = fh.get_tensor(k)
    except (SafetensorError, OSError) as err:
        raise EditFileError(f"{path} is not a readable safetensors file: {err}") from None
    side = sidecar_path(path)
    if side.is_file():
        try:
            meta = json.loads(side.read_text())
        except json.JSONDecodeError as err:
            raise EditFileError(f"{side}: malformed JSON sidecar: {err}") from None
    elif HEADER_KEY in header:
        meta = json.loads(header[HEADER_KEY])
    else:
        meta = {"editor": header.get("editor", "unknown"), "base_model": {"id": header.get("base_model")},
                "tensors": {k: {"shape": list(v.shape)} for k, v in tensors.items()}}
    recorded = meta.get("tensors")
    if isinstance(recorded, Mapping) and set(recorded) != set(tensors):
        raise EditFileError(f"{side}: the sidecar lists tensors {sorted(set(recorded) ^ set(tensors))} that the "
                            f"safetensors file does not match; the two files belong to different edits")
    tensors, meta = _checkpoint_layout(None, tensors, meta)  # files from before the layout was fixed
    return EditFile(tensors, meta, path)


def _as_editfile(edit: Any) -> EditFile:
    if isinstance(edit, EditFile):
        return edit
    if isinstance(edit, (str, Path)):
        return load_edit(edit)
    if isinstance(edit, (list, tuple)):
        return merge_edits(list(edit))
    if hasattr(edit, "tensors"):
        return EditFile(dict(edit.tensors), {})
    raise TypeError(f"expected an edit file path, an EditFile or an EditResult, got {type(edit).__name__}")


def check_base(pipe: Any, edit: EditFile, *, model_id: str | None = None) -> tuple[list[str], list[str]]:
    """Why ``edit`` does not fit ``pipe``: (problems no force can fix, problems ``force`` may override)."""
    from editors.weights import WeightNameError, get_tensor

    hard: list[str] = []
    problems: list[str] = []
    base = edit.meta.get("base_model") or {}
    if model_id is not None and base.get("id") and not _same_model(base["id"], model_id):
        problems.append(f"it was made on model {base['id']!r}, not {model_id!r}")
    recorded = edit.meta.get("tensors") or {}
    for name, value in edit.tensors.items():
        try:
            live = get_tensor(pipe, name)
        except WeightNameError as err:
            hard.append(str(err))
            continue
        if tuple(live.shape) != tuple(value.shape):
            hard.append(f"shape mismatch for {name!r}: pipeline {tuple(live.shape)}, edit {tuple(value.shape)}")
            continue
        rec = recorded.get(name) or {}
        if rec.get("base_sha256") and rec.get("base_dtype") == str(live.dtype).replace("torch.", ""):
            same = _sha256(live) == rec["base_sha256"]
        elif rec.get("base_sample"):
            got = torch.tensor(_sample(live), dtype=torch.float64)
            want = torch.tensor(rec["base_sample"], dtype=torch.float64)
            same = got.shape == want.shape and bool(torch.allclose(got, want, rtol=1e-2, atol=1e-3))
        else:
            same = True  # nothing recorded (a foreign file): only names and shapes can be checked
        if not same:
            problems.append(f"the pipeline's {name!r} does not hold the base values the edit was made on "
                                f"(another model, or an edit already applied)")
    return hard, problems


def apply_edit(pipe: Any, edit: Any, *, model_id: str | None = None, force: bool = False) -> dict[str, torch.Tensor]:
    """Apply an edit file (path, EditFile, or a list of them in order) to a diffusers pipeline.

    Returns the replaced original tensors; :func:`restore_edit` puts them back bit for bit. ``pipe`` may be
    a LoadedModel (its ``model_id`` is then checked). Refuses a pipeline that is not the edit's base unless
    ``force=True``; missing tensors or other shapes are refused always.

    Args:
        pipe: A diffusers pipeline or a :class:`~iceb.models.LoadedModel`; edited in place.
        edit: An edit file path, an :class:`EditFile`, an :class:`~editors.base.EditResult`, or a list of
            them (merged in order by :func:`merge_edits`).
        model_id: The pipeline's model id, checked against the edit's recorded base; default: the
            LoadedModel's ``model_id`` (none for a bare pipeline).
        force: Apply even when the recorded base model or base values differ.

    Returns:
        The replaced original tensors by weight name, for :func:`restore_edit`.

    Raises:
        EditFileError: The edit does not fit the pipeline (the message says why).
        TypeError: ``edit`` is none of the accepted kinds.
    """
    from editors.weights import apply_tensors

    if hasattr(pipe, "pipe"):
        model_id = model_id if model_id is not None else pipe.model_id
        pipe = pipe.pipe
    ef = _as_editfile(edit)
    hard, problems = check_base(pipe, ef, model_id=model_id)
    if hard or (problems and not force):
        where = f" {ef.path}" if ef.path else ""
        hint = "" if hard else "; pass force=True (--force) to apply it anyway"
        raise EditFileError(f"edit{where} does not fit this model: " + "; ".join(hard + problems) + hint)
    return apply_tensors(pipe, ef.tensors)


def restore_edit(pipe: Any, originals: Mapping[str, torch.Tensor]) -> None:
    """Undo :func:`apply_edit` with the originals it returned.

    Args:
        pipe: The pipeline (or :class:`~iceb.models.LoadedModel`) the edit was applied to.
        originals: What :func:`apply_edit` returned; put back bit for bit.
    """
    from editors.weights import restore_tensors

    restore_tensors(_pipe_of(pipe), originals)


@contextlib.contextmanager
def edited(pipe: Any, edit: Any, *, model_id: str | None = None, force: bool = False) -> Iterator[Any]:
    """``with edited(pipe, "edit.safetensors"): ...`` runs the body on the edited model, then restores it.

    Args:
        pipe: A diffusers pipeline or a :class:`~iceb.models.LoadedModel`.
        edit: As for :func:`apply_edit`.
        model_id: As for :func:`apply_edit`.
        force: As for :func:`apply_edit`.

    Returns:
        A context manager that yields the edited diffusers pipeline and restores it on exit, also when the
        body raises.

    Raises:
        EditFileError: The edit does not fit the pipeline (raised on entering the ``with``).
    """
    originals = apply_edit(pipe, edit, model_id=model_id, force=force)
    try:
        yield _pipe_of(pipe)
    finally:
        restore_edit(pipe, originals)



def _digest(paths: Sequence[str | Path]) -> str:
    """Content hash of the edit files: the edited model's identity."""
    from iceb.utils.hashing import digest_files

    return digest_files(*paths)


def save_applied(model: Any, edits: Sequence[Any], out: str | Path, *, force: bool = False) -> dict[str, Any]:
    """Write a full edited diffusers folder: the base model with edit files applied, in order.

    Each edit must fit the clean base model (as :func:`apply_edit` checks); the edits are then composed
    (:func:`merge_edits`: later values win for shared tensors), applied, saved with ``save_pretrained``
    (safetensors) and restored, so ``model`` is left unchanged. The folder's ``iceb_model.json`` keeps the
    base model's family, world, classifier and generation settings plus the edit history, so the folder
    loads with :func:`iceb.models.load_model` like any model spec.

    Args:
        model: the base model, a :class:`~iceb.models.LoadedModel`.
        edits: edit files (paths, or :class:`EditFile` loaded from paths), in the order to apply them.
        out: the folder to write; it must not exist or be empty.
        force: apply edits even where the recorded base model differs (other names or shapes are always
            refused).

    Returns:
        The ``iceb_model.json`` written, whose ``model_id`` is the base id plus the editor and a hash of
        the edit files.

    Raises:
        ValueError: ``out`` exists and is not empty.
        EditFileError: an edit does not fit the base model.
    """
    import dataclasses

    from iceb.models import ICEB_MODEL_INFO
    from iceb.utils.io import write_json

    files = [_as_editfile(e) for e in edits]
    if any(f.path is None for f in files):
        raise ValueError("save_applied needs edit files read from disk (their bytes name the edited model)")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out {out} exists and is not empty; choose a new folder")
    merged = merge_edits(files)
    for e in files:  # each edit must fit the clean base model; then they are applied in order
        hard, soft = check_base(model.pipe, e, model_id=model.model_id)
        if hard or (soft and not force):
            raise EditFileError(f"edit {e.path} does not fit {model.spec}: " + "; ".join(hard + soft)
                                + ("" if hard else "; pass --force to apply it anyway"))
    originals = apply_edit(model.pipe, merged, force=True)
    try:
        model.pipe.save_pretrained(str(out), safe_serialization=True)
    finally:
        restore_edit(model.pipe, originals)
    from iceb.weight_layout import write_checkpoint_layout

    write_checkpoint_layout(out)  # readable by transformers 4 and 5 (iceb.weight_layout)
    from iceb.utils.io import share_mode

    for f in out.rglob("*"):  # the libraries write their weight files 0600: shared output reads like any other
        if f.is_file():
            share_mode(f)
    info = dict(model.info)
    info.pop("note", None)  # the base's note (e.g. "stored in float16") need not hold for what was saved
    info["dtype"] = str(next(model.pipe.unet.parameters()).dtype).replace("torch.", "")
    info.update({"family": model.family, "world": model.world, "classifier": model.classifier,
                 "generation": dataclasses.asdict(model.generation),
                 "model_id": f"{model.model_id}+{merged.editor}:{_digest([f.path for f in files])}",
                 "edits": {"base_model": merged.meta.get("base_model"), "history": merged.meta["history"],
                           # names and content hashes, not local paths: the folder is meant to be shared
                           "files": [{"name": Path(f.path).name, "digest": _digest([f.path])} for f in files]}})
    write_json(out / ICEB_MODEL_INFO, info)
    return info

def merge_edits(edits: Sequence[Any]) -> EditFile:
    """Two or more edits in sequence as one: later values win for shared tensors; order is recorded.

    Applying the merged edit equals applying the edits one after another (``force`` for the later ones,
    whose recorded base values differ where an earlier edit changed a shared tensor).

    Args:
        edits: Edit file paths, :class:`EditFile` or :class:`~editors.base.EditResult` values, in the order
            they are applied.

    Returns:
        One in-memory :class:`EditFile` (``path`` None) whose metadata records the history, the requests of
        all edits and the shared tensors.

    Raises:
        EditFileError: ``edits`` is empty, or the edits were made on different base models.
    """
    files = [_as_editfile(e) for e in edits]
    if not files:
        raise EditFileError("merge_edits needs at least one edit")
    files = [EditFile(*_checkpoint_layout(None, f.tensors, f.meta), f.path) for f in files]  # one name layout
    ids = {str((f.meta.get("base_model") or {}).get("id")) for f in files if (f.meta.get("base_model") or {}).get("id")}
    if len(ids) > 1:
        raise EditFileError(f"cannot merge edits made on different base models: {sorted(ids)}")
    tensors: dict[str, torch.Tensor] = {}
    described: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    requests: list[Any] = []
    for k, f in enumerate(files):
        for name, value in f.tensors.items():
            tensors[name] = value
            entry = dict((f.meta.get("tensors") or {}).get(name) or {"shape": list(value.shape)})
            if name in described:  # the base is what the first edit touching the tensor replaced
                for key in ("base_dtype", "base_sha256", "base_sample"):
                    entry[key] = described[name].get(key)
            described[name] = entry
        for h in f.meta.get("history") or [{"editor": f.editor, "tensors": sorted(f.tensors)}]:
            history.append({**h, "order": len(history), "file": Path(f.path).name if f.path else h.get("file")})
        requests.extend(f.meta.get("requests") or [])
    from iceb.data.request_files import requests_from_data, requests_hash

    parsed = requests_from_data(requests, "merged edits").requests if requests else []
    first = files[0].meta
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "editor": "+".join(f.editor for f in files), "hparams": [f.meta.get("hparams") for f in files],
        "mode": "composed", "base_model": first.get("base_model"), "n_requests": len(requests),
        "requests_hash": requests_hash(parsed), "requests": requests, "tensors": described,
        "timings": {}, "versions": _versions(), "created": _now(), "history": history,
        "composition": {"rule": "in order; later values win for shared tensors",
                        "shared_tensors": sorted(_shared(files))},
    }
    return EditFile(tensors, meta, None)


def _shared(files: Sequence[EditFile]) -> set[str]:
    seen: set[str] = set()
    shared: set[str] = set()
    for f in files:
        shared |= seen & set(f.tensors)
        seen |= set(f.tensors)
    return shared


def edit_model(editor: str | Any, model: Any, requests: Sequence[Any], *, hparams: Any = None,
               hparams_file: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
               preset: str | None = None, mode: Any = "batch", rounds: int = 1, progress: bool = True,
               cache_dir: str | Path | bool | None = True, judge: Any = None):
    """Run an editor (a registered name or an instance) on a LoadedModel; returns ``(EditResult, hparams)``.

    ``mode`` is an :class:`editors.run.EditMode`, or ``"batch"`` / ``"sequential"`` with ``rounds``. The
    edit runs through :func:`editors.run.run_editor` (request checks, rounds, ``timings["edit_seconds"]``,
    NaN refusal). The pipeline is left unchanged; save the result with :func:`save_edit`.

    Args:
        editor: A registered editor name (or ``package.module:Class``), or an editor instance.
        model: The :class:`~iceb.models.LoadedModel` to edit (its ``family`` picks the hparams file).
        requests: The :class:`~editors.requests.EditRequest` values to serve.
        hparams: The editor's hyperparameters; default: loaded as below (or the instance's own).
        hparams_file: A YAML file of hyperparameters, instead of the editor's file for the model family.
        overrides: Hyperparameter values that win over the file's.
        preset: A named preset of the editor's hparams file.
        mode: An :class:`editors.run.EditMode`, or its kind ``"batch"`` / ``"sequential"``.
        rounds: The number of rounds for ``mode="sequential"``.
        progress: Show the editor's progress bars.
        cache_dir: Where the editor caches its statistics: True (default) the shared root of the CLI and the
            harness (:func:`iceb.utils.paths.editor_cache_dir`, ``$ICEB_CACHE``), so statistics computed by
            ``iceb edit`` or ``iceb evaluate`` are reused here; False or None: no cache; a path: that folder.
            Ignored when ``editor`` is an instance (it keeps its own).
        judge: For ``debias`` requests: the :data:`editors.base.Judge` the editor's debiasing mode scores its
            trial images with, e.g. ``iceb.metrics.get_metric("gender-clip", device="cuda").judge`` (what
            ``iceb evaluate --task debias`` gives it); None: the editor's own (none unless set).

    Returns:
        ``(result, hparams)``: the :class:`~editors.base.EditResult` (with ``timings["edit_seconds"]``) and
        the hyperparameters used.

    Raises:
        KeyError: An unknown editor name.
        ValueError: A bad mode or rounds, or bad hyperparameters.
        RequestError: Requests the editor cannot serve, or more rounds than requests.
        NonFiniteEditError: The edit produced NaN or inf values.
    """
    from editors import get_editor
    from editors.run import EditMode, make_editor, run_editor

    edit_mode = mode if isinstance(mode, EditMode) else EditMode(mode, rounds)
    if isinstance(editor, str):
        cls = get_editor(editor)
        if hparams is None:
            hparams = cls.load_hparams(getattr(model, "family", "sd-1.4"), hparams_file, overrides, preset=preset)
        from iceb.utils.paths import resolve_editor_cache

        instance = make_editor(cls, hparams, cache_dir=resolve_editor_cache(cache_dir), progress=progress)
    else:
        instance = editor
        hparams = hparams if hparams is not None else editor.hparams
    if judge is not None:
        instance.set_judge(judge)
    result = run_editor(instance, _pipe_of(model), list(requests), edit_mode)
    return result, hparams
