"""``iceb tune``: one recorded protocol that tunes every editor on a task's dev split, so that the leaderboard
compares methods, not first guesses.

The protocol (the same for every editor; only the search space is the editor's own):

1. **Search space**: the editor's ``search_space`` (declared on its Hparams class, beside the values it ranges
   over, :func:`editors.hparams.check_search_space`); every other key keeps the base preset's value.
2. **Trials**: Optuna's TPE sampler with a fixed seed, ``trials`` of them, each an ordinary harness run
   (:func:`iceb.harness.run.evaluate`) on the task's **dev split** (``EvalConfig.split="dev"``: requests and
   holdout concepts disjoint from every test concept, :meth:`iceb.data.split_bundle.SplitBundle.check_dev`) at
   the given edit counts, on one loaded model, all trials sharing one cache folder (the pre-edit images are
   rendered once).
3. **Objective** (maximised, averaged over the edit counts): ``ace``: the paper's ablation score,
   (Generalization Source2Dest + Holdout Delta) / 2; for an erase-only editor (ESD, which takes no
   destination) (Generalization Source Forget + Holdout Delta) / 2; ``rectification``: Generalization Rectify
   Gain + Holdout Delta. ``--objective`` takes another named objective or ``subset/metric+subset/metric``
   (their mean).
4. **Baseline**: the base preset itself, run once on the same dev instances, outside the trial budget: the
   record's ``untuned_value``.
5. **Output**: the best trial's values over the base preset (the base values themselves when no trial beats
   the untuned value: ``best_trial: -1``), written as an hparams YAML with a ``tuning:``
   record (:data:`editors.hparams.TUNING_KEYS`), which the strict loader accepts; result rows of runs with it
   cite the record's hash.

The study lives in ``<out>/<study>/study.db`` (SQLite): a killed study resumes where it stopped. A trial
that was running when the process died is marked failed and re-run with the same values; the sampler is
re-seeded from ``seed`` and the number of finished trials, so a resumed study is deterministic given where
it stopped (not identical to an uninterrupted one: TPE's generator restarts).
"""
from __future__ import annotations

import datetime
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger("iceb.harness")

#: named objectives: the (subset, metric) terms and how they combine ("mean" or "sum")
OBJECTIVES: dict[str, tuple[tuple[tuple[str, str], ...], str]] = {
    "ablation": ((("general", "source2dest"), ("holdout", "holdout_delta")), "mean"),
    "forget": ((("general", "source_forget"), ("holdout", "holdout_delta")), "mean"),
    "rectify": ((("general", "rectify_gain"), ("holdout", "holdout_delta")), "sum"),
}
#: the default objective per task (``ace`` with an erase-only editor: ``forget``)
DEFAULT_OBJECTIVE = {"ace": "ablation", "rectification": "rectify"}


class TuneError(ValueError):
    """A bad tuning setting, raised before any model loads."""


@dataclass
class TuneConfig:
    """What a study is: editor, task, model, search budget and objective.

    Attributes:
        editor: A registered editor with a declared search space.
        task: A task with a dev split (``ace`` or ``rectification`` on the toy world).
        model: A model spec (None: the built-in default).
        trials: The trial budget (the same for every editor).
        edits: The dev edit counts each trial runs; the objective is their mean.
        objective: A name of :data:`OBJECTIVES` or ``subset/metric+subset/metric``; None: the task's default.
        seed: The TPE sampler's seed.
        preset: The base preset (None: the editor's file for the model family).
        editor_args: Values fixed for every trial (not searched; recorded in the record's ``dev_values``).
        out: The folder of study folders.
        device: The torch device.
        progress: Show the harness's progress lines.
        command: The command line, for the record.
    """

    editor: str
    task: str = "ace"
    model: str | None = None
    trials: int = 12
    edits: tuple[int, ...] = (6,)
    objective: str | None = None
    seed: int = 0
    preset: str | None = None
    editor_args: dict[str, Any] = field(default_factory=dict)
    out: str = "runs/tune"
    device: str = "cpu"
    progress: bool = True
    command: str = ""


def objective_terms(name: str) -> tuple[tuple[tuple[str, str], ...], str]:
    """The (subset, metric) terms and their combination of a named or written-out objective.

    Raises:
        TuneError: An unknown name or a malformed term.
    """
    if name in OBJECTIVES:
        return OBJECTIVES[name]
    terms = []
    for part in name.split("+"):
        subset, _, metric = part.strip().partition("/")
        if not subset or not metric:
            from iceb.utils.registry import closest

            hint = closest(name, list(OBJECTIVES))
            raise TuneError(f"--objective {name!r} is neither a named objective ({', '.join(OBJECTIVES)})"
                            + (f"; did you mean {hint!r}?" if hint else "") + " nor 'subset/metric+subset/metric'")
        terms.append((subset, metric))
    return tuple(terms), "mean"


def objective_value(rows: list[dict[str, Any]], n: int, name: str) -> tuple[float, dict[str, float]]:
    """The objective at edit count ``n`` from a run's result rows, and its terms.

    Raises:
        TuneError: A term the rows do not hold (the task's metrics do not compute it).
    """
    terms, how = objective_terms(name)
    values = {}
    for subset, metric in terms:
        hit = [r["value"] for r in rows if r["n_edits"] == n and r["subset"] == subset and r["metric"] == metric]
        if not hit:
            raise TuneError(f"objective {name!r}: the run has no {subset}/{metric} row at N={n}")
        values[f"{subset}/{metric}"] = float(hit[0])
    total = sum(values.values())
    return (total / len(values) if how == "mean" else total), values


def resolve_objective(cfg: TuneConfig, editor_cls) -> str:
    if cfg.objective:
        objective_terms(cfg.objective)
        return cfg.objective
    if cfg.task not in DEFAULT_OBJECTIVE:
        raise TuneError(f"task {cfg.task!r} has no default objective; pass --objective (named: "
                        f"{', '.join(OBJECTIVES)}, or subset/metric+subset/metric)")
    if cfg.task == "ace" and editor_cls.supports == frozenset({"erase"}):
        return "forget"
    return DEFAULT_OBJECTIVE[cfg.task]


def check(cfg: TuneConfig) -> dict[str, Any]:
    """Every setting that needs no model: the editor, its search space, the task's dev split, the budget and
    the objective; what the study needs next.

    Returns:
        ``{"editor_cls", "space", "objective", "world", "family"}``.

    Raises:
        TuneError / HparamsError / TaskError / UnknownNameError: The first bad setting, before any model loads.
    """
    from editors import get_editor
    from editors.hparams import check_preset, check_search_space
    from iceb.models import default_model_spec, model_world
    from iceb.tasks import get_task

    if isinstance(cfg.trials, bool) or not isinstance(cfg.trials, int) or cfg.trials < 1:
        raise TuneError(f"--trials must be a positive number of trials, got {cfg.trials!r}")
    edits = list(cfg.edits)
    if not edits or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in edits) \
            or len(set(edits)) != len(edits):
        raise TuneError(f"--edits takes distinct positive edit counts, got {edits}")
    editor_cls = get_editor(cfg.editor)  # an unknown name: did-you-mean
    space = check_search_space(editor_cls.hparams_class, cfg.editor)
    check_preset(cfg.editor, cfg.preset)
    if cfg.editor_args:
        editor_cls.hparams_class.check_values(cfg.editor_args, "--editor-args", editor=cfg.editor)
        both = sorted(set(cfg.editor_args) & set(space))
        if both:
            raise TuneError(f"--editor-args fixes {both}, which the search space of {cfg.editor} searches")
    spec = cfg.model or default_model_spec()
    world = model_world(spec) or "imagenet"
    task = get_task(cfg.task, world=world, split="dev")  # no dev split: a TaskError naming the task
    for n in edits:
        task.check_n(n)
    return {"editor_cls": editor_cls, "space": space, "objective": resolve_objective(cfg, editor_cls),
            "world": world, "spec": spec}


def _suggest(trial, space) -> dict[str, Any]:
    out = {}
    for key, dim in space.items():
        if dim.kind == "float":
            out[key] = trial.suggest_float(key, dim.low, dim.high, log=dim.log)
        elif dim.kind == "int":
            out[key] = trial.suggest_int(key, int(dim.low), int(dim.high), log=dim.log)
        else:
            out[key] = trial.suggest_categorical(key, list(dim.choices))
    return out


def study_name(cfg: TuneConfig, objective: str, loaded, space, editor_cls) -> str:
    """``<editor>-<task>-<model>-<hash>``: the hash of everything that defines the study, the base preset's
    *content* included (a study resumed after its base file changed is another study)."""
    from iceb.utils.hashing import stable_hash

    base = editor_cls.hparams_path(loaded.family, cfg.preset)
    h = stable_hash("tune", cfg.editor, cfg.task, loaded.spec, list(cfg.edits), objective, cfg.seed,
                    base.read_text() if base is not None else None, sorted(cfg.editor_args.items()),
                    {k: repr(v) for k, v in space.items()}, length=12)
    spec = loaded.spec
    return f"{cfg.editor}-{cfg.task}-{spec.replace('/', '_')}-{h}"


@dataclass
class TuneResult:
    """Where a study lives, its preset file, the chosen values and their dev objective beside the untuned one."""

    folder: Path
    preset_path: Path
    best_value: float
    untuned_value: float
    best_params: dict[str, Any]
    trials: int


def tune(cfg: TuneConfig, model=None) -> TuneResult:
    """Run (or resume) a study; returns where its preset was written.

    Args:
        cfg: The study's settings (checked first, before any model loads).
        model: An already loaded :class:`~iceb.models.LoadedModel` (tests; several studies on one pipeline).

    Returns:
        The :class:`TuneResult` (``preset_path``: ``<study>/preset.yaml``).
    """
    from iceb.models import load_model

    c = check(cfg)
    editor_cls, space, objective = c["editor_cls"], c["space"], c["objective"]
    loaded = model if model is not None else load_model(c["spec"], device=cfg.device)
    name = study_name(cfg, objective, loaded, space, editor_cls)
    folder = Path(cfg.out) / name
    folder.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock, Timeout

    lock = FileLock(str(folder / ".study.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RuntimeError(f"another process is running the study {folder}; wait for it (or kill it and run again "
                           f"to resume)") from None
    try:
        return _tune(cfg, loaded, name, folder, editor_cls, space, objective)
    finally:
        lock.release()


def _tune(cfg: TuneConfig, loaded, name: str, folder: Path, editor_cls, space, objective: str) -> TuneResult:
    """The study itself, under the study's lock (so a RUNNING trial found on resume is a dead process's)."""
    import optuna
    from optuna.trial import TrialState

    from iceb.harness.config import EvalConfig
    from iceb.harness.run import evaluate
    from iceb.leaderboard.results import read_rows
    from iceb.utils.io import write_json

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(f"sqlite:///{(folder / 'study.db').resolve()}")

    def run_values(editor_args: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        ecfg = EvalConfig(editor=cfg.editor, task=cfg.task, model=loaded.spec, edits=tuple(cfg.edits), split="dev",
                          editor_args={**cfg.editor_args, **editor_args}, preset=cfg.preset,
                          out=str(folder / "trials"), device=cfg.device, progress=False, log_samples=False)
        run_dir = evaluate(ecfg, model=loaded)
        rows = read_rows(run_dir / "results.jsonl")
        per_n = {n: objective_value(rows, n, objective) for n in cfg.edits}
        value = sum(v for v, _ in per_n.values()) / len(per_n)
        return value, {"run": run_dir.name, "per_edits": {str(n): {"value": v, **terms}
                                                          for n, (v, terms) in per_n.items()}}

    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
    # a trial left RUNNING is one a dead process was in (the study's lock keeps a live one out): fail it and run
    # its values again first
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        study.enqueue_trial(t.params)
        logger.info(f"[iceb] tune: trial {t.number} was interrupted; its values run again")
    wall_before, mark = float(study.user_attrs.get("wall_seconds", 0.0)), time.perf_counter()

    def save_wall() -> float:
        """The study's wall time over every sitting, saved after each trial (a killed sitting keeps its share)."""
        nonlocal wall_before, mark
        now = time.perf_counter()
        wall_before += now - mark
        mark = now
        study.set_user_attr("wall_seconds", wall_before)
        return wall_before

    if "untuned_value" not in study.user_attrs:
        logger.info(f"[iceb] tune {name}: the base preset on the dev split (the untuned value)")
        value, info = run_values({})
        study.set_user_attr("untuned_value", value)
        study.set_user_attr("untuned_info", info)
        save_wall()
    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    study.sampler = optuna.samplers.TPESampler(seed=cfg.seed + done, n_startup_trials=min(5, cfg.trials))

    def run_trial(trial) -> float:
        params = _suggest(trial, space)
        t0 = time.perf_counter()
        value, info = run_values(params)
        trial.set_user_attr("info", info)
        trial.set_user_attr("seconds", time.perf_counter() - t0)
        if not math.isfinite(value):
            raise FloatingPointError(f"trial {trial.number}: objective {value!r}")
        logger.info(f"[iceb] tune {cfg.editor} trial {trial.number}: {objective} = {value:+.4f} "
                    f"({time.perf_counter() - t0:.0f} s) {params}")
        return value

    remaining = cfg.trials - done
    if remaining > 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.trials, initial=done, desc=f"tune {cfg.editor}", unit="trial", disable=not cfg.progress)
        study.optimize(run_trial, n_trials=remaining, catch=(ValueError, RuntimeError, FloatingPointError),
                       callbacks=[lambda s, t: bar.update(1), lambda s, t: save_wall()])
        bar.close()
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise RuntimeError(f"tune {name}: no trial completed (see {folder / 'study.db'}); every trial failed")
    best = max(complete, key=lambda t: (t.value, -t.number))
    wall = save_wall()
    record = _record(cfg, loaded, name, objective, space, best, study, len(complete), wall)
    # no trial beat the base preset: the base values are the chosen ones (best_trial -1 says so)
    keep_base = float(study.user_attrs["untuned_value"]) >= float(best.value)
    if keep_base:
        record.update(best_trial=-1, best_value=record["untuned_value"],
                      dev_values={**record["dev_values"], "best": record["untuned_value"],
                                  "per_edits": study.user_attrs["untuned_info"]["per_edits"],
                                  "best_trial_value": record["best_value"]})
    chosen = {} if keep_base else dict(best.params)
    path = write_preset(editor_cls, loaded.family, cfg.preset, {**cfg.editor_args, **chosen}, record,
                        folder / "preset.yaml")
    write_json(folder / "summary.json", {"record": record, "trials": [
        {"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
         "seconds": t.user_attrs.get("seconds"), "info": t.user_attrs.get("info")}
        for t in study.get_trials(deepcopy=False)]})
    return TuneResult(folder, path, float(record["best_value"]), float(study.user_attrs["untuned_value"]), chosen,
                      len(complete))


def _record(cfg, loaded, name, objective, space, best, study, n_complete, wall) -> dict[str, Any]:
    from iceb import __version__

    return {"study": name, "sampler": "optuna.TPESampler", "seed": cfg.seed, "trials": n_complete,
            "objective": objective, "task": cfg.task, "model": loaded.spec, "split": "dev",
            "edits": list(cfg.edits), "search_space": {k: d.describe() for k, d in space.items()},
            "dev_values": {"best": round(float(best.value), 6),
                           "per_edits": best.user_attrs.get("info", {}).get("per_edits", {}),
                           "fixed": dict(cfg.editor_args)},
            "untuned_value": round(float(study.user_attrs["untuned_value"]), 6),
            "best_value": round(float(best.value), 6), "best_trial": best.number,
            "wall_seconds": round(wall, 1), "command": cfg.command or f"iceb tune --editor {cfg.editor} "
            f"--task {cfg.task} --model {loaded.spec} --trials {cfg.trials} --edits {','.join(map(str, cfg.edits))}",
            "iceb_version": __version__, "date": datetime.date.today().isoformat()}


def write_preset(editor_cls, family: str, preset: str | None, values: dict[str, Any], record: dict[str, Any],
                 path: Path) -> Path:
    """The base preset's values with ``values`` over them and the ``tuning:`` record, as a YAML the strict loader
    reads back (checked here: a preset that does not load is never written).

    Returns:
        ``path``.
    """
    import yaml

    from editors.hparams import load_yaml, split_tuning
    from iceb.utils.io import write_text

    base_path = editor_cls.hparams_path(family, preset)
    data = load_yaml(base_path) if base_path is not None else {}
    split_tuning(data, str(base_path))
    data.pop("editor", None)
    hp = editor_cls.hparams_class.from_dict({**data, **values}, source="tuned values")  # refuses a bad value
    out = {"editor": editor_cls.name, **hp.to_dict(), "tuning": record}
    text = (f"# {editor_cls.name} tuned by `iceb tune` on the {record['task']} dev split of {record['model']}: "
            f"{record['trials']} trials, objective {record['objective']}\n"
            f"# (untuned {record['untuned_value']:+.4f} -> tuned {record['best_value']:+.4f} on the dev split); "
            f"base preset: {base_path.name if base_path else 'the defaults'}\n"
            + yaml.safe_dump(out, sort_keys=False, default_flow_style=None, width=100))
    write_text(path, text)
    editor_cls.load_hparams(family, path)  # reads back through the strict loader
    return path
