"""``iceb tune``: tune an editor's hyperparameters on a task's dev split by one recorded protocol.

    iceb tune --editor uce --task ace --model toy --trials 12 --edits 6 [--objective ablation]
              [--preset toy-untuned] [--editor-args key=value] [--save-as toy]

Every bad setting (unknown editor, an editor without a search space, a task without a dev split, ``--trials
0``) fails before the model loads. The study resumes when run again (``<out>/<study>/study.db``); its preset is
``<out>/<study>/preset.yaml``, and ``--save-as NAME`` also writes it as the editor's shipped preset NAME
(:mod:`iceb.harness.tune`).
"""
from __future__ import annotations

from iceb.commands import _args as A


def register(sub) -> None:
    p = sub.add_parser("tune", help="tune an editor's hyperparameters on a task's dev split (Optuna TPE)",
                       description="Search the editor's declared search space with Optuna's TPE sampler (fixed "
                                   "seed); each trial is a harness run on the task's dev split. Writes the best "
                                   "values as an hparams YAML with a 'tuning:' record.")
    p.add_argument("--editor", "-e", required=True, help="a registered editor with a search space")
    p.add_argument("--task", "-t", default="ace", help="a task with a dev split: ace or rectification (toy world)")
    p.add_argument("--model", "-m", default=None, help="'toy' (default where shipped), 'tiny', a hub id or folder")
    p.add_argument("--trials", type=A.positive_int, default=12, help="the trial budget (default 12, as the shipped presets)")
    p.add_argument("--edits", "-n", default="6", type=A.int_list_text,
                   help="dev edit counts of every trial; the objective is their mean (default 6: every request of "
                        "the toy ace dev split)")
    p.add_argument("--objective", default=None,
                   help="ablation (ace: (general Source2Dest + Holdout Delta)/2), forget (erasers), rectify "
                        "(rectification: general Rectify Gain + Holdout Delta), or subset/metric+subset/metric")
    p.add_argument("--seed", type=A.non_negative_int, default=0, help="the TPE sampler's seed (default 0)")
    p.add_argument("--preset", default=None, help="the base preset (default: the editor's file for the model)")
    p.add_argument("--editor-args", "-a", default=None, type=A.overrides_text,
                   help="values fixed for every trial (not searched): key=value,key=value")
    p.add_argument("--out", "-o", default="runs/tune", help="folder of study folders (default runs/tune)")
    p.add_argument("--save-as", default=None,
                   help="also write the tuned preset as editors/hparams/<editor>/<NAME>.yaml (a shipped preset)")
    p.add_argument("--device", default="cpu", type=A.device, help="cpu, cuda, ... (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    import shlex
    import shutil
    import sys

    from editors.hparams import HPARAMS_DIR, parse_overrides
    from iceb.harness.tune import TuneConfig, check, tune

    cfg = TuneConfig(editor=args.editor, task=args.task, model=args.model, trials=args.trials,
                     edits=tuple(int(x) for x in args.edits.split(",")), objective=args.objective, seed=args.seed,
                     preset=args.preset, editor_args=parse_overrides(args.editor_args), out=args.out,
                     device=args.device, progress=not args.no_progress,
                     command="iceb " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    if args.save_as is not None and (not args.save_as or "/" in args.save_as or args.save_as.startswith(".")):
        raise A.UsageError(f"--save-as takes a preset name (a file stem), got {args.save_as!r}")
    check(cfg)  # everything before the model loads
    res = tune(cfg)
    print(f"[iceb] tune {cfg.editor} on {cfg.task} (dev split): {res.trials} trials; untuned {res.untuned_value:+.4f}"
          f" -> best {res.best_value:+.4f} with {res.best_params}")
    print(f"[iceb] preset: {res.preset_path}")
    if args.save_as:
        dest = HPARAMS_DIR / cfg.editor / f"{args.save_as}.yaml"
        tmp = dest.with_suffix(".yaml.tmp")
        shutil.copyfile(res.preset_path, tmp)
        tmp.replace(dest)
        print(f"[iceb] saved as preset {args.save_as!r}: {dest}")
    return 0
