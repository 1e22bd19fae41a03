"""``iceb rectify score|derive``: find the names a model misunderstands and derive rectification requests.

``score`` renders 8 images per name of each class and writes ``{class id: {name: {mean, std, number}}}``
(resumable); ``derive`` applies ICEB's rule to such a file (or EMCID's ``imgnet_prompts_cls.json``).
"""
from __future__ import annotations


def register(sub) -> None:
    from iceb.commands import _args as A

    p = sub.add_parser("rectify", help="score class names and derive rectification requests")
    rsub = p.add_subparsers(dest="rectify_command", metavar="ACTION", required=True)
    s = rsub.add_parser("score", help="score every name of every class with a model and a classifier")
    s.add_argument("--model", default="tiny")
    s.add_argument("--classifier", default=None, help="classifier name (default: the model's / the world's)")
    s.add_argument("--classes", default=None, type=A.class_ids_text, help="comma-separated class ids (default: all 1000)")
    s.add_argument("--images", type=A.positive_int, default=8, help="images per name (ICEB: 8)")
    s.add_argument("--steps", type=A.positive_int, default=None)
    s.add_argument("--device", default="auto", type=A.device)
    s.add_argument("--out", required=True, type=A.out_file(".json"), help="score JSON to write (resumed when present)")
    s.set_defaults(func=run_score)
    d = rsub.add_parser("derive", help="apply ICEB's rule to a score file")
    d.add_argument("scores", nargs="?", default=None, type=A.json_file, help="score JSON (default: EMCID's imgnet_prompts_cls.json)")
    d.add_argument("--pool", choices=["official", "1k"], default="official",
                   help="classes kept: EMCID's 666-class pool or all 1000")
    d.add_argument("--data-dir", default=None, type=A.existing_folder)
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=run_derive)


def run_score(args) -> int:
    from iceb.data.imagenet import imagenet_concepts
    from iceb.data.misunderstood_names import score_names
    from iceb.metrics.classifiers import DEFAULT_CLASSIFIER, get_classifier
    from iceb.models import load_model

    loaded = load_model(args.model, device=args.device)
    clf = get_classifier(args.classifier or loaded.classifier or DEFAULT_CLASSIFIER[loaded.world],
                         device=str(loaded.pipe.device))
    concepts = imagenet_concepts()
    ids = [int(x) for x in args.classes.split(",")] if args.classes else [c.id for c in concepts]
    cfg = loaded.generation.replace(num_inference_steps=args.steps)
    scores = score_names(loaded.pipe, clf, {i: concepts[i].names for i in ids}, images_per_name=args.images,
                         config=cfg, out=args.out)
    print(f"scored {sum(len(v) for v in scores.values())} names of {len(scores)} classes -> {args.out}")
    return 0


def run_derive(args) -> int:
    import json
    from dataclasses import asdict

    from iceb.data.misunderstood_names import derive_rectifications
    from iceb.data.official import load_class_scores, load_official

    table = json.load(open(args.scores)) if args.scores else load_class_scores(args.data_dir)
    pool = load_official(args.data_dir).pool if args.pool == "official" else range(1000)
    reqs = derive_rectifications(table, pool)
    if args.json:
        print(json.dumps([asdict(r) for r in reqs], indent=2))
    else:
        for r in reqs:
            print(f"{r.class_id}\t{r.source}\t->\t{r.destination}\t{r.source_score:.3f}\t{r.destination_score:.3f}")
        print(f"{len(reqs)} requests from {len({r.class_id for r in reqs})} classes")
    return 0
