"""``iceb tasks``: what a task gives for N edits.

    iceb tasks show NAME [--edits N] [--model SPEC | --world imagenet|toy] [--split test|dev] [--requests]
                    [--prompts [--subset S]] [--format text|csv|json]
    iceb tasks export NAME --format esd-csv|requests-csv [--edits N] [--model SPEC] --out FILE

``show`` prints prompt counts per subset and the holdout's neighbour strata (:mod:`iceb.data.neighbours`);
``--requests`` lists the edit requests (request id, source, destination, seed), ``--prompts`` the evaluation
prompts (subset, prompt, seed, true class, destination class, group, stratum). ``export`` writes the prompts
as the CSV that ESD/UCE/MACE evaluation scripts read, or the requests as an ICEB request CSV
(:mod:`iceb.tasks.export`).
"""
from __future__ import annotations

from iceb.commands import _args as A


def register(sub) -> None:
    p = sub.add_parser("tasks", help="inspect and export tasks")
    tsub = p.add_subparsers(dest="tasks_command", metavar="ACTION", required=True)
    s = tsub.add_parser("show", help="prompt counts per subset for N edits; --requests / --prompts list them")
    _common(s)
    s.add_argument("--requests", action="store_true", help="list the edit requests")
    s.add_argument("--prompts", action="store_true", help="list the evaluation prompts")
    s.add_argument("--subset", default=None, choices=["edit", "edit_dest", "general", "alias", "holdout"],
                   help="with --prompts: only this subset")
    s.add_argument("--format", choices=["text", "csv", "json"], default=None,
                   help="text (aligned columns, default), csv or json")
    s.add_argument("--json", action="store_true", help="print JSON (same as --format json)")
    s.set_defaults(func=run_show)
    e = tsub.add_parser("export", help="write a task instance's prompts (ESD CSV) or requests (ICEB CSV)")
    _common(e)
    e.add_argument("--format", required=True, choices=["esd-csv", "requests-csv"],
                   help="esd-csv: case_number,prompt,evaluation_seed,... per prompt; requests-csv: ICEB's "
                        "request CSV")
    e.add_argument("--out", "-o", required=True, type=A.out_file(".csv"), help="the CSV file to write")
    e.set_defaults(func=run_export)


def _common(p) -> None:
    p.add_argument("name")
    p.add_argument("--edits", "-n", type=A.positive_int, default=None,
                   help="number of edits (default: the task's largest default)")
    p.add_argument("--model", "-m", default=None,
                   help="the model whose world the task is built for ('toy', 'tiny', a hub id or a diffusers "
                        "folder); default: --world")
    p.add_argument("--world", choices=["imagenet", "toy", "toy-1k"], default=None, help="the world (default: the default model's, as for iceb evaluate: toy where shipped)")
    p.add_argument("--data-dir", default=None, type=A.existing_folder, help="local folder with EMCID's data/iceb_data files")
    p.add_argument("--split", choices=["test", "dev"], default="test",
                   help="test (the benchmark's requests, default) or dev (reserved for tuning: iceb tune)")


def _world(args) -> str:
    """The task's world: ``--world``, else the world of ``--model``, else that of the default model (the toy
    world where it is shipped, as ``iceb evaluate`` defaults), else imagenet; the two flags must agree."""
    from iceb.models import check_model_spec, default_model_spec, model_world

    if args.model is None:
        return args.world or model_world(default_model_spec()) or "imagenet"

    check_model_spec(args.model)
    world = model_world(args.model) or "imagenet"
    if args.world is not None and args.world != world:
        raise A.UsageError(f"--world {args.world} disagrees with --model {args.model} (world {world}); pass one")
    return world


def _instance(args):
    """(task, world, N, instance) of the command's flags; a bad N fails with the task's one-line error."""
    from iceb.tasks import TASKS, get_task

    world = _world(args)
    if args.model is None and args.world is None and args.name in TASKS:
        served = getattr(TASKS.get(args.name), "worlds", None)
        if served and world not in served:  # only the default world chose it: the task's own world instead
            world = served[0]
    kwargs = {"data_dir": args.data_dir} if args.data_dir else {}
    if args.split != "test":
        kwargs["split"] = args.split
    task = get_task(args.name, world=world, **kwargs)
    n = args.edits if args.edits is not None else max(task.default_edits)
    return task, world, n, task.build(n)


def run_show(args) -> int:
    import json

    from iceb.tasks import export as X

    fmt = "json" if args.json else (args.format or "text")
    if args.json and args.format not in (None, "json"):
        raise A.UsageError(f"--json and --format {args.format} disagree; pass one")
    if args.subset and not args.prompts:
        raise A.UsageError("--subset needs --prompts")
    if fmt == "csv" and args.requests == args.prompts:
        raise A.UsageError("--format csv prints one table: pass --requests or --prompts (not both, not neither)")
    task, world, n, inst = _instance(args)
    requests, prompts = X.request_rows(inst), X.prompt_rows(inst, args.subset)
    if fmt == "csv":
        print(X.to_csv(requests, X.REQUEST_COLUMNS) if args.requests else X.to_csv(prompts, X.PROMPT_COLUMNS),
              end="")
        return 0
    out = {"task": task.name, "world": world, "split": args.split, "edits": n, "max_edits": task.max_edits,
           "default_edits": list(task.default_edits), "counts": inst.counts(),
           "classes": {"sources": len({r.source_id for r in inst.requests}),
                       "destinations": len({d for r in inst.requests for d in (r.destinations or (r.destination_id,))}),
                       "holdout": len({p.true_class for p in inst.subset("holdout")}),
                       "alias_requests": len({p.group for p in inst.subset("alias")})},
           "strata": _ordered(inst.strata(), world),
           "info": inst.info}
    if args.requests:
        out["requests"] = requests
    if args.prompts:
        out["prompts"] = prompts
    if fmt == "json":
        print(json.dumps(out, indent=2, default=str))
        return 0
    print(f"{task.name} ({world}{', dev split' if args.split == 'dev' else ''}), {n} of at most {task.max_edits} edits")
    for k, v in {**out["counts"], **{f"{k} classes": v for k, v in out["classes"].items()}}.items():
        print(f"  {k:<22} {v}")
    if out["strata"]:
        print("  holdout strata (nearest edited source):")
        for k, v in out["strata"].items():
            print(f"    {k:<20} {v['classes']} classes, {v['prompts']} prompts")
    if args.requests:
        print(f"\nedit requests ({len(requests)}):")
        print(X.to_text(requests, X.REQUEST_COLUMNS), end="")
    if args.prompts:
        print(f"\nevaluation prompts ({len(prompts)}{', subset ' + args.subset if args.subset else ''}):")
        print(X.to_text(prompts, X.PROMPT_COLUMNS), end="")
    return 0


def run_export(args) -> int:
    from iceb.tasks.export import write_export

    task, world, n, inst = _instance(args)
    path = write_export(inst, args.format, args.out)
    what = f"{len(inst.prompts)} prompts" if args.format == "esd-csv" else f"{len(inst.requests)} requests"
    print(f"[iceb] {task.name} ({world}), {n} edits: {what} as {args.format} in {path}")
    return 0


def _ordered(strata: dict[str, dict[str, int]], world: str) -> dict[str, dict[str, int]]:
    """``strata`` nearest first (unknown names last, alphabetically)."""
    from iceb.data.neighbours import strata_order

    order = {s: i for i, s in enumerate(strata_order(world))}
    return {k: strata[k] for k in sorted(strata, key=lambda s: (order.get(s, len(order)), s))}
