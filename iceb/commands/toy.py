"""``iceb toy train|eval|split``: train the toy world, measure it, rebuild its split bundle."""
from __future__ import annotations

STAGES = ("vae", "latents", "classifier", "text", "diffusion", "guidance", "export")
#: every stage in run order; ``parts`` (hand the stages before diffusion over to a later sitting) only on request
ALL_STAGES = ("vae", "latents", "classifier", "text", "parts", "diffusion", "guidance", "export")


def register(sub) -> None:
    p = sub.add_parser("toy", help="the toy world: train its model and classifier, evaluate, build its split")
    tsub = p.add_subparsers(dest="toy_command", metavar="ACTION")
    t = tsub.add_parser("train", help="train (or resume) the toy model and classifier and export data/toy/")
    t.add_argument("--stage", action="append", choices=ALL_STAGES,
                   help="run only these stages (repeatable; default: all but 'parts', in order)")
    t.add_argument("--from-parts", default=None, help="first rebuild the work folder's stages before diffusion from "
                   "the folder a 'parts' stage wrote (e.g. data/toy-1k), to continue a run in a new sitting")
    t.add_argument("--work", default=None, help="checkpoint folder (default: runs/toy_train)")
    t.add_argument("--out", default=None, help="export folder (default: data/toy)")
    t.add_argument("--world", default="toy", help="a named recipe: 'toy' (the shipped 64-concept world, default) "
                   "or 'toy-1k' (1,536 concepts, Stable Diffusion's text widths); --config applies on top")
    t.add_argument("--config", default=None, help="a JSON file of TrainConfig overrides")
    t.add_argument("--tiny", action="store_true", help="a seconds-long configuration (mechanics only)")
    t.add_argument("--max-seconds", type=float, default=None, help="stop the text or diffusion stage after this long")
    t.add_argument("--note", default=None, help="a free-text note stored in train_config.json (e.g. CPU load)")
    t.set_defaults(func=run_train)
    e = tsub.add_parser("eval", help="measure the shipped toy model; writes data/toy/quality.json")
    e.add_argument("--out", default=None, help="where to write quality.json (default: the toy world's folder, "
                   "data/<world>/quality.json)")
    e.add_argument("--model", default="toy", help="model spec: 'toy' (default), 'toy-1k', or a toy model's folder")
    e.add_argument("--images-per-concept", type=int, default=8)
    e.add_argument("--free-form-per-concept", type=int, default=2)
    e.add_argument("--alias-images", type=int, default=1)
    e.add_argument("--misunderstood-images", type=int, default=4)
    e.add_argument("--untrained-images", type=int, default=1)
    e.add_argument("--classifier-images", type=int, default=2048, help="renders for the classifier check (0: none)")
    e.set_defaults(func=run_eval)
    s = tsub.add_parser("split", help="rebuild data/toy/split.json and captions.txt from the world generator")
    s.set_defaults(func=run_split)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _config(args):
    from iceb.toy.train import TrainConfig
    from iceb.toy.train.config import recipe

    if args.tiny and args.world != "toy":
        raise ValueError("--tiny is its own configuration; it does not combine with --world")
    cfg = TrainConfig.tiny() if args.tiny else recipe(args.world)
    if args.config:
        from iceb.utils.io import read_json

        overrides = read_json(args.config)
        if not isinstance(overrides, dict):
            raise ValueError(f"{args.config}: expected a JSON object of TrainConfig overrides, got "
                             f"{type(overrides).__name__}")
        base = cfg.to_json()
        unknown = sorted(set(overrides) - set(base))
        if unknown:
            raise ValueError(f"{args.config}: unknown toy training config keys {unknown}")
        base.update(overrides)
        cfg = TrainConfig.from_json(base)
    return cfg


def run_train(args) -> int:
    from pathlib import Path

    from iceb.toy.train import DEFAULT_WORK, TOY_DATA, train_all

    cfg = _config(args)
    stages = tuple(s for s in ALL_STAGES if s in args.stage) if args.stage else STAGES
    train_all(cfg, Path(args.work) if args.work else DEFAULT_WORK, Path(args.out) if args.out else TOY_DATA,
              stages, max_seconds=args.max_seconds, note=args.note,
              from_parts=Path(args.from_parts) if args.from_parts else None)
    return 0


def run_eval(args) -> int:
    import json
    from pathlib import Path

    from iceb.toy.evaluate import evaluate_quality
    from iceb.toy.train import TOY_DATA
    from iceb.toy.worlds import is_toy_world, toy_world_dir

    out = Path(args.out) if args.out else (toy_world_dir(args.model) if is_toy_world(args.model) else TOY_DATA) / \
        "quality.json"
    result = evaluate_quality(args.model, out=out, images_per_concept=args.images_per_concept,
                              free_form_per_concept=args.free_form_per_concept, alias_images=args.alias_images,
                              misunderstood_images=args.misunderstood_images,
                              untrained_images=args.untrained_images, classifier_images=args.classifier_images)
    print(json.dumps(result["summary"], indent=2))
    return 0


def run_split(args) -> int:
    from iceb.toy.split import write_split_files

    for path in write_split_files():
        print(path)
    return 0
