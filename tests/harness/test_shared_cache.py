"""One cache root for every entry point: EMCID's statistics (and stage I) computed by the Python API are cache
hits for ``iceb evaluate`` and ``iceb edit``, all under ``$ICEB_CACHE`` (conftest gives each test its own);
``--no-editor-cache`` opts out; ``iceb cache ls`` / ``clear`` see and remove them."""
from __future__ import annotations

import os
from pathlib import Path

from iceb.cli import main
from iceb.utils.cache import cache_tally

EMCID_ARGS = {"v_num_grad_steps": 2, "train_steps": 1, "mom2_n_samples": 100}
ARGS_TEXT = ",".join(f"{k}={v}" for k, v in EMCID_ARGS.items())


def _delta(before, kind):
    h, m = cache_tally().get(kind, (0, 0))
    h0, m0 = before.get(kind, (0, 0))
    return h - h0, m - m0


def _smoke_request():
    from iceb.tasks import get_task

    return get_task("smoke", world="imagenet").build(1).requests[0]


def test_statistics_of_the_api_are_hits_for_cli_evaluate_and_edit(tiny_model, tmp_path, capsys):
    from iceb import edit_model

    root = Path(os.environ["ICEB_CACHE"])
    req = _smoke_request()
    before = cache_tally()
    edit_model("emcid", tiny_model, [req], overrides=EMCID_ARGS, progress=False)
    assert _delta(before, "stats")[1] > 0 and _delta(before, "stats")[0] == 0  # computed once, here
    assert _delta(before, "emcid-stage1") == (0, 1)
    assert list((root / "editors" / "stats").rglob("*.safetensors"))  # under the one root

    before = cache_tally()
    assert main(["evaluate", "--editor", "emcid", "--task", "smoke", "--model", "tiny", "--edits", "1",
                 "--device", "cpu", "--no-progress", "--no-log-samples", "--batch-size", "4",
                 "--editor-args", ARGS_TEXT, "--out", str(tmp_path / "runs")]) == 0
    hits, misses = _delta(before, "stats")
    assert hits > 0 and misses == 0, "iceb evaluate recomputed statistics the API had cached"
    assert _delta(before, "emcid-stage1") == (1, 0)

    reqs = tmp_path / "r.csv"
    reqs.write_text(f"source,destination,templates,seed\n{req.source},{req.destination},"
                    f"{'|'.join(req.templates)},{req.seed}\n")
    before = cache_tally()
    assert main(["edit", "--editor", "emcid", "--model", "tiny", "--device", "cpu", "--requests", str(reqs),
                 "--editor-args", ARGS_TEXT, "--out", str(tmp_path / "e.safetensors"), "--no-progress"]) == 0
    hits, misses = _delta(before, "stats")
    assert hits > 0 and misses == 0, "iceb edit recomputed statistics the API had cached"

    # the opt-out: nothing read, nothing written
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    before = cache_tally()
    assert main(["edit", "--editor", "emcid", "--model", "tiny", "--device", "cpu", "--requests", str(reqs),
                 "--editor-args", ARGS_TEXT, "--out", str(tmp_path / "f.safetensors"), "--no-progress",
                 "--no-editor-cache"]) == 0
    assert _delta(before, "stats")[0] == 0 and _delta(before, "stats")[1] > 0
    assert sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) == size

    capsys.readouterr()
    assert main(["cache", "ls"]) == 0
    out = capsys.readouterr().out
    assert str(root) in out and "editors/stats" in out and "editors/emcid/stage1" in out
    assert main(["env"]) == 0 and str(root) in capsys.readouterr().out


def test_api_opt_out_keeps_nothing(tiny_model):
    from iceb import edit_model

    root = Path(os.environ["ICEB_CACHE"])
    edit_model("emcid", tiny_model, [_smoke_request()], overrides=EMCID_ARGS, progress=False, cache_dir=False)
    assert not root.exists() or not any(f.is_file() for f in root.rglob("*"))
