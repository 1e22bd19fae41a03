import json
import subprocess
import sys
import time

import pandas as pd
import pytest

from iceb.cli import main


def test_list_prints_name_then_description(capsys):
    assert main(["list", "editors"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    names = [ln.split()[0] for ln in lines]
    assert names == sorted(names) and "noop" in names and "emcid" in names
    assert all(len(ln.split(None, 1)) == 2 for ln in lines)


def test_evaluate_end_to_end_on_tiny_writes_rows_and_csv(tmp_path, capsys):
    rc = main(["evaluate", "--model", "tiny", "--editor", "noop", "--task", "smoke", "--edits", "1,2",
               "--out", str(tmp_path), "--no-progress", "--device", "cpu"])
    assert rc == 0
    (run,) = [d for d in tmp_path.iterdir() if d.name.startswith("noop-smoke-")]
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["spec"] == "tiny" and "torch" in config["versions"]
    df = pd.read_csv(run / "results.csv")
    assert set(df.n_edits) == {1, 2}
    changes = df[df.metric == "image_change"]
    assert len(changes) == 4 and (changes.value == 0).all()  # noop changes nothing, exactly
    assert (run / "edits" / "n1.safetensors").is_file()
    # rerun resumes: nothing recomputed, same rows
    assert main(["evaluate", "--model", "tiny", "--editor", "noop", "--task", "smoke", "--edits", "1,2",
                 "--out", str(tmp_path), "--no-progress", "--device", "cpu"]) == 0
    assert "already done" in capsys.readouterr().out
    assert pd.read_csv(run / "results.csv").equals(df)
    # leaderboard CSVs
    assert main(["leaderboard", str(tmp_path), "--out", str(tmp_path / "lb")]) == 0
    lb = pd.read_csv(tmp_path / "lb" / "smoke.csv")
    for col in ["editor", "model", "task", "n_edits", "metric", "value", "bound", "run_id", "versions"]:
        assert col in lb.columns


def test_unknown_editor_is_one_line_error(capsys):
    assert main(["evaluate", "--editor", "emcdi", "--model", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "Did you mean 'emcid'?" in err and "Traceback" not in err


def test_out_of_range_edit_count(tmp_path, capsys):
    assert main(["evaluate", "--model", "tiny", "--task", "smoke", "--edits", "11", "--out", str(tmp_path)]) == 2
    assert "1 to 10 edits" in capsys.readouterr().err


def test_missing_hub_model_is_a_clear_error_without_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "iceb", "evaluate", "--model", "CompVis/stable-diffusion-v1-4",
                           "--out", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "huggingface-cli download CompVis/stable-diffusion-v1-4" in proc.stderr
    assert time.time() - t0 < 120


def test_bad_model_spec():
    from iceb.models import ModelNotFoundError, load_model

    with pytest.raises(ModelNotFoundError, match="neither a built-in name"):
        load_model("not a model")


def test_tokenizer_matches_open_clip_ids():
    import open_clip

    from iceb.data.tokenizer import load_clip_tokenizer

    tok = load_clip_tokenizer()
    assert len(tok) == 49408 and tok.bos_token_id == 49406 and tok.eos_token_id == 49407
    ref = open_clip.get_tokenizer("ViT-L-14")
    for text in ["a photo of a cat", "A stunning image showcasing the intricate details of a tench!",
                 "Struthio camelus, 42 ostriches"]:
        ours = tok(text).input_ids
        theirs = [t for t in ref([text])[0].tolist() if t != 0]
        assert ours == theirs
