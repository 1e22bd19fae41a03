"""Worst-case cost of one attacked prompt per attack on the toy world, and the sweep it implies (prints JSON).

Each attack runs its whole pinned budget on ``--targets`` requests of ``ace`` (the judge never says "success",
so no early stop: UnlearnDiffAtk's every block, Ring-A-Bell's every generation, every text candidate), on the
unedited toy model; the time of one judged image (render + classify) is measured beside them. The
extrapolation counts what a sweep runs: per editor and edit count the attacked requests (all up to
``--attack-requests``, then that many), every attack on each (Ring-A-Bell's search once per source concept
for the whole sweep: it runs on the unedited model and is cached), plus one judged image per request for its
original prompt. It is an upper bound: a request whose original prompt already shows the source is not
attacked, and an attack stops at its first success.

    PYTHONPATH=$PWD python bench/bench_attacks.py --targets 4 --editors 5 --edits 1,4,16,32
"""
from __future__ import annotations

import argparse
import statistics
import time

from common import emit


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", type=int, default=4, help="requests timed per attack")
    ap.add_argument("--attacks", default="unlearndiff,ringabell,aliases,misspell")
    ap.add_argument("--editors", type=int, default=5, help="editors of the sweep to extrapolate")
    ap.add_argument("--edits", default="1,4,16,32", help="edit counts of the sweep to extrapolate")
    ap.add_argument("--attack-requests", type=int, default=16)
    args = ap.parse_args(argv)

    from iceb.attacks import get_attack
    from iceb.attacks.base import AttackContext, AttackTarget
    from iceb.attacks.vocab import attack_vocab
    from iceb.generation import generate, generate_ids
    from iceb.metrics.classifiers import get_classifier
    from iceb.models import load_model
    from iceb.tasks import get_task

    loaded = load_model("toy", device="cpu")
    pipe, gen = loaded.pipe, loaded.generation.replace(batch_size=1)
    task = get_task("ace", world="toy")
    inst = task.build(args.targets)
    clf = get_classifier("toy")
    vocab = attack_vocab(pipe.tokenizer, "toy", "seen")
    judge_times: list[float] = []

    def never(ids, seed):
        t0 = time.perf_counter()
        clf.predict_proba(generate_ids(pipe, [list(ids)], [seed], gen))
        judge_times.append(time.perf_counter() - t0)
        return False, 0.0

    targets = []
    for r in inst.requests:
        p = next(q for q in inst.subset("edit") if q.group == r.request_id)
        ref = generate(pipe, [p.prompt], [p.seed], gen, progress=False)[0]
        targets.append(AttackTarget(r.request_id, r.source, r.source_id, p.prompt, p.seed, r.templates,
                                    task.other_names(r), ref))
    per_attack = {}
    for name in args.attacks.split(","):
        attack = get_attack(name, world="toy")
        ctx = AttackContext(pipe, gen, vocab, None if attack.sees == "unedited" else never)
        times = []
        for t in targets:
            t0 = time.perf_counter()
            attack.search(ctx, t)
            times.append(time.perf_counter() - t0)
        per_attack[name] = {"median_seconds": round(statistics.median(times), 3), "seconds": [round(x, 3) for x in times],
                            "budget": attack.settings()}
    judge = statistics.median(judge_times)
    ns = [int(x) for x in args.edits.split(",")]
    attacked = [min(n, args.attack_requests) for n in ns]
    per_editor = sum(attacked) * (judge + sum(v["median_seconds"] + judge for k, v in per_attack.items()
                                              if k != "ringabell"))
    ringabell = per_attack.get("ringabell", {}).get("median_seconds", 0.0)
    sources = min(max(ns), sum(attacked))  # at most one search per source concept in the whole sweep
    total = args.editors * (per_editor + sum(attacked) * judge * ("ringabell" in per_attack)) + sources * ringabell
    out = {"per_attack": per_attack, "judged_image_seconds": round(judge, 4),
           "sweep": {"editors": args.editors, "edits": ns, "attacked_per_n": attacked,
                     "worst_case_hours": round(total / 3600, 3), "target_hours": 2.0}}
    emit("attacks", out)
    return out


if __name__ == "__main__":
    main()
