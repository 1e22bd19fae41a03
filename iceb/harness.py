"""The harness: brings a model, a task, an editor and metrics together, for each edit count.

For each N: the task gives N requests and the evaluation prompts; the editor returns an EditResult; the
pre-edit images (cached, shared by every editor and N) and the post-edit images (edit applied, then
restored bit for bit) are scored; rows are appended to the run folder. Every N starts from the clean base.
"""
from __future__ import annotations

import dataclasses
import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tqdm.auto import tqdm

from iceb import __version__
from iceb.results import RunLockedError, append_block, completed_keys, config_hash, git_revision, \
    package_versions, read_rows

SMOKE_WARNING = "--limit is for smoke tests only: its results are not comparable and are marked smoke=true"


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

    def identity(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("out", "device", "progress", "batch_size"):
            d.pop(k)
        return d


def _resolve(cfg: EvalConfig):
    from editors import get_editor
    from iceb.models import load_model
    from iceb.tasks import get_task

    if cfg.mode not in ("batch", "sequential"):
        raise ValueError(f"--mode must be 'batch' or 'sequential', got {cfg.mode!r}")
    if cfg.mode == "batch" and cfg.rounds != 1:
        raise ValueError("--rounds needs --mode sequential (batch mode edits all requests at once)")
    from iceb.models import default_model_spec

    editor_cls = get_editor(cfg.editor)  # unknown names fail before the model loads
    if cfg.model is None:
        cfg.model = default_model_spec()
    loaded = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    task = get_task(cfg.task, world=loaded.world)
    edits = tuple(cfg.edits) if cfg.edits else tuple(task.default_edits)
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


class _RecordCache:
    """Per-image metric records of pre-edit images, beside the image cache."""

    def __init__(self, root: Path):
        self.root = root

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
        from iceb.io import write_text

        write_text(self._path(metric_key, image_key), json.dumps(record))


def evaluate(cfg: EvalConfig, log=print) -> Path:
    """Run (or resume) an evaluation; returns the run folder."""
    from filelock import FileLock, Timeout

    from editors.base import edit_in_rounds
    from editors.weights import applied
    from iceb.generation import ImageCache, generate, image_key
    from iceb.metrics import get_metric

    editor_cls, hp, loaded, task, edits = _resolve(cfg)
    gen = loaded.generation.replace(num_inference_steps=cfg.steps, guidance_scale=cfg.guidance,
                                    batch_size=cfg.batch_size)
    metric_names = _metric_names(cfg, task)
    identity = {**cfg.identity(), "edits": list(edits), "metrics": list(metric_names),
                "hparams_resolved": hp.to_dict() if hp is not None else None, "generation": gen.key(),
                "model_fingerprint": loaded.fingerprint}
    run_id = f"{cfg.editor.replace(':', '_').replace('/', '_')}-{task.name}-{config_hash(identity)}"
    out_root = Path(cfg.out)
    run_dir = out_root / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(run_dir / ".lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunLockedError(f"another process is running {run_dir} (lock {run_dir / '.lock'}); "
                             f"wait for it to finish or stop it") from None
    try:
        log(f"[iceb] model {loaded.spec} ({loaded.model_id}, world: {loaded.world}); task {task.name}; "
            f"editor {cfg.editor}; edits {list(edits)}; run folder {run_dir}")
        if cfg.limit:
            log(f"[iceb] WARNING: {SMOKE_WARNING}")
        from iceb.io import write_json

        write_json(run_dir / "config.json", {
            "run_id": run_id, "config": identity, "iceb_version": __version__, "versions": package_versions(),
            "git_revision": git_revision(), "model": {"spec": loaded.spec, "id": loaded.model_id,
                                                      "revision": loaded.revision, "family": loaded.family,
                                                      "world": loaded.world},
            "smoke": bool(cfg.limit)})
        editor = editor_cls(hp, cache_dir=out_root / "cache" / "editors", progress=cfg.progress) \
            if hp is not None else editor_cls()
        metrics = [get_metric(m, world=loaded.world, device=str(loaded.pipe.device), classifier=loaded.classifier)
                   for m in metric_names]
        images = ImageCache(out_root / "cache" / "images")
        records = _RecordCache(out_root / "cache" / "records")
        results_path = run_dir / "results.jsonl"
        done = completed_keys(results_path)
        for n in tqdm(edits, desc="edit counts", unit="N", disable=not cfg.progress):
            key = f"n{n}"
            if key in done:
                log(f"[iceb] N={n}: already done, skipped")
                continue
            t0 = time.perf_counter()
            inst = task.build(n).limited(cfg.limit)
            prompts = list(inst.prompts)
            texts, seeds = [p.prompt for p in prompts], [p.seed for p in prompts]
            # pre-edit: cached images and records
            pre_imgs = images.generate(loaded.pipe, loaded.fingerprint, texts, seeds, gen, progress=cfg.progress)
            keys = [image_key(loaded.fingerprint, t, s, gen) for t, s in zip(texts, seeds)]
            pre_records = {m.name: _cached_records(m, records, keys, pre_imgs, prompts) for m in metrics}
            # the edit
            t_edit = time.perf_counter()
            try:
                if cfg.mode == "sequential":
                    result = edit_in_rounds(editor, loaded.pipe, inst.requests, cfg.rounds)
                else:
                    result = editor.edit(loaded.pipe, inst.requests)
            except FloatingPointError as err:
                raise FloatingPointError(f"editor {cfg.editor} failed at N={n}: {err}. Rows of the edit counts "
                                         f"already finished are kept in {results_path}") from None
            edit_seconds = time.perf_counter() - t_edit
            _save_delta(run_dir / "edits" / f"n{n}", result, cfg, loaded, inst)
            with applied(loaded.pipe, result.tensors):
                post_imgs = generate(loaded.pipe, texts, seeds, gen, progress=cfg.progress, desc="post-edit images")
            rows = []
            base = {"editor": cfg.editor, "model": loaded.spec, "task": task.name, "world": loaded.world,
                    "n_edits": n, "mode": cfg.mode if cfg.mode == "batch" else f"sequential-{cfg.rounds}",
                    "smoke": bool(cfg.limit), "run_id": run_id, "iceb_version": __version__}
            for m in metrics:
                post_rec = m.score(post_imgs, prompts)
                for v in m.aggregate(prompts, pre_records[m.name], post_rec):
                    rows.append({**base, **dataclasses.asdict(v)})
            rows.append({**base, "subset": "-", "metric": "edit_seconds", "value": edit_seconds, "bound": None,
                         "n": len(inst.requests), "higher_is_better": False})
            append_block(results_path, rows, {"key": key, "block": uuid.uuid4().hex, "n_edits": n,
                                              "seconds": time.perf_counter() - t0})
            summary = ", ".join(f"{r['subset']}/{r['metric']}={r['value']:.4g}" for r in rows[:6])
            log(f"[iceb] N={n} done in {time.perf_counter() - t0:.1f}s (edit {edit_seconds:.1f}s): {summary}")
        from iceb.results import write_csv

        write_csv(read_rows(results_path), run_dir / "results.csv")
        log(f"[iceb] results: {run_dir / 'results.jsonl'} and {run_dir / 'results.csv'}")
    finally:
        lock.release()
    return run_dir


def _cached_records(metric, cache: _RecordCache, keys: Sequence[str], images, prompts) -> list[Any]:
    mk = metric.record_key()
    recs = [cache.get(mk, k) for k in keys]
    todo = [i for i, r in enumerate(recs) if r is None]
    if todo:
        new = metric.score([images[i] for i in todo], [prompts[i] for i in todo])
        for i, r in zip(todo, new):
            cache.put(mk, keys[i], r)
            recs[i] = r
    return recs


def _save_delta(stem: Path, result, cfg: EvalConfig, loaded, inst) -> None:
    """The edit as safetensors (exactly the changed tensors) with a JSON sidecar."""
    from safetensors.torch import save_file

    from iceb.io import atomic_path, write_json

    stem.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in result.tensors.items()}
    with atomic_path(stem.with_suffix(".safetensors")) as tmp:
        save_file(tensors, str(tmp), metadata={"editor": cfg.editor, "base_model": loaded.model_id})
    write_json(stem.with_suffix(".json"), {
        "editor": cfg.editor, "base_model": loaded.model_id, "base_revision": loaded.revision,
        "n_requests": len(inst.requests), "requests_hash": inst.fingerprint(), "timings": result.timings,
        "losses_last": {k: (v[-1] if v else None) for k, v in result.losses.items()},
        "iceb_version": __version__, "tensors": sorted(tensors)})
