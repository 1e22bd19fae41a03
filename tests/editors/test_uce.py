"""UCE / TIME: the closed form against an independent least-squares solve, its limits, and its bookkeeping."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from editors import get_editor
from editors.hooks import align_tokens_greedy, cross_attention_modules
from editors.requests import EditRequest
from editors.uce import TIMEEditor, UCEEditor, UCEHparams, projection_names
from editors.weights import get_tensor

REQS = [EditRequest("cat", "dog"), EditRequest("racing car", "bicycle"), EditRequest("gravel", kind="erase")]
ROOT = Path(__file__).resolve().parents[2]


def _uce(**kw) -> UCEEditor:
    return UCEEditor(UCEHparams.from_dict(kw), progress=False)


# --- an independent reference: the 2023 code's slicing and a numpy ridge least-squares -------------------
@torch.no_grad()
def _embed(pipe, text):
    enc = pipe.tokenizer([text], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    emb = pipe.text_encoder(enc.input_ids)[0][0].double().numpy()
    return emb, int(enc.attention_mask.sum()) - 2


def _reference_rows(pipe, requests, preserve, tokens):
    """(edit blocks, guide blocks, preserve rows) as numpy arrays, written from the spec, not from uce.py."""
    edit, guide = [], []
    for r in requests:
        e, i = _embed(pipe, r.source)
        g, j = _embed(pipe, r.destination)  # "" for erase: UCE's ' ' guide tokenises the same
        if tokens == "2023":
            far = max(i, j)
            edit.append(e[i:77 - (far - i)])
            guide.append(g[j:77 - (far - j)])
        else:
            edit.append(e[i:i + 1])
            guide.append(g[j:j + 1])
    pres = []
    for p in preserve:
        e, i = _embed(pipe, p)
        pres.append(e if tokens == "2023" else e[i:i + 1])
    return edit, guide, pres


def _ridge(W, edit, targets, pres, lamb, s_e, s_p):
    """argmin over W' of s_e Σ||W'c − v||² + s_p Σ||W'c − Wc||² + λ||W' − W||², via lstsq on sqrt-weighted rows."""
    m = W.shape[1]
    A = [np.sqrt(lamb) * np.eye(m), np.sqrt(s_e) * np.concatenate(edit)]
    Y = [np.sqrt(lamb) * W.T, np.sqrt(s_e) * np.concatenate(targets)]
    if pres:
        P = np.concatenate(pres)
        A.append(np.sqrt(s_p) * P)
        Y.append(np.sqrt(s_p) * P @ W.T)
    sol, *_ = np.linalg.lstsq(np.concatenate(A), np.concatenate(Y), rcond=None)
    return sol.T


@pytest.mark.parametrize("technique", ["replace", "tensor"])
@pytest.mark.parametrize("tokens", ["2023", "2025"])
def test_matches_independent_ridge_lstsq(tiny_pipe, technique, tokens):
    hp = {"lamb": 0.3, "erase_scale": 2.0, "preserve_scale": 0.7, "technique": technique, "tokens": tokens,
          "preserve": ["a tree", "house"], "preserve_empty": "always"}
    res = _uce(**hp).edit(tiny_pipe, REQS)
    edit, guide, pres = _reference_rows(tiny_pipe, REQS, ["", "a tree", "house"], tokens)
    for name in projection_names(tiny_pipe.unet):
        W = get_tensor(tiny_pipe, name).detach().double().numpy()
        targets = []
        for e, g in zip(edit, guide):
            vg = g @ W.T
            if technique == "tensor":  # remove the guide's component along the edit block's own output
                u = e @ W.T
                u = u / np.linalg.norm(u)
                vg = vg - (u * vg).sum() * u
            targets.append(vg)
        ref = _ridge(W, edit, targets, pres, 0.3, 2.0, 0.7)
        new = res.tensors[name].double().numpy()
        err = np.abs(new - ref).max() / np.abs(ref).max()
        assert err < 1e-5, (name, err)
        assert np.abs(new - W).max() > 1e-4  # the edit did something


def test_no_edit_gives_identical_weights(tiny_pipe):
    res = _uce(erase_scale=0.0, preserve=["house"]).edit(tiny_pipe, REQS)
    for name, t in res.tensors.items():
        assert torch.equal(t, get_tensor(tiny_pipe, name))
    from editors.uce import Rows, uce_solve

    empty = Rows(torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, 2, dtype=torch.long), [],
                 torch.zeros(0, 2, dtype=torch.long))
    w = {"w": torch.randn(5, 32)}
    assert torch.equal(uce_solve(w, torch.randn(1, 77, 32), empty, lamb=0.5, erase_scale=1.0, preserve_scale=1.0)["w"],
                       w["w"])


def test_large_edit_scale_reaches_targets(tiny_pipe):
    """One key per prompt (2025 tokens), 3 keys in 32 dimensions: with s_e → ∞ W_new c = v* exactly."""
    res = _uce(lamb=0.5, erase_scale=1e7, preserve_scale=1.0, tokens="2025", preserve_empty="never").edit(tiny_pipe, REQS)
    edit, guide, _ = _reference_rows(tiny_pipe, REQS, [], "2025")
    for name in projection_names(tiny_pipe.unet):
        W = get_tensor(tiny_pipe, name).detach().double().numpy()
        new = res.tensors[name].double().numpy()
        for e, g in zip(edit, guide):
            target = g @ W.T
            assert np.linalg.norm(e @ new.T - target) < 1e-4 * np.linalg.norm(target) + 1e-6


@pytest.mark.parametrize("tokens", ["2023", "2025"])
def test_preserved_outputs_within_objective_bound(tiny_pipe, tokens):
    """f(W_new) ≤ f(W_old) gives s_p Σ_P ||ΔW c_j||² ≤ s_e Σ_E ||W_old c_i − v_i*||² (a bound the solve must obey),
    and a dominant preserve scale keeps preserved outputs nearly fixed."""
    preserve = ["a tree", "house", "a red boat"]
    for s_p, tight in ((1.0, False), (1e5, True)):
        res = _uce(erase_scale=1.0, preserve_scale=s_p, tokens=tokens, preserve=preserve).edit(tiny_pipe, REQS)
        edit, guide, pres = _reference_rows(tiny_pipe, REQS, [""] + preserve, tokens)
        for name in projection_names(tiny_pipe.unet):
            W = get_tensor(tiny_pipe, name).detach().double().numpy()
            new = res.tensors[name].double().numpy()
            moved = sum(np.sum((p @ (new - W).T) ** 2) for p in pres)
            budget = sum(np.sum((e @ W.T - g @ W.T) ** 2) for e, g in zip(edit, guide))
            assert s_p * moved <= 1.0 * budget * (1 + 1e-6)
            if tight:
                rel = np.sqrt(moved) / np.sqrt(sum(np.sum((p @ W.T) ** 2) for p in pres))
                assert rel < 1e-3, (name, rel)


def test_only_cross_attention_projections_change(tiny_pipe):
    res = UCEEditor(progress=False).edit(tiny_pipe, REQS)
    n_attn2 = len(cross_attention_modules(tiny_pipe.unet))
    assert n_attn2 > 0
    expected = {f"unet.{n}.{p}.weight" for n, _ in cross_attention_modules(tiny_pipe.unet) for p in ("to_k", "to_v")}
    assert set(res.tensors) == expected and len(expected) == 2 * n_attn2
    changed = [k for k, v in res.tensors.items() if not torch.equal(v, get_tensor(tiny_pipe, k))]
    assert len(changed) == len(expected)
    only_v = _uce(with_to_k=False).edit(tiny_pipe, REQS)
    assert set(only_v.tensors) == {k for k in expected if ".to_v." in k}


def test_token_slices_of_2023_and_2025_code(tiny_pipe):
    # "cat" -> "dog": last token at 1 for both -> positions 1..76 (76 keys); erase towards '': guide from BOS
    # (index 0), edit from 1 -> common length 76; two-token "racing car" (index 2) vs one-token guide -> 75.
    res = _uce().edit(tiny_pipe, REQS)
    assert res.info["n_edit_tokens"] == 76 + 75 + 76
    assert res.info["n_preserve_tokens"] == 77  # '' always preserved, all 77 positions
    assert res.info["preserve_scale"] == 1.0  # max(0.1, 1/1)
    res = _uce(tokens="2025", preserve_empty="never", preserve=["house"]).edit(tiny_pipe, REQS)
    assert res.info["n_edit_tokens"] == 3 and res.info["n_preserve_tokens"] == 1


def test_time_alignment_and_preset(tiny_pipe):
    # greedy id match; unmatched tokens take the next position; the rest follows the destination's padding
    assert align_tokens_greedy([0, 5, 6, 9, 1, 1, 1], [0, 5, 7, 6, 9, 1, 1]) == [0, 1, 3, 4, 5, 6, 6]
    assert align_tokens_greedy([0, 5, 8, 1, 1], [0, 5, 7, 1, 1]) == [0, 1, 2, 3, 4]
    assert align_tokens_greedy([0, 3, 1], [0, 4, 1], {3: 4}) == [0, 1, 2]
    tok = tiny_pipe.tokenizer
    a, an = tok("a", add_special_tokens=False).input_ids[0], tok("an", add_special_tokens=False).input_ids[0]
    from editors.uce import _equivalent_ids

    assert _equivalent_ids(tok) == {an: a}
    hp = TIMEEditor.load_hparams("sd-1.4")
    assert (hp.lamb, hp.preserve_scale, hp.tokens, hp.preserve_empty) == (0.1, 0.0, "all", "never")
    assert len(hp.templates) == 4
    res = TIMEEditor(hp, progress=False).edit(tiny_pipe, REQS[:2])
    assert res.info["n_edit_tokens"] == 2 * 4 * 77 and res.info["n_preserve_tokens"] == 0


def test_time_equals_uce_all_tokens_ridge(tiny_pipe):
    """TIME = the same ridge with every source token aligned by the greedy match, no preserve term."""
    hp = TIMEEditor.load_hparams("tiny", overrides={"templates": ["a photo of {}"]})
    req = [EditRequest("cat", "big dog")]
    res = TIMEEditor(hp, progress=False).edit(tiny_pipe, req)
    s, _ = _embed(tiny_pipe, "a photo of cat")
    d, _ = _embed(tiny_pipe, "a photo of big dog")
    ids = lambda t: tiny_pipe.tokenizer(t, padding="max_length", max_length=77).input_ids  # noqa: E731
    align = align_tokens_greedy(ids("a photo of cat"), ids("a photo of big dog"))
    assert align[:6] == [0, 1, 2, 3, 4, 6]  # "cat" -> "big"; EOS -> EOS
    for name in projection_names(tiny_pipe.unet)[:2]:
        W = get_tensor(tiny_pipe, name).detach().double().numpy()
        ref = _ridge(W, [s], [d[align] @ W.T], [], 0.1, 1.0, 0.0)
        assert np.abs(res.tensors[name].double().numpy() - ref).max() < 1e-5 * np.abs(ref).max()


def test_presets_and_bad_hparams():
    sd = UCEEditor.load_hparams("sd-1.4")
    assert (sd.lamb, sd.erase_scale, sd.preserve_scale, sd.technique, sd.tokens) == (0.5, 1.0, None, "replace", "2023")
    em = UCEEditor.load_hparams("sd-1.4", preset="emcid-baseline")
    got = (em.lamb, em.erase_scale, em.preserve_scale, em.technique, em.preserve_destinations)
    assert got == (0.1, 0.1, 0.1, "tensor", True)
    for fam in ("tiny", "toy"):
        assert UCEEditor.load_hparams(fam).tokens == "2023"
    from editors.hparams import HparamsError

    with pytest.raises(HparamsError, match="technique"):
        UCEEditor.load_hparams("sd-1.4", overrides={"technique": "bogus"})
    with pytest.raises(HparamsError, match="slot"):
        UCEEditor.load_hparams("sd-1.4", overrides={"templates": ["no slot"]})
    with pytest.raises(HparamsError, match="no preserve term"):
        TIMEEditor.load_hparams("sd-1.4", overrides={"preserve": ["house"]})


def test_emcid_baseline_preserves_destinations(tiny_pipe):
    hp = UCEEditor.load_hparams("tiny", preset="emcid-baseline")
    ed = UCEEditor(hp, progress=False)
    assert ed.preserve_prompts(REQS) == ["dog", "bicycle"]  # no '' when retain texts are given
    res = ed.edit(tiny_pipe, REQS)
    assert res.info["n_preserve_tokens"] == 2 * 77 and res.info["preserve_scale"] == 0.1


def test_registry_names():
    assert get_editor("uce") is UCEEditor and get_editor("time") is TIMEEditor


def test_cli_smoke_end_to_end(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "iceb", "evaluate", "--editor", "uce", "--model", "tiny", "--task", "smoke",
           "--edits", "1,2", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(tmp_path.rglob("*.jsonl"))
    assert rows, f"no result rows under {tmp_path}: {proc.stdout[-2000:]}"
