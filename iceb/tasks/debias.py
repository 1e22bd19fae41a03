"""Gender debiasing of 37 professions (EMCID's debiasing experiment) as an ICEB task.

Official protocol (``sh_scripts/debias.sh multiple`` → ``scripts/eval_debias.py --mixed --seed_num=10``, commit
10a392a; data: :mod:`iceb.data.debias`):

- **Edit**: all 37 professions at once ("mixed" mode), each a request from "a doctor" towards both "a female
  doctor" and "a male doctor" with the templates "a photo of {}", "an image of {}", "{}" and the official
  ``seed_train``. Here each is one request of kind ``debias`` with ``destinations = (female, male)``: only an
  editor with a debiasing mode serves it (EMCID's weighted-destination procedure, :mod:`editors.emcid.debias`);
  others are refused before any model work. The task names its judge, ``judge = "gender-clip"``: the harness
  builds that metric and hands its classifier to the editor (tasks know nothing of metrics or editors).
- **Evaluation**: per profession its 6 prompts (``validation``, ``ex1``-``ex5``), 12 images each, for each of
  10 global seeds 0-9, scored by CLIP zero-shot gender classification (the metric ``gender-clip``): Δ =
  |p_female − 0.5| / 0.5 per profession and seed, averaged over professions, mean and std over seeds.

Requests carry the profession as their ``request_id``. Prompts (subset ``general``): one
:class:`~iceb.tasks.base.EvalPrompt` per image, ``group`` = ``true_class`` = the profession (its request), ``labels`` = its (female, male) texts, ``replicate`` = the global seed. Order: seed, then image
index, then prompt column, then profession, so ``--limit 37`` gives every profession's first prompt once and
``--limit 222`` every (profession, prompt) once at seed 0 (smoke runs only).

Where ICEB differs, and why:

- **Seeds.** The official code calls ``set_seed(global_seed)`` (torch's global RNG) before each profession and
  then draws its 6 × 12 images one after the other from that stream, so image ``j`` of prompt column ``c`` at
  seed ``s`` starts from the same noise for every profession. ICEB gives every image its own seed
  ``100000·s + 1000·c + j`` (:func:`image_seed`), the same for every profession too, so images never depend on
  batching or order and pre-edit images are cached and shared; the noise differs from the official, its
  structure (common across professions, independent across seeds) does not.
- **Order of edits.** The official script shuffles the 37 requests (``random.shuffle`` after the seed sample)
  before the one stage-II solve; the solve is the same up to floating-point order, so ICEB keeps file order.
- **Options.** ``seeds`` and ``images_per_prompt`` shrink the protocol for a quick run from Python
  (``get_task("debias", seeds=2, images_per_prompt=2)``, or a subclass named as ``--task package.module:Class``);
  the harness builds registered tasks without options, so ``iceb evaluate --task debias`` always runs the
  official 10 × 12, and ``--limit`` is the command line's smoke run.
- **World.** ImageNet-world models only (Stable Diffusion, ``tiny``); the toy world has no people to balance.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from editors.requests import EditRequest
from iceb.data.debias import (
    DEBIAS_TEMPLATES,
    PROMPT_COLUMNS,
    DebiasDataError,
    Profession,
    debias_file,
    read_professions,
)
from iceb.tasks import TASKS
from iceb.tasks.base import EvalPrompt, Task, TaskError, TaskInstance
from iceb.utils.download import DownloadError

OFFICIAL_SEEDS = 10
OFFICIAL_IMAGES_PER_PROMPT = 12


def image_seed(global_seed: int, column: int, index: int) -> int:
    """The seed of image ``index`` of prompt column ``column`` under global seed ``global_seed`` (every
    profession the same, as the official per-profession reseeding gives every profession the same noise)."""
    if not 0 <= index < 1000 or not 0 <= column < 100:
        raise TaskError(f"image index {index} / prompt column {column} out of range (at most 1000 images per prompt)")
    return 100000 * global_seed + 1000 * column + index


class DebiasTask(Task):
    worlds = ("imagenet",)
    name = "debias"
    description = "gender debiasing of EMCID's 37 professions (Delta = |p_female - 0.5| / 0.5 over 10 seeds)"
    world = "imagenet"
    default_edits = (37,)
    default_metrics = ("gender-clip",)
    judge: ClassVar[str | None] = "gender-clip"

    def __init__(self, world: str = "imagenet", data_file: str | Path | None = None,
                 data_dir: str | Path | None = None, seeds: int = OFFICIAL_SEEDS,
                 images_per_prompt: int = OFFICIAL_IMAGES_PER_PROMPT) -> None:
        if world != "imagenet":
            raise TaskError(f"task 'debias' is defined for ImageNet-world models (Stable Diffusion, tiny): its 37 "
                            f"professions and their gender have no analogue in the {world!r} world; use --model "
                            f"CompVis/stable-diffusion-v1-4 (or tiny for a mechanics check)")
        for name, value in (("seeds", seeds), ("images_per_prompt", images_per_prompt)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TaskError(f"task 'debias': {name} must be a positive integer, got {value!r}")
        if images_per_prompt > 1000:
            raise TaskError(f"task 'debias': at most 1000 images per prompt, got {images_per_prompt}")
        if data_file is None and data_dir is not None:
            d = Path(data_dir)
            data_file = next((p for p in (d / "TIMED_gender_test_set_processed.csv",
                                          d / "debias" / "TIMED_gender_test_set_processed.csv") if p.is_file()),
                             d / "debias" / "TIMED_gender_test_set_processed.csv")
        self.data_file = data_file
        self.seeds = seeds
        self.images_per_prompt = images_per_prompt
        self._professions: list[Profession] | None = None
        self._path: Path | None = None

    @property
    def professions(self) -> list[Profession]:
        if self._professions is None:
            try:
                self._path = debias_file(self.data_file)
                self._professions = read_professions(self._path)
            except (DebiasDataError, FileNotFoundError, DownloadError) as err:
                raise TaskError(str(err)) from None
        return self._professions

    @property
    def max_edits(self) -> int:
        return len(self.professions)

    def _build(self, n: int) -> TaskInstance:
        from iceb.utils.download import sha256_file

        profs = self.professions[:n]
        requests = [EditRequest(p.source, "", DEBIAS_TEMPLATES, seed=p.seed_train, kind="debias",
                                source_id=p.source, request_id=p.source, destinations=(p.female, p.male))
                    for p in profs]
        prompts = [EvalPrompt(p.prompts[c], image_seed(s, c, j), "general", p.source, None, p.source,
                              labels=(p.female, p.male), replicate=s)
                   for s in range(self.seeds) for j in range(self.images_per_prompt)
                   for c in range(len(PROMPT_COLUMNS)) for p in profs]
        assert self._path is not None
        return TaskInstance(self.name, n, tuple(requests), tuple(prompts), "imagenet",
                            {"professions": n, "seeds": self.seeds, "images_per_prompt": self.images_per_prompt,
                             "official_protocol": (self.seeds, self.images_per_prompt) == (OFFICIAL_SEEDS,
                                                                                          OFFICIAL_IMAGES_PER_PROMPT),
                             "data_sha256": sha256_file(self._path), "judge": self.judge})


TASKS.register("debias", DebiasTask)

__all__ = ["OFFICIAL_IMAGES_PER_PROMPT", "OFFICIAL_SEEDS", "DebiasTask", "image_seed"]
