"""``iceb export EDIT... --model SPEC --format lora|single-file|diffusers --out FOLDER``: an edit in the formats
other tools load.

``lora`` writes diffusers' LoRA file (``pipe.load_lora_weights(FOLDER)``), exact for low-rank edits and a
reported truncation with ``--max-rank``; ``single-file`` one ``model.safetensors`` in the original (CompVis)
layout that the Stable Diffusion UIs load; ``diffusers`` writes the full edited pipeline folder (as ``iceb apply``).
Both come with a model card (``README.md``). See :mod:`iceb.export`.
"""
from __future__ import annotations


def register(sub) -> None:
    from iceb.commands._args import positive_int

    p = sub.add_parser("export", help="write edit files as a LoRA or a full diffusers folder, with a model card")
    p.add_argument("edits", nargs="+", help="edit files (.safetensors), applied in this order")
    p.add_argument("--model", "-m", default=None, help="the base model the edits were made on")
    p.add_argument("--format", "-f", dest="fmt", default="lora", help="lora (default), single-file or diffusers")
    p.add_argument("--out", "-o", required=True, help="a new folder to write")
    p.add_argument("--max-rank", type=positive_int, default=None,
                   help="lora: keep at most this rank (the relative error is reported)")
    p.add_argument("--force", action="store_true", help="export even where the recorded base model differs")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from iceb.editfile import load_edit, merge_edits
    from iceb.export import ExportError, check_format, export_edit
    from iceb.models import default_model_spec, load_model

    check_format(args.fmt)  # before the model loads
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"--out {out} exists and is not empty; choose a new folder")
    edits = [load_edit(p) for p in args.edits]
    merge_edits(edits)  # edits of different base models fail here
    loaded = load_model(args.model or default_model_spec(), device="cpu")
    rec = export_edit(loaded, edits, out, fmt=args.fmt, max_rank=args.max_rank, force=args.force)
    if args.fmt == "lora":
        ranks = ", ".join(f"{c} rank {r}" for c, r in rec["rank"].items() if r)
        print(f"[iceb] wrote a LoRA ({ranks}; {'exact' if rec['exact'] else 'truncated'}, relative error "
              f"{rec['rel_error']:.2e}) to {out}: pipe.load_lora_weights('{out}')")
    elif args.fmt == "single-file":
        print(f"[iceb] wrote {out / 'model.safetensors'}: one checkpoint in the original Stable Diffusion layout")
    else:
        print(f"[iceb] wrote the edited pipeline to {out} (model id {rec['model_id']})")
    return 0
