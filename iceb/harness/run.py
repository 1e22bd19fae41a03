"""The harness: brings a model, a task, an editor and metrics together, for each edit count.

A run is planned up front as work items in ``manifest.json``:

1. **pre-edit** chunks: the union of every edit count's (prompt, seed) pairs, rendered once with the
   unedited model into the shared image cache (``<out>/cache/images``) and scored once per metric into the
   shared record cache (``<out>/cache/records``). Every editor and edit count that uses the same model,
   prompt, seed and generation settings reuses them.
2. per edit count N: the **edit** (rank 0; saved as ``edits/n<N>.safetensors`` + JSON sidecar), then
   **post-edit** chunks (generate and score with the edit applied; one atomic file of records per chunk in
   ``work/n<N>/``), then the **aggregate** (rank 0 appends the N's rows to ``results.jsonl`` in one write
   that ends with a completion marker, saves a before/after grid, and drops ``work/n<N>``).

Every write is atomic, and every step skips what is on disk, so a run killed at any point and started again
with the same command ends with exactly the rows of an uninterrupted run. Every N starts from the clean base.

Scale out: under ``accelerate launch`` (GPUs) or ``torchrun`` (CPU) the chunks are split between processes
with ``PartialState.split_between_processes``. The edit runs on rank 0 only and reaches the other ranks
through the saved delta file (closed-form solves are not bitwise reproducible across devices, and the file
is written anyway); rank 0 alone writes rows, grids and the manifest. Chunk boundaries come from the
manifest, never from the number of processes, so K processes render the same batches as one.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from tqdm.auto import tqdm

from iceb import __version__
from iceb.generation import generate as _generate
from iceb.leaderboard.results import RunLockedError, append_block, completed_keys, config_hash, git_revision, \
    package_versions, read_rows

SMOKE_WARNING = "--limit is for smoke tests only: its results are not comparable and are marked smoke=true"
#: Test hook: ``ICEB_CRASH_AT=<point>`` makes the process die (os._exit, like kill -9) at that named point.
CRASH_ENV = "ICEB_CRASH_AT"
MANIFEST_VERSION = 1
GRID_CONCEPTS = 8  # edited concepts shown in each before/after grid


class ManifestMismatchError(ValueError):
    """The run folder's plan differs from the plan of this command (task data or chunking changed)."""


@dataclass
class EvalConfig:
    """Everything that defines a run (its hash is the run id), plus where and how to run it."""

    editor: str = "noop"
    task: str = "smoke"
    model: str | None = None  # None: the built-in default (toy world when present, else tiny)
    edits: tuple[int, ...] | None = None  # None: the task's default sweep
    metrics: tuple[str, ...] | None = None  # None: the task's defaults for the model's world
    editor_args: dict[str, Any] = field(default_factory=dict)
    hparams: str | None = None  # a YAML file; default: the editor's file for the model family
    preset: str | None = None
    mode: str = "batch"  # "batch" or "sequential"
    rounds: int = 1
    limit: int | None = None
    steps: int | None = None  # generation overrides
    guidance: float | None = None
    batch_size: int | None = None
    # not part of the run id:
    out: str = "runs"
    device: str = "auto"
    dtype: str | None = None
    progress: bool = True
    overwrite: bool = False

    def identity(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("out", "device", "progress", "batch_size", "overwrite"):
            d.pop(k)
        return d


# ------------------------------------------------------------------------------------------------------
# processes
# ------------------------------------------------------------------------------------------------------
class _Dist:
    """One process, or one rank of an ``accelerate launch`` / ``torchrun`` group (via accelerate)."""

    def __init__(self, device: str) -> None:
        self.state = None
        self.rank, self.world = 0, 1
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            import torch
            from accelerate import PartialState

            cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
            # other ranks wait in a collective while rank 0 edits: a 1000-request edit can outlast the
            # default 30-minute timeout, so allow ICEB_DIST_TIMEOUT_H hours (default 24)
            hours = float(os.environ.get("ICEB_DIST_TIMEOUT_H", "24"))
            self.state = PartialState(cpu=cpu, timeout=datetime.timedelta(hours=hours))
            self.rank, self.world = self.state.process_index, self.state.num_processes

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str) -> str:
        if self.state is None or requested not in ("auto", "cuda"):
            return requested
        return str(self.state.device)

    def split(self, items: list) -> list:
        if self.state is None:
            return list(items)
        with self.state.split_between_processes(list(items), apply_padding=False) as mine:
            return list(mine)

    def barrier(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()

    def agree(self, err: BaseException | None) -> None:
        """Every rank learns whether any rank failed; all raise the first failure (no rank hangs)."""
        if self.state is None:
            if err is not None:
                raise err
            return
        import torch.distributed as dist

        msgs: list[Any] = [None] * self.world
        dist.all_gather_object(msgs, None if err is None else (type(err).__name__, str(err)))
        if err is not None:
            raise err
        for i, m in enumerate(msgs):
            if m is not None:
                raise RuntimeError(f"rank {i} failed with {m[0]}: {m[1]}")

    def broadcast(self, obj: Any) -> Any:
        if self.state is None:
            return obj
        from accelerate.utils import broadcast_object_list

        box = [obj]
        broadcast_object_list(box, from_process=0)
        return box[0]


def _crash_point(name: str) -> None:
    """Die like ``kill -9`` when ``$ICEB_CRASH_AT`` names this point (tests of resume; no cleanup runs)."""
    if os.environ.get(CRASH_ENV) == name:
        os._exit(86)


# ------------------------------------------------------------------------------------------------------
# resolution and planning
# ------------------------------------------------------------------------------------------------------
def _resolve(cfg: EvalConfig, loaded=None):
    from editors import get_editor
    from iceb.models import default_model_spec, load_model
    from iceb.tasks import get_task

    if cfg.mode not in ("batch", "sequential"):
        raise ValueError(f"--mode must be 'batch' or 'sequential', got {cfg.mode!r}")
    if cfg.mode == "batch" and cfg.rounds != 1:
        raise ValueError("--rounds needs --mode sequential (batch mode edits all requests at once)")
    if cfg.limit is not None and cfg.limit < 1:
        raise ValueError(f"--limit must be a positive number of prompts per subset, got {cfg.limit}")
    editor_cls = get_editor(cfg.editor)  # unknown names fail before the model loads
    if loaded is None:
        if cfg.model is None:
            cfg.model = default_model_spec()
        loaded = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    else:
        cfg.model = loaded.spec
    task = get_task(cfg.task, world=loaded.world)
    edits = tuple(cfg.edits) if cfg.edits else tuple(task.default_edits)
    if len(set(edits)) != len(edits):
        raise ValueError(f"--edits lists an edit count twice: {list(edits)}")
    for n in edits:
        task.check_n(n)
    if cfg.mode == "sequential":
        bad = [n for n in edits if cfg.rounds > n]
        if bad:
            raise ValueError(f"--rounds {cfg.rounds} exceeds the edit count(s) {bad}")
    hp = editor_cls.load_hparams(loaded.family, cfg.hparams, cfg.editor_args, preset=cfg.preset) \
        if hasattr(editor_cls, "load_hparams") else None
    return editor_cls, hp, loaded, task, edits


def _metric_names(cfg: EvalConfig, task) -> tuple[str, ...]:
    return tuple(cfg.metrics) if cfg.metrics else tuple(task.default_metrics)


def _chunks(count: int, size: int) -> list[list[int]]:
    return [list(range(i, min(i + size, count))) for i in range(0, count, size)]


def _grid_indices(inst) -> list[int]:
    """Prompt indices of a before/after grid: the first edit prompt of the first requests, plus holdouts."""
    seen: dict[str, int] = {}
    holdout: list[int] = []
    for i, p in enumerate(inst.prompts):
        if p.subset == "edit" and p.group not in seen and len(seen) < GRID_CONCEPTS:
            seen[p.group] = i
        elif p.subset == "holdout" and len(holdout) < 2:
            holdout.append(i)
    return list(seen.values()) + holdout


def _plan(run_id: str, edits, instances, pre_keys: list[str], chunk: int) -> dict[str, Any]:
    return {
        "manifest_version": MANIFEST_VERSION, "run_id": run_id, "chunk_size": chunk,
        "pre": {"images": len(pre_keys), "chunks": len(_chunks(len(pre_keys), chunk)),
                "keys_hash": config_hash({"keys": pre_keys})},
        "edit_counts": {str(n): {"requests": len(instances[n].requests), "prompts": len(instances[n].prompts),
                                 "chunks": len(_chunks(len(instances[n].prompts), chunk)),
                                 "fingerprint": instances[n].fingerprint(), "grid": _grid_indices(instances[n]),
                                 "grid_prompts": [instances[n].prompts[i].prompt for i in _grid_indices(instances[n])]}
                        for n in edits},
    }


# ------------------------------------------------------------------------------------------------------
# caches
# ------------------------------------------------------------------------------------------------------
class _RecordCache:
    """Per-image metric records of pre-edit images, beside the image cache."""

    def __init__(self, root: Path):
        self.root = root
        self.hits = 0
        self.misses = 0

    def _path(self, metric_key: str, image_key: str) -> Path:
        return self.root / metric_key / image_key[:2] / f"{image_key}.json"

    def get(self, metric_key: str, image_key: str):
        p = self._path(metric_key, image_key)
        if p.is_file():
            try:
                return json.loads(p.read_text())
            except json.JSONDecodeError:
                return None
        return None

    def put(self, metric_key: str, image_key: str, record) -> None:
        from iceb.utils.io import write_text

        write_text(self._path(metric_key, image_key), json.dumps(record))


def _pre_edit(dist: _Dist, pipe, prompts_by_key: dict[str, Any], keys: list[str], chunk: int, gen, metrics,
              images, records, progress: bool, log: Callable) -> dict[str, int]:
    """Render and score the pre-edit images that are not cached yet; chunks split between processes."""
    chunks = _chunks(len(keys), chunk)
    stats = {"images_cached": 0, "images_generated": 0, "records_cached": 0, "records_scored": 0}
    err: BaseException | None = None
    try:
        # rank 0 decides what is missing: ranks looking at the disk at different moments would split
        # different lists, and a chunk could fall between them
        missing = dist.broadcast([c for c in chunks if any(not images.path(keys[i]).is_file() for i in c)]
                                 if dist.main else None)
        stats["images_cached"] = len(keys) - sum(len(c) for c in missing)
        mine = dist.split(missing)
        bar = tqdm(total=sum(len(c) for c in mine), desc="pre-edit images", unit="img",
                   disable=not progress or not mine or not dist.main, leave=False)
        for c in mine:
            # A whole chunk is rendered even when some of it is cached, so its batch is the same batch
            # whatever was on disk: images depend on (prompt, seed, settings) only, bit for bit.
            ps = [prompts_by_key[keys[i]] for i in c]
            rendered = _generate(pipe, [p.prompt for p in ps], [p.seed for p in ps], gen, progress=False)
            for i, im in zip(c, rendered):
                if not images.path(keys[i]).is_file():
                    images.put(keys[i], im)
                    stats["images_generated"] += 1
            _crash_point("pre-chunk")
            bar.update(len(c))
        bar.close()
    except BaseException as e:  # noqa: BLE001 - re-raised on every rank by agree()
        err = e
    dist.agree(err)
    images.misses += stats["images_generated"]
    images.hits += stats["images_cached"]
    for m in metrics:
        mk = m.record_key()
        try:
            todo = dist.broadcast([c for c in chunks if any(records.get(mk, keys[i]) is None for i in c)]
                                  if dist.main else None)
            stats["records_cached"] += len(keys) - sum(len(c) for c in todo)
            for c in dist.split(todo):
                need = [i for i in c if records.get(mk, keys[i]) is None]
                ims = [images.get(keys[i]) for i in need]
                if any(im is None for im in ims):
                    raise RuntimeError(f"pre-edit image cache {images.root} lost images while scoring; run again")
                for i, rec in zip(need, m.score(ims, [prompts_by_key[keys[i]] for i in need])):
                    records.put(mk, keys[i], rec)
                    stats["records_scored"] += 1
                _crash_point("pre-records")
        except BaseException as e:  # noqa: BLE001
            err = e
        dist.agree(err)
    records.misses += stats["records_scored"]
    records.hits += stats["records_cached"]
    return stats


# ------------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------------
def model_banner(loaded) -> str:
    """The first line of a run: which model and world it uses, and how to switch to Stable Diffusion."""
    what = {"tiny": "random weights: its numbers mean nothing",
            "toy": "the trained toy world: 64 made-up concepts, scored by its own classifier"}.get(loaded.spec)
    if what is None:
        return f"[iceb] model {loaded.spec} ({loaded.model_id}), world: {loaded.world}"
    return (f"[iceb] model {loaded.spec!r}, built in ({what}), world: {loaded.world}. For Stable Diffusion "
            f"pass --model CompVis/stable-diffusion-v1-4 (or a local diffusers folder) and --device cuda")


def evaluate(cfg: EvalConfig, log: Callable[[str], Any] = print, model=None) -> Path:
    """Run (or resume) an evaluation; returns the run folder.

    ``model`` is an already loaded :class:`~iceb.models.LoadedModel` to use instead of loading ``cfg.model``
    (Python users evaluating several editors on one pipeline; it is left as it was found)."""
    from filelock import FileLock, Timeout

    from iceb.generation import ImageCache, image_key
    from iceb.utils.io import write_json
    from iceb.metrics import get_metric

    dist = _Dist(cfg.device)
    if dist.state is not None and model is None:
        cfg.device = dist.device(cfg.device)
    quiet = (lambda *_: None) if not dist.main else log
    progress = cfg.progress and dist.main
    editor_cls, hp, loaded, task, edits = _resolve(cfg, model)
    quiet(model_banner(loaded))
    gen = loaded.generation.replace(num_inference_steps=cfg.steps, guidance_scale=cfg.guidance,
                                    batch_size=cfg.batch_size)
    metric_names = _metric_names(cfg, task)
    instances = {n: task.build(n).limited(cfg.limit) for n in edits}
    if hasattr(editor_cls, "check_requests") and hp is not None:  # refuse unservable requests before heavy work
        editor_cls(hp, progress=False).check_requests(instances[max(edits)].requests)
    data_hashes = {str(n): instances[n].fingerprint() for n in edits}
    hp_dict = hp.to_dict() if hp is not None else None
    identity = {**cfg.identity(), "edits": list(edits), "metrics": list(metric_names), "hparams_resolved": hp_dict,
                "generation": gen.key(), "model_fingerprint": loaded.fingerprint, "task_fingerprints": data_hashes}
    smoke = bool(cfg.limit)
    run_id = (f"{cfg.editor.replace(':', '_').replace('/', '_').replace('.', '_')}-{task.name}-"
              f"{config_hash(identity)}{'-smoke' if smoke else ''}")
    out_root = Path(cfg.out)
    run_dir = out_root / run_id
    lock = FileLock(str(run_dir / ".lock")) if dist.main else None
    err: BaseException | None = None
    if lock is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            err = RunLockedError(f"another process is running {run_dir} (lock {run_dir / '.lock'}); wait for it "
                                 f"to finish or stop it, then run the same command again to resume")
    dist.agree(err)
    try:
        # pre-edit keys: the union over edit counts, in first-appearance order (a fixed chunking)
        prompts_by_key: dict[str, Any] = {}
        for n in edits:
            for p in instances[n].prompts:
                prompts_by_key.setdefault(image_key(loaded.fingerprint, p.prompt, p.seed, gen), p)
        pre_keys = list(prompts_by_key)
        manifest_path = run_dir / "manifest.json"
        err = None
        if dist.main:
            try:
                chunk = max(1, gen.batch_size)
                if cfg.overwrite:
                    _clear_run(run_dir)
                old = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
                if old is not None and old.get("chunk_size") != chunk:
                    quiet(f"[iceb] resuming with the run's chunk size {old['chunk_size']} (not --batch-size {chunk})")
                    chunk = int(old["chunk_size"])
                plan = _plan(run_id, edits, instances, pre_keys, chunk)
                if old is not None and old != plan:
                    raise ManifestMismatchError(
                        f"{manifest_path} plans different work than this command (the task data changed?); "
                        f"use --overwrite to start this run again, or another --out")
                if old is None:
                    write_json(manifest_path, plan)
                _clean_stale(run_dir, completed_keys(run_dir / "results.jsonl"))
                write_json(run_dir / "config.json", {
                    "run_id": run_id, "config": identity, "iceb_version": __version__,
                    "versions": package_versions(), "git_revision": git_revision(),
                    "model": {"spec": loaded.spec, "id": loaded.model_id, "revision": loaded.revision,
                              "family": loaded.family, "world": loaded.world, "fingerprint": loaded.fingerprint},
                    "data": {"task": task.name, "task_fingerprints": data_hashes,
                             "requests": {str(n): len(instances[n].requests) for n in edits},
                             "prompts": {str(n): len(instances[n].prompts) for n in edits}},
                    "hparams": hp_dict, "hparams_hash": config_hash({"hp": hp_dict}),
                    "generation": dataclasses.asdict(gen), "processes": dist.world,
                    "smoke": smoke, "smoke_note": SMOKE_WARNING if smoke else None})
            except BaseException as e:  # noqa: BLE001
                err = e
        dist.agree(err)
        plan = dist.broadcast(json.loads(manifest_path.read_text()) if dist.main else None)
        chunk = int(plan["chunk_size"])
        gen = gen.replace(batch_size=chunk)
        quiet(f"[iceb] model {loaded.spec} ({loaded.model_id}, world: {loaded.world}); task {task.name}; "
              f"editor {cfg.editor}; edits {list(edits)}; mode {cfg.mode}; {dist.world} process(es); "
              f"run folder {run_dir}")
        if smoke:
            quiet(f"[iceb] WARNING: {SMOKE_WARNING}")

        metrics = [get_metric(m, world=loaded.world, device=str(loaded.pipe.device), classifier=loaded.classifier)
                   for m in metric_names]
        images = ImageCache(out_root / "cache" / "images")
        records = _RecordCache(out_root / "cache" / "records")
        t_pre = time.perf_counter()
        stats = _pre_edit(dist, loaded.pipe, prompts_by_key, pre_keys, chunk, gen, metrics, images, records,
                          progress, log)
        quiet(f"[iceb] pre-edit: {len(pre_keys)} images ({stats['images_cached']} cached, "
              f"{stats['images_generated']} generated here), records {stats['records_scored']} scored here, "
              f"{stats['records_cached']} cached; {time.perf_counter() - t_pre:.1f}s")

        results_path = run_dir / "results.jsonl"
        done = completed_keys(results_path) if dist.main else set()
        done = dist.broadcast(done)
        editor = None
        bar = tqdm(edits, desc="edit counts", unit="N", disable=not progress)
        for n in bar:
            bar.set_postfix_str(f"N={n}")
            key = f"n{n}"
            if key in done:
                quiet(f"[iceb] N={n}: already done, skipped")
                continue
            if editor is None:
                editor = editor_cls(hp, cache_dir=out_root / "cache" / "editors", progress=progress) \
                    if hp is not None else editor_cls()
            _run_edit_count(dist, cfg, n, instances[n], plan["edit_counts"][str(n)], chunk, editor, hp_dict, loaded,
                            gen, metrics, images, records, run_dir, run_id, task, smoke, progress, quiet)
        bar.close()
        if dist.main:
            from iceb.leaderboard.results import write_csv

            if (run_dir / "work").is_dir() and not any((run_dir / "work").iterdir()):
                (run_dir / "work").rmdir()

            write_csv(read_rows(results_path), run_dir / "results.csv")
            quiet(f"[iceb] results: {results_path} and {run_dir / 'results.csv'}")
        dist.barrier()
    finally:
        if lock is not None:
            lock.release()
    return run_dir


def _run_edit_count(dist: _Dist, cfg: EvalConfig, n: int, inst, plan_n: dict, chunk: int, editor, hp_dict,
                    loaded, gen, metrics, images, records, run_dir: Path, run_id: str, task, smoke: bool,
                    progress: bool, log: Callable) -> None:
    from iceb.generation import image_key
    from editors.weights import applied
    from iceb.utils.io import write_json

    t0 = time.perf_counter()
    stem = run_dir / "edits" / f"n{n}"
    prompts = list(inst.prompts)
    # 1. the edit: rank 0 computes it (or finds it on disk) and saves it; every rank loads the file
    err: BaseException | None = None
    if dist.main:
        try:
            if not _delta_ok(stem, inst):
                t_edit = time.perf_counter()
                try:
                    if cfg.mode == "sequential":
                        from editors.base import edit_in_rounds

                        result = edit_in_rounds(editor, loaded.pipe, inst.requests, cfg.rounds)
                    else:
                        result = editor.edit(loaded.pipe, inst.requests)
                except FloatingPointError as e:
                    raise FloatingPointError(
                        f"editor {cfg.editor} produced non-finite values at N={n} ({e}); nothing of N={n} was "
                        f"written, and the rows of the edit counts already finished are kept in "
                        f"{run_dir / 'results.jsonl'}") from None
                edit_seconds = time.perf_counter() - t_edit
                _crash_point(f"edit:{n}")
                _save_delta(stem, result, cfg, loaded, inst, edit_seconds, hp_dict)
                _crash_point(f"saved:{n}")
        except BaseException as e:  # noqa: BLE001
            err = e
    dist.agree(err)
    tensors, sidecar = _load_delta(stem)

    # 2. post-edit chunks: generate with the edit applied, score, one atomic records file per chunk
    keys = [image_key(loaded.fingerprint, p.prompt, p.seed, gen) for p in prompts]
    work = run_dir / "work" / f"n{n}"
    grid = set(plan_n["grid"])
    chunks = _chunks(len(prompts), chunk)
    todo = dist.broadcast([(ci, c) for ci, c in enumerate(chunks) if not (work / f"c{ci:05d}.json").is_file()]
                          if dist.main else None)
    mine = dist.split(todo)
    try:
        bar = tqdm(total=sum(len(c) for _, c in mine), desc=f"post-edit images N={n}", unit="img",
                   disable=not progress or not mine, leave=False)
        with applied(loaded.pipe, tensors):
            for ci, c in mine:
                ps = [prompts[i] for i in c]
                post = recs = None
                if not tensors:  # nothing changed: the post-edit images are the cached pre-edit ones, bit for bit
                    post = [images.get(keys[i]) for i in c]
                    recs = {m.name: [records.get(m.record_key(), keys[i]) for i in c] for m in metrics}
                    if any(x is None for x in post) or any(r is None for v in recs.values() for r in v):
                        post = recs = None
                if post is None:
                    post = _generate(loaded.pipe, [p.prompt for p in ps], [p.seed for p in ps], gen, progress=False)
                    recs = {m.name: m.score(post, ps) for m in metrics}
                for i, im in zip(c, post):
                    if i in grid:
                        _save_png(work / "img" / f"{i}.png", im)
                write_json(work / f"c{ci:05d}.json", {"chunk": ci, "indices": c, "records": recs})
                _crash_point(f"post-chunk:{n}")
                bar.update(len(c))
        bar.close()
        err = None
    except BaseException as e:  # noqa: BLE001
        err = e
    dist.agree(err)

    # 3. aggregate (rank 0): rows in one append with a completion marker, then the grid
    err = None
    if dist.main:
        try:
            post_recs: dict[str, list[Any]] = {m.name: [None] * len(prompts) for m in metrics}
            for ci in range(len(chunks)):
                data = json.loads((work / f"c{ci:05d}.json").read_text())
                for m in metrics:
                    for i, r in zip(data["indices"], data["records"][m.name]):
                        post_recs[m.name][i] = r
            base = {"editor": cfg.editor, "model": loaded.spec, "task": task.name, "world": loaded.world,
                    "n_edits": n, "mode": cfg.mode if cfg.mode == "batch" else f"sequential-{cfg.rounds}",
                    "smoke": smoke, "run_id": run_id, "iceb_version": __version__}
            rows = []
            for m in metrics:
                mk = m.record_key()
                pre = [records.get(mk, k) for k in keys]
                if any(r is None for r in pre):
                    raise RuntimeError(f"pre-edit records of {m.name} are missing from {records.root}; run again")
                for v in m.aggregate(prompts, pre, post_recs[m.name]):
                    if v.value != v.value:  # NaN
                        raise FloatingPointError(
                            f"metric {m.name} gave NaN for {v.subset}/{v.metric} at N={n} (the edit made "
                            f"non-finite images?); the rows of finished edit counts are kept")
                    rows.append({**base, **dataclasses.asdict(v)})
            rows.append({**base, "subset": "-", "metric": "edit_seconds", "value": sidecar["edit_seconds"],
                         "bound": None, "n": len(inst.requests), "higher_is_better": False})
            _crash_point(f"append:{n}")
            import uuid

            append_block(run_dir / "results.jsonl", rows,
                         {"key": f"n{n}", "block": uuid.uuid4().hex, "n_edits": n,
                          "seconds": time.perf_counter() - t0})
            _crash_point(f"appended:{n}")
            try:
                _save_grid(run_dir / "grids" / f"n{n}.png", [images.get(keys[i]) for i in plan_n["grid"]],
                           [work / "img" / f"{i}.png" for i in plan_n["grid"]])
            except OSError as e:  # a grid is a picture, never worth losing rows over
                log(f"[iceb] note: could not save the N={n} grid: {e}")
            shutil.rmtree(work, ignore_errors=True)
            summary = ", ".join(f"{r['subset']}/{r['metric']}={r['value']:.4g}" for r in rows[:6])
            log(f"[iceb] N={n}: {len(prompts)} images, edit {sidecar['edit_seconds']:.1f}s, "
                f"total {time.perf_counter() - t0:.1f}s; {summary}")
        except BaseException as e:  # noqa: BLE001
            err = e
    dist.agree(err)


# ------------------------------------------------------------------------------------------------------
# files
# ------------------------------------------------------------------------------------------------------
def _clear_run(run_dir: Path) -> None:
    """--overwrite: drop this run's results, plan, edits and work (the shared caches stay)."""
    for name in ("results.jsonl", "results.csv", "manifest.json", "config.json"):
        (run_dir / name).unlink(missing_ok=True)
    for name in ("edits", "work", "grids"):
        shutil.rmtree(run_dir / name, ignore_errors=True)


def _clean_stale(run_dir: Path, done: set[str]) -> None:
    """Temp files of killed writers, and the work folders of edit counts already aggregated."""
    for tmp in run_dir.rglob(".*.tmp"):
        tmp.unlink(missing_ok=True)
    for key in done:
        shutil.rmtree(run_dir / "work" / key, ignore_errors=True)


def _save_png(path: Path, image) -> None:
    from PIL import Image

    from iceb.utils.io import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def _save_grid(path: Path, pre: Sequence[Any], post_paths: Sequence[Path]) -> None:
    """Rows of (before, after) pairs, as small PNG: one row per edited concept (then holdouts)."""
    import numpy as np
    from PIL import Image

    pairs = []
    for a, p in zip(pre, post_paths):
        if a is None or not p.is_file():
            continue
        with Image.open(p) as im:
            b = np.asarray(im.convert("RGB"))
        pairs.append((a, b))
    if not pairs:
        return
    size = 128
    tiles = [Image.fromarray(x).resize((size, size), Image.NEAREST if x.shape[0] < size else Image.BICUBIC)
             for pair in pairs for x in pair]
    grid = Image.new("RGB", (2 * size, len(pairs) * size))
    for k, t in enumerate(tiles):
        grid.paste(t, ((k % 2) * size, (k // 2) * size))
    from iceb.utils.io import atomic_path

    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")


def _delta_ok(stem: Path, inst) -> bool:
    """A saved edit for exactly this task instance exists (its sidecar is written last)."""
    from iceb.editfile import sidecar_path

    path = stem.with_suffix(".safetensors")
    side = sidecar_path(path)
    if not (side.is_file() and path.is_file()):
        return False
    try:
        return json.loads(side.read_text()).get("task_fingerprint") == inst.fingerprint()
    except json.JSONDecodeError:
        return False


def _save_delta(stem: Path, result, cfg: EvalConfig, loaded, inst, edit_seconds: float, hparams) -> None:
    """The edit as a portable edit file (exactly the changed tensors + sidecar), see :mod:`iceb.editfile`."""
    from iceb.editfile import save_edit

    save_edit(stem.with_suffix(".safetensors"), result, editor=cfg.editor, hparams=hparams, model=loaded,
              requests=inst.requests, mode=cfg.mode if cfg.mode == "batch" else f"sequential-{cfg.rounds}",
              extra={"task": inst.task, "n_edits": inst.n_edits, "task_fingerprint": inst.fingerprint(),
                     "edit_seconds": edit_seconds, "rounds": cfg.rounds})


def _load_delta(stem: Path):
    from iceb.editfile import load_edit

    edit = load_edit(stem.with_suffix(".safetensors"))
    return edit.tensors, edit.meta
