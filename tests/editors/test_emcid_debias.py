"""EMCID's debiasing mode (tiny model, CPU): the official weight loop, the judge seeing the trial edit, the value as
the weighted sum of the two stage-I targets, and the refusals (no judge; an editor without a debiasing mode)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from editors import get_editor
from editors.emcid.debias import balance_weights, shares_of
from editors.hooks import fc2_name
from editors.requests import EditRequest, RequestError
from editors.run import make_editor, run_editor
from editors.weights import get_tensor

TEMPLATES = ("a photo of {}", "an image of {}", "{}")
DOCTOR = EditRequest("a doctor", "", TEMPLATES, seed=3, kind="debias", request_id="a doctor",
                     destinations=("a female doctor", "a male doctor"))
CHEAP = {"layers": [9, 10], "v_num_grad_steps": 2, "train_steps": 1, "mom2_n_samples": 100}


def _editor(**kw):
    cls = get_editor("emcid")
    return make_editor(cls, cls.load_hparams("tiny", overrides={**CHEAP, **kw}), progress=False)


def test_the_official_update_rule_and_step_decay():
    """Shares that never balance: the weights follow w ← max(w − step·(share − ½), 0), renormalised, with the
    official cumulative decay step -= step / 10 · i (0.4, 0.36, 0.288, ...), and at the cap the loop returns the
    last update, which was never judged (as get_factors does)."""
    out = balance_weights(lambda w: [0.6, 0.4], 2)  # the judge always gives 60% 'female'
    assert out.iterations == 10 and not out.converged
    steps = [0.4 * np.prod([1 - j / 10 for j in range(i + 1)]) for i in range(10)]
    assert steps[:3] == pytest.approx([0.4, 0.36, 0.288])
    for i in range(10):
        assert out.history[i]["weights"][0] == pytest.approx(0.5 - 0.1 * sum(steps[:i]), abs=1e-12)
    assert out.weights[0] == pytest.approx(0.5 - 0.1 * sum(steps), abs=1e-12)  # ≈ 0.3536
    assert sum(out.weights) == pytest.approx(1.0)
    clamped = balance_weights(lambda w: [1.0, 0.0], 2)  # always 'female': w_f is clamped at 0
    assert clamped.weights == [0.0, 1.0]


def test_twelve_of_25_stops_the_loop_but_the_released_exact_comparison_never_would():
    assert balance_weights(lambda w: [12 / 25, 13 / 25], 2).iterations == 1  # |12/25 − ½| = 0.02 (+2e-17)
    assert balance_weights(lambda w: [12 / 25, 13 / 25], 2, tolerance=0.019).iterations == 10  # as released
    assert shares_of(np.array([[0.6, 0.4], [0.2, 0.8], [0.5, 0.5]]), 2) == [2 / 3, 1 / 3]  # argmax, ties: first


def test_weight_loop_on_tiny_converges_and_the_value_is_the_weighted_sum(tiny_pipe):
    """The test judge reads the trial edit off the model it is called on: stage II's first edited layer changes
    affinely in the written value, so ΔW₉ = w_f·D_f + (1 − w_f)·D_m gives back w_f; image i is 'female' once
    w_f passes its threshold θ_i ∈ (0.6, 0.95), so the female share is a known increasing step function of w_f."""
    ed = _editor(debias_images=25)
    parts = ed.compute_targets(tiny_pipe, [DOCTOR.towards(d) for d in DOCTOR.destinations])
    covs, keys = ed.layer_stats(tiny_pipe)
    factors, solver = ed.stage2_solver(covs, keys, 1)
    name = fc2_name(tiny_pipe.text_encoder, 9)
    w0 = get_tensor(tiny_pipe, name).detach().clone().double()
    d_f, d_m = (ed.write(tiny_pipe, [DOCTOR], p.target[None], covs, factors, solver, progress=False)[0][name].double()
                - w0 for p in parts)
    thresholds = 0.6 + 0.35 * (np.arange(25) + 0.5) / 25
    seen = []

    def judge(images, labels):
        assert len(images) == 25 and images[0].dtype == np.uint8 and images[0].ndim == 3
        assert list(labels) == ["a female doctor", "a male doctor"]
        dw = get_tensor(tiny_pipe, name).detach().double() - w0 - d_m
        w_f = float((dw * (d_f - d_m)).sum() / ((d_f - d_m) ** 2).sum())
        seen.append(w_f)
        p = 1 / (1 + np.exp(-(w_f - thresholds) * 1000))
        return np.stack([p, 1 - p], 1)

    ed.set_judge(judge)
    target, bal = ed.balance(tiny_pipe, DOCTOR, parts, covs, keys)
    assert bal.converged and 1 < bal.iterations <= 10
    assert abs(bal.history[-1]["shares"][0] - 0.5) <= 0.02 + 1e-9
    assert seen == pytest.approx([h["weights"][0] for h in bal.history], abs=1e-3)  # the judge saw each trial
    assert sum(bal.weights) == pytest.approx(1.0)
    expected = bal.weights[0] * parts[0].target + bal.weights[1] * parts[1].target
    torch.testing.assert_close(target.target, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(get_tensor(tiny_pipe, name).double(), w0, rtol=0, atol=0)  # restored after trials

    # the whole edit: the same weights (same judge, cached stage I), reported in the result's info
    seen.clear()
    res = run_editor(ed, tiny_pipe, [DOCTOR, EditRequest("cat", "dog", seed=4)])
    info = res.info["debias"]["a doctor"]
    assert info["weights"] == pytest.approx(bal.weights) and info["converged"]
    assert set(res.losses) == {"stage1/a doctor->a female doctor", "stage1/a doctor->a male doctor", "stage1/1:cat"}
    assert res.timings["debias"] > 0 and fc2_name(tiny_pipe.text_encoder, 10) in res.tensors


def test_debias_requests_need_a_judge_and_editors_without_the_mode_are_refused(tiny_pipe):
    with pytest.raises(RequestError, match="need a judge.*set_judge"):
        _editor().check_requests([DOCTOR])
    uce = get_editor("uce")
    with pytest.raises(RequestError, match="uce has no debiasing mode.*editors with one: emcid$"):
        make_editor(uce, uce.load_hparams("tiny"), progress=False).check_requests([DOCTOR])
    before = get_tensor(tiny_pipe, fc2_name(tiny_pipe.text_encoder, 9)).clone()
    with pytest.raises(RequestError, match="no debiasing mode"):
        run_editor(make_editor(get_editor("emcid-ns"), None, progress=False), tiny_pipe, [DOCTOR])
    assert torch.equal(get_tensor(tiny_pipe, fc2_name(tiny_pipe.text_encoder, 9)), before)


def test_the_python_api_takes_the_judge(tiny_model):
    from iceb.editfile import edit_model

    overrides = {**CHEAP, "debias_images": 2, "debias_iterations": 1}
    with pytest.raises(RequestError, match="need a judge"):
        edit_model("emcid", tiny_model, [DOCTOR], overrides=overrides, progress=False, cache_dir=False)
    res, hp = edit_model("emcid", tiny_model, [DOCTOR], overrides=overrides, progress=False, cache_dir=False,
                         judge=lambda images, labels: np.tile([0.5, 0.5], (len(images), 1)))  # ties: 'female'
    assert hp.debias_iterations == 1 and res.info["debias"]["a doctor"]["last_shares"] == [1.0, 0.0]
