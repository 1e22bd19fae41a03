"""The task contract, written once and run for every registered task in every world it builds in offline.

For each (task, world):

- ``n`` requests come back for ``n``, and (a ``nested`` task) ``build(n)``'s requests are a prefix of the next
  count's; a task that serves only some counts (``edit_counts``) refuses the others;
- every prompt carries an integer seed, a known subset and its expected class; prompts of an edit request
  name that request's group, and edit prompts carry the destination class;
- fingerprints are stable for the same ``n`` and differ between ``n`` and the next count;
- ``check_n`` refuses 0 and ``max_edits + 1`` (and ``build`` does too), and accepts every default edit count.

ImageNet tasks on the official split need EMCID's released data (``ICEB_OFFICIAL_DATA``, here the
conftest's reference copy); ``nsfw`` reads a small file in I2P's layout (``ICEB_I2P_CSV``); a task
that is not defined for a world says so and is skipped.
"""
from __future__ import annotations

import pytest
from conftest import ICEB_REF, SHARED_REF, write_i2p_csv

from editors.requests import EditRequest
from iceb.tasks import TASKS, get_task
from iceb.tasks.base import SUBSETS, TaskError

WORLDS = ("imagenet", "toy", "toy-1k")
CASES = [(name, world) for name in TASKS.names() for world in WORLDS]


@pytest.fixture()
def task(request, monkeypatch, tmp_path):
    name, world = request.param
    if ICEB_REF.is_dir():
        monkeypatch.setenv("ICEB_OFFICIAL_DATA", str(ICEB_REF))
        monkeypatch.setenv("ICEB_EMCID_DATA", str(SHARED_REF / "emcid" / "data"))
    # nsfw reads I2P's prompt file: a small file of the released layout (the real one is not committed)
    monkeypatch.setenv("ICEB_I2P_CSV", str(write_i2p_csv(tmp_path / "i2p.csv")))
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


def _pairs(t) -> list[tuple[int, int]]:
    """(n, the next count the task serves) for its first two counts below its maximum."""
    counts = t.edit_counts or tuple(range(1, t.max_edits + 1))
    return [(a, b) for a, b in zip(counts, counts[1:])][:2]


@pytest.mark.parametrize("task", CASES, indirect=True, ids=[f"{n}-{w}" for n, w in CASES])
def test_requests_of_n_are_a_prefix_of_n_plus_one(task):
    assert task.max_edits >= 1
    for n, m in _pairs(task):
        small, big = task.build(n), task.build(m)
        assert small.n_edits == n and len(small.requests) == n and len(big.requests) == m
        if task.nested:
            assert big.requests[:n] == small.requests
        assert all(isinstance(r, EditRequest) for r in big.requests)
    if task.edit_counts is not None:  # a count between two served ones is refused
        gaps = [n for n in range(1, max(task.edit_counts)) if n not in task.edit_counts]
        if gaps:
            with pytest.raises(TaskError):
                task.build(gaps[0])
    full = task.build(task.max_edits)
    assert len(full.requests) == task.max_edits


@pytest.mark.parametrize("task", CASES, indirect=True, ids=[f"{n}-{w}" for n, w in CASES])
def test_prompts_carry_seeds_and_expected_classes(task):
    inst = task.build(_pairs(task)[0][0] if _pairs(task) else task.max_edits)
    assert inst.prompts and (inst.subset("edit") or inst.subset("general")), "a task has prompts of its edits"
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
    for n, m in _pairs(task):
        assert task.build(n).fingerprint() == task.build(n).fingerprint()
        assert task.build(n).fingerprint() != task.build(m).fingerprint()


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
