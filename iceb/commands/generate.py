"""``iceb generate``: render prompts with a model and optional edit files, before and after side by side.

    iceb generate --model tiny --edit edit.safetensors --prompts prompts.txt --seeds 0,1 --out renders/
    iceb generate --model tiny "A photo of a cat" "A photo of a dog" --out renders/

Every prompt is rendered with the seed its file gives (default 0), or with each of ``--seeds``, which
overrides the file's seeds (with a one-line warning on stderr). Writes ``images/NNNN_sSEED.png``
(with edits: ``..._before.png`` and ``..._after.png``), ``grid.png`` (one row per image; with edits the
columns are before | after), and ``images.json``/``images.csv`` with each prompt, seed and file.
Prompt files: ``.txt`` (one prompt a line, ``#`` comments), ``.csv`` (a ``prompt`` column, optional ``seed``
or ``evaluation_seed``; an ESD/UCE CSV's ``case_number`` is kept in the file names, ``NNNN_cCASE_sSEED.png``,
and the manifest; other columns are ignored), ``.json``/``.yaml`` (a list of strings or of
``{"prompt", "seed"}`` objects, or an object with ``prompts`` or EMCID's ``val_prompts``).
"""
from __future__ import annotations

from pathlib import Path

from iceb.commands import _args as A


def register(sub) -> None:
    p = sub.add_parser("generate", help="render prompts with a model and optional edit files (before/after)")
    p.add_argument("prompt", nargs="*", help="prompts (or use --prompts FILE)")
    p.add_argument("--prompts", "-p", default=None, help="prompt file: .txt, .csv, .json or .yaml")
    p.add_argument("--model", "-m", default=None, help="hub id, local diffusers folder, 'toy' or 'tiny'")
    p.add_argument("--edit", action="append", default=[], help="edit file to apply (repeat for several, in order)")
    p.add_argument("--force", action="store_true", help="apply edits even where the recorded base model differs")
    p.add_argument("--seeds", default=None, help="comma-separated seeds, each prompt rendered with each (default 0)")
    p.add_argument("--out", "-o", required=True, type=A.out_folder, help="output folder")
    p.add_argument("--steps", type=A.positive_int, default=None, help="sampling steps (default: the model's protocol)")
    p.add_argument("--guidance", type=A.finite_positive_float, default=None, help="guidance scale")
    p.add_argument("--size", type=A.positive_int, default=None, help="image height and width in pixels")
    p.add_argument("--batch-size", type=A.positive_int, default=None, help="images per generation batch")
    p.add_argument("--device", default="auto", type=A.device, help="cpu, cuda, ... (default: auto)")
    p.add_argument("--dtype", default=None, type=A.dtype, help="float32 (default), float16 or bfloat16")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    import sys

    from iceb.editfile import load_edit
    from iceb.models import default_model_spec, load_model
    from iceb.rendering import PromptItem, parse_seed, read_prompt_items, render_prompts

    if args.prompts and args.prompt:
        raise ValueError("give prompts either as arguments or with --prompts FILE, not both")
    pairs = read_prompt_items(args.prompts) if args.prompts else [PromptItem(p, None) for p in args.prompt]
    if not pairs:
        raise ValueError("no prompts: pass them as arguments or with --prompts FILE")
    seeds = [parse_seed(s, "--seeds") for s in args.seeds.split(",") if s.strip()] if args.seeds else None
    given = sum(it.seed is not None for it in pairs)
    if seeds is not None and given:
        print(f"iceb: warning: --seeds {','.join(map(str, seeds))} overrides the seeds {args.prompts} gives "
              f"({given} of {len(pairs)} prompts); every prompt is rendered with each of --seeds", file=sys.stderr)
    items: list[tuple[str, int]] = []
    cases: list[str | None] = []
    for it in pairs:
        for x in (seeds if seeds is not None else [it.seed if it.seed is not None else 0]):
            items.append((it.prompt, x))
            cases.append(it.case)
    edits = [load_edit(e) for e in args.edit]  # fail on a bad edit file before the model loads
    loaded = load_model(args.model or default_model_spec(), device=args.device, dtype=args.dtype)
    cfg = loaded.generation.replace(num_inference_steps=args.steps, guidance_scale=args.guidance,
                                    batch_size=args.batch_size, height=args.size, width=args.size)
    manifest = render_prompts(loaded, items, args.out, edits, cfg, force=args.force, progress=not args.no_progress,
                              cases=cases)
    print(f"[iceb] {len(items)} image(s){' before and after the edit' if edits else ''} in {args.out}/images; "
          f"grid: {Path(args.out) / manifest['grids'][0]['file']}; seeds: {Path(args.out) / 'images.json'}")
    return 0
