"""A hostile user's bad inputs: every one ends in one clear error line, no traceback, nothing written.

Each case runs in-process through ``iceb.cli.main(argv)`` in a fresh temporary folder (the working
directory). The rule checked for every case:

* the exit status is not 0: ``main`` returns it, or argparse raises ``SystemExit`` with it;
* nothing says ``Traceback`` on stdout or stderr;
* **parse errors** (argparse, ``SystemExit``): stderr is argparse's usage block (lines starting with
  ``usage:`` or with white space) followed by exactly one last line ``iceb <command...>: error: argument
  --flag: ...`` (or ``iceb <command...>: error: ...`` for a missing/invalid positional or choice);
* **run errors** (``main`` returns): stderr ends with exactly one line starting with ``iceb: error: `` — the
  lines before it may only be warnings (a line saying ``warning``, as ``iceb: warning: ...`` or Python's
  ``file:line: UserWarning: ...``, or the indented source line that follows a Python warning);
* the message matches the case's pattern (it names the flag, file, key or what to do);
* the temporary folder holds exactly the files the case put there: nothing was written.

Every case fails before a model loads (or with ``--model tiny``); the file runs in seconds once torch is
imported.
"""
from __future__ import annotations

import errno
import json
import os
import re
import struct
from pathlib import Path

import pytest

from iceb.cli import main

os.environ.setdefault("ICEB_OFFICIAL_DATA", str(Path(__file__).resolve().parents[3] / "shared" / "reference" /
                                              "emcid" / "data" / "iceb_data"))

PARSE_ERROR = re.compile(r"^iceb( [\w-]+)*: error: ")
RUN_ERROR = "iceb: error: "
WARNING = re.compile(r"warning", re.I)  # 'iceb: warning: ...' or a Python warning (its next line is indented)

# --------------------------------------------------------------------------------------------------------
# files a case can ask for: name -> content (str, bytes, or a callable of the case folder)
# --------------------------------------------------------------------------------------------------------
GOOD_CSV = "source,destination\nPeacock,Ostrich\nHammerhead,Tiger Shark\n"


def _safetensors(size_claim: int | None = None) -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    body = b"\0" * 16
    data = struct.pack("<Q", len(header)) + header + body
    return data if size_claim is None else data[:size_claim]


def _model_folder(root: Path, *, drop: str | None = None, unet_weights: dict[str, bytes] | None = None,
                  info: object = None, index: object = None) -> None:
    comps = {"unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "scheduler": ["diffusers", "DDIMScheduler"]}
    root.mkdir(parents=True)
    idx = index if index is not None else {"_class_name": "StableDiffusionPipeline", **comps}
    (root / "model_index.json").write_text(idx if isinstance(idx, str) else json.dumps(idx))
    for comp in comps:
        if comp == drop:
            continue
        sub = root / comp
        sub.mkdir()
        if comp == "tokenizer":
            (sub / "vocab.json").write_text("{}")
            continue
        (sub / ("scheduler_config.json" if comp == "scheduler" else "config.json")).write_text("{}")
        if comp == "scheduler":
            continue
        weights = (unet_weights if comp == "unet" and unet_weights is not None
                   else {"diffusion_pytorch_model.safetensors": _safetensors()})
        for name, data in weights.items():
            (sub / name).write_bytes(data)
    if info is not None:
        (root / "iceb_model.json").write_text(info if isinstance(info, str) else json.dumps(info))


def _index_only(d: Path) -> None:
    _model_folder(d / "m")
    for sub in (d / "m").iterdir():
        if sub.is_dir():
            for f in sub.iterdir():
                f.unlink()
            sub.rmdir()


def model(**kw):
    return lambda d: _model_folder(d / "m", **kw)


def big_templates(d: Path) -> None:
    (d / "r.csv").write_text('source,destination,templates\nPeacock,Ostrich,"' + "[" * 50_000 + '"\n')


def task(text: str):
    return lambda d: (d / "t.yaml").write_text(text)


# --------------------------------------------------------------------------------------------------------
# the cases: (id, argv, files, pattern[, marks]); "{d}" in argv is the case folder
# --------------------------------------------------------------------------------------------------------
EV = ["evaluate", "--model", "tiny", "--out", "{d}/out"]
ED = ["edit", "--model", "tiny", "--requests", "{d}/r.csv", "--out", "{d}/e.safetensors"]
CASES: list = []


def case(cid, argv, pattern, files=None, marks=()):
    CASES.append(pytest.param(argv, files or {}, pattern, id=cid, marks=marks))


# -- numeric flags of iceb evaluate ---------------------------------------------------------------------------
for flag, values in {
    "--steps": ["0", "-5", "abc", "1.5", ""],
    "--batch-size": ["0", "-1", "x", "2.0"],
    "--limit": ["0", "-3", "many"],
    "--rounds": ["0", "-1", "two"],
    "--guidance": ["nan", "inf", "-inf", "-1", "abc", "", "NaN"],
}.items():
    for v in values:
        case(f"evaluate{flag}={v or 'empty'}", EV + [flag, v], re.escape(flag))
for v in ["1,,2", "0", "-1", "1,1", "a", "", ",", "1.5", "5,0", "3,-2"]:
    case(f"evaluate--edits={v or 'empty'}", EV + ["--edits", v], "--edits")
for v in ["tpu9", "cuda", "cuda:x", "cpu:1", "gpu", "", "cuda:99", "CPU"]:
    case(f"evaluate--device={v or 'empty'}", EV + ["--device", v], "--device")
for v in ["int8", "float64", "", "half"]:
    case(f"evaluate--dtype={v or 'empty'}", EV + ["--dtype", v], "--dtype")
for v in ["a,,b", "iceb-cls,iceb-cls", "", ","]:
    case(f"evaluate--metrics={v or 'empty'}", EV + ["--metrics", v], "--metrics")
for v in ["novalue", "=3", "lr=[1,2", "a=1,a=2", "lr=1]"]:
    case(f"evaluate--editor-args={v}", EV + ["--editor-args", v], "--editor-args")
case("evaluate--mode=bogus", EV + ["--mode", "bogus"], "--mode")
case("evaluate--hparams-missing", EV + ["--hparams", "{d}/nope.yaml"], "--hparams")
case("evaluate--hparams-folder", EV + ["--hparams", "{d}"], "--hparams")
case("evaluate--hparams-not-yaml", EV + ["--hparams", "{d}/h.txt"], "--hparams", {"h.txt": "v_lr: 1\n"})
case("evaluate--out-is-a-file", ["evaluate", "--model", "tiny", "--out", "{d}/f"], "is a file", {"f": "x"})
case("evaluate--out-under-a-file", ["evaluate", "--model", "tiny", "--out", "{d}/f/runs"], "is a file", {"f": "x"})
case("evaluate--out-empty", ["evaluate", "--model", "tiny", "--out", ""], "--out")

# -- cross-flag and registry checks of iceb evaluate (before the model loads) --------------------------------
case("rounds-without-sequential", EV + ["--rounds", "2"], "--rounds 2 needs --mode sequential")
case("rounds-exceed-edits", EV + ["--mode", "sequential", "--rounds", "3", "--edits", "2"], "--rounds 3 exceeds")
case("editor-not-an-editor", EV + ["--editor", "json:JSONDecoder"], "not an editor.*edit\\(pipe, requests\\)")
case("editor-not-a-class", EV + ["--editor", "json:dumps"], "not an editor")
case("editor-unknown", EV + ["--editor", "nosuch"], "unknown editor 'nosuch'")
case("editor-typo", EV + ["--editor", "emcd"], "Did you mean 'emcid'")
case("editor-missing-module", EV + ["--editor", "nosuch_pkg.mod:Editor"], "cannot import module")
case("editor-missing-attr", EV + ["--editor", "json:NoSuchEditor"], "has no attribute")
case("editor-bad-target", EV + ["--editor", ":Editor"], "not of the form")
case("preset-unknown", EV + ["--editor", "emcid", "--preset", "nosuch"], "no preset 'nosuch'.*presets: artists")
case("preset-typo", EV + ["--editor", "uce", "--preset", "uce-2024"], "did you mean 'uce-2025'")
for editor, kv, pat in [
    ("uce", "lambb=0.1", "--editor-args: unknown key 'lambb' for editor uce; did you mean 'lamb'"),
    ("emcid", "lr=0.1", "--editor-args: unknown key 'lr' for editor emcid"),
    ("emcid", "v_lr=-5", "--editor-args: key 'v_lr': must be > 0"),
    ("emcid", "v_lr=.nan", "--editor-args: key 'v_lr'.*not a finite number"),
    ("emcid", "v_lr=.inf", "--editor-args: key 'v_lr'.*not a finite number"),
    ("emcid", "v_lr=0", "--editor-args: key 'v_lr': must be > 0"),
    ("emcid", "v_lr=abc", "--editor-args: key 'v_lr': expected a number"),
    ("emcid", "v_num_grad_steps=-1", "--editor-args: key 'v_num_grad_steps': must be >= 0"),
    ("emcid", "v_num_grad_steps=1.5", "--editor-args: key 'v_num_grad_steps': expected an integer"),
    ("emcid", "edit_weight=2", "--editor-args: key 'edit_weight': must be in"),
    ("emcid", "edit_weight=0", "--editor-args: key 'edit_weight': must be in"),
    ("emcid", "mom2_n_samples=0", "--editor-args: key 'mom2_n_samples': must be >= 1"),
    ("emcid", "mom2_update_weight=-1", "--editor-args: key 'mom2_update_weight'"),
    ("emcid", "random_flip=maybe", "--editor-args: key 'random_flip': expected true/false"),
    ("emcid", "residual=bogus", "--editor-args: key 'residual'"),
    ("emcid", "layers=abc", "--editor-args: key 'layers': expected a list"),
    ("emcid", "layers=[-1,2]", "--editor-args: key 'layers'"),
    ("emcid", "train_steps=0", "--editor-args: key 'train_steps': must be >= 1"),
    ("uce", "lamb=-1", "--editor-args: key 'lamb': must be >= 0"),
    ("uce", "lamb=.nan", "--editor-args: key 'lamb'.*finite"),
    ("uce", "encode_batch_size=0", "--editor-args: key 'encode_batch_size'"),
    ("time", "lamb=.nan", "--editor-args: key 'lamb'.*finite"),
    ("esd-x", "lr=.nan", "--editor-args: key 'lr'.*finite"),
    ("esd-x", "lr=0", "--editor-args: key 'lr': must be > 0"),
    ("esd-u", "iterations=0", "--editor-args: key 'iterations': must be >= 1"),
    ("esd-x", "seed=-1", "--editor-args: key 'seed'"),
    ("rome", "v_lr=0", "--editor-args: key 'v_lr': must be > 0"),
    ("rome", "layer=-1", "--editor-args: key 'layer': must be >= 0"),
    ("rome", "v_prob_threshold=2", "--editor-args: key 'v_prob_threshold'"),
    ("rome", "solve=parallel", "--editor-args: key 'solve'"),
    ("rome", "mode=sequential", "--editor-args: unknown key 'mode'"),
]:
    case(f"editor-args-{editor}-{kv}", EV + ["--editor", editor, "--editor-args", kv], re.escape(pat).replace(
        re.escape(".*"), ".*"))
case("hparams-other-editor", EV + ["--editor", "emcid", "--hparams", "{d}/h.yaml"], "file is for editor 'uce'",
     {"h.yaml": "editor: uce\nlamb: 0.1\n"})
case("hparams-unknown-key", EV + ["--editor", "emcid", "--hparams", "{d}/h.yaml"], "h.yaml: unknown key 'lrr'",
     {"h.yaml": "lrr: 0.1\n"})
case("hparams-nan", EV + ["--editor", "emcid", "--hparams", "{d}/h.yaml"], "h.yaml: key 'v_lr'.*finite",
     {"h.yaml": "v_lr: .nan\n"})
case("hparams-negative", EV + ["--editor", "emcid", "--hparams", "{d}/h.yaml"], "h.yaml: key 'v_lr': must be > 0",
     {"h.yaml": "v_lr: -5\n"})
case("hparams-malformed", EV + ["--editor", "emcid", "--hparams", "{d}/h.yaml"], "malformed YAML in .*h.yaml",
     {"h.yaml": "v_lr: [0.1\n"})
case("hparams-a-list", EV + ["--editor", "emcid", "--hparams", "{d}/h.yaml"], "expected a mapping",
     {"h.yaml": "- 1\n- 2\n"})
case("hparams-string-float", EV + ["--editor", "emcid", "--hparams", "{d}/h.yaml"], "key 'v_lr': expected a number",
     {"h.yaml": "v_lr: '5e-1'\n"})
case("metric-unknown", EV + ["--metrics", "nosuch"], "--metrics: unknown metric 'nosuch'")
case("metric-typo", EV + ["--metrics", "iceb-cl"], "Did you mean 'iceb-cls'")
case("task-unknown", EV + ["--task", "nosuch"], "--task: unknown task 'nosuch'")
case("task-typo", EV + ["--task", "smok"], "Did you mean 'smoke'")
case("task-file-missing", EV + ["--task", "{d}/t.yaml"], "no such task file")
case("task-file-folder", EV + ["--task", "{d}/t.yaml"], "is a folder", {"t.yaml/x": "x"})
case("task-wrong-extension", EV + ["--task", "{d}/t.txt"], "unknown task", {"t.txt": "x"})
case("edits-above-task", EV + ["--task", "smoke", "--edits", "11"], "supports 1 to 10 edits; got 11")
case("edits-5000", EV + ["--task", "smoke", "--edits", "1,5000"], "got 5000")

# -- user task files -------------------------------------------------------------------------------------------
REQ = "requests:\n  - {source: Peacock, destination: Ostrich, source_class: %s, destination_class: 9}\n"
for cid, text, pat in [
    ("class-id-5000", REQ % 5000, "source_class: class id 5000 is not a class of the imagenet world \\(0..999\\)"),
    ("class-id-negative", REQ % -3, "class id -3 is not a class"),
    ("class-name-unknown", REQ % "'nosuchbird'", "unknown class name 'nosuchbird'"),
    ("class-table-id", "classes: {'my fish': 4000}\n" + REQ % 1, "classes\\['my fish'\\]: class id 4000"),
    ("eval-two-slots", REQ % 1 + "eval:\n  - {prompt: 'A {} and a {}'}\n", "holds 2 '\\{\\}' slots"),
    ("eval-unknown-key", REQ % 1 + "eval:\n  - {prompt: 'A {}', sed: 1}\n", "unknown key\\(s\\) 'sed'"),
    ("eval-class-5000", REQ % 1 + "eval:\n  - {prompt: 'A cat', class: 5000}\n", "class id 5000"),
    ("eval-seed-huge", REQ % 1 + "eval:\n  - {prompt: 'A {}', seed: 100000000000000000000000}\n", "2\\*\\*63"),
    ("eval-not-list", REQ % 1 + "eval: 3\n", "'eval' must be a list"),
    ("eval-holdout-no-concept", REQ % 1 + "eval:\n  - {prompt: 'A {}', subset: holdout}\n", "needs a 'concept'"),
    ("eval-bad-subset", REQ % 1 + "eval:\n  - {prompt: 'A {}', subset: nosuch}\n", "subset 'nosuch'"),
    ("task-malformed-yaml", "requests: [\n", "malformed YAML"),
    ("task-empty", "", "'requests' must be a list|no 'requests'"),
    ("task-unknown-top", "reqs: []\n", "unknown top-level key"),
    ("task-seed-huge", "requests:\n  - {source: A, destination: B, seed: 100000000000000000000000}\n", "2\\*\\*63"),
    ("task-seed-negative", "requests:\n  - {source: A, destination: B, seed: -1}\n", "seed -1"),
    ("task-template-no-slot", "requests:\n  - {source: A, destination: B, templates: ['A photo']}\n",
     "exactly one '\\{\\}'"),
    ("task-edits-zero", REQ % 1 + "edits: [0]\n", "'edits'"),
    ("task-metrics-not-list", REQ % 1 + "metrics: iceb-cls\n", "'metrics' must be a list"),
    ("task-world-mismatch", "world: toy\n" + REQ % 1, "the task is for the 'toy' world"),
]:
    case(f"task-file-{cid}", EV + ["--task", "{d}/t.yaml"], pat, {"t.yaml": text})

# -- broken model folders (refused before diffusers sees them) ----------------------------------------------
for cid, kw, pat in [
    ("only-model-index", None, "component folder unet/ is missing"),
    ("no-unet", {"drop": "unet"}, "component folder unet/ is missing"),
    ("no-vae", {"drop": "vae"}, "component folder vae/ is missing"),
    ("unet-no-weights", {"unet_weights": {}}, "no weights"),
    ("unet-truncated", {"unet_weights": {"diffusion_pytorch_model.safetensors": _safetensors(60)}}, "truncated"),
    ("unet-tiny-file", {"unet_weights": {"diffusion_pytorch_model.safetensors": b"abc"}}, "truncated"),
    ("unet-bin-only", {"unet_weights": {"diffusion_pytorch_model.bin": b"\x80\x04K\x01."}}, "convert the model to"
                                                                                          " safetensors|Convert"),
    ("unet-ckpt-only", {"unet_weights": {"model.ckpt": b"\x80\x04."}}, "pickle weights"),
    ("info-unknown-key", {"info": {"family": "tiny", "wrld": "imagenet"}}, "iceb_model.json: unknown key.*'wrld'"),
    ("info-bad-json", {"info": "{family: tiny}"}, "iceb_model.json: not valid JSON \\(line 1 column 2"),
    ("info-not-object", {"info": "[1, 2]"}, "iceb_model.json: expected a JSON object"),
    ("info-bad-world", {"info": {"world": "mars"}}, "'world' must be one of"),
    ("info-bad-steps", {"info": {"generation": {"num_inference_steps": 0}}}, "generation.num_inference_steps"),
    ("info-bad-generation-key", {"info": {"generation": {"stepz": 3}}}, "'generation' must be an object"),
    ("index-bad-json", {"index": "{oops"}, "model_index.json: not valid JSON"),
    ("index-not-sd", {"index": {"_class_name": "X"}}, "lists no unet"),
]:
    files = {"": model(**kw)} if kw is not None else {"": _index_only}
    case(f"model-{cid}", ["evaluate", "--model", "{d}/m", "--out", "{d}/out"], pat, files)
case("model-info-not-utf8", ["evaluate", "--model", "{d}/m", "--out", "{d}/out"], "iceb_model.json: not UTF-8",
     {"": lambda d: (_model_folder(d / "m"), (d / "m" / "iceb_model.json").write_bytes(b'{"family": "\xff"}'))})
case("model-no-model-index", ["evaluate", "--model", "{d}/m", "--out", "{d}/out"], "no model_index.json",
     {"m/unet/config.json": "{}"})
case("model-spec-nonsense", ["evaluate", "--model", "not a model", "--out", "{d}/out"], "neither a built-in name")
case("model-spec-file", ["evaluate", "--model", "{d}/f.safetensors", "--out", "{d}/out"], "is a file, not a model",
     {"f.safetensors": "x"})
case("edit-model-bin-only", ["edit", "--editor", "noop", "--model", "{d}/m", "--requests", "{d}/r.csv", "--out",
                             "{d}/e.safetensors"], "pickle weights",
     {"r.csv": GOOD_CSV, "": model(unet_weights={"diffusion_pytorch_model.bin": b"\x80\x04."})})

# -- iceb edit -------------------------------------------------------------------------------------------------
for flag, v in [("--rounds", "0"), ("--rounds", "x"), ("--device", "tpu9"), ("--device", "cuda"), ("--dtype", "int8"),
                ("--editor-args", "novalue"), ("--editor-args", "a=[1")]:
    case(f"edit{flag}={v}", ED + ["--editor", "noop", flag, v], re.escape(flag), {"r.csv": GOOD_CSV})
case("edit--out-folder", ["edit", "--editor", "noop", "--requests", "{d}/r.csv", "--out", "{d}/o"],
     "--out.*is a folder", {"r.csv": GOOD_CSV, "o/x": "x"})
case("edit--out-not-safetensors", ["edit", "--editor", "noop", "--requests", "{d}/r.csv", "--out", "{d}/e.pt"],
     "must end in .safetensors", {"r.csv": GOOD_CSV})
case("edit--out-under-file", ["edit", "--editor", "noop", "--requests", "{d}/r.csv", "--out", "{d}/f/e.safetensors"],
     "is a file, not a folder", {"r.csv": GOOD_CSV, "f": "x"})
case("edit--requests-missing", ["edit", "--editor", "noop", "--requests", "{d}/nope.csv", "--out", "{d}/e.safetensors"],
     "--requests.*no such file")
case("edit--requests-folder", ["edit", "--editor", "noop", "--requests", "{d}", "--out", "{d}/e.safetensors"],
     "--requests.*is a folder")
case("edit-missing-editor", ["edit", "--requests", "{d}/r.csv"], "--editor", {"r.csv": GOOD_CSV})
case("edit-rounds-batch", ED + ["--editor", "noop", "--rounds", "2"], "needs --mode sequential", {"r.csv": GOOD_CSV})
case("edit-rounds-too-many", ED + ["--editor", "noop", "--mode", "sequential", "--rounds", "5"],
     "--rounds must be between 1 and the number of requests \\(2\\)", {"r.csv": GOOD_CSV})
case("edit-editor-json", ED + ["--editor", "json:JSONDecoder"], "not an editor", {"r.csv": GOOD_CSV})
case("edit-preset", ED + ["--editor", "rome", "--preset", "nosuch"], "no preset 'nosuch'", {"r.csv": GOOD_CSV})
case("edit-editor-args-key", ED + ["--editor", "emcid", "--editor-args", "vlr=1"],
     "--editor-args: unknown key 'vlr' for editor emcid; did you mean 'v_lr'", {"r.csv": GOOD_CSV})
for cid, name, content, pat in [
    ("csv-templates-50000", "r.csv", big_templates, "r.csv row 1 \\(line 2\\): templates cell is 50000 characters"),
    ("csv-templates-deep", "r.csv", 'source,destination,templates\nA,B,"' + "[" * 5000 + '"\n', "nested too deeply"),
    ("csv-templates-bad-literal", "r.csv", 'source,destination,templates\nA,B,"[A photo of {}"\n',
     "not a valid list literal"),
    ("csv-templates-not-strings", "r.csv", 'source,destination,templates\nA,B,"[1, 2]"\n', "must be a string"),
    ("csv-templates-no-slot", "r.csv", "source,destination,templates\nA,B,A photo\n", "exactly one '\\{\\}'"),
    ("csv-seed-huge", "r.csv", "source,destination,seed\nA,B,100000000000000000000000\n", "2\\*\\*63"),
    ("csv-seed-negative", "r.csv", "source,destination,seed\nA,B,-3\n", "seed -3"),
    ("csv-seed-text", "r.csv", "source,destination,seed\nA,B,abc\n", "seed must be an integer"),
    ("csv-empty", "r.csv", "", "empty CSV"),
    ("csv-header-only", "r.csv", "source,destination\n", "no edit requests|no requests|empty"),
    ("csv-unknown-column", "r.csv", "source,dst\nA,B\n", "unknown column\\(s\\) 'dst'"),
    ("csv-no-source", "r.csv", "destination\nB\n", "no 'source' column"),
    ("csv-field-count", "r.csv", "source,destination\nA,B,C\n", "3 fields but the header has 2"),
    ("csv-empty-source", "r.csv", "source,destination\n,B\n", "empty source"),
    ("csv-duplicate-source", "r.csv", "source,destination\nA,B\nA,C\n", "row 2|duplicate"),
    ("csv-chain", "r.csv", "source,destination\nA,B\nB,C\n", "cannot chain concepts"),
    ("csv-same", "r.csv", "source,destination\nA,A\n", "source and destination are the same"),
    ("csv-bad-kind", "r.csv", "source,destination,kind\nA,B,move\n", "kind 'move'"),
    ("csv-update-no-dest", "r.csv", "source,destination,kind\nA,,update\n", "needs a destination"),
    ("csv-not-utf8", "r.csv", b"source,destination\nA\xff,B\n", "r.csv: not UTF-8 text"),
    ("csv-quote", "r.csv", 'source,destination\n"A,B\n', "malformed CSV|fields"),
    ("csv-long-prompt", "r.csv", "source,destination\n" + "word " * 90 + ",B\n", "CLIP tokens long"),
    ("json-syntax", "r.json", '{"requests": [', "malformed JSON at line 1"),
    ("json-not-list", "r.json", '{"requests": 3}', "'requests' must be a list"),
    ("json-item-not-object", "r.json", "[1, 2]", "a request must be an object"),
    ("json-unknown-field", "r.json", '[{"source": "A", "destination": "B", "sed": 1}]', "unknown field\\(s\\) 'sed'"),
    ("json-deep", "r.json", "[" * 50_000, "nested too deeply"),
    ("json-empty", "r.json", "", "malformed JSON"),
    ("jsonl-bad-line", "r.jsonl", '{"source": "A", "destination": "B"}\n{oops\n', "line 2 is not valid JSON"),
    ("yaml-syntax", "r.yaml", "requests: [\n", "malformed YAML"),
    ("yaml-scalar", "r.yaml", "hello\n", "'requests' must be a list"),
    ("txt-extension", "r.txt", GOOD_CSV, "unknown request file type '.txt'"),
    ("no-extension", "r", GOOD_CSV, "unknown request file type"),
]:
    argv = ["edit", "--editor", "noop", "--model", "tiny", "--requests", "{d}/" + name, "--out", "{d}/e.safetensors"]
    case(f"edit-requests-{cid}", argv, pat, {name: content})

# -- iceb tasks, rectify, list, toy, leaderboard, generate ---------------------------------------------------
for v in ["0", "-1", "x"]:
    case(f"tasks--edits={v}", ["tasks", "show", "smoke", "--edits", v], "--edits")
case("tasks--edits-too-many", ["tasks", "show", "smoke", "--edits", "11"], "supports 1 to 10 edits")
case("tasks-unknown", ["tasks", "show", "smok"], "Did you mean 'smoke'")
case("tasks--world", ["tasks", "show", "smoke", "--world", "mars"], "--world")
case("tasks--data-dir", ["tasks", "show", "ace", "--data-dir", "{d}/nope"], "--data-dir.*no such folder")
case("tasks-no-action", ["tasks"], "required")
case("tasks-csv-two-tables", ["tasks", "show", "smoke", "--requests", "--prompts", "--format", "csv"], "one table")
case("tasks-subset-alone", ["tasks", "show", "smoke", "--subset", "edit"], "--subset needs --prompts")
case("tasks-world-vs-model", ["tasks", "show", "smoke", "--model", "tiny", "--world", "toy"], "disagrees with --model")
case("tasks-export-format", ["tasks", "export", "smoke", "--format", "xlsx", "--out", "{d}/t.csv"], "--format")
case("tasks-export-suffix", ["tasks", "export", "smoke", "--format", "esd-csv", "--out", "{d}/t.txt"], "must end in .csv")
case("tasks-export-edits", ["tasks", "export", "smoke", "--format", "esd-csv", "--edits", "11", "--out", "{d}/t.csv"],
     "supports 1 to 10 edits")
for flag, v in [("--images", "0"), ("--images", "-1"), ("--steps", "0"), ("--device", "tpu9"), ("--classes", "5000"),
                ("--classes", "-3"), ("--classes", "1,,2"), ("--classes", "a"), ("--classes", "1,1")]:
    case(f"rectify-score{flag}={v}", ["rectify", "score", "--out", "{d}/s.json", flag, v], re.escape(flag))
case("rectify-score--out-folder", ["rectify", "score", "--out", "{d}"], "--out.*is a folder")
case("rectify-score--out-txt", ["rectify", "score", "--out", "{d}/s.txt"], "must end in .json")
case("rectify-derive-missing", ["rectify", "derive", "{d}/nope.json"], "no such file")
case("rectify-derive-bad-json", ["rectify", "derive", "{d}/s.json"], "s.json: not valid JSON \\(line 1 column 2",
     {"s.json": "{oops"})
case("rectify-derive-not-utf8", ["rectify", "derive", "{d}/s.json"], "s.json: not UTF-8", {"s.json": b"\xff\xfe"})
case("rectify-derive--pool", ["rectify", "derive", "--pool", "all"], "--pool")
case("rectify-derive--data-dir", ["rectify", "derive", "--data-dir", "{d}/nope"], "--data-dir")
case("list-unknown", ["list", "nosuch"], "invalid choice")
case("unknown-command", ["nosuch"], "invalid choice")
case("unknown-flag", ["evaluate", "--nosuch"], "unrecognized arguments")
for cid, content, pat in [
    ("bad-json", "{oops", "c.json: not valid JSON \\(line 1 column 2"),
    ("not-utf8", b'{"a": "\xff"}', "c.json: not UTF-8 text"),
    ("not-object", "[1]", "expected a JSON object"),
    ("unknown-key", '{"nosuch_key": 1}', "unknown toy training config keys"),
]:
    case(f"toy-train--config-{cid}", ["toy", "train", "--config", "{d}/c.json", "--work", "{d}/w", "--out", "{d}/o"],
         pat, {"c.json": content})
case("toy-train--config-missing", ["toy", "train", "--config", "{d}/nope.json", "--work", "{d}/w", "--out", "{d}/o"],
     "no such file or folder: .*nope.json")
case("leaderboard-row-not-object", ["leaderboard", "{d}/run", "--out", "{d}/lb"],
     "results.jsonl: line 1 is valid JSON but a list", {"run/results.jsonl": "[1, 2]\n{}\n"})
case("leaderboard-row-number", ["leaderboard", "{d}/run", "--out", "{d}/lb"],
     "results.jsonl: line 1 is valid JSON but a int", {"run/results.jsonl": "3\n{}\n"})
case("leaderboard-row-not-object-no-out", ["leaderboard", "{d}/run", "--out", "{d}/run/lb"],
     "results.jsonl: line 1 is valid JSON but a list", {"run/results.jsonl": "[1, 2]\n{}\n", "run/lb/x": "x"})
case("generate-prompts-yaml-syntax", ["generate", "--model", "tiny", "--prompts", "{d}/p.yaml", "--out", "{d}/o"],
     "p.yaml: malformed YAML", {"p.yaml": "prompts: [a: b: c\n"})
case("generate-no-prompts", ["generate", "--model", "tiny", "--out", "{d}/o"], "no prompts")
case("generate-missing-out", ["generate", "--model", "tiny", "a cat"], "--out")
case("generate--steps=0", ["generate", "--model", "tiny", "a cat", "--steps", "0", "--out", "{d}/o"], "--steps")
case("generate--guidance=nan", ["generate", "--model", "tiny", "a cat", "--guidance", "nan", "--out", "{d}/o"],
     "--guidance")
case("generate--batch-size=0", ["generate", "--model", "tiny", "a cat", "--batch-size", "0", "--out", "{d}/o"],
     "--batch-size")

# -- iceb cache ------------------------------------------------------------------------------------------------
for v in ["tpu9", "cuda:99"]:
    case(f"apply--device={v}", ["apply", "{d}/e.safetensors", "--out", "{d}/o", "--device", v], "--device",
         {"e.safetensors": _safetensors()})
case("cache-no-subcommand", ["cache"], "cache_command|required")
case("cache-clear-needs-yes", ["cache", "clear"], "pass --yes to confirm")
case("cache-clear-unknown-kind", ["cache", "clear", "--kind", "nope", "--yes"], "--kind 'nope': no such cache kind")
case("cache-clear-kind-escapes", ["cache", "clear", "--kind", "../x", "--yes"], "no such cache kind")


# --------------------------------------------------------------------------------------------------------
# running one case
# --------------------------------------------------------------------------------------------------------
def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) + ("/" if p.is_dir() else "") for p in root.rglob("*"))


def _make(d: Path, files: dict) -> None:
    for name, content in files.items():
        if callable(content):
            content(d)
            continue
        p = d / name
        p.parent.mkdir(parents=True, exist_ok=True)
        (p.write_bytes if isinstance(content, bytes) else p.write_text)(content)


def run_cli(argv: list[str], capsys) -> tuple[int, bool, str, str]:
    try:
        rc, parse = main(argv), False
    except SystemExit as exit_:
        rc, parse = exit_.code, True
    out, err = capsys.readouterr()
    return rc, parse, out, err


def check_one_line(rc, parse, out, err, pattern) -> str:
    assert rc not in (0, None), f"exit status {rc}; stderr: {err}"
    assert "Traceback" not in out + err, out + err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines, "nothing on stderr"
    if parse:
        errors = [ln for ln in lines if PARSE_ERROR.match(ln)]
        assert len(errors) == 1 and lines[-1] == errors[0], err
        assert all(ln.startswith("usage:") or ln[:1].isspace() for ln in lines[:-1]), err
    else:
        errors = [ln for ln in lines if ln.startswith(RUN_ERROR)]
        assert len(errors) == 1 and lines[-1] == errors[0], err
        assert all(WARNING.search(ln) or ln[:1].isspace() for ln in lines[:-1]), err
    assert re.search(pattern, lines[-1]), f"{lines[-1]!r} does not match {pattern!r}"
    return lines[-1]


@pytest.fixture()
def folder(tmp_path, monkeypatch):
    d = tmp_path / "case"
    d.mkdir()
    monkeypatch.chdir(d)
    monkeypatch.delenv("ICEB_DEBUG", raising=False)
    return d


@pytest.mark.parametrize("argv,files,pattern", CASES)
def test_bad_input(argv, files, pattern, folder, capsys):
    _make(folder, files)
    before = _listing(folder)
    argv = [a.replace("{d}", str(folder)) for a in argv]
    rc, parse, out, err = run_cli(argv, capsys)
    check_one_line(rc, parse, out, err, pattern)
    assert _listing(folder) == before, "the command wrote files"


# --------------------------------------------------------------------------------------------------------
# the OSError family and unexpected errors: raised from inside a command, one line each
# --------------------------------------------------------------------------------------------------------
def _os(code, path="/data/runs/x"):
    return OSError(code, os.strerror(code), path)


OS_CASES = [
    ("ENOTDIR", _os(errno.ENOTDIR), "a part of this path is a file, not a folder: /data/runs/x: pass another --out"),
    ("EISDIR", IsADirectoryError(errno.EISDIR, "Is a directory", "/data/e.safetensors"),
     "is a folder, not a file: /data/e.safetensors"),
    ("EEXIST", FileExistsError(errno.EEXIST, "File exists", "/data/runs"), "is a file, not a folder: /data/runs: "
                                                                           "pass another --out"),
    ("EACCES", PermissionError(errno.EACCES, "Permission denied", "/data/runs"),
     "permission denied: /data/runs: choose a writable --out"),
    ("EPERM", PermissionError(errno.EPERM, "Operation not permitted", "/data/runs"), "operation not permitted"),
    ("EROFS", _os(errno.EROFS, "/ro/runs/abc/manifest.json"), "read-only file system: /ro/runs/abc/manifest.json"),
    ("ENOSPC", _os(errno.ENOSPC, "/data/e.safetensors"),
     "no space left on device: /data/e.safetensors: free space, then run the same command again to resume"),
    ("EDQUOT", _os(errno.EDQUOT), "disk quota exceeded: .*run the same command again"),
    ("ENOENT", FileNotFoundError(errno.ENOENT, "No such file or directory", "/nope"), "no such file or folder: /nope"),
    ("ENAMETOOLONG", _os(errno.ENAMETOOLONG), "file name too long"),
    ("EMFILE", _os(errno.EMFILE), "too many open files"),
    ("EIO", _os(errno.EIO), "input/output error"),
    ("rename", OSError(errno.EXDEV, "Invalid cross-device link", "/a", "/b"), "Invalid cross-device link: /a"),
    ("no-errno", OSError("something odd"), "something odd"),
    ("ENOSPC-no-path", OSError(errno.ENOSPC, "No space left on device"), "no space left on device"),
]


def _disk_full():
    from iceb.utils.io import _explain

    return _explain(OSError(errno.ENOSPC, "No space left on device"), Path("/data/runs/x/results.jsonl"))


INTERNAL_CASES = [
    ("TypeError", TypeError("unsupported operand"), "internal error \\(TypeError: unsupported operand\\); run with "
                                                    "--debug for the traceback and report it"),
    ("ZeroDivisionError", ZeroDivisionError("division by zero"), "internal error \\(ZeroDivisionError"),
    ("RuntimeError-multiline", RuntimeError("first\nsecond\n\nthird"), "internal error \\(RuntimeError: first second "
                                                                       "third\\)"),
    ("KeyError", KeyError("k"), "internal error \\(KeyError"),
    ("AssertionError", AssertionError(), "internal error \\(AssertionError: \\)"),
    ("RecursionError", RecursionError("maximum recursion depth exceeded"), "nested too deeply"),
    ("MemoryError", MemoryError(), "out of memory"),
    ("UnicodeDecodeError", UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), "not UTF-8"),
    ("ValueError-multiline", ValueError("line one\nline two"), "^iceb: error: line one line two$"),
    ("JSONDecodeError", json.JSONDecodeError("Expecting value", "x", 0), "Expecting value"),
]


@pytest.mark.parametrize("exc,pattern", [pytest.param(e, p, id=i) for i, e, p in OS_CASES + INTERNAL_CASES]
                         + [pytest.param("diskfull", "no space left while writing /data/runs/x/results.jsonl; free "
                                                     "some space and run the same command again", id="DiskFullError")])
def test_errors_from_inside(exc, pattern, folder, capsys, monkeypatch):
    import iceb.utils.registry as registry

    err = _disk_full() if exc == "diskfull" else exc

    def boom(*_a, **_k):
        raise err

    monkeypatch.setattr(registry, "describe_all", boom)
    rc, parse, out, errtext = run_cli(["list", "editors"], capsys)
    assert not parse
    check_one_line(rc, parse, out, errtext, pattern)


def test_permission_and_read_only_out_refused_at_parse(folder, capsys, monkeypatch):
    """Root ignores permissions, so os.access/statvfs are faked: the flag check names the folder."""
    real_access, real_statvfs = os.access, os.statvfs
    target = str(folder)
    monkeypatch.setattr(os, "access", lambda p, m, **k: False if str(p) == target else real_access(p, m, **k))
    rc, parse, out, err = run_cli(["evaluate", "--model", "tiny", "--out", f"{folder}/runs"], capsys)
    check_one_line(rc, parse, out, err, f"--out.*: .*permission denied writing in {re.escape(target)}")

    class RO:
        f_flag = os.ST_RDONLY

    monkeypatch.setattr(os, "statvfs", lambda p: RO() if str(p) == target else real_statvfs(p))
    rc, parse, out, err = run_cli(["edit", "--editor", "noop", "--requests", __file__, "--out",
                                   f"{folder}/e.safetensors"], capsys)
    check_one_line(rc, parse, out, err, "--out.*: .*read-only file system")
    assert _listing(folder) == []


def test_full_disk_during_edit_is_one_line(folder, capsys, monkeypatch):
    """A full disk while ``iceb edit`` writes: one line that says to free space and run again."""
    import iceb.editfile

    (folder / "r.csv").write_text(GOOD_CSV)

    def full(path, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(iceb.editfile, "save_edit", full)
    rc, parse, out, err = run_cli(["edit", "--editor", "noop", "--model", "tiny", "--requests", "r.csv", "--out",
                                   "e.safetensors", "--no-progress"], capsys)
    check_one_line(rc, parse, out, err, "no space left on device: e.safetensors: free space, then run the same "
                                        "command again to resume")


def test_debug_shows_the_traceback(folder, capsys, monkeypatch):
    import iceb.utils.registry as registry

    monkeypatch.setattr(registry, "describe_all", lambda *_: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        main(["--debug", "list", "editors"])
    with pytest.raises(ZeroDivisionError):
        main(["--traceback", "list", "editors"])
    monkeypatch.setenv("ICEB_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        main(["list", "editors"])


def test_interrupt_keeps_its_resume_message(folder, capsys, monkeypatch):
    import iceb.utils.registry as registry

    def interrupt(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(registry, "describe_all", interrupt)
    assert main(["list", "editors"]) == 130
    assert capsys.readouterr().err.strip() == "iceb: interrupted; run the same command again to resume"


def test_large_request_file_warns_before_validating(folder, caplog):
    from iceb.data import request_files

    rows = "".join(f"S{i},D{i}\n" for i in range(10_001))
    (folder / "big.csv").write_text("source,destination\n" + rows)
    with caplog.at_level("WARNING", logger="iceb"):
        rf = request_files.read_request_file(folder / "big.csv", validate=False)
    assert len(rf.requests) == 10_001
    assert any("10001 requests" in r.getMessage() and "validating them takes about" in r.getMessage()
               for r in caplog.records)


def test_partial_hparams_file_is_layered_over_the_family_file(folder, monkeypatch):
    """``--hparams FILE`` with one key keeps the family file's other values (tiny.yaml), then --editor-args win."""
    import argparse

    from editors import get_editor
    from editors.hparams import parse_overrides
    from iceb.commands._args import preflight

    (folder / "h.yaml").write_text("v_lr: 0.123\nclamp_norm_factor: 2.0\n")
    args = argparse.Namespace(command="edit", editor="emcid", model="tiny", preset=None, hparams="h.yaml",
                              editor_args="clamp_norm_factor=3.0", mode="batch", rounds=1)
    preflight(args)
    cls = get_editor("emcid")
    hp = cls.load_hparams("tiny", args.hparams, parse_overrides(args.editor_args))  # as the commands do
    shipped = cls.load_hparams("tiny")
    assert hp.v_lr == 0.123 and hp.clamp_norm_factor == 3.0
    assert hp.v_num_grad_steps == shipped.v_num_grad_steps != cls.hparams_class().v_num_grad_steps


def test_there_are_at_least_150_bad_inputs():
    assert len(CASES) + len(OS_CASES) + len(INTERNAL_CASES) + 1 >= 150
