"""The task contract, written once and run for every registered task in every world it builds in offline.

For each (task, world):

- ``build(n)``'s requests are a prefix of ``build(n + 1)``'s, and ``n`` requests come back for ``n``;
- every prompt carries an integer seed, a known subset and its expected class; prompts of an edit request
  name that request's group, and edit prompts carry the destination class;
- fingerprints are stable for the same ``n`` and differ between ``n`` and ``n + 1``;
- ``check_n`` refuses 0 and ``max_edits + 1`` (and ``build`` does too), and accepts every default edit count.

ImageNet tasks on the official split need EMCID's released data (``ICEB_OFFICIAL_DATA``, here the
conftest's reference copy); a task that is not defined for a world says so and is skipped.
"""
from __future__ import annotations

import pytest
from conftest import ICEB_REF

from editors.requests import EditRequest
from iceb.tasks import TASKS, get_task
from iceb.tasks.base import SUBSETS, TaskError

WORLDS = ("imagenet", "toy")
CASES = [(name, world) for name in TASKS.names() for world in WORLDS]


@pytest.fixture()
def task(request, monkeypatch):
    name, world = request.param
    if ICEB_REF.is_dir():
        monkeypatch.setenv("ICEB_OFFICIAL_DATA", str(ICEB_REF))
        monkeypatch.setenv("ICEB_EMCID_DATA", str(ICEB_REF.parent))  # EMCID's other data files (debias)
    try:
        t = get_task(name, world=world)
        _ = t.max_edits  # resolves the task's data
    except TaskError as err:
        if "world" in str(err):
            pytest.skip(f"{name} is not defined for the {world!r} world: {err}")
        if not ICEB_REF.is_dir():
            pytest.skip(f"{name} ({world}) needs data that is not on this machine: {err}")
        raise
    except FileNotFoundError as err:
        pytest.skip(f"{name} ({world}) needs data that is not on this machine: {err}")
    return t


def _ns(t) -> list[int]:
    return sorted({n for n in (1, 2) if n < t.max_edits})


@pytest.mark.parametrize("task", CASES, indirect=True, ids=[f"{n}-{w}" for n, w in CASES])
def test_requests_of_n_are_a_prefix_of_n_plus_one(task):
    assert task.max_edits >= 1
    for n in _ns(task):
        small, big = task.build(n), task.build(n + 1)
        assert small.n_edits == n and len(small.requests) == n and len(big.requests) == n + 1
        assert big.requests[:n] == small.requests
        assert all(isinstance(r, EditRequest) for r in big.requests)
    full = task.build(task.max_edits)
    assert len(full.requests) == task.max_edits


@pytest.mark.parametrize("task", CASES, indirect=True, ids=[f"{n}-{w}" for n, w in CASES])
def test_prompts_carry_seeds_and_expected_classes(task):
    inst = task.build(min(2, task.max_edits))
    # debias evaluates only free-form prompts of its professions, as the official script
    assert inst.prompts and (inst.subset("edit") or inst.subset("general")), "a task has edit or general prompts"
    groups = {r.request_id for r in inst.requests}
    assert None not in groups and len(groups) == len(inst.requests), "requests carry distinct request ids"
    for p in inst.prompts:
        assert isinstance(p.seed, int) and not isinstance(p.seed, bool), p
        assert p.subset in SUBSETS and p.prompt.strip(), p
        assert p.true_class is not None, f"{p.subset} prompt {p.prompt!r} has no expected class"
        if p.subset in ("edit", "edit_dest"):
            assert p.dest_class is not None and p.group in groups, p
    assert all(p.group not in groups for p in inst.subset("holdout"))


@pytest.mark.parametrize("task", CASES, indirect=True, ids=[f"{n}-{w}" for n, w in CASES])
def test_fingerprints_are_stable_and_differ_between_n_and_n_plus_one(task):
    for n in _ns(task):
        assert task.build(n).fingerprint() == task.build(n).fingerprint()
        assert task.build(n).fingerprint() != task.build(n + 1).fingerprint()


@pytest.mark.parametrize("task", CASES, indirect=True, ids=[f"{n}-{w}" for n, w in CASES])
def test_check_n_refuses_zero_and_more_than_the_maximum(task):
    for bad in (0, task.max_edits + 1):
        with pytest.raises(TaskError):
            task.check_n(bad)
        with pytest.raises(TaskError):
            task.build(bad)
    task.check_n(task.max_edits)
    for n in task.default_edits:
        task.check_n(n)
