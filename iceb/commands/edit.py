"""``iceb edit``: run an editor on your own requests and write a portable edit file.

    iceb edit --editor emcid --model CompVis/stable-diffusion-v1-4 --requests my_edits.csv --out edit.safetensors

The request file (CSV, JSON, JSONL, YAML or EMCID's example format; see :mod:`iceb.data.request_files`) is read
and validated before the model loads, so a typo costs a second, not a model load.
"""
from __future__ import annotations


def register(sub) -> None:
    from iceb.commands import _args as A

    p = sub.add_parser("edit", help="edit a model with your own requests; write an edit file",
                       description="Run an editor on the requests of a file and write the changed tensors as "
                                   "<out> (safetensors) with a JSON sidecar <out>.json. Apply it with "
                                   "'iceb apply', 'iceb generate --edit', or iceb.editfile.apply_edit.")
    p.add_argument("--editor", "-e", required=True, help="registered name, entry point, or package.module:Class")
    p.add_argument("--model", "-m", default=None, help="hub id, local diffusers folder, 'toy' or 'tiny' "
                                                       "(default: the toy world when present, else tiny)")
    p.add_argument("--requests", "-r", required=True, type=A.existing_file,
                   help="request file: .csv (source,destination[,templates][,seed]), .json/.jsonl/.yaml, "
                        "or EMCID's example JSON")
    p.add_argument("--out", "-o", default="edit.safetensors", type=A.out_file(".safetensors"),
                   help="edit file to write (.safetensors)")
    p.add_argument("--hparams", default=None, type=A.yaml_file,
                   help="hparams YAML file, layered over the editor's shipped file for the model (or --preset): "
                        "the keys it sets win, the others keep the shipped values; --editor-args win over both")
    p.add_argument("--preset", default=None, help="a named hparams preset of the editor")
    p.add_argument("--editor-args", "-a", default=None, type=A.overrides_text,
                   help="hparam overrides: key=value,key=value")
    p.add_argument("--mode", choices=["batch", "sequential"], default="batch",
                   help="batch: all requests in one edit (default); sequential: --rounds consecutive edits")
    p.add_argument("--rounds", type=A.positive_int, default=1, help="rounds for --mode sequential")
    p.add_argument("--device", default="auto", type=A.device, help="cpu, cuda, cuda:1, ... (default: auto)")
    p.add_argument("--dtype", default=None, type=A.dtype, help="model dtype while editing (default float32)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--no-editor-cache", action="store_true",
                   help="compute the editor's statistics (second moments, EMCID stage I, ...) afresh and keep "
                        "nothing; by default they live in the shared cache ('iceb cache ls') and are reused by "
                        "iceb edit, iceb evaluate and the Python API")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from editors import get_editor
    from editors.hparams import parse_overrides
    from editors.run import EditMode
    from iceb.data.request_files import read_request_file
    from iceb.editfile import EditFileError, edit_model, save_edit
    from iceb.models import default_model_spec, load_model

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise EditFileError(f"--out must end in .safetensors, got {out}")
    if args.mode == "batch" and args.rounds != 1:
        raise ValueError("--rounds needs --mode sequential (batch mode edits all requests at once)")
    rf = read_request_file(args.requests)  # validated: fails before anything heavy
    for w in rf.warnings:
        print(f"iceb: warning: {w}")
    if args.mode == "sequential" and not 1 <= args.rounds <= len(rf.requests):
        raise ValueError(f"--rounds must be between 1 and the number of requests ({len(rf.requests)})")
    mode = EditMode(args.mode, args.rounds)
    overrides = parse_overrides(args.editor_args)
    cls = get_editor(args.editor)  # unknown names fail before the model loads
    loaded = load_model(args.model or default_model_spec(), device=args.device, dtype=args.dtype)
    hp = cls.load_hparams(loaded.family, args.hparams, overrides, preset=args.preset)
    print(f"[iceb] editing {loaded.spec} ({loaded.model_id}) with {args.editor}: {len(rf.requests)} request(s)"
          f"{'' if mode.kind == 'batch' else f' in {mode.rounds} rounds'}")
    result, hp = edit_model(args.editor, loaded, rf.requests, hparams=hp, mode=mode,
                            progress=not args.no_progress, cache_dir=not args.no_editor_cache)
    save_edit(out, result, editor=args.editor, hparams=hp, model=loaded, requests=rf.requests, mode=str(mode),
              extra={"requests_file": str(Path(args.requests).resolve())})
    size = out.stat().st_size
    print(f"[iceb] wrote {out} ({len(result.tensors)} tensor(s), {size / 1e6:.2f} MB) and {out.name}.json; "
          f"edit took {result.timings.get('edit_seconds', 0.0):.2f}s")
    return 0
