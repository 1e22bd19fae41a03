"""What defines a run (:class:`EvalConfig`), and its checks: every bad setting fails here, before a model loads."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

SMOKE_WARNING = "--limit is for smoke tests only: its results are not comparable and are marked smoke=true"


@dataclass
class EvalConfig:
    """Everything that defines a run (its hash is the run id), plus where and how to run it.

    :meth:`validate` checks the settings that need no model or task; :class:`~iceb.harness.run.Run` calls it
    first, so a typo costs a second, not a model load.

    Attributes:
        editor: The editor's name (``iceb list editors``) or ``package.module:Class``.
        task: The task's name (``iceb list tasks``), ``package.module:Class`` or a task file.
        model: A model spec for :func:`iceb.models.load_model`; None: the toy world when present, else tiny.
        edits: The edit counts to evaluate; None: the task's default sweep.
        split: ``"test"`` (the benchmark's requests) or ``"dev"`` (the task's requests reserved for tuning,
            disjoint from the test split: ``iceb tune`` runs its trials there). Part of the run id when "dev".
        metrics: The metric names; None: the task's defaults for the model's world.
        editor_args: Hyperparameter overrides (``--editor-args``), layered last.
        hparams: An hparams YAML layered over the editor's shipped file for the model family.
        preset: A named shipped hparams file of the editor, instead of the family's.
        mode: ``"batch"`` (one edit call) or ``"sequential"`` (``rounds`` calls); see :attr:`edit_mode`.
        rounds: The number of rounds of a sequential edit.
        limit: At most this many prompts per subset (a smoke run: its rows are not comparable).
        coco: Append the first ``coco`` COCO-30k captions (EMCID's ``coco_30k.csv``, their evaluation seeds) to
            every edit count's prompts as subset ``coco``: the general-capability images that ``clip-score``,
            ``fid`` and ``lpips`` score beside any task (FID is then computed on them alone). 0: none.
        steps: Sampling steps, instead of the model's protocol.
        guidance: Classifier-free guidance scale, instead of the model's protocol.
        batch_size: Images per generation batch (not part of the run id).
        out: The folder under which run folders are made.
        device: ``"auto"`` or a torch device; in a process group, ``"auto"`` and ``"cuda"`` take each rank's GPU.
        dtype: The model's dtype (see :func:`iceb.models.load_model`).
        progress: Show progress bars; False hides the libraries' bars too (diffusers, transformers,
            huggingface_hub: :func:`iceb.utils.progress.silence_progress_bars`), for the rest of the process.
        overwrite: Clear an existing run folder instead of resuming it.
        log_samples: Write one row per scored post-edit image to ``<run>/samples/n<N>/`` and keep every
            post-edit PNG (on by default; ``--no-log-samples`` turns it off; read them with :func:`iceb.read_samples`).
            Not part of the run id.
        cold_cost: Measure each edit with the editor's caches empty (its cold cost), then repeat it warm; both
            go to the cost rows. Off: one edit on the shared caches, its rows labelled with the state it ran
            in. Not part of the run id.
        attacks: Attack names (``iceb list attacks``) run on every edit count after its post-edit images
            (:mod:`iceb.harness.attacks`): their ASR rows join the edit count's rows (subsets ``attack:<name>``).
        attack_prompts: An earlier run's ``attacks/n<N>/<attack>.jsonl``: its prompts are judged on this run's edit
            as they are (a transfer attack, rows ``attack:transfer:<attack>``), without optimising.
        attack_args: Budget overrides per attack, ``{"unlearndiff": {"iterations": 20}}`` (``--attack-args
            unlearndiff.iterations=20``); the resolved budget of every attack is recorded in its rows.
        attack_requests: At most this many requests attacked per edit count (a fixed sample beyond it, recorded).
        score_requests: Score at most this many requests per edit count: all N are edited, a fixed sample of this
            many is scored where N is larger (the holdout always whole); the rows' ``n`` and
            ``scored_requests`` say so. None: every request. Split tasks only; part of the run id when set.
        attack_vocab: The token ids an attack may place: ``"seen"`` (those the text encoder was trained on; the
            toy encoder leaves every other row random) or ``"full"``.
        editor_cache: Where the editor keeps its statistics and stage-I results: True (default) the shared
            root of every entry point (``$ICEB_CACHE/editors``, see :func:`iceb.utils.paths.editor_cache_dir`),
            so ``iceb edit``, ``iceb evaluate`` and the Python API compute them once per model; a folder; or
            False for none (``--no-editor-cache``). Not part of the run id.
    """

    editor: str = "noop"
    task: str = "smoke"
    model: str | None = None  # None: the built-in default (toy world when present, else tiny)
    edits: tuple[int, ...] | None = None  # None: the task's default sweep
    split: str = "test"  # "dev": the task's tuning split
    metrics: tuple[str, ...] | None = None  # None: the task's defaults for the model's world
    editor_args: dict[str, Any] = field(default_factory=dict)
    hparams: str | None = None  # a YAML file; default: the editor's file for the model family
    preset: str | None = None
    mode: str = "batch"  # "batch" or "sequential"; see edit_mode
    rounds: int = 1
    limit: int | None = None
    coco: int = 0  # COCO-30k captions appended as subset "coco" (general capability); 0: none
    steps: int | None = None  # generation overrides
    guidance: float | None = None
    batch_size: int | None = None
    # not part of the run id:
    out: str = "runs"
    device: str = "auto"
    dtype: str | None = None
    progress: bool = True
    overwrite: bool = False
    log_samples: bool = True  # on: it costs well under 10% of a run (see docs/python_api.md)
    cold_cost: bool = False  # edit once with empty editor caches, then again warm (both in the cost rows)
    editor_cache: str | bool = True  # True: the shared root (iceb.utils.paths.editor_cache_dir); False: none
    # attacks (part of the run id when set; runs without them keep their ids):
    attacks: tuple[str, ...] = ()
    attack_prompts: str | None = None
    attack_args: dict[str, dict[str, Any]] = field(default_factory=dict)
    attack_requests: int = 16
    score_requests: int | None = None  # None: score every request
    attack_vocab: str = "seen"

    def identity(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("out", "device", "progress", "batch_size", "overwrite", "log_samples", "cold_cost",
                  "editor_cache"):
            d.pop(k)
        if d["split"] == "test":  # test runs keep the run ids they had before dev splits existed
            d.pop("split")
        if not d["coco"]:  # runs without COCO captions keep the run ids they had before the option existed
            d.pop("coco")
        if d["score_requests"] is None:  # likewise runs that score every request
            d.pop("score_requests")
        if not self.attacks and not self.attack_prompts:  # likewise runs without attacks
            for k in ("attacks", "attack_prompts", "attack_args", "attack_requests", "attack_vocab"):
                d.pop(k)
        else:
            d["attacks"] = list(self.attacks)
            if self.attack_prompts:  # the prompts, not where their file lies, define the run
                from iceb.utils.hashing import digest_files

                d["attack_prompts"] = digest_files(self.attack_prompts)
        return d

    @property
    def edit_mode(self):
        """The :class:`editors.run.EditMode` of ``mode`` and ``rounds``; ``str()`` of it is the rows' mode."""
        from editors.run import EditMode

        return EditMode(self.mode, self.rounds)  # type: ignore[arg-type]

    def validate(self) -> "EvalConfig":
        """Raise a ValueError naming the flag of the first bad setting; returns ``self``.

        Checked: ``--mode``, ``--rounds`` (≥ 1, only with ``--mode sequential``, at most the smallest edit
        count), ``--limit`` ≥ 1, ``--steps`` ≥ 1, ``--guidance`` finite and > 0, ``--batch-size`` ≥ 1,
        ``--edits`` positive and distinct, ``--device`` present on this machine (``cuda`` without CUDA fails
        here, not after the model has loaded). Whether an edit count fits the task is the task's check.

        Returns:
            ``self``, so that ``cfg = EvalConfig(...).validate()`` reads naturally.

        Raises:
            ValueError: The first bad setting; the message names its CLI flag.
        """
        if self.split not in ("test", "dev"):
            raise ValueError(f"--split must be 'test' or 'dev', got {self.split!r}")
        if self.mode not in ("batch", "sequential"):
            raise ValueError(f"--mode must be 'batch' or 'sequential', got {self.mode!r}")
        if not _is_int(self.rounds) or self.rounds < 1:
            raise ValueError(f"--rounds must be a positive integer, got {self.rounds!r}")
        if self.mode == "batch" and self.rounds != 1:
            raise ValueError("--rounds needs --mode sequential (batch mode edits all requests at once)")
        _positive_int(self.limit, "--limit", "a positive number of prompts per subset")
        if not _is_int(self.coco) or not 0 <= self.coco <= 30000:
            raise ValueError(f"--coco must be a number of COCO-30k captions from 0 to 30000, got {self.coco!r}")
        _positive_int(self.steps, "--steps", "a positive number of sampling steps")
        _positive_int(self.batch_size, "--batch-size", "a positive number of images per batch")
        if self.guidance is not None:
            g = self.guidance
            if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or g <= 0:
                raise ValueError(f"--guidance must be a finite number > 0, got {g!r}")
        if self.edits is not None:
            edits = list(self.edits)
            if not edits:
                raise ValueError("--edits is empty")
            bad = [n for n in edits if not _is_int(n) or n < 1]
            if bad:
                raise ValueError(f"--edits takes positive edit counts, got {bad}")
            if len(set(edits)) != len(edits):
                raise ValueError(f"--edits lists an edit count twice: {edits}")
            self.check_rounds(edits)
        self._validate_attacks()
        self.edit_mode  # noqa: B018 - the value object agrees
        if self.device not in (None, "auto"):
            from iceb.models import check_device

            try:
                check_device(self.device)
            except ValueError as err:
                raise ValueError(f"--device: {err}") from None
        return self

    def _validate_attacks(self) -> None:
        """``--attacks`` names registered attacks, ``--attack-prompts`` is a readable prompts file,
        ``--attack-requests`` >= 1 and ``--attack-vocab`` is known."""
        from iceb.attacks import ATTACKS
        from iceb.attacks.vocab import VOCABS

        if isinstance(self.attacks, str):
            self.attacks = tuple(a.strip() for a in self.attacks.split(",") if a.strip())
        self.attacks = tuple(self.attacks)
        if len(set(self.attacks)) != len(self.attacks):
            raise ValueError(f"--attacks lists an attack twice: {list(self.attacks)}")
        for name in self.attacks:
            ATTACKS.get(name)  # an unknown name: UnknownNameError with the closest match
        for name, overrides in self.attack_args.items():
            if name not in self.attacks:
                raise ValueError(f"--attack-args sets {name!r}, which is not among --attacks {list(self.attacks)}")
            ATTACKS.get(name).check_overrides(overrides)
        _positive_int(self.attack_requests, "--attack-requests", "a positive number of requests")
        if self.score_requests is not None:
            _positive_int(self.score_requests, "--score-requests", "a positive number of requests")
        if self.attack_vocab not in VOCABS:
            raise ValueError(f"--attack-vocab must be one of {', '.join(VOCABS)}, got {self.attack_vocab!r}")
        if self.attack_prompts:
            from iceb.harness.attacks import read_attack_prompts

            read_attack_prompts(self.attack_prompts)

    def check_rounds(self, edits) -> None:
        """``--rounds`` may not exceed an edit count (each round edits at least one request)."""
        if self.mode == "sequential":
            bad = [n for n in edits if self.rounds > n]
            if bad:
                raise ValueError(f"--rounds {self.rounds} exceeds the edit count(s) {bad}")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _positive_int(value: Any, flag: str, what: str) -> None:
    if value is not None and (not _is_int(value) or value < 1):
        raise ValueError(f"{flag} must be {what}, got {value!r}")
