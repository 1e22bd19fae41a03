"""EMCID editor: stage I optimisation, batching, caches and the CLI (tiny model, CPU). The generic editor contract
(restore, keys, determinism, rounds) is tests/editors/test_editor_contract.py."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from editors import get_editor
from editors.emcid import EMCIDEditor, EMCIDHparams
from editors.emcid.stage1 import Stage1Settings, StageBatch, frozen, optimise_batch
from editors.hooks import fc2_name, tokenize
from editors.requests import EditRequest

REPO = Path(__file__).resolve().parents[2]
REQS = [EditRequest("cat", "dog", seed=11), EditRequest("red apple", "orange", seed=12),
        EditRequest("tree", "", kind="erase", seed=13)]



def _settings(**kw) -> Stage1Settings:
    base = {"layer": 10, "steps": 8, "lr": 0.2, "train_steps": 1, "train_size": 16}
    base.update(kw)
    return Stage1Settings(**base)


def test_stage1_lowers_the_objective_and_respects_the_clamp(tiny_pipe):
    """After optimisation the objective at fixed (x_t, t) draws is lower than at δ = 0; a tight clamp is active
    and never exceeded."""
    s = _settings(steps=25, lr=0.05)
    res = optimise_batch(tiny_pipe, REQS[:2], s)
    with frozen(tiny_pipe.text_encoder, tiny_pipe.unet, tiny_pipe.vae), torch.no_grad():
        b = StageBatch(tiny_pipe, REQS[:2], s)
        draws = [b.draw() for _ in range(6)]
        delta = torch.stack([r.delta for r in res])

        def objective(d):
            tot = 0
            for x_t, t in draws:
                n, txt, dec = b.losses(tiny_pipe.text_encoder, tiny_pipe.unet, d, x_t, t, s)
                tot = tot + n + s.text_align_weight * txt + dec
            return tot

        before, after = objective(torch.zeros_like(delta)), objective(delta)
    assert (after < before).all(), (before, after)
    torch.testing.assert_close(torch.stack([r.v_src for r in res]), b.v_src)
    tight = optimise_batch(tiny_pipe, REQS[:1], _settings(steps=4, clamp_norm_factor=0.01))[0]
    ratio = float(tight.delta.norm() / tight.v_src.norm())
    assert ratio <= 0.01 * (1 + 1e-5) and ratio > 0.0099, ratio


def test_erase_uses_the_empty_prompt_as_destination(tiny_pipe):
    s = _settings(steps=0)
    with frozen(tiny_pipe.text_encoder, tiny_pipe.unet, tiny_pipe.vae), torch.no_grad():
        b = StageBatch(tiny_pipe, REQS[2:], s)
        ref = tiny_pipe.text_encoder(tokenize(tiny_pipe.tokenizer, ["", "", ""])[0]).last_hidden_state
    torch.testing.assert_close(b.dst_emb, ref)


@pytest.mark.parametrize("layer", [1, 10, 11])  # the tail: many blocks, one block, none (L is the last block)
def test_text_tail_is_the_full_forward_with_delta_added(tiny_pipe, layer):
    from editors.emcid.stage1 import TextTail
    from editors.hooks import add_at_positions, text_layers

    te = tiny_pipe.text_encoder
    ids, _ = tokenize(tiny_pipe.tokenizer, ["a photo of a cat", "dog", "an image of a red apple tree"])
    rows, cols = torch.tensor([0, 1, 2]), torch.tensor([5, 1, 7])
    vec = torch.randn(3, te.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        with add_at_positions(text_layers(te)[layer], rows, cols, vec):
            ref = te(ids)
        last, pooled = TextTail(te, ids, layer)(rows, cols, vec)
    torch.testing.assert_close(last, ref.last_hidden_state, rtol=0, atol=1e-6)
    torch.testing.assert_close(pooled, ref.pooler_output, rtol=0, atol=1e-6)
    v = vec.clone().requires_grad_(True)  # and the gradient reaches the added vectors (not through a plain
    TextTail(te, ids, layer)(rows, cols, v)[0].pow(2).sum().backward()  # sum: Σ LayerNorm(x) is flat in x)
    assert v.grad is not None and v.grad.abs().sum() > 0


def test_training_images_batched_across_requests_are_the_per_request_images(tiny_pipe, monkeypatch):
    """One pipeline call from each request's own latents makes the images per-request calls make (the flip
    draw after them included); a scheduler that draws noise while sampling keeps the per-request calls."""
    from diffusers import EulerAncestralDiscreteScheduler

    from editors.emcid import stage1

    s = _settings(train_steps=2)
    reqs = REQS + [EditRequest("car", "bus", templates=("a {}", "{} on a road"), seed=14)]
    batched = stage1.training_latent_dists(tiny_pipe, reqs, s, max_images=5)  # calls that split a request
    assert stage1._batchable(tiny_pipe)
    monkeypatch.setattr(stage1, "_batchable", lambda pipe: False)
    single = stage1.training_latent_dists(tiny_pipe, reqs, s)
    assert [m.shape[0] for m, _ in batched] == [len(r.templates) for r in reqs]
    for (m1, s1), (m2, s2) in zip(batched, single):
        torch.testing.assert_close(m1, m2, rtol=0, atol=1e-5)
        torch.testing.assert_close(s1, s2, rtol=0, atol=1e-5)
    monkeypatch.undo()
    ancestral = type(tiny_pipe)(**{**tiny_pipe.components,
                                    "scheduler": EulerAncestralDiscreteScheduler.from_config(tiny_pipe.scheduler.config)})
    assert not stage1._batchable(ancestral)


def test_batched_equals_one_at_a_time(tiny_pipe):
    """Summed per-concept losses, elementwise Adam and per-concept generators: a batch of concepts gives each
    concept the δ it gets alone (to float32 reordering: relative difference < 1e-4)."""
    s = _settings(steps=10)
    batched = optimise_batch(tiny_pipe, REQS, s)
    for r, b in zip(REQS, batched):
        single = optimise_batch(tiny_pipe, [r], s)[0]
        err = float((single.delta - b.delta).norm() / single.delta.norm())
        assert err < 1e-4, (r.source, err)
        torch.testing.assert_close(single.losses, b.losses, rtol=1e-4, atol=1e-7)


def _hp(**kw) -> EMCIDHparams:
    base = EMCIDEditor.load_hparams("tiny").to_dict()
    base.update({"layers": [2, 4, 6], "v_num_grad_steps": 3, "train_size": 16, "train_steps": 1,
                 "mom2_n_samples": 120})
    base.update(kw)
    return EMCIDHparams.from_dict(base)


def test_edit_changes_the_chosen_layers_and_reuses_its_caches(tiny_pipe, tmp_path):
    """The generic contract (pipeline left bit-identical, keys, determinism) is tests/editors/test_editor_contract.py."""
    pipe = tiny_pipe
    ed = EMCIDEditor(_hp(), cache_dir=tmp_path, progress=False)
    res = ed.edit(pipe, REQS)
    te = pipe.text_encoder
    assert set(res.tensors) == {fc2_name(te, l) for l in (2, 4, 6)}
    for l in (2, 4, 6):
        assert not torch.equal(res.tensors[fc2_name(te, l)], te.encoder.layers[l].mlp.fc2.weight)
    assert ed.stats_cache.puts == 3 and ed.stats_cache.hits == 0
    assert res.info["stage1_cache_hits"] == 0 and set(res.timings) == {"stage1", "stats", "debias", "stage2"}
    # a second editor on the same cache: statistics loaded, stage I loaded, identical result
    ed2 = EMCIDEditor(_hp(), cache_dir=tmp_path, progress=False)
    res2 = ed2.edit(pipe, REQS)
    assert ed2.stats_cache.puts == 0 and ed2.stats_cache.hits == 3
    assert len(list((tmp_path / "emcid" / "cholesky").glob("*/*.safetensors"))) == 3  # C's factors, reused
    assert res2.info["stage1_cache_hits"] == len(REQS)
    for k in res.tensors:
        assert torch.equal(res.tensors[k], res2.tensors[k])
    # other stage-I hparams miss the stage-I cache but keep using the statistics
    ed3 = EMCIDEditor(_hp(v_lr=0.1), cache_dir=tmp_path, progress=False)
    res3 = ed3.edit(pipe, REQS[:1])
    assert res3.info["stage1_cache_hits"] == 0 and ed3.stats_cache.puts == 0


def test_missing_corpus_is_a_clear_error(tiny_pipe, tmp_path):
    ed = EMCIDEditor(_hp(mom2_dataset=str(tmp_path / "nope.txt"), v_num_grad_steps=0), cache_dir=tmp_path,
                     progress=False)
    with pytest.raises(FileNotFoundError, match="mom2_dataset"):
        ed.edit(tiny_pipe, REQS[:1])


def test_shipped_hparams_load():
    E = get_editor("emcid")
    sd = E.load_hparams("sd-1.4")
    assert sd.layers == tuple(range(11)) and sd.v_num_grad_steps == 200 and sd.v_lr == 0.2
    assert (sd.clamp_norm_factor, sd.v_weight_decay, sd.text_align_weight) == (1.5, 5e-4, 0.01)
    assert (sd.mom2_update_weight, sd.edit_weight, sd.mom2_dataset, sd.mom2_n_samples) == (4000, 0.6, "ccs", 100000)
    assert E.load_hparams("sd-1.4", preset="rectification").edit_weight == 0.5
    art = E.load_hparams("sd-1.4", preset="artists")
    assert art.layers == (7, 8, 9, 10) and art.v_num_grad_steps == 100 and art.edit_weight == 0.5
    assert E.load_hparams("toy").layers == (0, 1, 2) and E.load_hparams("toy").mom2_dataset == "toy"
    assert E.supports == frozenset({"update", "erase", "rectify", "debias"})
    assert E.load_hparams("sd-1.4", preset="debias").edit_weight == 0.5  # sh_scripts/debias.sh, eval_debias.py
    d = E.load_hparams("sd-1.4")  # get_factors' defaults, --max_iters=10
    assert (d.debias_images, d.debias_iterations, d.debias_step, d.debias_tolerance) == (25, 10, 0.4, 0.02)
    assert d.debias_prompt == "an image of {}"


def test_cli_evaluate_smoke_end_to_end(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "iceb", "evaluate", "--editor", "emcid", "--model", "tiny", "--task", "smoke",
           "--edits", "1,2", "--out", str(tmp_path), "--no-progress",
           "--editor-args", "v_num_grad_steps=2,train_steps=1,mom2_n_samples=100"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    runs = [p for p in tmp_path.iterdir() if p.name.startswith("emcid-smoke-")]
    assert len(runs) == 1
    rows = (runs[0] / "results.jsonl").read_text()
    assert '"n_edits": 1' in rows and '"n_edits": 2' in rows
    from safetensors.torch import load_file

    delta = load_file(str(runs[0] / "edits" / "n2.safetensors"))
    assert len(delta) == 11 and all(".mlp.fc2.weight" in k for k in delta)


def test_info_counts_the_concepts_whose_delta_ended_on_the_clamp(tiny_pipe, tmp_path):
    tight = EMCIDEditor(_hp(clamp_norm_factor=0.01), cache_dir=tmp_path, progress=False).edit(tiny_pipe, REQS)
    assert tight.info["stage1_at_clamp"] == len(REQS)
    assert list(tight.info["stage1_at_clamp_by_request"].values()) == [True] * len(REQS)
    assert all(abs(r - 0.01) < 1e-6 for r in tight.info["delta_norm_ratio"])
    loose = EMCIDEditor(_hp(clamp_norm_factor=100.0), cache_dir=tmp_path, progress=False).edit(tiny_pipe, REQS)
    assert loose.info["stage1_at_clamp"] == sum(r >= 100.0 * (1 - 1e-4) for r in loose.info["delta_norm_ratio"]) == 0
