"""``iceb apply --model SPEC EDIT... --out FOLDER``: a full edited diffusers folder from edit files.

The edits are applied in the order given (later values win for shared tensors) and the pipeline is saved
with ``save_pretrained`` (safetensors). The folder's ``iceb_model.json`` keeps the base model's family,
world, classifier and generation settings plus the edit history, so ``--model FOLDER`` works everywhere.
"""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("apply", help="write a full edited diffusers model folder from edit files")
    p.add_argument("edits", nargs="+", help="edit files (.safetensors), applied in this order")
    p.add_argument("--model", "-m", default=None, help="the base model the edits were made on")
    p.add_argument("--out", "-o", required=True, help="folder for the edited pipeline (save_pretrained)")
    p.add_argument("--force", action="store_true", help="apply even where the recorded base model differs")
    p.add_argument("--device", default="cpu", help="device used while applying (default cpu)")
    p.set_defaults(func=run)


def _digest(paths) -> str:
    """Content hash of the edit files: the edited model's identity."""
    import hashlib

    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:12]


def run(args) -> int:
    import dataclasses
    from pathlib import Path

    from iceb.editfile import EditFileError, apply_edit, check_base, load_edit, merge_edits, restore_edit
    from iceb.utils.io import write_json
    from iceb.models import ICEB_MODEL_INFO, default_model_spec, load_model

    edits = [load_edit(p) for p in args.edits]  # read (and fail) before the model loads
    merged = merge_edits(edits)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out {out} exists and is not empty; choose a new folder")
    loaded = load_model(args.model or default_model_spec(), device=args.device)
    for e in edits:  # each edit must fit the clean base model; then they are applied in order
        hard, soft = check_base(loaded.pipe, e, model_id=loaded.model_id)
        if hard or (soft and not args.force):
            raise EditFileError(f"edit {e.path} does not fit {loaded.spec}: " + "; ".join(hard + soft)
                                + ("" if hard else "; pass --force to apply it anyway"))
    originals = apply_edit(loaded.pipe, merged, force=True)
    try:
        loaded.pipe.save_pretrained(str(out), safe_serialization=True)
    finally:
        restore_edit(loaded.pipe, originals)
    info = dict(loaded.info)
    info.update({"family": loaded.family, "world": loaded.world, "classifier": loaded.classifier,
                 "generation": dataclasses.asdict(loaded.generation),
                 "model_id": f"{loaded.model_id}+{merged.editor}:{_digest(args.edits)}",
                 "edits": {"base_model": merged.meta.get("base_model"), "history": merged.meta["history"],
                           "files": [str(Path(p).resolve()) for p in args.edits]}})
    write_json(out / ICEB_MODEL_INFO, info)
    print(f"[iceb] applied {len(edits)} edit file(s) ({len(merged.tensors)} tensor(s)) to {loaded.spec}; "
          f"wrote {out}")
    return 0
