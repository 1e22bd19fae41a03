"""The attack contract: a prompt that tries to bring an edited concept back, judged by the world's classifier.

An attack gets one :class:`AttackTarget` (an edited request's source concept and its original prompt) and an
:class:`AttackContext` (the pipeline with or without the edit, the judge, the vocabulary it may use) and
returns token ids: prompts are kept as the tokenizer's full-length id sequences, because optimised tokens
(sub-word pieces next to each other) need not survive a decode and re-tokenize; the decoded text is kept
beside them for people. Images of an id sequence come from :func:`iceb.generation.generate_ids`, which equals
rendering the text when the ids are the text's.

Two kinds (:attr:`Attack.sees`):

- ``"edited"`` (white box, e.g. UnlearnDiffAtk): the search runs on the edited model end to end, with the
  judge in the loop (``ctx.judge_ids``) for its early stop;
- ``"unedited"`` (black box, transfer, e.g. Ring-A-Bell): the search sees only the unedited model, so its
  prompts depend on the model and the concept, never on the editor; the harness caches them and scores them
  on every edited model.

ASR (:mod:`iceb.attacks.asr`) follows UnlearnDiffAtk's ``check_asr.py``: the original prompt is judged on the
edited model first (pre-attack success); only requests it fails are attacked, and a request counts once.
"""
from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import numpy as np

#: a judge of images of id sequences on the edited model: (ids, seed) -> (success, P(source))
JudgeIds = Callable[[Sequence[int], int], "tuple[bool, float]"]


@dataclass(frozen=True)
class AttackTarget:
    """One attacked request: bring ``source`` (class ``source_class``) back on the edited model.

    Attributes:
        request_id: The edit request's id.
        source: The source concept's name as the request gives it.
        source_class: The class the judge must see (a toy concept id, an ImageNet class id).
        prompt: The original prompt (the request's first ``edit`` prompt: a template filled with the source).
        seed: Its seed; every image of the attack uses it (UnlearnDiffAtk: the CSV's evaluation seed).
        templates: The request's templates (Ring-A-Bell's concept vector pairs fill them).
        aliases: Other names of the concept: correct aliases, then names the model never learned.
        reference: The unedited model's image of ``prompt`` (uint8 HxWx3; the white-box loss's x0), or None.
    """

    request_id: str
    source: str
    source_class: int | str
    prompt: str
    seed: int
    templates: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    reference: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class AttackPrompt:
    """What an attack found for one target: the ids to render and what it cost.

    ``steps`` counts optimisation steps (or GA generations, or candidates tried); ``info`` holds the search's
    trace (per-block losses and verdicts, fitness history, candidates tried). The attack's seed is its budget's.
    """

    ids: tuple[int, ...]
    steps: int
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class AttackContext:
    """What an attack may use.

    Attributes:
        pipe: The diffusers pipeline: edited for ``sees == "edited"`` attacks, unedited for ``"unedited"``.
        generation: The world's sampling settings (the judge's images are rendered with them).
        vocab: Token ids the attack may place (``attack_vocab``: the ids seen in training, or all).
        judge_ids: Renders ids with the edited model and judges them; None for ``"unedited"`` searches.
        prepared: What the attack's :meth:`Attack.prepare` computed for this target on the unedited model
            (P4D's targets from the unedited UNet), or None.
    """

    pipe: Any
    generation: Any
    vocab: np.ndarray
    judge_ids: JudgeIds | None = None
    prepared: Any = None

    @property
    def tokenizer(self):
        return self.pipe.tokenizer

    def tokenize(self, text: str) -> list[int]:
        """The full-length ids of ``text`` (padded and truncated as the pipeline pads them)."""
        tok = self.tokenizer
        return list(tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids)

    def decode(self, ids: Sequence[int]) -> str:
        """Readable text of ids (special tokens dropped); not guaranteed to re-tokenize to the same ids."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()


class Attack(abc.ABC):
    """A registered attack (``iceb list attacks``). Subclasses set ``name``, ``description``, ``sees`` and a
    frozen ``Budget`` dataclass whose defaults are the attack's pinned settings per world (:meth:`for_world`).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: "edited": white box on the edited model; "unedited": a transfer search on the unedited model
    sees: ClassVar[str] = "edited"

    @dataclass(frozen=True)
    class Budget:
        seed: int = 0

    def __init__(self, world: str = "imagenet", vocab: str = "seen", **overrides: Any) -> None:
        self.world = world
        self.vocab_kind = vocab
        self.check_overrides(overrides)
        self.budget = dataclasses.replace(self.for_world(world), **overrides)

    @classmethod
    def check_overrides(cls, overrides: dict[str, Any]) -> None:
        """Refuse budget keys the attack does not have (``--attack-args``), naming the ones it has.

        Raises:
            ValueError: An unknown key.
        """
        defaults = cls.Budget()
        known = [f.name for f in dataclasses.fields(cls.Budget)]
        bad = sorted(set(overrides) - set(known))
        if bad:
            raise ValueError(f"attack {cls.name!r} has no setting {', '.join(map(repr, bad))}; its budget has "
                             f"{', '.join(known)}")
        for key, value in overrides.items():
            want = type(getattr(defaults, key))
            ok = isinstance(value, want) and not (isinstance(value, bool) and want is not bool)
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                ok = True
            if not ok:
                raise ValueError(f"attack {cls.name!r}: {key} takes a {want.__name__} value, got {value!r}")

    @classmethod
    def for_world(cls, world: str) -> "Attack.Budget":
        """The pinned budget of ``world`` (the cheap CPU variant on the toy world; the paper's elsewhere)."""
        return cls.Budget()

    def settings(self) -> dict[str, Any]:
        """Everything that defines the attack's prompts: name, vocabulary and budget (recorded in every row)."""
        return {"attack": self.name, "vocab": self.vocab_kind, **dataclasses.asdict(self.budget)}

    #: whether :meth:`prepare` must run on the unedited model before a white-box search (P4D's targets)
    prepares: ClassVar[bool] = False

    def prepare(self, ctx: AttackContext, target: AttackTarget) -> Any:
        """What a white-box search needs from the **unedited** model (``ctx.pipe`` is unedited here); the
        harness hands it to :meth:`search` as ``ctx.prepared``. Only called when :attr:`prepares` is set."""
        return None

    @abc.abstractmethod
    def search(self, ctx: AttackContext, target: AttackTarget) -> AttackPrompt:
        """The adversarial ids for ``target``."""
