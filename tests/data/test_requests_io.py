"""Request files: every format reads to the same requests; every invalid input names its row."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from editors.requests import DEFAULT_TEMPLATES, EditRequest
from iceb.data.request_files import (
    RequestFileError,
    read_request_file,
    read_requests,
    requests_from_data,
    requests_to_json,
)

EMCID_EXAMPLES = Path("/work/shared/reference/emcid/test_examples")


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_csv_templates_as_pipe_list_or_literal_and_defaults(tmp_path):
    p = write(tmp_path, "r.csv",
              'source,destination,templates,seed\n'
              'cat,dog,A photo of {}|A painting of {},7\n'
              'apple,orange,"[""An image of {}"", ""{} | art""]",\n'
              'car,bicycle,,3\n')
    reqs = read_requests(p)
    assert [r.source for r in reqs] == ["cat", "apple", "car"]
    assert reqs[0].templates == ("A photo of {}", "A painting of {}") and reqs[0].seed == 7
    assert reqs[1].templates == ("An image of {}", "{} | art") and reqs[1].seed == 0
    assert reqs[2].templates == DEFAULT_TEMPLATES and reqs[2].destination == "bicycle"
    # the Python-literal spelling reads the same
    p2 = write(tmp_path, "r2.csv", "source,destination,templates\ncat,dog,\"['A photo of {}', 'A painting of {}']\"\n")
    assert read_requests(p2)[0].templates == reqs[0].templates


def test_json_jsonl_yaml_and_object_forms_agree(tmp_path):
    objs = [{"source": "cat", "destination": "dog", "templates": ["A photo of {}"], "seed": 1},
            {"source": "tree", "dest": "flower", "prompts": ["{}"], "seed_train": 2}]
    a = read_requests(write(tmp_path, "a.json", json.dumps(objs)))
    b = read_requests(write(tmp_path, "b.json", json.dumps({"requests": objs})))
    c = read_requests(write(tmp_path, "c.jsonl", "\n".join(json.dumps(o) for o in objs) + "\n"))
    import yaml

    d = read_requests(write(tmp_path, "d.yaml", yaml.safe_dump({"requests": objs})))
    assert a == b == c == d
    assert a[1] == EditRequest("tree", "flower", ("{}",), 2)
    # the JSON written for sidecars reads back to the same requests
    assert requests_from_data(requests_to_json(a)).requests == a


def test_erase_kind_needs_no_destination(tmp_path):
    reqs = read_requests(write(tmp_path, "e.csv", "source,destination,kind\nVan Gogh,,erase\n"))
    assert reqs[0].kind == "erase" and reqs[0].destination == ""


@pytest.mark.skipif(not EMCID_EXAMPLES.is_dir(), reason="EMCID reference examples not present")
def test_emcid_example_files_read():
    files = sorted(EMCID_EXAMPLES.glob("*.json"))
    assert files
    for f in files:
        rf = read_request_file(f)
        raw = json.loads(f.read_text())
        assert [r.source for r in rf.requests] == [r["source"] for r in raw["requests"]]
        assert [r.destination for r in rf.requests] == [r["dest"] for r in raw["requests"]]
        assert [list(r.templates) for r in rf.requests] == [r["prompts"] for r in raw["requests"]]
        assert [r.seed for r in rf.requests] == [r["seed_train"] for r in raw["requests"]]
        assert rf.extras["val_prompts"] == raw["val_prompts"]
        assert any("not applied" in w for w in rf.warnings)  # EMCID's hparams string is not silently used
    sdxl = EMCID_EXAMPLES / "sdxl_us_president.json"
    if sdxl.is_file():
        assert any("training_img_paths" in w for w in read_request_file(sdxl).warnings)


@pytest.mark.parametrize("text, message", [
    ("source,destination\ncat,dog\n,bird\n", "row 2 (line 3): empty source"),
    ("source,destination\ncat,dog\napple,pear\nCat,horse\n", "row 3 (line 4): duplicate source 'Cat' (first in row 1"),
    ("source,destination\ncat,dog\ndog,wolf\n", "row 2 (line 3): source 'dog' is the destination of row 1"),
    ("source,destination\ncat,cat\n", "row 1 (line 2): source and destination are the same"),
    ("source,destination,templates\ncat,dog,A photo of {}\napple,pear,A photo of apples\n",
     "row 2 (line 3): template 'A photo of apples'"),
    ("source,destination,templates\ncat,dog,{} and {}\n", "row 1 (line 2): template '{} and {}'"),
    ("source,destination,colour\ncat,dog,red\n", "unknown column(s) 'colour'"),
    ("source,destination\ncat,dog,extra\n", "row 1 (line 2): 3 fields but the header has 2"),
    ("source,destination,seed\ncat,dog,seven\n", "row 1 (line 2): seed must be an integer"),
    ("source,destination,templates\ncat,dog,\"[1, 2\"\n", "row 1 (line 2): templates"),
    ("destination\ndog\n", "no 'source' column"),
    ("\n", "empty CSV"),
])
def test_csv_validation_errors_name_the_row(tmp_path, text, message):
    with pytest.raises(RequestFileError) as err:
        read_requests(write(tmp_path, "bad.csv", text))
    assert message in str(err.value)
    assert "bad.csv" in str(err.value)


def test_prompt_longer_than_77_clip_tokens_is_refused(tmp_path):
    long_name = " ".join(["hippopotamus"] * 40)
    p = write(tmp_path, "long.json", json.dumps([{"source": "cat", "destination": "dog"},
                                                 {"source": long_name, "destination": "dog2"}]))
    with pytest.raises(RequestFileError, match=r"row 2: prompt .* CLIP tokens long; the text encoder reads at most 77"):
        read_requests(p)
    # a 77-token prompt is fine: the limit is inclusive of start and end tokens
    from iceb.data.request_files import count_clip_tokens

    ok = " ".join(["a"] * 75)
    assert count_clip_tokens([ok]) == [77]
    read_requests(write(tmp_path, "ok.json", json.dumps([{"source": ok, "destination": "b", "templates": ["{}"]}])))


@pytest.mark.parametrize("name, text, message", [
    ("bad.json", '[{"source": "cat", "destination": "dog"},\n {"source": "x" "destination": "y"}]',
     "malformed JSON at line 2"),
    ("bad.jsonl", '{"source": "cat", "destination": "dog"}\n{"source": \n', "line 2 is not valid JSON"),
    ("bad.json", '[{"source": "cat", "destination": "dog", "colour": "red"}]', "row 1: unknown field(s) 'colour'"),
    ("bad.json", '{"requests": [], "outdir": "x"}', "unknown top-level key(s) 'outdir'"),
    ("bad.json", '{"edits": []}', "no 'requests' list"),
    ("bad.json", '[{"source": "cat", "destination": "dog"}, "apple"]', "row 2: a request must be an object"),
    ("bad.json", '[{"source": "cat"}]', "row 1: missing destination"),
    ("bad.json", '[{"source": "cat", "destination": "dog", "templates": "A photo"}]', "row 1: template 'A photo'"),
    ("bad.json", '[]', "no edit requests"),
    ("bad.yaml", 'requests: [source: cat', "malformed YAML"),
    ("bad.txt", 'cat,dog', "unknown request file type"),
])
def test_structured_file_errors(tmp_path, name, text, message):
    with pytest.raises(RequestFileError) as err:
        read_requests(write(tmp_path, name, text))
    assert message in str(err.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_requests(tmp_path / "nope.csv")
