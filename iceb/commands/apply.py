"""``iceb apply --model SPEC EDIT... --out FOLDER``: a full edited diffusers folder from edit files.

The edits are applied in the order given (later values win for shared tensors) and the pipeline is saved
with ``save_pretrained`` (safetensors). The folder's ``iceb_model.json`` keeps the base model's family,
world, classifier and generation settings plus the edit history, so ``--model FOLDER`` works everywhere.
"""
from __future__ import annotations


def register(sub) -> None:
    from iceb.commands import _args as A

    p = sub.add_parser("apply", help="write a full edited diffusers model folder from edit files")
    p.add_argument("edits", nargs="+", help="edit files (.safetensors), applied in this order")
    p.add_argument("--model", "-m", default=None, help="the base model the edits were made on")
    p.add_argument("--out", "-o", required=True, help="folder for the edited pipeline (save_pretrained)")
    p.add_argument("--force", action="store_true", help="apply even where the recorded base model differs")
    p.add_argument("--device", default="cpu", type=A.device, help="device used while applying (default cpu)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from iceb.editfile import load_edit, merge_edits, save_applied
    from iceb.models import default_model_spec, load_model

    edits = [load_edit(p) for p in args.edits]  # read (and fail) before the model loads
    merged = merge_edits(edits)  # edits of different base models fail here, before the model loads
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):  # also checked by save_applied; here before the model loads
        raise ValueError(f"--out {out} exists and is not empty; choose a new folder")
    loaded = load_model(args.model or default_model_spec(), device=args.device)
    save_applied(loaded, edits, out, force=args.force)
    print(f"[iceb] applied {len(edits)} edit file(s) ({len(merged.tensors)} tensor(s)) to {loaded.spec}; "
          f"wrote {out}")
    return 0
