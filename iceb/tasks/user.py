"""User-defined tasks: benchmark your own edit list with the same metrics and outputs as built-in tasks.

``iceb evaluate --task my_task.yaml`` (or .json/.jsonl/.csv) reads a file with the requests and, optionally,
evaluation prompts. A bare request file (any format of :mod:`iceb.data.request_files`) is a task whose prompts are
each request's templates filled with the source (subset ``edit``) and with the destination
(``edit_dest``), seeds ``seed + template index``.

    name: my-edits                       # optional; the task is named user-<name>-<content hash>
    world: imagenet                      # optional; must match the model's world (imagenet or toy)
    requests:                            # as in a request file; ids optional
      - {source: Peacock, destination: Ostrich, seed: 2024, source_class: peacock, destination_class: 9}
      - {source: Hammerhead, destination: Tiger Shark, source_class: 4, destination_class: 3}
    eval:
      - {prompt: "A photo of {}", seeds: [1, 2], subset: edit}     # one prompt per request, source name
      - {prompt: "A photo of {}", seed: 1, subset: edit_dest}      # filled with each destination
      - {prompt: "A peacock in a zoo", seed: 3, subset: general, request: Peacock}
      - {prompt: "A photo of {}", seed: 4, subset: holdout, concept: goldfish}   # {} = concept, class by name
      - {prompt: "A tench on a table", seed: 5, subset: holdout, class: 0}
    classes: {"my fish": 1}              # optional extra name -> class id table
    edits: [1, 2]                        # optional default edit counts (default: all requests)
    metrics: [iceb-cls]                  # optional (default: iceb-cls when classes are named, else image-change)

Eval entry keys: ``prompt`` (required; at most one ``{}``), ``seed`` or ``seeds`` (default 0), ``subset``
(edit, edit_dest, general, alias, holdout; default edit), ``request`` (the source name or 1-based row of the
request the prompt belongs to; without it a prompt with ``{}`` is expanded for every request), ``concept``
(the name filled into ``{}`` for a prompt of no request), ``class`` (expected class: id or name) and
``dest_class``. A prompt of a request inherits its classes: ``edit``/``general``/``alias`` expect the
source class (and score the destination class), ``edit_dest`` the destination class. Class names are
looked up in ``classes``, then in the world's names (ImageNet: the 1000 class names and synonyms, any
case; the toy world: its concepts' names, aliases, misunderstood and untrained words, read from the toy
model's world config; another world: the table registered with :func:`register_class_names`). Evaluating with N edits
uses the first N requests and their prompts plus every prompt that belongs to no request.
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from editors.requests import EditRequest
from iceb.tasks.base import SUBSETS, EvalPrompt, Task, TaskError, TaskInstance
from iceb.utils.hashing import digest_files

EVAL_KEYS = ("prompt", "seed", "seeds", "subset", "request", "concept", "class", "true_class", "dest_class")
_CLASS_NAME_PROVIDERS: dict[str, Callable[[], Mapping[int, Sequence[str]]]] = {}


def register_class_names(world: str, provider: Callable[[], Mapping[int, Sequence[str]]]) -> None:
    """Let task files name classes of ``world``: ``provider()`` gives {class id: [names...]}."""
    _CLASS_NAME_PROVIDERS[world] = provider


def _imagenet_names() -> dict[int, list[str]]:
    """The 1000 ImageNet-1k class names and synonyms, shipped with timm (no download).

    Read from timm's data files without importing timm (which costs 10-20 s on a loaded machine)."""
    import importlib.util

    spec = importlib.util.find_spec("timm")
    info_dir = (Path(spec.submodule_search_locations[0]) / "data" / "_info"
                if spec and spec.submodule_search_locations else None)
    if info_dir is not None and (info_dir / "imagenet_synsets.txt").is_file():
        synsets = (info_dir / "imagenet_synsets.txt").read_text(encoding="utf-8").splitlines()
        lemmas = dict(line.split("\t", 1) for line in
                      (info_dir / "imagenet_synset_to_lemma.txt").read_text(encoding="utf-8").splitlines() if "\t" in line)
        if len(synsets) == 1000:
            return {i: [x.strip() for x in lemmas[s].split(",") if x.strip()] for i, s in enumerate(synsets)}
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return {i: [s.strip() for s in info.index_to_description(i).split(",") if s.strip()]
            for i in range(info.num_classes())}


register_class_names("imagenet", _imagenet_names)


def _toy_names() -> dict[int, list[str]]:
    """The shipped toy world's concept names: each concept's name, aliases, misunderstood and untrained
    words (all of them denote that concept), so a task file can say ``source_class: <toy name>`` on the
    default model with no Python registration.

    The world is rebuilt from the toy model's ``world_config`` (``data/toy/model/iceb_model.json``), or the
    shipped defaults when the model is absent; the names are deterministic, the same the model was trained on.
    """
    return _toy_world_names("toy")


def _toy_world_names(name: str) -> dict[int, list[str]]:
    from iceb.toy.world import ToyWorld
    from iceb.toy.worlds import toy_world_dir
    from iceb.utils.io import read_json

    info = toy_world_dir(name) / "model" / "iceb_model.json"
    if info.is_file():
        config = read_json(info).get("world_config", {})
    elif name == "toy":
        config = {}
    else:  # the recipe's world, before its model is exported
        from iceb.toy.train.config import recipe

        config = recipe(name).world
    world = ToyWorld(**config)
    return {c.id: [c.name, *c.aliases, *c.misunderstood, *c.untrained] for c in world.concepts}


register_class_names("toy", _toy_names)
register_class_names("toy-1k", lambda: _toy_world_names("toy-1k"))


class ClassNames:
    """Name -> id lookup: the file's own table first, then the world's names."""

    def __init__(self, world: str, table: Any = None, where: str = "task file"):
        self.world = world
        self.where = where
        self.own: dict[str, int] = {}
        if isinstance(table, Mapping):
            for k, v in table.items():
                if isinstance(v, bool) or not isinstance(v, int):
                    raise TaskError(f"{where}: classes[{k!r}] must be an integer class id, got {v!r}")
                self.own[str(k).strip().casefold()] = v
        elif isinstance(table, list):
            self.own = {str(n).strip().casefold(): i for i, n in enumerate(table)}
        elif table is not None:
            raise TaskError(f"{where}: 'classes' must map names to ids (or list names by id)")
        self._world: dict[str, set[int]] | None = None
        self._count: int | None = None
        for k, v in self.own.items():
            self.check_id(v, f"{where}: classes[{k!r}]")

    def class_count(self) -> int | None:
        """How many classes the world has (ids 0..count-1), when known: ImageNet 1000, the toy world its table."""
        if self._count is None:
            if self.world == "imagenet":
                self._count = 1000
            else:
                provider = _CLASS_NAME_PROVIDERS.get(self.world)
                if provider is None:
                    return None
                self._count = len(provider())
        return self._count

    def check_id(self, cid: int, where: str) -> int:
        count = self.class_count()
        if cid < 0 or (count is not None and cid >= count):
            span = f"0..{count - 1}" if count is not None else ">= 0"
            raise TaskError(f"{where}: class id {cid} is not a class of the {self.world} world ({span})")
        return cid

    def _world_table(self) -> dict[str, set[int]]:
        if self._world is None:
            self._world = {}
            provider = _CLASS_NAME_PROVIDERS.get(self.world)
            if provider is not None:
                for cid, names in provider().items():
                    for n in names:
                        self._world.setdefault(n.strip().casefold(), set()).add(int(cid))
        return self._world

    def resolve(self, value: Any, where: str) -> int | None:
        if value is None or value == "":
            return None
        if isinstance(value, bool):
            raise TaskError(f"{where}: class {value!r} is neither an id nor a name")
        if isinstance(value, int):
            return self.check_id(value, where)
        text = str(value).strip()
        if re.fullmatch(r"-?\d+", text):
            return self.check_id(int(text), where)
        key = text.casefold()
        if key in self.own:
            return self.own[key]
        table = self._world_table()
        ids = table.get(key)
        if ids and len(ids) == 1:
            return next(iter(ids))
        if ids:
            raise TaskError(f"{where}: class name {text!r} is ambiguous in the {self.world} world (ids "
                            f"{sorted(ids)}); give the id instead")
        known = list(self.own) + list(table)
        close = difflib.get_close_matches(key, known, n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        src = "the file's 'classes' table" + (f" or the {self.world} class names" if table else
                                               f" (the {self.world} world has no registered class names)")
        raise TaskError(f"{where}: unknown class name {text!r} in {src}{hint}")


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9]+", "-", text).strip("-").lower()[:40] or "task"


def _seeds(entry: Mapping[str, Any], where: str) -> list[int]:
    if "seed" in entry and "seeds" in entry:
        raise TaskError(f"{where}: give 'seed' or 'seeds', not both")
    raw = entry["seeds"] if "seeds" in entry else [entry.get("seed", 0)]
    if not isinstance(raw, list) or not raw:
        raise TaskError(f"{where}: 'seeds' must be a non-empty list of integers")
    out = []
    for s in raw:
        if isinstance(s, bool) or not isinstance(s, int):
            raise TaskError(f"{where}: seed {s!r} is not an integer")
        if not 0 <= s < 2**63:
            raise TaskError(f"{where}: seed {s} is outside 0 <= seed < 2**63")
        out.append(s)
    return out


class UserTask(Task):
    """A task read from a user's file; see the module docstring for the format."""

    description = "a user-defined task file"
    default_metrics = ("image-change",)

    def __init__(self, requests: Sequence[EditRequest], prompts: Sequence[tuple[int | None, EvalPrompt]], *,
                 name: str, world: str = "imagenet", edits: Sequence[int] | None = None,
                 metrics: Sequence[str] | None = None, path: str | None = None):
        self.requests = tuple(requests)
        self.attached = tuple(prompts)  # (request index or None, prompt)
        self.name = name
        self.world = world
        self.path = path
        named = any(isinstance(p.true_class, int) or isinstance(p.dest_class, int) for _, p in self.attached)
        self.default_metrics = tuple(metrics) if metrics else (("iceb-cls",) if named else ("image-change",))
        self.default_edits = tuple(edits) if edits else (len(self.requests),)
        for n in self.default_edits:
            self.check_n(n)

    @property
    def max_edits(self) -> int:
        return len(self.requests)

    def _build(self, n: int) -> TaskInstance:
        prompts = tuple(p for owner, p in self.attached if owner is None or owner < n)
        return TaskInstance(self.name, n, self.requests[:n], prompts, self.world,
                            {"file": self.path, "user_task": True})

    # -- reading ------------------------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | Path, world: str = "imagenet", **kwargs: Any) -> "UserTask":
        """Read a task file (.yaml/.yml/.json/.jsonl/.csv); every problem names the file and entry."""
        from iceb.data.request_files import _load_structured, read_request_file, validate_requests

        path = Path(path)
        rf = read_request_file(path, validate=False)
        data: dict[str, Any] = {}
        if path.suffix.lower() in (".yaml", ".yml", ".json"):
            loaded = _load_structured(path, path.read_text(encoding="utf-8"))
            data = loaded if isinstance(loaded, dict) else {}
        file_world = data.get("world")
        if file_world is not None and file_world != world:
            raise TaskError(f"{path}: the task is for the {file_world!r} world but the model speaks {world!r}")
        names = ClassNames(world, data.get("classes"), str(path))
        requests = []
        for i, r in enumerate(rf.requests):
            where = f"{path} {rf.rows[i]}"
            sid = names.resolve(r.source_id, f"{where} source_class") if r.source_id is not None else None
            did = (names.resolve(r.destination_id, f"{where} destination_class")
                   if r.destination_id is not None else None)
            requests.append(EditRequest(r.source, r.destination, r.templates, r.seed, r.kind, sid, did,
                                        r.request_id or f"{_slug(path.stem)}-{i}"))
        validate_requests(requests, where=str(path), rows=rf.rows, tokenizer=kwargs.get("tokenizer"))
        entries = data.get("eval")
        prompts = (cls._prompts(requests, entries, names, path) if entries is not None
                   else cls._default_prompts(requests))
        digest = digest_files(path)
        name = f"user-{_slug(str(data.get('name') or path.stem))}-{digest}"
        edits, metrics = data.get("edits"), data.get("metrics")
        if edits is not None and (not isinstance(edits, list) or not all(isinstance(e, int) for e in edits)):
            raise TaskError(f"{path}: 'edits' must be a list of integers, got {edits!r}")
        if metrics is not None and (not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics)):
            raise TaskError(f"{path}: 'metrics' must be a list of metric names, got {metrics!r}")
        try:
            task = cls(requests, prompts, name=name, world=world, edits=edits, metrics=metrics, path=str(path))
        except TaskError as err:
            raise TaskError(f"{path}: 'edits': {err}") from None
        if data.get("description"):
            task.description = str(data["description"])
        return task

    @staticmethod
    def _default_prompts(requests: Sequence[EditRequest]) -> list[tuple[int | None, EvalPrompt]]:
        out = []
        for i, r in enumerate(requests):
            for j, t in enumerate(r.templates):
                out.append((i, EvalPrompt(t.format(r.source), r.seed + j, "edit", r.source_id, r.destination_id,
                                          r.request_id or str(i))))
                if r.destination:
                    out.append((i, EvalPrompt(t.format(r.destination), r.seed + j, "edit_dest", r.destination_id,
                                              r.destination_id, r.request_id or str(i))))
        return out

    @staticmethod
    def _prompts(requests: Sequence[EditRequest], entries: Any, names: ClassNames,
                 path: Path) -> list[tuple[int | None, EvalPrompt]]:
        from iceb.data.request_files import count_clip_tokens

        if not isinstance(entries, list):
            raise TaskError(f"{path}: 'eval' must be a list of prompt entries")
        by_source = {r.source.casefold(): i for i, r in enumerate(requests)}
        # a labelled task (classes on the requests or a 'classes' table) labels concepts by name, strictly
        labelled = bool(names.own) or any(r.source_id is not None for r in requests)
        out: list[tuple[int | None, EvalPrompt]] = []
        for k, entry in enumerate(entries, start=1):
            where = f"{path} eval entry {k}"
            if isinstance(entry, str):
                entry = {"prompt": entry}
            if not isinstance(entry, Mapping):
                raise TaskError(f"{where}: expected an object with 'prompt', got {entry!r}")
            unknown = [str(key) for key in entry if key not in EVAL_KEYS]
            if unknown:
                raise TaskError(f"{where}: unknown key(s) {', '.join(repr(u) for u in unknown)}; "
                                f"known: {', '.join(EVAL_KEYS)}")
            prompt = entry.get("prompt")
            if not isinstance(prompt, str) or not prompt.strip():
                raise TaskError(f"{where}: missing or empty 'prompt'")
            slots = prompt.count("{}")
            if slots > 1:
                raise TaskError(f"{where}: prompt {prompt!r} holds {slots} '{{}}' slots; at most one")
            subset = entry.get("subset", "edit")
            if subset not in SUBSETS:
                raise TaskError(f"{where}: subset {subset!r} is not one of {', '.join(SUBSETS)}")
            if "class" in entry and "true_class" in entry:
                raise TaskError(f"{where}: give 'class' or 'true_class', not both")
            seeds = _seeds(entry, where)
            explicit_true = names.resolve(entry.get("class", entry.get("true_class")), where)
            explicit_dest = names.resolve(entry.get("dest_class"), where)
            owners: list[int | None]
            if "request" in entry:
                ref = entry["request"]
                if isinstance(ref, int) and not isinstance(ref, bool):
                    if not 1 <= ref <= len(requests):
                        raise TaskError(f"{where}: request {ref} is not a row of the requests (1..{len(requests)})")
                    owners = [ref - 1]
                elif isinstance(ref, str) and ref.strip().casefold() in by_source:
                    owners = [by_source[ref.strip().casefold()]]
                else:
                    raise TaskError(f"{where}: request {ref!r} is neither a source of the requests nor a row number")
            elif slots and "concept" not in entry:
                if subset == "holdout":
                    raise TaskError(f"{where}: a holdout prompt with '{{}}' needs a 'concept' to fill it")
                owners = list(range(len(requests)))
            else:
                owners = [None]
            if "concept" in entry and not slots:
                raise TaskError(f"{where}: 'concept' fills a '{{}}' slot, but the prompt has none")
            for owner in owners:
                if owner is None:
                    concept = entry.get("concept")
                    text = prompt.format(str(concept)) if slots else prompt
                    true_c = explicit_true
                    if true_c is None and concept is not None and labelled:
                        true_c = names.resolve(concept, where)
                    dest_c, group = explicit_dest, f"eval-{k}"
                else:
                    r = requests[owner]
                    name = r.destination if subset == "edit_dest" else r.source
                    if "concept" in entry:
                        name = str(entry["concept"])
                    text = prompt.format(name) if slots else prompt
                    default_true = r.destination_id if subset == "edit_dest" else r.source_id
                    true_c = explicit_true if explicit_true is not None else default_true
                    dest_c = explicit_dest if explicit_dest is not None else r.destination_id
                    group = r.request_id or str(owner)
                if subset == "holdout":
                    group = f"holdout-{k}"
                for s in seeds:
                    out.append((owner, EvalPrompt(text, s, subset, true_c, dest_c, group)))
        if not out:
            raise TaskError(f"{path}: 'eval' holds no prompts")
        too_long = [(p.prompt, n) for (_, p), n in zip(out, count_clip_tokens([p.prompt for _, p in out]))
                    if n > 77]
        if too_long:
            raise TaskError(f"{path}: eval prompt {too_long[0][0]!r} is {too_long[0][1]} CLIP tokens long; "
                            f"the text encoder reads at most 77")
        return out


__all__ = ["UserTask", "ClassNames", "register_class_names"]
