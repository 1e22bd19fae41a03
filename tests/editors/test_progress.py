"""Progress that moves: EMCID stage I's bar advances by optimisation steps (not by finished concepts, which
left it at 0/32 for minutes), the statistics' bar by captions; one switch (``--no-progress``, or
``progress=False`` of a run) also silences diffusers', transformers' and huggingface_hub's bars."""
from __future__ import annotations

import subprocess
import sys

import pytest

from editors.emcid import EMCIDEditor, EMCIDHparams
from editors.requests import EditRequest


class Recorder:
    """A stand-in for tqdm that records what a bar was told."""

    made: list["Recorder"] = []

    def __init__(self, *args, total=None, desc="", unit="it", disable=False, **kw):
        self.total, self.desc, self.unit, self.disable = total, desc, unit, disable
        self.updates: list[int] = []
        self.postfix = ""
        Recorder.made.append(self)

    def update(self, n=1):
        self.updates.append(n)

    def set_postfix_str(self, s):
        self.postfix = s

    def close(self):
        pass

    def __iter__(self):  # pragma: no cover - the bars under test are driven by update()
        return iter(())


@pytest.fixture()
def recorder(monkeypatch):
    import editors.emcid as emcid
    import editors.stats as stats

    Recorder.made = []
    monkeypatch.setattr(emcid, "tqdm", Recorder)
    monkeypatch.setattr(stats, "tqdm", Recorder)
    return Recorder


def test_stage1_bar_counts_optimisation_steps(tiny_pipe, recorder):
    hp = EMCIDHparams(v_num_grad_steps=3, train_steps=1, concepts_per_batch=1)
    reqs = [EditRequest("cat", "dog", seed=1), EditRequest("tree", "bush", seed=2)]
    EMCIDEditor(hp, progress=True).compute_targets(tiny_pipe, reqs)
    (bar,) = [b for b in recorder.made if b.desc.startswith("EMCID stage I")]
    assert bar.unit == "step" and bar.total == 2 * 3  # two batches of one concept, three steps each
    assert bar.updates == [1] * 6  # it moves on every step, not once per finished batch
    assert bar.postfix == "2/2 concepts"


def test_statistics_bar_counts_captions(tiny_pipe, recorder):
    from editors.stats import collect_second_moments

    te = tiny_pipe.text_encoder
    fc2 = next(m for n, m in te.named_modules() if n.endswith("mlp.fc2"))
    texts = [f"a photo of thing {i}" for i in range(5)]
    collect_second_moments(te, tiny_pipe.tokenizer, {"fc2": fc2}, texts, batch_size=2)
    (bar,) = recorder.made
    assert bar.unit == "caption" and bar.total == 5 and bar.updates == [2, 2, 1]


def test_silence_reaches_the_libraries_bars():
    code = ("from iceb.utils.progress import silence_progress_bars; silence_progress_bars(); "
            "import os, diffusers.utils.logging as d, transformers.utils.logging as t, huggingface_hub.utils as h; "
            "print(d.is_progress_bar_enabled(), t.is_progress_bar_enabled(), h.are_progress_bars_disabled(), "
            "os.environ['TQDM_DISABLE'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "True", "1"]


def test_no_progress_flag_and_progress_false_call_the_switch(monkeypatch, capsys):
    import iceb.utils.progress as progress
    from iceb.cli import main

    calls = []
    monkeypatch.setattr(progress, "silence_progress_bars", lambda: calls.append(1))
    assert main(["edit", "--editor", "no-such-editor", "--requests", __file__, "--out", "x.safetensors"]) != 0
    assert calls == []
    assert main(["edit", "--editor", "no-such-editor", "--requests", __file__, "--out", "x.safetensors",
                 "--no-progress"]) != 0
    assert calls == [1]
    capsys.readouterr()

    from iceb.harness import EvalConfig
    from iceb.harness.run import Run

    Run(EvalConfig(progress=True))
    assert calls == [1]
    Run(EvalConfig(progress=False))
    assert calls == [1, 1]
