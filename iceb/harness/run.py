"""The run: brings a model, a task, an editor and metrics together, for each edit count, in phases.

:class:`Run` goes through its phases in the manner of lighteval's ``Pipeline``; :func:`evaluate` is all of
them in a row:

0. :meth:`Run.resolve`: the configuration is checked (:meth:`EvalConfig.validate`) and the editor name
   resolved *before* the model loads; then the model, the task, the edit counts and the editor's hparams.
1. :meth:`Run.plan`: every edit count's task instance, the request checks of the editor, the run id, the
   run lock, and the work items in ``manifest.json``. A task that names a judge (``Task.judge``: ``debias``'s
   ``gender-clip``) gets it built here and handed to the editor (``set_judge``) before the checks, so an
   editor's debiasing mode scores its trials with the benchmark's classifier without importing it.
2. :meth:`Run.render_pre_edit`: the union of every edit count's (prompt, seed) pairs, rendered once with the
   unedited model into the shared image cache (``<out>/cache/images``) and scored once per metric into the
   shared record cache (``<out>/cache/records``). Every editor and edit count that uses the same model,
   prompt, seed and generation settings reuses them.
3. per edit count N: :meth:`Run.edit` (rank 0; saved as ``edits/n<N>.safetensors`` + JSON sidecar; with
   ``--editor file:PATH`` the tensors of an edit made elsewhere, :mod:`iceb.harness.external`), then
   :meth:`Run.render_post_edit` (generate and score with the edit applied; one atomic file of records per
   chunk in ``work/n<N>/``), then, with ``--attacks``, :meth:`Run.attack` (adversarial prompts against the
   edited requests, :mod:`iceb.harness.attacks`; one record per attack and request in ``attacks/n<N>/``),
   then :meth:`Run.aggregate` (rank 0 appends the N's rows to ``results.jsonl`` in
   one write that ends with a completion marker, saves a before/after grid, and drops ``work/n<N>``).
4. :meth:`Run.finish`: ``results.csv``.

Every write is atomic, and every step skips what is on disk, so a run killed at any point and started again
with the same command ends with exactly the rows of an uninterrupted run. Every N starts from the clean base.

Scale out: under ``accelerate launch`` (GPUs) or ``torchrun`` (CPU) the chunks are split between processes
with ``PartialState.split_between_processes``. The edit runs on rank 0 only and reaches the other ranks
through the saved delta file (closed-form solves are not bitwise reproducible across devices, and the file
is written anyway); rank 0 alone writes rows, grids and the manifest, and logs. Chunk boundaries come from
the manifest, never from the number of processes, so K processes render the same batches as one. A step
that can fail runs inside :meth:`Dist.collective`, so a failure on one rank stops every rank.
"""
from __future__ import annotations

import dataclasses
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from iceb import __version__
from iceb.generation import generate as _generate
from iceb.harness import files, samples
from iceb.harness.caches import RecordCache
from iceb.harness.config import SMOKE_WARNING, EvalConfig
from iceb.harness.crash import CRASH_ENV
from iceb.harness.crash import crash_point as _crash_point
from iceb.harness.dist import Dist
from iceb.harness.logs import ensure_console, logger
from iceb.harness.plan import ManifestMismatchError, build_plan, chunks, same_work
from iceb.leaderboard.results import (
    RunLockedError,
    append_block,
    completed_keys,
    config_hash,
    git_revision,
    package_versions,
    read_rows,
)
from iceb.utils.io import read_json

__all__ = ["CRASH_ENV", "SMOKE_WARNING", "EvalConfig", "ManifestMismatchError", "Run", "evaluate", "model_banner"]


def cost_rows(sidecar: dict[str, Any], n_requests: int, file_bytes: int) -> list[dict[str, Any]]:
    """The cost rows of one edit: seconds per phase (``precompute``, ``per_concept``, ``solve``, ``edit`` = the
    whole), peak memory, under subset ``cost:<state>`` of the whole edit (``cold``: no cache hit, ``warm``: every
    read of the editor's caches hit, ``mixed``; per-phase states are in the sidecar), once per measurement
    (``--cold-cost`` adds the warm repeat); the edit file's size under ``cost``. A sidecar from before the split has only ``edit_seconds`` (subset ``cost:unknown``).

    Args:
        sidecar: The edit file's sidecar (``info.cost``, ``info.cost_warm`` from :func:`editors.run.run_editor`
            and the harness; ``edit_seconds``).
        n_requests: The edit's request count (each row's ``n``).
        file_bytes: The edit file's size.

    Returns:
        Row fields (subset, metric, value, bound, n, higher_is_better) to complete with the run's base fields.
    """
    def row(subset: str, metric: str, value: float) -> dict[str, Any]:
        return {"subset": subset, "metric": metric, "value": float(value), "bound": None, "n": n_requests,
                "higher_is_better": False}

    out = []
    info = sidecar.get("info") or {}
    costs = [c for c in (info.get("cost"), info.get("cost_warm")) if c]
    if not costs and sidecar.get("edit_seconds") is not None:  # None: an edit made elsewhere, time unknown
        out.append(row("cost:unknown", "edit_seconds", sidecar["edit_seconds"]))
    for cost in costs:
        subset = f"cost:{cost['state']['edit']}"
        for phase in ("precompute", "per_concept", "solve", "edit"):
            if phase in cost["seconds"]:
                out.append(row(subset, f"{phase}_seconds", cost["seconds"][phase]))
        for key in ("peak_rss_mb", "peak_cuda_mb"):
            if cost.get(key) is not None:
                out.append(row(subset, key, cost[key]))
    out.append(row("cost", "edit_file_mb", file_bytes / 2**20))
    return out


def model_banner(loaded) -> str:
    """The first line of a run: which model and world it uses, and how to switch to Stable Diffusion."""
    from iceb.toy.worlds import TOY_WORLDS

    what = {"tiny": "random weights: its numbers mean nothing", **TOY_WORLDS}.get(loaded.spec)
    if what is None:
        return f"[iceb] model {loaded.spec} ({loaded.model_id}), world: {loaded.world}"
    return (f"[iceb] model {loaded.spec!r}, built in ({what}), world: {loaded.world}. For Stable Diffusion "
            f"pass --model CompVis/stable-diffusion-v1-4 (or a local diffusers folder) and --device cuda")


def check_task_file(task: str, model_spec: str) -> None:
    """Read a task *file* against the world ``model_spec`` speaks, when that is known without loading it, so
    its errors (an unknown class name, a bad row) come before the model loads; registered tasks are built
    after loading, as before.

    Raises:
        TaskError: The file is not a valid task for that world.
    """
    from iceb.models import model_world
    from iceb.tasks import TASKS, get_task

    if task in TASKS or Path(task).suffix.lower() not in (".json", ".jsonl", ".csv", ".yaml", ".yml"):
        return
    world = model_world(model_spec)
    if world is not None:
        get_task(task, world=world)


def _scored_label(inst) -> str | None:
    """The rows' ``scored_requests``: "k of N, ids <hash>" where a sample of the requests was scored, else None."""
    ids = inst.info.get("scored_requests")
    if ids is None:
        return None
    from iceb.utils.hashing import stable_hash

    return f"{len(ids)} of {len(inst.requests)}, ids {stable_hash('scored-requests', ids)}"


def evaluate(cfg: EvalConfig, model=None) -> Path:
    """Run (or resume) an evaluation; returns the run folder.

    ``model`` is an already loaded :class:`~iceb.models.LoadedModel` to use instead of loading ``cfg.model``
    (Python users evaluating several editors on one pipeline; it is left as it was found). Progress lines go
    to the ``iceb.harness`` logger (stdout when logging is not configured).

    Args:
        cfg: The run's settings; checked by :meth:`EvalConfig.validate` before any model loads.
        model: An already loaded :class:`~iceb.models.LoadedModel` to evaluate on; ``cfg.model`` is then
            ignored (set to the model's spec).

    Returns:
        The run folder (``results.jsonl``, ``config.json``, the manifest, grids and edit files).

    Raises:
        ValueError: A bad setting in ``cfg`` (the message names the flag), or an edit count the task cannot
            serve (a :class:`~iceb.tasks.TaskError`).
        KeyError: An unknown editor, task or metric name (:class:`~iceb.utils.registry.UnknownNameError`).
        ModelNotFoundError: ``cfg.model`` cannot be loaded here.
        RunLockedError: Another process is running the same run folder.
        ManifestMismatchError: The run folder plans different work than ``cfg``; use ``overwrite``.
    """
    ensure_console()
    return Run(cfg, model=model).run()


class Run:
    """One evaluation run, phase by phase (see the module docstring); :meth:`run` calls them all."""

    def __init__(self, cfg: EvalConfig, model=None) -> None:
        self.cfg = cfg
        self.dist = Dist(cfg.device)
        if self.dist.state is not None and model is None:
            cfg.device = self.dist.device(cfg.device)
        self.loaded = model
        self.progress = cfg.progress and self.dist.main
        if not self.progress:  # progress=False (or a rank other than 0): the libraries' bars go too
            from iceb.utils.progress import silence_progress_bars

            silence_progress_bars()
        self.editor = None
        self.external = None  # an ExternalEdit for --editor file:PATH
        self._judge_metric = None  # the metric whose classifier judges a debiasing editor's trials (Task.judge)
        self._lock = None

    def say(self, msg: str) -> None:
        """A progress line, from rank 0 only."""
        if self.dist.main:
            logger.info(msg)

    # -- 0. resolve -----------------------------------------------------------------------------------
    def resolve(self) -> "Run":
        """Check the configuration and the editor name (before any model loads), then load what the run uses."""
        from editors import get_editor
        from iceb.harness import external
        from iceb.models import default_model_spec, load_model
        from iceb.tasks import get_task

        cfg = self.cfg.validate()
        self.mode = cfg.edit_mode
        is_file = external.is_external(cfg.editor)
        if is_file:  # a missing file or a flag that only an editor takes fails before the model loads
            external.check_options(cfg.editor, hparams=cfg.hparams, editor_args=cfg.editor_args, preset=cfg.preset,
                                   mode=cfg.mode, cold_cost=cfg.cold_cost)
        self.editor_cls = None if is_file else get_editor(cfg.editor)  # unknown names fail before the model loads
        if self.loaded is None:
            if cfg.model is None:
                cfg.model = default_model_spec()
            check_task_file(cfg.task, cfg.model)  # a bad task file fails before the model loads
            self.loaded = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
        else:
            cfg.model = self.loaded.spec
        self.task = get_task(cfg.task, world=self.loaded.world, **({"split": cfg.split} if cfg.split != "test" else {}),
                             **({"score_requests": cfg.score_requests} if cfg.score_requests is not None else {}))
        if is_file:
            self.external = external.load_external(cfg.editor, self.loaded)  # names, shapes, base: before images
            if not self.external.tensors:
                self.say(f"[iceb] note: {cfg.editor} changes no tensor of {self.loaded.spec}; its rows are the "
                         f"unedited model's")
        if cfg.edits:
            self.edits = tuple(cfg.edits)
        else:  # an edit file: the request count it records; an editor: the task's sweep
            self.edits = external.default_edits(self.external) if is_file else tuple(self.task.default_edits)
        if len(set(self.edits)) != len(self.edits):
            raise ValueError(f"--edits lists an edit count twice: {list(self.edits)}")
        if is_file and len(self.edits) != 1:
            raise ValueError(f"--editor {cfg.editor} is one edit, so it has one edit count; pass --edits N (got "
                             f"{list(self.edits)})")
        for n in self.edits:
            self.task.check_n(n)
        cfg.check_rounds(self.edits)
        self.editor_name = self.external.name if is_file else cfg.editor
        self.hp = None if is_file else self.editor_cls.load_hparams(self.loaded.family, cfg.hparams, cfg.editor_args,
                                                                    preset=cfg.preset)
        self.provenance = ({"preset": None, "tuned": None, "tuning_hash": None} if is_file else
                           self.editor_cls.hparams_provenance(self.loaded.family, cfg.hparams, cfg.preset))
        self.say(model_banner(self.loaded))
        return self

    # -- 1. plan --------------------------------------------------------------------------------------
    def plan(self) -> "Run":
        """Task instances, request checks, run id and lock, then the manifest (kept when resuming)."""
        from editors.run import make_editor
        from iceb.generation import ImageCache, image_key
        from iceb.metrics import get_metric

        cfg, loaded = self.cfg, self.loaded
        self.gen = loaded.generation.replace(num_inference_steps=cfg.steps, guidance_scale=cfg.guidance,
                                             batch_size=cfg.batch_size)
        self.metric_names = tuple(cfg.metrics) if cfg.metrics else tuple(self.task.default_metrics)
        self.instances = {n: self.task.build(n).limited(cfg.limit) for n in self.edits}
        if cfg.coco:  # the general-capability captions, the same for every edit count (rendered once pre-edit)
            from iceb.metrics.coco import coco_prompts

            coco = coco_prompts(cfg.coco, subset="coco")
            self.instances = {n: inst.with_prompts(coco, coco=cfg.coco) for n, inst in self.instances.items()}
        # refuse unservable requests (or an edit file made for other requests) before heavy work
        if self.external is not None:
            from iceb.harness.external import check_requests

            for n in self.edits:
                check_requests(self.external, self.instances[n].requests, self.task.name, n)
        else:
            self._with_judge(make_editor(self.editor_cls, self.hp, progress=False)).check_requests(
                self.instances[max(self.edits)].requests)
        if cfg.attacks or cfg.attack_prompts:
            from iceb.harness.attacks import check_attackable

            check_attackable(self.task.name, [r for inst in self.instances.values() for r in inst.requests])
        self._identify()
        self._open_run_folder()
        # pre-edit keys: the union over edit counts, in first-appearance order (a fixed chunking)
        self.prompts_by_key: dict[str, Any] = {}
        for n in self.edits:
            for p in self.instances[n].prompts:
                self.prompts_by_key.setdefault(image_key(loaded.fingerprint, p.prompt, p.seed, self.gen), p)
        self.pre_keys = list(self.prompts_by_key)
        with self.dist.collective():
            if self.dist.main:
                self._write_plan()
        self.manifest = self.dist.broadcast(read_json(self._manifest_path) if self.dist.main else None)
        self.chunk = int(self.manifest["chunk_size"])
        self.gen = self.gen.replace(batch_size=self.chunk)
        self.say(f"[iceb] model {loaded.spec} ({loaded.model_id}, world: {loaded.world}); task {self.task.name}; "
                 f"editor {self.editor_name}; edits {list(self.edits)}; mode {cfg.mode}; {self.dist.world} process(es); "
                 f"run folder {self.run_dir}")
        if self.smoke:
            self.say(f"[iceb] WARNING: {SMOKE_WARNING}")
        metrics = {m: get_metric(m, world=loaded.world, device=str(loaded.pipe.device), classifier=loaded.classifier)
                   for m in self.metric_names}
        if self._judge_metric is not None and self._judge_metric.name in metrics:  # one classifier, loaded once
            metrics[self._judge_metric.name] = self._judge_metric
        self.metrics = list(metrics.values())
        self.images = ImageCache(self.out_root / "cache" / "images")
        self.records = RecordCache(self.out_root / "cache" / "records")
        self.attack_phase = None
        if cfg.attacks or cfg.attack_prompts:
            from iceb.harness.attacks import AttackPhase

            self.attack_phase = AttackPhase(self)
        return self

    def _with_judge(self, editor):
        """The editor, given the task's judge (``Task.judge``: a metric's classifier) when the task names one.

        The judge is the metric's :meth:`judge` method, built once per run (its model loads on first use, in the
        edit); editors without a debiasing mode never call it. A judge metric without a ``judge`` method is an
        error naming both."""
        name = getattr(self.task, "judge", None)
        if not name:
            return editor
        if self._judge_metric is None:
            from iceb.metrics import get_metric

            loaded = self.loaded
            self._judge_metric = get_metric(name, world=loaded.world, device=str(loaded.pipe.device),
                                            classifier=loaded.classifier)
            if not callable(getattr(self._judge_metric, "judge", None)):
                raise ValueError(f"task {self.task.name!r} names the judge {name!r}, a metric without a judge method")
        set_judge = getattr(editor, "set_judge", None)
        if set_judge is not None:
            set_judge(self._judge_metric.judge)
        return editor

    def _identify(self) -> None:
        """The run id: editor, task, and the hash of everything that defines the run."""
        cfg = self.cfg
        self.data_hashes = {str(n): self.instances[n].fingerprint() for n in self.edits}
        self.hp_dict = self.hp.to_dict() if self.hp is not None else None
        self.identity = {**cfg.identity(), "edits": list(self.edits), "metrics": list(self.metric_names),
                         "hparams_resolved": self.hp_dict, "generation": self.gen.key(),
                         "model_fingerprint": self.loaded.fingerprint, "task_fingerprints": self.data_hashes}
        if self.external is not None:  # the edit's tensors, not where its file lies, define the run
            self.identity.update(editor=self.editor_name, external=self.external.identity())
        self.smoke = bool(cfg.limit)
        self.run_hash = config_hash(self.identity)
        self.run_id = (f"{self.editor_name.replace(':', '_').replace('/', '_').replace('.', '_')}-{self.task.name}-"
                       f"{self.run_hash}{'-smoke' if self.smoke else ''}")
        self.out_root = Path(cfg.out)
        self.run_dir = self.out_root / self.run_id
        self._manifest_path = self.run_dir / "manifest.json"
        self.results_path = self.run_dir / "results.jsonl"

    def _open_run_folder(self) -> None:
        """Rank 0 takes the run lock: one process group per run folder."""
        from filelock import FileLock, Timeout

        with self.dist.collective():
            if self.dist.main:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                lock = FileLock(str(self.run_dir / ".lock"))
                try:
                    lock.acquire(timeout=0)
                except Timeout:
                    raise RunLockedError(
                        f"another process is running {self.run_dir} (lock {self.run_dir / '.lock'}); wait for it "
                        f"to finish or stop it, then run the same command again to resume") from None
                self._lock = lock

    def _write_plan(self) -> None:
        """Rank 0: the manifest (or the check that an existing one plans the same work), and config.json."""
        from iceb.utils.io import write_json

        cfg, loaded, run_dir = self.cfg, self.loaded, self.run_dir
        chunk = max(1, self.gen.batch_size)
        if cfg.overwrite:
            files.clear_run(run_dir)
        path = self._manifest_path
        old = read_json(path) if path.is_file() else None
        if old is not None and old.get("chunk_size") != chunk:
            self.say(f"[iceb] resuming with the run's chunk size {old['chunk_size']} (not --batch-size {chunk})")
            chunk = int(old["chunk_size"])
        plan = build_plan(self.run_id, self.instances, self.pre_keys, chunk)
        if old is not None and not same_work(old, plan):
            raise ManifestMismatchError(
                f"{path} plans different work than this command (the task data changed?); "
                f"use --overwrite to start this run again, or another --out")
        if old is None:
            write_json(path, plan)
        files.clean_stale(run_dir, completed_keys(self.results_path))
        edits = self.edits
        write_json(run_dir / "config.json", {
            "run_id": self.run_id, "config": self.identity, "iceb_version": __version__,
            "versions": package_versions(), "git_revision": git_revision(),
            "model": {"spec": loaded.spec, "id": loaded.model_id, "revision": loaded.revision,
                      "family": loaded.family, "world": loaded.world, "fingerprint": loaded.fingerprint},
            "data": {"task": self.task.name, "task_fingerprints": self.data_hashes,
                     "requests": {str(n): len(self.instances[n].requests) for n in edits},
                     "prompts": {str(n): len(self.instances[n].prompts) for n in edits}},
            "hparams": self.hp_dict, "hparams_hash": config_hash({"hp": self.hp_dict}),
            "editor_supports": sorted(getattr(self.editor_cls, "supports", ())),
            "editor_source": self.external.describe() if self.external is not None else {"external": False},
            "generation": dataclasses.asdict(self.gen), "processes": self.dist.world,
            "smoke": self.smoke, "smoke_note": SMOKE_WARNING if self.smoke else None})

    # -- 2. pre-edit ----------------------------------------------------------------------------------
    def render_pre_edit(self) -> dict[str, int]:
        """Render and score the pre-edit images that are not cached yet; chunks split between processes."""
        t0 = time.perf_counter()
        stats = {"images_cached": 0, "images_generated": 0, "records_cached": 0, "records_scored": 0}
        with self.dist.collective():
            self._render_pre_images(stats)
        self.images.misses += stats["images_generated"]
        self.images.hits += stats["images_cached"]
        for m in self.metrics:
            with self.dist.collective():
                self._score_pre_records(m, stats)
        self.records.misses += stats["records_scored"]
        self.records.hits += stats["records_cached"]
        self.say(f"[iceb] pre-edit: {len(self.pre_keys)} images ({stats['images_cached']} cached, "
                 f"{stats['images_generated']} generated here), records {stats['records_scored']} scored here, "
                 f"{stats['records_cached']} cached; {time.perf_counter() - t0:.1f}s")
        return stats

    def _render_pre_images(self, stats: dict[str, int]) -> None:
        keys, images = self.pre_keys, self.images
        # rank 0 decides what is missing: ranks looking at the disk at different moments would split
        # different lists, and a chunk could fall between them
        missing = self.dist.broadcast([c for c in chunks(len(keys), self.chunk)
                                       if any(not images.path(keys[i]).is_file() for i in c)]
                                      if self.dist.main else None)
        stats["images_cached"] = len(keys) - sum(len(c) for c in missing)
        mine = self.dist.split(missing)
        bar = tqdm(total=sum(len(c) for c in mine), desc="pre-edit images", unit="img",
                   disable=not self.progress or not mine, leave=False)
        for c in mine:
            # A whole chunk is rendered even when some of it is cached, so its batch is the same batch
            # whatever was on disk: images depend on (prompt, seed, settings) only, bit for bit.
            ps = [self.prompts_by_key[keys[i]] for i in c]
            rendered = _generate(self.loaded.pipe, [p.prompt for p in ps], [p.seed for p in ps], self.gen,
                                 progress=False)
            for i, im in zip(c, rendered):
                if not images.path(keys[i]).is_file():
                    images.put(keys[i], im)
                    stats["images_generated"] += 1
            _crash_point("pre-chunk")
            bar.update(len(c))
        bar.close()

    def _score_pre_records(self, metric, stats: dict[str, int]) -> None:
        keys, images, records, mk = self.pre_keys, self.images, self.records, metric.record_key()
        todo = self.dist.broadcast([c for c in chunks(len(keys), self.chunk)
                                    if any(records.get(mk, keys[i]) is None for i in c)]
                                   if self.dist.main else None)
        stats["records_cached"] += len(keys) - sum(len(c) for c in todo)
        for c in self.dist.split(todo):
            need = [i for i in c if records.get(mk, keys[i]) is None]
            ims = [images.get(keys[i]) for i in need]
            if any(im is None for im in ims):
                raise RuntimeError(f"pre-edit image cache {images.root} lost images while scoring; run again")
            for i, rec in zip(need, metric.score(ims, [self.prompts_by_key[keys[i]] for i in need])):
                records.put(mk, keys[i], rec)
                stats["records_scored"] += 1
            _crash_point("pre-records")

    # -- 3. per edit count ----------------------------------------------------------------------------
    def completed(self) -> set[str]:
        """Keys (``n<N>``) of the edit counts with a completion marker in results.jsonl: done, skipped."""
        return self.dist.broadcast(completed_keys(self.results_path) if self.dist.main else set())

    def edit(self, n: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """Rank 0 computes the edit of N (or finds it on disk) and saves it; every rank loads the file.

        Returns ``(tensors, sidecar)`` of the saved edit file."""
        inst, stem = self.instances[n], self.run_dir / "edits" / f"n{n}"
        with self.dist.collective():
            if self.dist.main and not files.delta_ok(stem, inst):
                ext = self.external
                result = self._compute_edit(n) if ext is None else ext.result()
                _crash_point(f"edit:{n}")
                hp = self.hp_dict if ext is None else ext.meta.get("hparams")
                files.save_delta(stem, result, inst, self.mode,
                                 {"editor": self.editor_name, "hparams": hp, "model": self.loaded})
                _crash_point(f"saved:{n}")
        return files.load_delta(stem)

    def _compute_edit(self, n: int):
        """The edit of N on the shared editor caches, or (``cold_cost``) twice on caches of its own: first
        cold (empty), then warm (what the first filled); the cold result is the edit, the warm one adds its
        cost (``info["cost_warm"]``) and whether it gave the same tensors bit for bit."""
        import torch

        from editors.run import NonFiniteEditError, make_editor, run_editor

        def edit_with(editor):
            try:
                return run_editor(editor, self.loaded.pipe, self.instances[n].requests, self.mode)
            except NonFiniteEditError as e:
                raise FloatingPointError(
                    f"editor {self.cfg.editor} produced non-finite values at N={n} ({e.detail}); nothing of "
                    f"N={n} was written, and the rows of the edit counts already finished are kept in "
                    f"{self.results_path}") from None

        if not self.cfg.cold_cost:
            if self.editor is None:
                from iceb.utils.paths import resolve_editor_cache

                self.editor = self._with_judge(make_editor(self.editor_cls, self.hp,
                                                           cache_dir=resolve_editor_cache(self.cfg.editor_cache),
                                                           progress=self.progress))
            return edit_with(self.editor)
        cold_dir = self.run_dir / "work" / f"n{n}" / "cold-editor-cache"
        shutil.rmtree(cold_dir, ignore_errors=True)
        try:
            editor = self._with_judge(make_editor(self.editor_cls, self.hp, cache_dir=cold_dir, progress=self.progress))
            result = edit_with(editor)
            if not set(getattr(editor, "cache_phases", {})) & set(result.info["cost"]["cache"]):
                self.say(f"[iceb] N={n}: cold edit {result.timings['edit_seconds']:.1f}s; the editor read no "
                         f"cache, so there is no warm cost to measure")
                return result
            self.say(f"[iceb] N={n}: cold edit {result.timings['edit_seconds']:.1f}s; repeating it warm")
            warm = edit_with(editor)
        finally:
            shutil.rmtree(cold_dir, ignore_errors=True)
        same = result.tensors.keys() == warm.tensors.keys() and all(
            torch.equal(result.tensors[k], warm.tensors[k]) for k in result.tensors)
        result.info["cost_warm"] = {**warm.info["cost"], "same_tensors": same}
        return result

    def _post_keys(self, n: int) -> list[str]:
        from iceb.generation import image_key

        return [image_key(self.loaded.fingerprint, p.prompt, p.seed, self.gen) for p in self.instances[n].prompts]

    def render_post_edit(self, n: int, tensors: dict[str, Any]) -> None:
        """Generate with the edit applied and score; one atomic records file per chunk in ``work/n<N>/``."""
        work = self.run_dir / "work" / f"n{n}"
        todo = self.dist.broadcast([(ci, c) for ci, c in enumerate(chunks(len(self.instances[n].prompts), self.chunk))
                                    if not (work / f"c{ci:05d}.json").is_file()] if self.dist.main else None)
        mine = self.dist.split(todo)
        with self.dist.collective():
            self._render_post_chunks(n, tensors, mine)

    def _render_post_chunks(self, n: int, tensors: dict[str, Any], mine: list) -> None:
        from editors.weights import applied
        from iceb.utils.io import write_json

        prompts, keys = list(self.instances[n].prompts), self._post_keys(n)
        images, records, metrics = self.images, self.records, self.metrics
        work = self.run_dir / "work" / f"n{n}"
        grid = set(self.manifest["edit_counts"][str(n)]["grid"])
        bar = tqdm(total=sum(len(c) for _, c in mine), desc=f"post-edit images N={n}", unit="img",
                   disable=not self.progress or not mine, leave=False)
        with applied(self.loaded.pipe, tensors):
            for ci, c in mine:
                ps = [prompts[i] for i in c]
                post = recs = None
                if not tensors:  # nothing changed: the post-edit images are the cached pre-edit ones, bit for bit
                    post = [images.get(keys[i]) for i in c]
                    recs = {m.name: [records.get(m.record_key(), keys[i]) for i in c] for m in metrics}
                    if any(x is None for x in post) or any(r is None for v in recs.values() for r in v):
                        post = recs = None
                if post is None:
                    post = _generate(self.loaded.pipe, [p.prompt for p in ps], [p.seed for p in ps], self.gen,
                                     progress=False)
                    recs = {m.name: m.score(post, ps) for m in metrics}
                for i, im in zip(c, post):
                    if i in grid:
                        files.save_png(work / "img" / f"{i}.png", im)
                if self.cfg.log_samples:  # before the chunk's records file: that file marks the chunk done
                    for i, im in zip(c, post):
                        files.save_png(samples.image_path(self.run_dir, n, i), im)
                    samples.write_chunk(samples.chunk_path(self.run_dir, n, ci),
                                        self._sample_rows(n, c, recs, images_saved=True))
                write_json(work / f"c{ci:05d}.json", {"chunk": ci, "indices": c, "records": recs})
                _crash_point(f"post-chunk:{n}")
                bar.update(len(c))
        bar.close()

    def attack(self, n: int, tensors: dict[str, Any]) -> None:
        """``--attacks``: rank 0 attacks N's sampled requests on the edited model (:mod:`iceb.harness.attacks`)."""
        if self.attack_phase is None:
            return
        with self.dist.collective():
            if self.dist.main:
                self.attack_phase.run_n(n, tensors)
                _crash_point(f"attacked:{n}")

    def aggregate(self, n: int, sidecar: dict[str, Any], t0: float) -> None:
        """Rank 0: N's rows in one append with a completion marker, then the grid; ``t0`` is when N started."""
        with self.dist.collective():
            if self.dist.main:
                rows = self._rows(n, sidecar)
                if self.cfg.log_samples:
                    self._backfill_samples(n)
                _crash_point(f"append:{n}")
                append_block(self.results_path, rows, {"key": f"n{n}", "block": uuid.uuid4().hex, "n_edits": n,
                                                       "seconds": time.perf_counter() - t0})
                _crash_point(f"appended:{n}")
                self._finish_edit_count(n, rows, sidecar, t0)

    def _sample_rows(self, n: int, indices: list[int], recs: dict[str, list[Any]],
                     images_saved: bool) -> list[dict[str, Any]]:
        """The ``--log-samples`` rows of one chunk: the prompts, their pre-edit and post-edit records."""
        prompts, keys = self.instances[n].prompts, self._post_keys(n)
        rows = []
        for j, i in enumerate(indices):
            pre = {m.name: self.records.get(m.record_key(), keys[i]) for m in self.metrics}
            post = {m.name: recs[m.name][j] for m in self.metrics}
            png = samples.image_path(self.run_dir, n, i)
            image = png.relative_to(self.run_dir).as_posix() if images_saved or png.is_file() else None
            rows.append(samples.sample_row(n, i, prompts[i], pre, post, image))
        return rows

    def _backfill_samples(self, n: int) -> None:
        """Sample files of chunks rendered before ``--log-samples`` was turned on (a resumed run), from
        ``work/n<N>``; their images were not kept (``image`` is None)."""
        work = self.run_dir / "work" / f"n{n}"
        for ci in range(len(chunks(len(self.instances[n].prompts), self.chunk))):
            path = samples.chunk_path(self.run_dir, n, ci)
            if not path.is_file():
                data = read_json(work / f"c{ci:05d}.json")
                samples.write_chunk(path, self._sample_rows(n, data["indices"], data["records"], images_saved=False))

    def _rows(self, n: int, sidecar: dict[str, Any]) -> list[dict[str, Any]]:
        """The result rows of N, from the pre-edit records and the post-edit chunk files."""
        from iceb.leaderboard.schema import ResultRow

        inst, keys = self.instances[n], self._post_keys(n)
        prompts, work = list(inst.prompts), self.run_dir / "work" / f"n{n}"
        post_recs: dict[str, list[Any]] = {m.name: [None] * len(prompts) for m in self.metrics}
        for ci in range(len(chunks(len(prompts), self.chunk))):
            data = read_json(work / f"c{ci:05d}.json")
            for m in self.metrics:
                for i, r in zip(data["indices"], data["records"][m.name]):
                    post_recs[m.name][i] = r
        ext = self.external
        base = {"editor": self.editor_name, "external": ext is not None, "sidecar": ext.sidecar if ext else None,
                "model": self.loaded.spec, "task": self.task.name,
                "world": self.loaded.world, "n_edits": n, "mode": str(self.mode), "smoke": self.smoke,
                "run_id": self.run_id, "run_hash": self.run_hash, "iceb_version": __version__,
                "split": self.cfg.split, **self.provenance,
                "scored_requests": _scored_label(inst)}
        rows = []
        for m in self.metrics:
            pre = [self.records.get(m.record_key(), k) for k in keys]
            if any(r is None for r in pre):
                raise RuntimeError(f"pre-edit records of {m.name} are missing from {self.records.root}; run again")
            for v in m.aggregate(prompts, pre, post_recs[m.name]):
                if v.value != v.value:  # NaN
                    raise FloatingPointError(
                        f"metric {m.name} gave NaN for {v.subset}/{v.metric} at N={n} (the edit made "
                        f"non-finite images?); the rows of finished edit counts are kept")
                # every field of the value that the row schema has
                cols = {f.name for f in dataclasses.fields(ResultRow)}
                fields = {k: x for k, x in dataclasses.asdict(v).items() if k in cols}
                rows.append(ResultRow(**base, **fields).to_dict())
        if self.attack_phase is not None:
            rows += [ResultRow(**base, **r).to_dict() for r in self.attack_phase.rows(n)]
        path = self.run_dir / "edits" / f"n{n}.safetensors"
        rows += [ResultRow(**base, **r).to_dict() for r in cost_rows(sidecar, len(inst.requests), path.stat().st_size)]
        return rows

    def _finish_edit_count(self, n: int, rows: list[dict[str, Any]], sidecar: dict[str, Any], t0: float) -> None:
        """After N's rows are safe: the grid (never worth losing rows over), the work folder, the summary."""
        plan_n, keys = self.manifest["edit_counts"][str(n)], self._post_keys(n)
        work = self.run_dir / "work" / f"n{n}"
        try:
            files.save_grid(self.run_dir / "grids" / f"n{n}.png", [self.images.get(keys[i]) for i in plan_n["grid"]],
                            [work / "img" / f"{i}.png" for i in plan_n["grid"]])
        except OSError as e:
            self.say(f"[iceb] note: could not save the N={n} grid: {e}")
        shutil.rmtree(work, ignore_errors=True)
        summary = ", ".join(f"{r['subset']}/{r['metric']}={r['value']:.4g}" for r in rows[:6])
        secs = sidecar.get("edit_seconds")
        edit = f"edit {secs:.1f}s" if secs is not None else "edit made elsewhere"
        self.say(f"[iceb] N={n}: {len(self.instances[n].prompts)} images, {edit}, "
                 f"total {time.perf_counter() - t0:.1f}s; {summary}")

    # -- 4. finish ------------------------------------------------------------------------------------
    def finish(self) -> Path:
        """Rank 0: ``results.csv`` from every completed block; all ranks meet at the end."""
        if self.dist.main:
            from iceb.leaderboard.results import write_csv

            files.drop_empty_work(self.run_dir)
            write_csv(read_rows(self.results_path), self.run_dir / "results.csv")
            self.say(f"[iceb] results: {self.results_path} and {self.run_dir / 'results.csv'}")
        self.dist.barrier()
        return self.run_dir

    def run(self) -> Path:
        """All phases in order; returns the run folder. The run lock is released however it ends."""
        try:
            self.resolve().plan()
            self.render_pre_edit()
            done = self.completed()
            bar = tqdm(self.edits, desc="edit counts", unit="N", disable=not self.progress)
            for n in bar:
                bar.set_postfix_str(f"N={n}")
                if f"n{n}" in done:
                    self.say(f"[iceb] N={n}: already done, skipped")
                    continue
                t0 = time.perf_counter()
                tensors, sidecar = self.edit(n)
                self.render_post_edit(n, tensors)
                self.attack(n, tensors)
                self.aggregate(n, sidecar, t0)
            bar.close()
            return self.finish()
        finally:
            if self._lock is not None:
                self._lock.release()
