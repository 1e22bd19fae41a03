"""Edits exported to the formats other tools load: a LoRA for diffusers, one single-file checkpoint in the original
layout the Stable Diffusion UIs load (:mod:`iceb.single_file`), a full diffusers folder; each with a model card.

**LoRA.** An edit replaces weights ``W`` by ``W' = W + ΔW``. EMCID's and ReFACT's ``ΔW`` are exactly rank N
(EMCID: ``R (A⁻¹K)ᵀ`` per layer), UCE's and TIME's rank ≤ the number of distinct prompts, so a LoRA
``ΔW = B A`` holds them without loss. The factors come from the float64 SVD ``ΔW = U S Vᵀ``:
``B = U_r √S_r``, ``A = √S_r V_rᵀ``, with ``r`` the numerical rank (singular values above ``rtol · σ_max``)
or ``max_rank`` when that is smaller — then the LoRA is a truncation and its relative Frobenius error
``‖ΔW − BA‖ / ‖ΔW‖`` is reported per tensor and in total (never silently). Only 2-D weights can be a LoRA;
an edit of convolutions, biases or norms (ESD-u's full fine-tune) is refused with the tensors named, and the
diffusers folder is the way to share it.

The file is diffusers' own (``StableDiffusionPipeline.save_lora_weights``: ``pytorch_lora_weights.safetensors``,
keys ``unet.<module>.lora_A/lora_B.weight`` and ``text_encoder.text_model.<module>.lora_linear_layer.down/up.weight``),
read by ``pipe.load_lora_weights(folder)``. diffusers gives every module of a component the scale
``lora_alpha / r`` with one ``lora_alpha`` (the first module's rank), so all modules of a component are
padded with zero columns to one rank: the scale is exactly 1. Strength is the usual knob:
``pipe.fuse_lora(lora_scale=s)`` or ``pipe.set_adapters([name], adapter_weights=[s])``.
"""
from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:
    import torch

FORMATS = ("lora", "single-file", "diffusers")
LORA_FILE = "pytorch_lora_weights.safetensors"


class ExportError(ValueError):
    """An edit that cannot be written in the asked format (the message says why and what to use)."""


def check_format(fmt: str) -> None:
    """Refuse an unknown export format, with the nearest known one (cheap: before any model loads)."""
    if fmt not in FORMATS:
        from iceb.utils.registry import closest

        near = closest(fmt, list(FORMATS))
        raise ExportError(f"unknown export format {fmt!r}" + (f" (did you mean {near!r}?)" if near else "")
                          + f"; formats: {', '.join(FORMATS)}")


@dataclass
class LoraFactors:
    """``ΔW ≈ B A`` for one weight (``B``: out×r, ``A``: r×in, float64) and what was lost."""

    up: torch.Tensor
    down: torch.Tensor
    rank: int  # kept (before padding)
    full_rank: int  # numerical rank of ΔW
    rel_error: float  # ‖ΔW − BA‖_F / ‖ΔW‖_F


def lora_factors(delta: torch.Tensor, *, max_rank: int | None = None, rtol: float = 1e-7) -> LoraFactors:
    """The LoRA factors of one weight change.

    Args:
        delta: ``W' − W`` (2-D).
        max_rank: Keep at most this many singular directions (``None``: all, the exact LoRA).
        rtol: Singular values at or below ``rtol · σ_max`` count as zero (float64 SVD of float32 weights).

    Returns:
        The factors, the kept and the numerical rank, and the relative Frobenius error.
    """
    import torch

    d = delta.detach().to("cpu", torch.float64)
    u, s, vh = torch.linalg.svd(d, full_matrices=False)
    full = int((s > rtol * s[0]).sum()) if s.numel() and s[0] > 0 else 0
    r = full if max_rank is None else min(full, max_rank)
    root = s[:r].sqrt()
    up, down = u[:, :r] * root, root[:, None] * vh[:r]
    norm = float(s.square().sum().sqrt())
    err = float(s[r:].square().sum().sqrt()) / norm if norm > 0 else 0.0
    return LoraFactors(up, down, r, full, err)


def _module(name: str) -> tuple[str, str]:
    """``text_encoder.text_model.encoder.layers.3.mlp.fc2.weight`` -> (component, module path)."""
    comp, _, inner = name.partition(".")
    if not inner.endswith(".weight"):
        raise ExportError(f"{name!r} is not a weight")
    return comp, inner[: -len(".weight")]


def lora_state_dicts(pipe: Any, tensors: Mapping[str, torch.Tensor], *, max_rank: int | None = None,
                     dtype: torch.dtype | None = None) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """Per component, the LoRA layers of an edit in diffusers' key convention, and a report.

    Args:
        pipe: The base pipeline (its weights are ``W``).
        tensors: The edited values ``W'`` by pipeline tensor name (either name layout).
        max_rank: As for :func:`lora_factors`.
        dtype: Dtype of the written factors (default float32).

    Returns:
        ``({"unet": {...}, "text_encoder": {...}}, report)``; the report has per tensor the rank kept, the
        numerical rank and the relative error, and the total relative error.

    Raises:
        ExportError: A changed tensor is not a 2-D weight of the UNet or the text encoder.
    """
    import torch

    from editors.weights import checkpoint_name, get_tensor

    dtype = dtype or torch.float32
    bad = [n for n, t in tensors.items() if t.dim() != 2 or not n.endswith(".weight")
           or n.split(".", 1)[0] not in ("unet", "text_encoder")]
    if bad:
        raise ExportError(f"a LoRA holds changes of 2-D weights of the UNet and the text encoder only; this edit "
                          f"also changes {bad[:3]}{' …' if len(bad) > 3 else ''}: export it with --format diffusers")
    factors: dict[str, LoraFactors] = {}
    num = den = 0.0
    for name, new in tensors.items():
        base = get_tensor(pipe, name).detach()
        delta = new.to("cpu", torch.float64) - base.to("cpu", torch.float64)
        f = lora_factors(delta, max_rank=max_rank)
        factors[checkpoint_name(pipe, name)] = f
        dn = float(delta.square().sum())
        num, den = num + f.rel_error ** 2 * dn, den + dn
    layers: dict[str, dict[str, torch.Tensor]] = {"unet": {}, "text_encoder": {}}
    for comp in layers:
        mine = {n: f for n, f in factors.items() if n.startswith(comp + ".")}
        width = max((f.rank for f in mine.values()), default=0)
        width = max(width, 1)
        for name, f in mine.items():
            up = torch.zeros(f.up.shape[0], width, dtype=torch.float64)
            down = torch.zeros(width, f.down.shape[1], dtype=torch.float64)
            up[:, : f.rank], down[: f.rank] = f.up, f.down  # zero padding: one rank, scale exactly 1
            _, module = _module(name)
            if comp == "unet":
                keys = (f"{module}.lora_B.weight", f"{module}.lora_A.weight")
            else:  # the text encoder's LoRA keys as diffusers' loader reads them for fc1/fc2 and attention
                keys = (f"{module}.lora_linear_layer.up.weight", f"{module}.lora_linear_layer.down.weight")
            layers[comp][keys[0]], layers[comp][keys[1]] = up.to(dtype).contiguous(), down.to(dtype).contiguous()
    report = {"tensors": {n: {"rank": f.rank, "numerical_rank": f.full_rank, "rel_error": f.rel_error}
                          for n, f in sorted(factors.items())},
              "rank": {c: max((f.rank for n, f in factors.items() if n.startswith(c + ".")), default=0)
                       for c in layers},
              "rel_error": (num / den) ** 0.5 if den > 0 else 0.0,
              "exact": all(f.rank == f.full_rank for f in factors.values())}
    return {c: v for c, v in layers.items() if v}, report


def model_card(meta: Mapping[str, Any], *, fmt: str, report: Mapping[str, Any] | None = None) -> str:
    """A README.md for an exported edit: base model, editor, requests and their hash, ICEB version.

    Args:
        meta: The edit file's metadata (sidecar).
        fmt: The export format.
        report: For a LoRA, what :func:`lora_state_dicts` reported.

    Returns:
        Markdown with a YAML header in the hub's model-card convention.
    """
    from iceb import __version__

    base = (meta.get("base_model") or {}).get("id") or "unknown"
    reqs = meta.get("requests") or []
    lines = ["---", f"base_model: {base}", "library_name: diffusers",
             "tags: [iceb, concept-editing" + (", lora" if fmt == "lora" else "") + "]", "---", "",
             f"# {meta.get('editor', '?')} edit of {base}", "",
             f"Made with ICEB {__version__} ({fmt} export, {_dt.date.today().isoformat()}).", "",
             "| | |", "|---|---|", f"| base model | `{base}` |", f"| editor | `{meta.get('editor', '?')}` |",
             f"| requests | {len(reqs)} (hash `{meta.get('requests_hash', '?')}`) |",
             f"| tensors changed | {len(meta.get('tensors') or {})} |"]
    if report is not None:
        ranks = ", ".join(f"{c} {r}" for c, r in report["rank"].items() if r)
        lines.append(f"| LoRA rank | {ranks} ({'exact' if report['exact'] else 'truncated'}; relative error "
                     f"{report['rel_error']:.2e}) |")
    lines += ["", "## Requests", ""]
    for r in reqs[:50]:
        lines.append(f"- {r.get('source', '?')} → {r.get('destination') or '(erase)'}")
    if len(reqs) > 50:
        lines.append(f"- … and {len(reqs) - 50} more (the sidecar lists them all)")
    if fmt == "lora":
        lines += ["", "## Use", "", "```python", "pipe.load_lora_weights(\"<this folder>\", adapter_name=\"edit\")",
                  "pipe.fuse_lora(lora_scale=1.0)  # or pipe.set_adapters([\"edit\"], adapter_weights=[s])", "```"]
    return "\n".join(lines) + "\n"


def _check_fits(model: Any, files: Sequence[Any], force: bool) -> None:
    """Every edit fits the clean base model (as :func:`~iceb.editfile.apply_edit` checks), before anything is written."""
    from iceb.editfile import EditFileError, check_base

    for e in files:
        hard, soft = check_base(model.pipe, e, model_id=model.model_id)
        if hard or (soft and not force):
            raise EditFileError(f"edit {e.path} does not fit {model.spec}: " + "; ".join(hard + soft)
                                + ("" if hard else "; pass --force to export it anyway"))


def export_edit(model: Any, edits: Sequence[Any], out: str | Path, *, fmt: str = "lora",
                max_rank: int | None = None, force: bool = False) -> dict[str, Any]:
    """Write edit files (applied in order) as a LoRA folder or a full diffusers folder, with a model card.

    Args:
        model: The base :class:`~iceb.models.LoadedModel` the edits were made on.
        edits: Edit file paths (or loaded :class:`~iceb.editfile.EditFile` values), in order.
        out: A new (or empty) folder.
        fmt: ``lora``, ``single-file`` (one checkpoint in the original layout the SD UIs load,
            :mod:`iceb.single_file`) or ``diffusers``.
        max_rank: For ``lora``: truncate to this rank (the error is reported).
        force: Apply even where the recorded base model differs.

    Returns:
        What was written: format, files, and for a LoRA its report.

    Raises:
        ExportError: An unknown format, or an edit a LoRA cannot hold.
        EditFileError: An edit does not fit the base model.
    """
    from diffusers import StableDiffusionPipeline

    from iceb.editfile import _as_editfile, merge_edits, save_applied
    from iceb.utils.io import write_json, write_text

    check_format(fmt)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"--out {out} exists and is not empty; choose a new folder")
    files = [_as_editfile(e) for e in edits]
    merged = merge_edits(files)
    if fmt == "diffusers":
        info = save_applied(model, files, out, force=force)
        write_text(out / "README.md", model_card(merged.meta, fmt=fmt))
        return {"format": fmt, "out": str(out), "model_id": info["model_id"]}
    if fmt == "single-file":
        from iceb.editfile import apply_edit, restore_edit
        from iceb.single_file import save_single_file

        _check_fits(model, files, force)
        out.mkdir(parents=True, exist_ok=True)
        name = "model.safetensors"
        originals = apply_edit(model.pipe, merged, force=True)
        try:
            save_single_file(model.pipe, out / name)
        finally:
            restore_edit(model.pipe, originals)
        write_text(out / "README.md", model_card(merged.meta, fmt=fmt))
        return {"format": fmt, "out": str(out), "files": [name, "README.md"]}
    _check_fits(model, files, force)
    layers, report = lora_state_dicts(model.pipe, merged.tensors, max_rank=max_rank)
    out.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(str(out), unet_lora_layers=layers.get("unet"),
                                              text_encoder_lora_layers=layers.get("text_encoder"),
                                              safe_serialization=True)
    from iceb.utils.io import share_mode

    share_mode(out / LORA_FILE)  # diffusers leaves it 0600: shared output is readable like any other
    record = {"format": "lora", "base_model": merged.meta.get("base_model"), "editor": merged.editor,
              "requests_hash": merged.meta.get("requests_hash"), "n_requests": merged.meta.get("n_requests"),
              "history": merged.meta.get("history"), "max_rank": max_rank, **report}
    write_json(out / "iceb_lora.json", json.loads(json.dumps(record, default=str)))
    write_text(out / "README.md", model_card(merged.meta, fmt=fmt, report=report))
    return {"format": fmt, "out": str(out), "files": [LORA_FILE, "iceb_lora.json", "README.md"], **report}


__all__ = ["FORMATS", "ExportError", "LoraFactors", "export_edit", "lora_factors", "lora_state_dicts", "model_card"]
