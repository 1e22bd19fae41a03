"""The editor contract, written once and run for every registered editor (diffusers' ``PipelineTesterMixin``).

Every name in :data:`editors.EDITORS` is checked on the random-weight ``tiny`` pipeline:

- its class resolves under its name, declares the request kinds it supports and a frozen hparams class;
- every YAML it ships (``editors/hparams/<name>/*.yaml``) loads with its ``load_hparams``, by path and by preset;
- ``edit()`` returns an :class:`~editors.base.EditResult` whose keys name tensors of the pipeline, with the same
  shapes and dtypes, all finite;
- the pipeline is bit for bit what it was afterwards (every tensor of every module component, the
  ``requires_grad`` flags, no gradients left, train/eval modes);
- a request kind it does not support, or no request at all, is a :class:`~editors.requests.RequestError` from
  ``check_requests`` (and from ``edit``) that names the kind, before any work;
- the same requests (same seeds) give the same tensors twice, bitwise;
- sequential editing in 2 rounds (:func:`editors.edit_in_rounds`) equals editing round 1, applying it and
  editing round 2 on the changed pipeline, bitwise, and leaves the pipeline restored.

A new editor is covered by registering it. It runs with its ``tiny`` preset (or its defaults); if that is
slow, add cheap overrides to :data:`CHEAP` (the knobs of its hparams dataclass: fewer steps, samples, layers).
Editor-specific maths (closed forms, efficacy, caches) stays in the editor's own test file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from editors import EDITORS, edit_in_rounds, get_editor
from editors.hparams import Hparams
from editors.requests import EditRequest, RequestError
from editors.weights import applied, get_tensor

HPARAMS_DIR = Path(__file__).resolve().parents[2] / "editors" / "hparams"
NAMES = EDITORS.names()
KINDS = ("update", "erase", "rectify", "debias")

#: Overrides on top of each editor's ``tiny`` preset that keep one edit well under a second on one CPU core.
CHEAP: dict[str, dict[str, Any]] = {
    "emcid": {"layers": [9, 10], "v_num_grad_steps": 2, "train_steps": 1, "mom2_n_samples": 100},
    "esd-x": {"iterations": 2, "ddim_steps": 2, "checkpoint_every": 0},
    "esd-u": {"iterations": 2, "ddim_steps": 2, "checkpoint_every": 0},
    "rome": {"v_max_grad_steps": 3, "mom2_n_samples": 100},
    "mace": {"lora_steps": 1, "aug_length": 2, "no_real_image": True},
}


def _request(kind: str, i: int = 0) -> EditRequest:
    pairs = [("cat", "dog"), ("red apple", "orange")]
    src, dst = pairs[i]
    if kind == "debias":
        return EditRequest(src, "", kind=kind, seed=11 + i, destinations=(f"a black {src}", f"a white {src}"))
    return EditRequest(src, "" if kind == "erase" else dst, kind=kind, seed=11 + i)


def _requests(cls, n: int) -> list[EditRequest]:
    """``n`` requests of the first kind the editor supports (update before erase before rectify)."""
    kind = next(k for k in KINDS if k in cls.supports)
    return [_request(kind, i) for i in range(n)]


def _editor(name: str):
    cls = get_editor(name)
    hp = cls.load_hparams("tiny", overrides=CHEAP.get(name, {}))
    return cls(hp, progress=False)  # no cache_dir: every edit computes everything it needs


def _modules(pipe) -> dict[str, torch.nn.Module]:
    return {k: v for k, v in pipe.components.items() if isinstance(v, torch.nn.Module)}


def _snapshot(pipe) -> dict[str, Any]:
    snap = {}
    for comp, module in _modules(pipe).items():
        snap[comp] = {
            "state": {k: v.detach().clone() for k, v in module.state_dict(keep_vars=True).items()},
            "requires_grad": [p.requires_grad for p in module.parameters()],
            "grads": [p.grad is None for p in module.parameters()],
            "training": [m.training for m in module.modules()],
        }
    return snap


def _assert_unchanged(pipe, before: dict[str, Any]) -> None:
    after = _snapshot(pipe)
    assert set(after) == set(before)
    for comp, was in before.items():
        now = after[comp]
        assert set(now["state"]) == set(was["state"]), f"{comp}: tensors added or removed"
        for k, v in was["state"].items():
            assert now["state"][k].dtype == v.dtype and torch.equal(now["state"][k], v), f"{comp}.{k} was left changed"
        assert now["requires_grad"] == was["requires_grad"], f"{comp}: requires_grad flags not restored"
        assert now["grads"] == was["grads"], f"{comp}: gradients left behind"
        assert now["training"] == was["training"], f"{comp}: train/eval mode not restored"


def _assert_same_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        assert torch.equal(got[k].cpu(), v.cpu()), f"{k} differs"


@pytest.fixture(scope="module")
def first_edits(tiny_model):
    """One 2-request edit per editor, with pipeline snapshots taken around it, shared by the tests below."""
    done: dict[str, tuple[Any, dict[str, Any]]] = {}

    def get(name: str):
        if name not in done:
            pipe = tiny_model.pipe
            before = _snapshot(pipe)
            ed = _editor(name)
            result = ed.edit(pipe, _requests(type(ed), 2))
            done[name] = (result, before)
        return done[name]

    return get


# --- the class and its hparams -------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_registered_class_declares_the_protocol(name):
    cls = get_editor(name)
    assert cls.name == name
    assert callable(getattr(cls, "edit", None)) and callable(getattr(cls, "check_requests", None))
    assert cls.supports and set(cls.supports) <= set(KINDS), cls.supports
    assert issubclass(cls.hparams_class, Hparams)
    assert cls.hparams_class.__dataclass_params__.frozen, "hparams must be a frozen dataclass"


@pytest.mark.parametrize("name", NAMES)
def test_every_shipped_yaml_loads(name):
    cls = get_editor(name)
    files = sorted((HPARAMS_DIR / name).glob("*.yaml"))
    defaults = cls.load_hparams("no-such-model-family")  # no file: the dataclass defaults
    assert isinstance(defaults, cls.hparams_class)
    for path in files:
        hp = cls.load_hparams(path=path)
        assert isinstance(hp, cls.hparams_class), path
        assert cls.load_hparams(preset=path.stem) == hp, f"preset {path.stem!r} is not {path}"
        assert cls.hparams_class.from_dict(hp.to_dict()) == hp, f"{path}: to_dict/from_dict round trip"


# --- one edit ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_result_names_pipeline_tensors_with_their_shapes_and_dtypes(name, tiny_model, first_edits):
    from editors.base import EditResult

    result, _ = first_edits(name)
    assert isinstance(result, EditResult)
    for key, t in result.tensors.items():
        live = get_tensor(tiny_model.pipe, key)  # raises for a name that is not the pipeline's
        assert isinstance(t, torch.Tensor) and t.shape == live.shape and t.dtype == live.dtype, key
        assert torch.isfinite(t).all(), f"{key} holds non-finite values"
    assert all(isinstance(v, float) for v in result.timings.values())


@pytest.mark.parametrize("name", NAMES)
def test_cost_phases_name_real_timer_keys_and_phases(name, first_edits):
    """The cost split (editors.run.edit_cost) trusts these declarations: every phase is one of COST_PHASES and
    every declared timer key is one the editor really times, so a renamed key cannot silently drop a phase."""
    from editors.base import COST_PHASES

    result, _ = first_edits(name)
    cls = type(_editor(name))
    assert set(cls.cost_phases.values()) <= set(COST_PHASES) and set(cls.cache_phases.values()) <= set(COST_PHASES)
    assert set(cls.cost_phases) <= set(result.timings), (cls.cost_phases, sorted(result.timings))


@pytest.mark.parametrize("name", NAMES)
def test_pipeline_is_left_bit_identical(name, tiny_model, first_edits):
    _, before = first_edits(name)
    _assert_unchanged(tiny_model.pipe, before)


@pytest.mark.parametrize("name", NAMES)
def test_unsupported_kinds_and_no_requests_are_request_errors(name, tiny_model):
    ed = _editor(name)
    with pytest.raises(RequestError):
        ed.check_requests([])
    unsupported = [k for k in KINDS if k not in type(ed).supports]
    if not unsupported:
        pytest.skip(f"{name} supports every request kind")
    before = _snapshot(tiny_model.pipe)
    for kind in unsupported:
        with pytest.raises(RequestError, match=f"'{kind}'"):
            ed.check_requests([_request(kind)])
        with pytest.raises(RequestError, match=f"'{kind}'"):
            ed.edit(tiny_model.pipe, [_request(kind)])
    _assert_unchanged(tiny_model.pipe, before)


@pytest.mark.parametrize("name", NAMES)
def test_same_requests_give_the_same_tensors_twice(name, tiny_model, first_edits):
    first, _ = first_edits(name)
    again = _editor(name).edit(tiny_model.pipe, _requests(get_editor(name), 2))  # a fresh editor instance
    _assert_same_tensors(again.tensors, first.tensors)


# --- sequential editing ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_two_rounds_equal_chained_edits_and_restore_the_pipeline(name, tiny_model):
    pipe = tiny_model.pipe
    reqs = _requests(get_editor(name), 2)
    before = _snapshot(pipe)
    rounds = edit_in_rounds(_editor(name), pipe, reqs, 2)
    _assert_unchanged(pipe, before)
    ed = _editor(name)
    one = ed.edit(pipe, reqs[:1])
    with applied(pipe, one.tensors):
        two = ed.edit(pipe, reqs[1:])
    _assert_unchanged(pipe, before)
    _assert_same_tensors(rounds.tensors, {**one.tensors, **two.tensors})
