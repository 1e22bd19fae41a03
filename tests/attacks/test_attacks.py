"""The attacks' mechanics on the tiny pipeline (spec §4.6): the simplex projection, the slots of the white-box
attack, the genetic search's structure and progress, the text baselines, the ASR arithmetic, determinism."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from iceb.attacks import ATTACKS, get_attack
from iceb.attacks.base import AttackContext, AttackTarget
from iceb.attacks.text import misspellings
from iceb.attacks.unlearndiff import insert_prefix, project_simplex
from iceb.attacks.vocab import attack_vocab
from iceb.generation import GenerationConfig
from iceb.harness.attacks import asr_rows, sample_requests, union_records
from iceb.utils.registry import UnknownNameError

GEN = GenerationConfig(height=32, width=32, num_inference_steps=2, guidance_scale=5.0, batch_size=1)


def _bisection(v: torch.Tensor, iters: int = 200) -> torch.Tensor:
    """The official code's projection: bisection on tau in sum(clamp(v - tau, 0, 1)) = 1."""
    lo, hi = (v.min(-1, keepdim=True).values - 1), v.max(-1, keepdim=True).values
    for _ in range(iters):
        mid = (lo + hi) / 2
        s = (v - mid).clamp(0, 1).sum(-1, keepdim=True)
        lo, hi = torch.where(s > 1, mid, lo), torch.where(s > 1, hi, mid)
    return (v - (lo + hi) / 2).clamp(0, 1)


def test_simplex_projection_is_the_euclidean_projection():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(64, 300, generator=g, dtype=torch.float64) * 0.3
    u = project_simplex(v)
    assert (u >= 0).all() and (u <= 1).all()
    torch.testing.assert_close(u.sum(-1), torch.ones(64, dtype=torch.float64))
    torch.testing.assert_close(project_simplex(u), u)  # idempotent
    torch.testing.assert_close(u, _bisection(v), atol=1e-10, rtol=0)
    # the projection is the nearest point: no random point of the simplex is closer
    w = torch.distributions.Dirichlet(torch.ones(300, dtype=torch.float64)).sample((64,))
    assert ((v - u).norm(dim=-1) <= (v - w).norm(dim=-1) + 1e-12).all()


def test_insert_prefix_keeps_the_prompt_and_refuses_a_full_sequence():
    ids = [49406, 10, 11, 12, 49407] + [49407] * 5
    new, slots = insert_prefix(ids, 3, 99, 49407)
    assert new == [49406, 99, 99, 99, 10, 11, 12, 49407, 49407, 49407] and slots == [1, 2, 3]
    with pytest.raises(ValueError, match="no room"):
        insert_prefix([49406, 1, 2, 3, 4, 5, 6, 7, 49407, 49407], 3, 99, 49407)


def _target(pipe, prompt="An image of cat", reference=True):
    ref = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8) if reference else None
    return AttackTarget("r0", "cat", 0, prompt, 7, ("An image of {}", "{}"), ("kitty", "feline"), ref)


def _ctx(pipe, judge=None):
    vocab = np.arange(300, 800, dtype=np.int64)
    return AttackContext(pipe, GEN, vocab, judge)


def test_unlearndiff_sets_exactly_k_prefix_tokens_from_the_vocabulary(tiny_pipe):
    calls = []

    def judge(ids, seed):
        calls.append((list(ids), seed))
        return False, 0.1

    ctx = _ctx(tiny_pipe, judge)
    target = _target(tiny_pipe)
    attack = get_attack("unlearndiff", world="toy", n_timesteps=2, iterations=2, k=3)
    out = attack.search(ctx, target)
    orig = ctx.tokenize(target.prompt)
    assert len(out.ids) == len(orig) and out.ids[0] == orig[0]
    assert all(int(x) in set(ctx.vocab.tolist()) for x in out.ids[1:4])
    assert list(out.ids[4:]) == orig[1:len(orig) - 3]  # the original prompt follows, unchanged
    assert out.steps == 4 and len(calls) == 2 and all(s == 7 for _, s in calls)  # judged after each block
    assert [b["t"] for b in out.info["blocks"]] == attack.timesteps(1000) == [250, 750]
    # deterministic for a seed; another seed gives another search
    again = get_attack("unlearndiff", world="toy", n_timesteps=2, iterations=2, k=3).search(ctx, target)
    assert again.ids == out.ids
    other = get_attack("unlearndiff", world="toy", n_timesteps=2, iterations=2, k=3, seed=1).search(ctx, target)
    assert other.info["blocks"] != out.info["blocks"]


def test_unlearndiff_stops_at_the_first_success(tiny_pipe):
    ctx = _ctx(tiny_pipe, lambda ids, seed: (True, 0.9))
    out = get_attack("unlearndiff", world="toy", n_timesteps=3, iterations=1).search(ctx, _target(tiny_pipe))
    assert out.steps == 1 and len(out.info["blocks"]) == 1 and out.info["blocks"][0]["success"]


def test_unlearndiff_moves_the_distribution_and_leaves_the_model_untouched(tiny_pipe):
    before = {k: v.clone() for k, v in tiny_pipe.unet.state_dict().items()}
    grads = [p.requires_grad for p in tiny_pipe.unet.parameters()]
    ctx = _ctx(tiny_pipe, lambda ids, seed: (False, 0.0))
    out = get_attack("unlearndiff", world="toy", n_timesteps=1, iterations=5, lr=0.5).search(ctx, _target(tiny_pipe))
    # after 5 steps of lr 0.5 the argmax is no longer the uniform start's first id in every slot
    assert any(int(x) != int(ctx.vocab[0]) for x in out.ids[1:4])
    assert all(torch.equal(v, before[k]) for k, v in tiny_pipe.unet.state_dict().items())
    assert [p.requires_grad for p in tiny_pipe.unet.parameters()] == grads
    with pytest.raises(ValueError, match="unedited model's image"):
        get_attack("unlearndiff", world="toy").search(ctx, _target(tiny_pipe, reference=False))


def test_ringabell_keeps_the_frame_and_its_best_fitness_never_rises(tiny_pipe):
    ctx = _ctx(tiny_pipe)
    attack = get_attack("ringabell", world="toy", population=8, generations=6, length=5, eta=0.0)
    out = attack.search(ctx, _target(tiny_pipe))
    tok = tiny_pipe.tokenizer
    ids = list(out.ids)
    assert ids[0] == tok.bos_token_id and ids[6] == tok.eos_token_id and set(ids[7:]) == {tok.pad_token_id}
    assert all(int(x) in set(ctx.vocab.tolist()) for x in ids[1:6])
    best = [h["best_fitness"] for h in out.info["history"]]
    assert best == sorted(best, reverse=True) and out.info["fitness"] == best[-1]
    assert get_attack("ringabell", world="toy", population=8, generations=6, length=5,
                      eta=0.0).search(ctx, _target(tiny_pipe)).ids == out.ids  # deterministic
    with pytest.raises(ValueError, match="even"):
        get_attack("ringabell", population=7, generations=1).search(ctx, _target(tiny_pipe))


def test_ringabell_search_lowers_the_fitness_of_random_prompts(tiny_pipe):
    ctx = _ctx(tiny_pipe)
    short = get_attack("ringabell", population=16, generations=1, length=4).search(ctx, _target(tiny_pipe))
    long = get_attack("ringabell", population=16, generations=30, length=4).search(ctx, _target(tiny_pipe))
    assert long.info["fitness"] < short.info["fitness"]


def test_text_baselines_try_names_in_order_and_stop_at_a_success(tiny_pipe):
    seen = []

    def judge(ids, seed):
        seen.append(ids)
        return len(seen) == 2, 0.5

    ctx = _ctx(tiny_pipe, judge)
    out = get_attack("aliases").search(ctx, _target(tiny_pipe))
    assert out.steps == 2 and [t["name"] for t in out.info["tried"]] == ["kitty", "feline"]
    assert list(out.ids) == ctx.tokenize("An image of feline")
    assert misspellings("fonop") == ["fnoop", "fono", "ffonop", "f-onop"]
    with pytest.raises(ValueError, match="does not name the source"):
        get_attack("misspell").search(ctx, _target(tiny_pipe, prompt="An image of dog"))


def _rec(rid, pre, post, attacked=True, unedited=True, seconds=1.0):
    return {"request_id": rid, "pre_success": pre, "success": post, "p_source": 0.5, "seconds": seconds,
            "attacked": attacked, "unedited_success": unedited}


def test_asr_counts_a_pre_attack_success_once():
    rows = {r["metric"]: r for r in asr_rows([_rec("a", True, True, attacked=False, seconds=0.0),
                                              _rec("b", False, True, seconds=2.0),
                                              _rec("c", False, False, unedited=False, seconds=4.0)])}
    assert rows["asr"]["value"] == pytest.approx(2 / 3) and rows["pre_asr"]["value"] == pytest.approx(1 / 3)
    assert rows["asr"]["bound"] == pytest.approx(2 / 3) and rows["asr"]["n"] == 3 and rows["asr"]["n_groups"] == 3
    assert rows["seconds"]["value"] == 3.0 and rows["seconds"]["n"] == 2  # only the attacked requests cost
    assert rows["asr"]["ci_low"] <= rows["asr"]["value"] <= rows["asr"]["ci_high"]
    assert all(not r["higher_is_better"] for r in rows.values())
    # every request already succeeding: ASR = pre-ASR = 1, no cost row
    only = {r["metric"]: r for r in asr_rows([_rec("a", True, True, attacked=False)])}
    assert only["asr"]["value"] == only["pre_asr"]["value"] == 1.0 and "seconds" not in only


def test_request_sample_is_fixed_sorted_and_all_below_k():
    assert sample_requests("ace", 5, 16) == [0, 1, 2, 3, 4]
    s = sample_requests("ace", 32, 8)
    assert s == sorted(s) and len(set(s)) == 8 and s == sample_requests("ace", 32, 8)
    assert s != sample_requests("rectification", 32, 8)


def test_registry_and_budget_errors():
    from iceb.utils.registry import RegistryTypeError

    assert {"unlearndiff", "p4d", "ringabell", "aliases", "misspell"} <= set(ATTACKS.names())
    assert type(get_attack("iceb.attacks.text:Misspell")).__name__ == "Misspell"  # package.module:Class
    with pytest.raises(RegistryTypeError, match="not a subclass of Attack"):
        get_attack("json:JSONDecoder")
    with pytest.raises(UnknownNameError, match="Did you mean 'ringabell'"):
        get_attack("ringbell")
    with pytest.raises(ValueError, match="no setting 'stepz'.*iterations"):
        get_attack("unlearndiff", stepz=3)
    with pytest.raises(ValueError, match="iterations takes a int value, got 'many'"):
        get_attack("unlearndiff", iterations="many")
    assert get_attack("ringabell", eta=2).budget.eta == 2  # an int where a float is expected is fine
    assert get_attack("unlearndiff", world="toy").budget.iterations == 10
    assert get_attack("unlearndiff").budget.n_timesteps == 50  # the official schedule elsewhere


def test_seen_vocabulary_is_the_toy_captions_and_full_is_everything(tiny_pipe):
    tok = tiny_pipe.tokenizer
    full = attack_vocab(tok, "imagenet", "seen")
    assert len(full) == len(tok) - 2 and tok.bos_token_id not in full and tok.eos_token_id not in full
    seen = attack_vocab(tok, "toy", "seen")
    assert 50 < len(seen) < 1000
    trained = tok("a photo of the small on the right", add_special_tokens=False).input_ids
    assert set(trained) <= set(seen.tolist())
    with pytest.raises(ValueError, match="not one of"):
        attack_vocab(tok, "toy", "some")


def test_p4d_projects_onto_vocabulary_rows_and_matches_the_unedited_noise(tiny_pipe):
    calls = []
    ctx = _ctx(tiny_pipe, lambda ids, seed: (calls.append(ids) or False, 0.0))
    target = _target(tiny_pipe)
    attack = get_attack("p4d", world="toy", n_timesteps=2, iterations=3)
    assert attack.prepares and attack.budget.k == 5 and attack.budget.lr == 0.1
    prep = attack.prepare(ctx, target)
    assert prep["x_t"].shape[0] == prep["goal"].shape[0] == 6 and prep["t"].tolist() == [250] * 3 + [750] * 3
    # the targets are the unedited model's predictions with the original prompt, recomputed here
    cond = tiny_pipe.text_encoder(torch.tensor([ctx.tokenize(target.prompt)]))[0]
    with torch.no_grad():
        again = tiny_pipe.unet(prep["x_t"][4:5], prep["t"][4:5], encoder_hidden_states=cond).sample
    torch.testing.assert_close(again, prep["goal"][4:5], atol=1e-5, rtol=1e-5)
    out = attack.search(AttackContext(tiny_pipe, GEN, ctx.vocab, ctx.judge_ids, prepared=prep), target)
    orig = ctx.tokenize(target.prompt)
    assert all(int(x) in set(ctx.vocab.tolist()) for x in out.ids[1:6])  # projected: exact vocabulary rows
    assert list(out.ids[6:]) == orig[1:len(orig) - 5] and out.steps == 6 and len(calls) == 2
    assert attack.search(AttackContext(tiny_pipe, GEN, ctx.vocab, ctx.judge_ids, prepared=prep), target).ids == out.ids


def test_union_counts_a_request_when_any_attack_succeeds():
    a = [_rec("r1", False, False), _rec("r2", False, True), _rec("r3", True, True, attacked=False, seconds=0.0)]
    b = [_rec("r1", False, True), _rec("r2", False, False), _rec("r3", True, True, attacked=False, seconds=0.0)]
    u = union_records({"a": a, "b": b})
    assert [r["success"] for r in u] == [True, True, True] and [r["seconds"] for r in u] == [2.0, 2.0, 0.0]
    assert {r["metric"]: r["value"] for r in asr_rows(u)}["asr"] == 1.0
    with pytest.raises(ValueError, match="different requests"):
        union_records({"a": a, "b": b[:2]})
