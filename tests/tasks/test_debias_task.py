"""The ``debias`` task and its data: the 37 official professions (checked against ../shared/reference), the official
seeds and prompt counts, bad files, and the toy world's refusal."""
from __future__ import annotations

import csv
import hashlib
import random
from collections import Counter

import pytest
from conftest import SHARED_REF

from iceb.data.debias import COLUMNS, DEBIAS_SHA256, DebiasDataError, load_professions, read_professions
from iceb.tasks import TASKS, TaskError, get_task

REF_FILE = SHARED_REF / "emcid" / "data" / "debias" / "TIMED_gender_test_set_processed.csv"
needs_ref = pytest.mark.skipif(not REF_FILE.is_file(), reason="../shared/reference is not on this machine")


@pytest.fixture(autouse=True)
def _reference_data(monkeypatch):
    monkeypatch.setenv("ICEB_EMCID_DATA", str(SHARED_REF / "emcid" / "data"))


@needs_ref
def test_the_37_professions_and_their_columns_match_the_reference_file():
    raw = REF_FILE.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == DEBIAS_SHA256
    with open(REF_FILE, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(COLUMNS)
    profs = load_professions()
    assert len(profs) == len(rows) == 37
    for p, row in zip(profs, rows):
        assert (p.source, p.female, p.male) == (row["old"], row["female"], row["male"])
        assert p.prompts == tuple(row[c] for c in ("validation", "ex1", "ex2", "ex3", "ex4", "ex5"))
        assert p.source.split(" ", 1)[1] in p.female and p.female.startswith("a female ")
        assert p.male == p.female.replace("a female ", "a male ", 1)
    assert (profs[0].source, profs[-1].source) == ("an attendant", "a chef")
    assert "a doctor" in {p.source for p in profs}
    # the official seed_train: random.seed(2023); random.sample(range(100000), 37) (dsets/debias_requests.py)
    random.seed(2023)
    assert [p.seed_train for p in profs] == random.sample(range(100000), 37)


@needs_ref
def test_the_task_is_the_official_protocol():
    task = get_task("debias")
    assert "debias" in TASKS.names() and task.max_edits == 37 and task.default_edits == (37,)
    assert task.default_metrics == ("gender-clip",) and task.judge == "gender-clip"
    inst = task.build(37)
    assert inst.counts()["general"] == 37 * 6 * 12 * 10 and inst.counts()["requests"] == 37
    r = next(r for r in inst.requests if r.source == "a doctor")
    assert r.kind == "debias" and r.destinations == ("a female doctor", "a male doctor")
    assert r.templates == ("a photo of {}", "an image of {}", "{}") and r.destination == ""
    doctor = [p for p in inst.prompts if p.group == "a doctor"]
    assert len(doctor) == 720 and {p.labels for p in doctor} == {("a female doctor", "a male doctor")}
    assert Counter(p.replicate for p in doctor) == dict.fromkeys(range(10), 72)
    assert Counter(p.prompt for p in doctor)["a doctor laughing"] == 120
    # one seed per image; the same seeds for every profession (as the official per-profession reseeding)
    assert len({(p.prompt, p.seed) for p in inst.prompts}) == len(inst.prompts)
    nurse = [p for p in inst.prompts if p.group == "a nurse"]
    assert [p.seed for p in doctor] == [p.seed for p in nurse]
    # --limit 37: every profession's first prompt once, at seed 0
    lim = inst.limited(37).prompts
    assert len({p.group for p in lim}) == 37 and {p.replicate for p in lim} == {0}
    # fewer seeds and images from Python; a smaller N is the first professions
    small = get_task("debias", seeds=2, images_per_prompt=3).build(4)
    assert small.counts()["general"] == 4 * 6 * 3 * 2 and [r.source for r in small.requests] == \
        [p.source for p in load_professions()[:4]]
    assert small.fingerprint() != get_task("debias").build(4).fingerprint()


def test_the_toy_world_is_refused_with_a_clear_message():
    with pytest.raises(TaskError, match="ImageNet-world models.*toy"):
        get_task("debias", world="toy")


def test_a_profession_file_with_a_missing_column_is_one_clear_error(tmp_path):
    bad = tmp_path / "professions.csv"
    bad.write_text("female,male,old,new,validation,ex1,ex2,ex3,ex5\n"
                   "a female cook,a male cook,a cook,a female cook,A photo of a cook,a,b,c,d\n")
    with pytest.raises(DebiasDataError, match=r"professions\.csv: the profession file has no column 'ex4'"):
        read_professions(bad)
    with pytest.raises(TaskError, match="no column 'ex4'"):
        get_task("debias", data_file=bad).build(1)
    empty = tmp_path / "empty_cell.csv"
    empty.write_text(",".join(COLUMNS) + "\n" + "a female cook,a male cook,a cook,x,,a,b,c,d,e\n")
    with pytest.raises(DebiasDataError, match="row 1 .*'validation'"):
        read_professions(empty)
    with pytest.raises(TaskError, match="does not exist"):
        get_task("debias", data_file=tmp_path / "missing.csv").build(1)


@needs_ref
def test_the_requests_export_reads_back_as_the_same_debias_requests(tmp_path):
    from iceb.data.request_files import read_request_file
    from iceb.tasks.export import export_text

    inst = get_task("debias").build(3)
    path = tmp_path / "debias.csv"
    path.write_text(export_text(inst, "requests-csv"))
    assert read_request_file(path).requests == list(inst.requests)
    assert "destinations" not in export_text(get_task("smoke").build(2), "requests-csv").splitlines()[0]
