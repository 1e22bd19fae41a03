"""``iceb evaluate``: run an editor on a task for one or more edit counts; resumable."""
from __future__ import annotations

import argparse


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"--edits takes comma-separated integers, got {text!r}") from None
    if not values:
        raise ValueError("--edits is empty")
    return values


def register(sub) -> None:
    from iceb.commands import _args as A

    p = sub.add_parser("evaluate", help="evaluate an editor on a task (1..1000 edits)",
                       description="Edit the model for each edit count, generate before/after images, score them "
                                   "and append tidy rows to <out>/<run_id>/results.jsonl. Re-running the same "
                                   "command resumes. Multi-GPU: 'accelerate launch --num_processes K -m iceb "
                                   "evaluate ...' (CPU processes: 'torchrun --nproc_per_node K -m iceb evaluate "
                                   "... --device cpu', or 'accelerate launch --multi_gpu --num_processes K -m iceb "
                                   "evaluate ... --device cpu') splits image generation and scoring; rank 0 writes.")
    p.add_argument("--editor", "-e", default="noop",
                   help="registered name, entry point, package.module:Class, or file:PATH to score an edit made "
                        "elsewhere (an ICEB edit file, a safetensors file of changed tensors, or an edited "
                        "diffusers pipeline folder; rows say editor file:<basename>, external true)")
    p.add_argument("--task", "-t", default="smoke", help="task name (see 'iceb list tasks') or a task file")
    p.add_argument("--model", "-m", default=None,
                   help="hub id (CompVis/stable-diffusion-v1-4), local diffusers folder, 'toy' or 'tiny' "
                        "(default: the toy world when present, else tiny)")
    p.add_argument("--edits", "-n", default=None, type=A.int_list_text, help="comma-separated edit counts, e.g. 1,5,10 (default: the task's)")
    p.add_argument("--split", choices=["test", "dev"], default="test",
                   help="test: the benchmark's requests (default); dev: the task's requests reserved for tuning")
    p.add_argument("--metrics", default=None, type=A.name_list_text, help="comma-separated metric names (default: the task's)")
    p.add_argument("--editor-args", "-a", default=None, type=A.overrides_text,
                   help="hparam overrides: key=value,key=value")
    p.add_argument("--hparams", default=None, type=A.yaml_file,
                   help="hparams YAML file, layered over the editor's shipped file for the model (or --preset): "
                        "the keys it sets win, the others keep the shipped values; --editor-args win over both")
    p.add_argument("--preset", default=None, help="a named hparams preset of the editor")
    p.add_argument("--mode", choices=["batch", "sequential"], default="batch",
                   help="batch: all N requests in one edit (default); sequential: --rounds consecutive edits "
                        "(rows say 'sequential-<rounds>')")
    p.add_argument("--rounds", type=A.positive_int, default=1, help="rounds for --mode sequential")
    p.add_argument("--out", "-o", default="runs", type=A.out_folder, help="output root; the run folder is <out>/<run_id>")
    p.add_argument("--coco", type=A.positive_int, default=0, metavar="N",
                   help="also render the first N COCO-30k captions (subset coco) for the general-capability "
                        "metrics: clip-score, lpips, and fid (computed on them alone)")
    p.add_argument("--limit", "-L", type=A.positive_int, default=None,
                   help="at most this many prompts per subset (SMOKE TESTS ONLY; results are marked smoke)")
    p.add_argument("--steps", type=A.positive_int, default=None, help="override the number of sampling steps")
    p.add_argument("--guidance", type=A.finite_non_negative_float, default=None, help="override the guidance scale")
    p.add_argument("--batch-size", type=A.positive_int, default=None, help="images per generation batch")
    p.add_argument("--device", default="auto", type=A.device, help="cpu, cuda, cuda:1, ... (default: auto)")
    p.add_argument("--dtype", default=None, type=A.dtype, help="float32 (default), float16 or bfloat16 for generation")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--no-editor-cache", action="store_true",
                   help="compute the editor's statistics (second moments, EMCID stage I, ...) afresh and keep "
                        "nothing; by default they live in the shared cache ('iceb cache ls') and are reused by "
                        "iceb edit, iceb evaluate and the Python API")
    p.add_argument("--overwrite", action="store_true",
                   help="start this run again from scratch (by default an existing run folder is resumed; the "
                        "shared pre-edit cache is kept)")
    p.add_argument("--log-samples", action=argparse.BooleanOptionalAction, default=True,
                   help="write one row per scored post-edit image (prompt, seed, classes, per-metric numbers "
                        "before/after) to <run>/samples/n<N>/c#####.jsonl and keep every post-edit PNG under "
                        "<run>/samples/n<N>/img/; read with iceb.read_samples (default: on; --no-log-samples: off; not part of the "
                        "run id)")
    p.add_argument("--cold-cost", action="store_true",
                   help="measure each edit's cost cold: the editor starts with empty caches (statistics, stage I, "
                        "...), then the same edit runs again warm; rows carry both (cost:cold, cost:warm). "
                        "Costs a second edit; without it, cost rows are labelled with the cache state they ran in")
    p.add_argument("--attacks", default=None, type=A.name_list_text,
                   help="comma-separated attacks run on every edit count after its images ('iceb list attacks'): "
                        "adversarial prompts that try to bring each edited source back; ASR rows per attack")
    p.add_argument("--attack-prompts", default=None, metavar="FILE",
                   help="judge the prompts of an earlier run's attacks/n<N>/<attack>.jsonl on this edit as they "
                        "are (transfer ASR, rows attack:transfer:<attack>), without optimising")
    p.add_argument("--attack-args", default=None, type=A.overrides_text, metavar="ATTACK.KEY=VALUE,...",
                   help="budget overrides, e.g. unlearndiff.iterations=40,ringabell.generations=3000 (recorded in "
                        "the rows' details)")
    p.add_argument("--score-requests", type=A.positive_int, default=None, metavar="K",
                   help="edit all N requests but score a fixed sample of K of them where N > K (the holdout always "
                        "whole; recorded in the rows): affordable sweeps to 1,000 edits")
    p.add_argument("--attack-requests", type=A.positive_int, default=16, metavar="K",
                   help="attack at most K requests per edit count (a fixed, recorded sample beyond K; default 16)")
    p.add_argument("--attack-vocab", choices=["seen", "full"], default="seen",
                   help="token ids an attack may place: seen (those the text encoder was trained on; default) or full")
    p.set_defaults(func=run)


def _attack_args(text: str | None) -> dict[str, dict]:
    """``unlearndiff.iterations=40,ringabell.eta=3`` -> ``{"unlearndiff": {"iterations": 40}, "ringabell": ...}``."""
    from editors.hparams import parse_overrides

    out: dict[str, dict] = {}
    for key, value in parse_overrides(text).items():
        attack, dot, setting = key.partition(".")
        if not dot or not attack or not setting:
            raise ValueError(f"--attack-args keys are attack.setting (e.g. unlearndiff.iterations), got {key!r}")
        out.setdefault(attack, {})[setting] = value
    return out


def run(args) -> int:
    from editors.hparams import parse_overrides
    from iceb.harness import EvalConfig, evaluate

    cfg = EvalConfig(
        editor=args.editor, task=args.task, model=args.model,
        edits=_int_list(args.edits) if args.edits else None, split=args.split,
        metrics=tuple(m.strip() for m in args.metrics.split(",") if m.strip()) if args.metrics else None,
        editor_args=parse_overrides(args.editor_args), hparams=args.hparams, preset=args.preset,
        mode=args.mode, rounds=args.rounds, limit=args.limit, coco=args.coco, steps=args.steps, guidance=args.guidance,
        batch_size=args.batch_size, out=args.out, device=args.device, dtype=args.dtype,
        progress=not args.no_progress, overwrite=args.overwrite,
        log_samples=args.log_samples, cold_cost=args.cold_cost,
        editor_cache=not args.no_editor_cache,
        attacks=tuple(a.strip() for a in args.attacks.split(",") if a.strip()) if args.attacks else (),
        attack_prompts=args.attack_prompts, attack_args=_attack_args(args.attack_args),
        attack_requests=args.attack_requests, attack_vocab=args.attack_vocab, score_requests=args.score_requests)
    evaluate(cfg.validate())  # a bad flag fails here, before anything loads
    return 0
