"""Benchmark EMCID stage II at SD-1.4 text-encoder size (random weights) against the official code's timings.

Setup mirrors shared/spec/official_stage2_timing.md: a random CLIP ViT-L/14 text encoder (12 layers, 768/3072),
the offline CLIP tokenizer, layers 0-10, λ 4000, α 0.6, requests "An image of {}", "A photo of {}", "{}" over
ImageNet class names (timm metadata), random targets z*, synthetic SPD statistics A Aᵀ + 0.01 I
(A = randn(3072, 4096)/64, seed 1000+layer; cached on disk between runs, not timed). Each N runs in its own
process (peak RSS is per process). ``--solver factored`` (default, what the editor does) uses C's Cholesky
factor, computed once per model and cached like the statistics (its one-off cost is reported when computed);
``--solver direct`` factors λ'C + KKᵀ per layer as the official code. Timed: ``compute_deltas`` plus adding the deltas to the weights. Beside it,
the reference "one forward of all 3N prompts" (one batch padded to its longest prompt, as the official code).

    PYTHONPATH=$PWD python bench/bench_emcid_stage2.py [--ns 1,10,100,300,1000] [--threads 2] [--no-ref-forward]
    PYTHONPATH=$PWD python bench/bench_emcid_stage2.py --ns 1,2,3,10 --loaded 3   # idle vs a busy machine

**Side by side with the official code** (``--official-root DIR``: a checkout of SilentView/EMCID at 10a392a,
never part of ICEB): each N also runs the official stage II (``emcid.emcid_main.apply_emcid_to_text_encoder``)
in a process of its own on identical inputs (the same random text encoder, tokenizer, requests, targets z* and
statistics), the two alternating in order from one N to the next, at the N of ``--official-ns`` (default
1,10,100,300). The official code is patched at run time only, as shared/spec/official_stage2_timing.md
describes: stage I is replaced by the same fixed z* (so its time is excluded: stage II starts when the last z*
is returned), ``layer_stats_text_encoder`` returns the same synthetic statistics (their COV_CACHE is filled by
an N = 1 warm-up, so the timed call is their steady state), ``torch.cuda.device`` is a no-op on a CPU device,
and the ``text_model.`` prefix is dropped from the module templates under transformers 5. Both processes save
their weight updates; the JSON gives both times, the ratio and the largest relative difference of the updates
(``max |ΔW_official − ΔW_iceb| / max |ΔW_iceb|`` over the 11 layers). Without ``--official-root`` the
side-by-side part is skipped with the reason, and the official figures of the spec (another day, same CPU)
are printed for reference only.

Prints one JSON document.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

OFFICIAL_S = {1: 8.11, 10: 13.01, 100: 103.2, 300: 280.8}
OFFICIAL_RSS_GB = {1: 2.22, 10: 2.24, 100: 2.27, 300: 2.80}
NS_FRAC, NS_BETA = 0.7, 10.0  # EMCID-NS's shipped first guess (editors/hparams/emcid-ns)
LAYERS = list(range(11))


def class_names() -> list[str]:
    """One alphabetic lemma per ImageNet class (the first unused one), as many as possible."""
    import timm.data

    info = Path(timm.data.__file__).with_name("_info")
    synsets = (info / "imagenet_synsets.txt").read_text().split()
    lemmas = dict(line.split("\t", 1) for line in (info / "imagenet_synset_to_lemma.txt").read_text().splitlines()
                  if "\t" in line)
    names, seen = [], set()
    for s in synsets:
        for lemma in (x.strip() for x in lemmas[s].split(",")):
            if re.fullmatch(r"[A-Za-z ]+", lemma) and lemma.lower() not in seen:
                seen.add(lemma.lower())
                names.append(lemma)
                break
    return names


def rss_gb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024 ** 2
    return float("nan")


def synthetic_covs(cache: Path):
    import torch
    from safetensors.torch import load_file, save_file

    path = cache / "synthetic_covs_3072.safetensors"
    if path.is_file():
        d = load_file(str(path))
        return {l: d[str(l)] for l in LAYERS}
    covs = {}
    for l in LAYERS:
        g = torch.Generator().manual_seed(1000 + l)
        a = torch.randn(3072, 4096, generator=g) / 64
        covs[l] = a @ a.T + 0.01 * torch.eye(3072)
    cache.mkdir(parents=True, exist_ok=True)
    save_file({str(l): c for l, c in covs.items()}, str(path))
    return covs


def factors_for(covs, cache: Path) -> tuple[dict, float | None]:
    """Cholesky factors of the C_l (the editor keeps them beside the statistics); seconds if computed now."""
    import torch  # noqa: F401
    from safetensors.torch import load_file, save_file

    from editors.emcid.stage2 import cov_factor

    path = cache / "synthetic_chol_3072.safetensors"
    if path.is_file():  # in float64 in memory, as the editor holds them (converted once per model)
        d = load_file(str(path))
        return {l: d[str(l)].double() for l in LAYERS}, None
    t0 = time.perf_counter()
    f = {l: cov_factor(c) for l, c in covs.items()}
    took = time.perf_counter() - t0
    save_file({str(l): c for l, c in f.items()}, str(path))
    return {l: c.double() for l, c in f.items()}, took


def nullspace_bases(covs, cache: Path, frac: float = NS_FRAC) -> tuple[dict, float | None]:
    """EMCID-NS's null-space bases (the smallest ``frac`` of C's eigen-directions), from eigendecompositions cached
    like the editor caches them (float32 eigenvectors); seconds if computed now."""
    from safetensors.torch import load_file, save_file

    from editors.emcid.nullspace import eig_of, null_basis

    path = cache / "synthetic_eigh_3072.safetensors"
    took = None
    if path.is_file():
        d = load_file(str(path))
        eig = {l: (d[f"{l}.evals"], d[f"{l}.evecs"]) for l in LAYERS}
    else:
        t0 = time.perf_counter()
        eig = {l: eig_of(c) for l, c in covs.items()}
        took = time.perf_counter() - t0
        save_file({k: v.contiguous() for l, (e, u) in eig.items()
                   for k, v in ((f"{l}.evals", e), (f"{l}.evecs", u.float()))}, str(path))
    return {l: null_basis(e.double(), u.float().double(), frac=frac).basis for l, (e, u) in eig.items()}, took


def names_and_requests(n: int) -> tuple[list[str], list[tuple[str, str, int]]]:
    """The N requests of both implementations: (source, destination, seed), as in the timing spec."""
    names = class_names()
    half = len(names) // 2
    return names, [(names[i % len(names)], names[(i + half) % len(names)], 1234 + i) for i in range(n)]


def targets(n: int):
    import torch

    return torch.randn(n, 768, generator=torch.Generator().manual_seed(123))


def sd14_te():
    """The spec's random SD-1.4-size text encoder (seed 0, its token ids), the same in every process."""
    from common import sd14_text_encoder

    return sd14_text_encoder(0, token_ids=(0, 2, 1))


def official_single(n: int, threads: int, cache: Path, root: Path, save: Path | None) -> dict:
    """The official stage II at N, patched at run time only (see the module docstring)."""
    import contextlib
    import io
    import types

    import torch

    from iceb.data.tokenizer import load_clip_tokenizer

    torch.set_num_threads(threads)
    te, tok = sd14_te(), load_clip_tokenizer()
    covs = synthetic_covs(cache)
    _, reqs = names_and_requests(n)
    z = targets(n)
    os.chdir(root)  # their util.globals reads ./globals.yml
    sys.path.insert(0, str(root))
    import emcid.emcid_main as em
    from emcid.emcid_hparams import EMCIDHyperParams

    hp = EMCIDHyperParams.from_json(root / "hparams" / "dest_s-200_c-1.5_ly-11_lr-0.2_wd-5e-04_txt-align-0.01.json")
    if not hasattr(te, "text_model"):  # patch 0: transformers 5 has no text_model. level
        for f in ("rewrite_module_tmp", "layer_module_tmp", "mlp_module_tmp", "attn_module_tmp", "ln_f_module"):
            setattr(hp, f, getattr(hp, f).removeprefix("text_model."))
    z_of = {(src, dst): z[i] for i, (src, dst, _) in enumerate(reqs)}
    clock = {"last_z": None}

    def fake_z(pipe, request, hparams, layer, device=None, **_):  # patch 1: stage I skipped, the same z*
        clock["last_z"] = time.perf_counter()
        return z_of[(request["source"], request["dest"])].clone()

    for name in ("compute_z_text_encoder", "compute_z_text_encoder_v1", "compute_z_text_encoder_v2",
                 "compute_z_text_encoder_global"):
        if hasattr(em, name):
            setattr(em, name, fake_z)

    def fake_stats(model, tok_, layer_name, *a, **k):  # patch 2: the same synthetic statistics
        layer = int(layer_name.split("layers.")[1].split(".")[0])
        return types.SimpleNamespace(mom2=types.SimpleNamespace(moment=lambda: covs[layer].clone()))

    em.layer_stats_text_encoder = fake_stats
    real_device = torch.cuda.device  # patch 3: their per-layer empty_cache on a CPU device

    def device_ctx(d):
        return contextlib.nullcontext() if torch.device(d).type == "cpu" else real_device(d)

    torch.cuda.device = device_ctx
    captured = {}
    real_execute = em.execute_emcid_text_encoder

    def execute(*a, **k):  # timing/capture wrapper only
        captured["deltas"] = real_execute(*a, **k)
        return captured["deltas"]

    em.execute_emcid_text_encoder = execute
    pipe = types.SimpleNamespace(text_encoder=te, tokenizer=tok, device=torch.device("cpu"))
    requests = [{"prompts": ["An image of {}", "A photo of {}", "{}"], "seed": seed, "indices": [0, 1, 2],
                 "source": src, "dest": dst} for src, dst, seed in reqs]
    fc2 = {l: te.get_parameter(f"{hp.rewrite_module_tmp.format(l)}.weight") for l in LAYERS}
    orig = {l: w.detach().clone() for l, w in fc2.items()}
    with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        em.apply_emcid_to_text_encoder(pipe, requests[:1], hp, "cpu", mom2_weight=4000, edit_weight=0.6,
                                       return_orig_text_encoder=False, cache_name=None, verbose=True)  # warm-up
        for l, w in fc2.items():
            w.copy_(orig[l])
        captured.clear()
        rss_before = rss_gb()
        em.apply_emcid_to_text_encoder(pipe, requests, hp, "cpu", mom2_weight=4000, edit_weight=0.6,
                                       return_orig_text_encoder=False, cache_name=None, verbose=True)
        t_end = time.perf_counter()
    torch.cuda.device = real_device
    rec = {"n": n, "impl": "official", "stage2_s": round(t_end - clock["last_z"], 3),
           "rss_before_gb": round(rss_before, 3),
           "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2, 3)}
    if save is not None:
        from safetensors.torch import save_file

        ups = {}
        for l in LAYERS:
            adj_k, resid = captured["deltas"][f"{hp.rewrite_module_tmp.format(l)}.weight"]
            ups[str(l)] = (adj_k.double() @ resid.double().T).T.contiguous()  # (768, 3072), as inserted
        save_file(ups, str(save))
    return rec


def single(n: int, threads: int, cache: Path, ref_forward: bool, solver: str, save: Path | None = None) -> dict:
    import torch

    from editors.emcid.nullspace import null_space_factors
    from editors.emcid.stage2 import compute_deltas
    from editors.hooks import subject_last_positions, text_layers
    from editors.requests import EditRequest
    from iceb.data.tokenizer import load_clip_tokenizer

    torch.set_num_threads(threads)
    tok = load_clip_tokenizer()
    te = sd14_te()
    covs = synthetic_covs(cache)
    factors, factor_s = factors_for(covs, cache) if solver == "factored" else (None, None)
    solve_fn = None
    if solver == "nullspace":
        bases, factor_s = nullspace_bases(covs, cache)
        solve_fn = lambda l, resid, keys: null_space_factors(resid, keys, bases[l], NS_BETA)  # noqa: E731
    reqs = [EditRequest(src, dst, seed=seed) for src, dst, seed in names_and_requests(n)[1]]
    z = targets(n)
    rss_before = rss_gb()
    t0 = time.perf_counter()
    prompts, owners, positions = [], [], []
    for c, r in enumerate(reqs):
        prompts += r.source_prompts()
        owners += [c] * len(r.templates)
        positions += subject_last_positions(tok, r.templates, r.source)
    out = compute_deltas(te, tok, prompts, owners, positions, z, LAYERS, covs, 4000.0, 0.6, factors=factors,
                         solver=solve_fn)
    wall = time.perf_counter() - t0
    saved = ({str(l): out.updates[l].dense().contiguous() for l in LAYERS}
             if save is not None else None)  # not timed
    t1 = time.perf_counter()
    with torch.no_grad():  # W + ΔW as the editor writes it (one addmm from the rank-N factors)
        new = {l: out.updates[l].added_to(text_layers(te)[l].mlp.fc2.weight) for l in LAYERS}
    wall += time.perf_counter() - t1
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    del new
    if save is not None:
        from safetensors.torch import save_file

        save_file(saved, str(save))
    rec = {"n": n, "solver": solver, "stage2_s": round(wall, 3), "solve_s": round(out.solve_seconds, 3),
           "walk_s": round(wall - out.solve_seconds, 3), "prompts": out.n_prompts, "tokens": out.n_tokens,
           "rss_before_gb": round(rss_before, 3), "peak_rss_gb": round(peak, 3)}
    if factor_s is not None:
        rec["factorisation_once_s"] = round(factor_s, 3)
    if ref_forward:
        ids = tok(prompts, padding=True, truncation=True, return_tensors="pt").input_ids
        t1 = time.perf_counter()
        with torch.no_grad():
            te(ids)
        rec["ref_forward_s"] = round(time.perf_counter() - t1, 3)
        rec["ref_shape"] = list(ids.shape)
        rec["ratio_to_ref_forward"] = round(wall / rec["ref_forward_s"], 3)
    return rec


def _child(args: argparse.Namespace, n: int, impl: str, save: Path | None) -> dict:
    cmd = [sys.executable, __file__, "--threads", str(args.threads), "--cache", args.cache, "--solver", args.solver]
    if impl == "official":
        cmd += ["--official-single", str(n), "--official-root", str(args.official_root)]
    else:
        cmd += ["--single", str(n)]
        if args.no_ref_forward or args.official_root:
            cmd.append("--no-ref-forward")
    if save is not None:
        cmd += ["--save", str(save)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
    if proc.returncode != 0:
        return {"n": n, "impl": impl, "error": proc.stderr[-2000:]}
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "load_avg": os.getloadavg()}


def loaded_child(args: argparse.Namespace, n: int, burners: int) -> dict:
    """ICEB's stage II at N while ``burners`` busy-loop processes hold the cores (a machine at load ~burners+1)."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(burners)]
    try:
        time.sleep(3)  # let the load average see them
        return _child(args, n, "iceb", None)
    finally:
        for pr in procs:
            pr.kill()
            pr.wait()


def max_rel_update_diff(official: Path, iceb: Path) -> float:
    from safetensors.torch import load_file

    a, b = load_file(str(official)), load_file(str(iceb))
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max()) for k in b)


def main() -> None:
    ap = argparse.ArgumentParser(description="EMCID stage II benchmark (SD-1.4 text-encoder size, random weights)")
    ap.add_argument("--ns", default="1,10,100,300,1000")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-ref-forward", action="store_true", help="skip the one-forward reference timing")
    ap.add_argument("--cache", default=os.environ.get("ICEB_BENCH_CACHE", "/tmp/iceb_bench_emcid"))
    ap.add_argument("--solver", choices=["factored", "direct", "nullspace"], default="factored",
                    help="factored: C's Cholesky factor precomputed once per model (as the editor caches it) and "
                         "the push-through solve; direct: factor λ'C + KKᵀ per layer, as the official code; "
                         "nullspace: EMCID-NS's solve (the smallest 70%% of C's directions, beta 10)")
    ap.add_argument("--against-nullspace", action="store_true",
                    help="per N, EMCID's factored stage II and EMCID-NS's, each in its own process, alternating "
                         "order (target: EMCID-NS within 1.5x of plain at every N)")
    ap.add_argument("--official-root", type=Path, default=None,
                    help="a checkout of SilentView/EMCID at 10a392a: run its stage II side by side")
    ap.add_argument("--official-ns", default="1,10,100,300", help="the N at which the official code also runs")
    ap.add_argument("--loaded", type=int, default=0, metavar="K",
                    help="also time each N with K busy-loop processes beside it (the small-N robustness case: "
                         "target at most 2x the idle time with K = 3, load ~4 on 2 cores)")
    ap.add_argument("--single", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--official-single", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--save", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.single is not None:
        print(json.dumps(single(args.single, args.threads, Path(args.cache), not args.no_ref_forward, args.solver,
                                args.save)))
        return
    if args.official_single is not None:
        print(json.dumps(official_single(args.official_single, args.threads, Path(args.cache),
                                         args.official_root.resolve(), args.save)))
        return
    side = None
    if args.official_root is None:
        side = "skipped: no --official-root (a checkout of SilentView/EMCID at 10a392a) was given"
    elif not (args.official_root / "emcid" / "emcid_main.py").is_file():
        side = f"skipped: {args.official_root} holds no emcid/emcid_main.py (not an EMCID checkout)"
    official_ns = {int(x) for x in args.official_ns.split(",") if x.strip()} if side is None else set()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    results = []
    for i, n in enumerate(int(x) for x in args.ns.split(",") if x.strip()):
        if args.against_nullspace:
            order = ["factored", "nullspace"] if i % 2 == 0 else ["nullspace", "factored"]
            recs = {sv: _child(argparse.Namespace(**{**vars(args), "solver": sv}), n, "iceb", None) for sv in order}
            rec = {"n": n, "order": order, "plain": recs["factored"], "emcid_ns": recs["nullspace"]}
            if "error" not in recs["factored"] and "error" not in recs["nullspace"]:
                rec["ratio"] = round(recs["nullspace"]["stage2_s"] / recs["factored"]["stage2_s"], 3)
                rec["target"] = 1.5
                rec["met"] = rec["ratio"] <= 1.5
            results.append(rec)
            print(json.dumps(rec), file=sys.stderr, flush=True)
            continue
        if args.loaded:
            idle = _child(args, n, "iceb", None)
            busy = loaded_child(args, n, args.loaded)
            rec = {"n": n, "idle": idle, "loaded": busy, "burners": args.loaded}
            if "error" not in idle and "error" not in busy:
                rec["slowdown"] = round(busy["stage2_s"] / idle["stage2_s"], 2)
                rec["met"] = rec["slowdown"] <= 2.0
            results.append(rec)
            print(json.dumps(rec), file=sys.stderr, flush=True)
            continue
        if n not in official_ns:
            rec = _child(args, n, "iceb", None)
            if side is not None and n in OFFICIAL_S:  # reference only: another day's figure
                rec["spec_official_s"] = OFFICIAL_S[n]
                rec["spec_official_peak_rss_gb"] = OFFICIAL_RSS_GB[n]
            results.append(rec)
            print(json.dumps(rec), file=sys.stderr, flush=True)
            continue
        order = ["iceb", "official"] if i % 2 == 0 else ["official", "iceb"]  # alternating order
        saves = {impl: cache / f"updates_{impl}_n{n}.safetensors" for impl in order}
        recs = {impl: _child(args, n, impl, saves[impl]) for impl in order}
        rec = {"n": n, "order": order, "iceb": recs["iceb"], "official": recs["official"]}
        if "error" not in recs["iceb"] and "error" not in recs["official"]:
            rec["speedup"] = round(recs["official"]["stage2_s"] / recs["iceb"]["stage2_s"], 2)
            rec["max_rel_update_diff"] = max_rel_update_diff(saves["official"], saves["iceb"])
            rec["target"] = 10.0 if n >= 10 else 5.0
            rec["met"] = rec["speedup"] >= rec["target"]
        results.append(rec)
        print(json.dumps(rec), file=sys.stderr, flush=True)
    print(json.dumps({"bench": "emcid_stage2", "threads": args.threads, "cpu_count": os.cpu_count(),
                      "solver": args.solver, "side_by_side": side or f"official code at {args.official_root}",
                      "load_avg_at_end": os.getloadavg(), "layers": LAYERS, "lambda": 4000, "alpha": 0.6,
                      "results": results,
                      "note": "spec_official_s: shared/spec/official_stage2_timing.md (another day, same CPU, "
                              "2 threads), for reference only; the side-by-side figures are measured in this run"},
                     indent=1))


if __name__ == "__main__":
    main()
