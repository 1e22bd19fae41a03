"""SPEED: the closed form against independent float64 solutions of its stated objective, the projector's and the
update's invariants, IPF/DPA as the official code builds them, and the spec's CPU recipe
(shared/spec/more_baselines_and_attacks.md §1.13). References are built here with torch.linalg, from the spec."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from editors import get_editor
from editors.requests import EditRequest
from editors.speed import (
    SPEEDEditor,
    SPEEDHparams,
    dpa_direction,
    kmeans_centres,
    retain_moment,
    speed_delta,
    speed_delta_lowrank,
    speed_names,
    without_targets,
)
from editors.weights import get_tensor

REQS = [EditRequest("cat", "dog"), EditRequest("racing car", "bicycle"), EditRequest("gravel", kind="erase")]
RETAIN = ["a tree", "house", "a red boat", "lamp", "green river", "old castle", "violin", "penguin", "tall tower"]


def _speed(**kw) -> SPEEDEditor:
    return SPEEDEditor(SPEEDHparams.from_dict(kw), progress=False)


@torch.no_grad()
def _encode(pipe, texts):
    """(outputs n×77×m float64, last-token index mask.sum() − 2), as the official get_token_id + text_encoder."""
    enc = pipe.tokenizer(list(texts), padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    return pipe.text_encoder(enc.input_ids)[0].double(), enc.attention_mask.sum(1) - 2


def _last(pipe, texts):
    e, last = _encode(pipe, texts)
    return e[torch.arange(len(texts)), last]  # n×m rows


def _keys(pipe, requests):
    """Target and anchor keys (rows), bare names, last subject token (§1.2)."""
    return _last(pipe, [r.source for r in requests]), _last(pipe, [r.destination for r in requests])


def _null_projector(c, threshold):
    evals, evecs = torch.linalg.eigh(c)
    u = evecs[:, evals < threshold]
    gap = torch.cat([evals[evals < threshold][-1:], evals[evals >= threshold][:1]])
    assert gap.numel() < 2 or (gap[1] > 1.1 * threshold and gap[0] < 0.9 * threshold), "threshold sits on an eigenvalue"
    return u


def _kmeans_reference(x, k, seed=0, tol=1e-4):
    """kmeans_pytorch 0.3 (Lloyd, Euclidean, init = RandomState(seed).choice of distinct rows), as the spec says."""
    x = x.float()
    c = x[np.random.RandomState(seed).choice(len(x), k, replace=False)].clone()
    while True:
        a = torch.cdist(x, c).argmin(1)
        prev = c.clone()
        c = torch.stack([x[a == j].mean(0) for j in range(k)])
        if float((c - prev).norm(dim=1).sum()) ** 2 < tol:
            return c


def _constrained_lstsq(w, ct, ca, q, alpha, n_pairs=None):
    """argmin over Δ = Y Qᵀ of (1/N) Σ ||(W + Δ) c_i − W a_i||² + α ||Δ||², by lstsq on stacked rows (float64);
    N = the number of concepts (``n_pairs``), each contributing one or more keys."""
    n = n_pairs or ct.shape[0]
    lhs = torch.cat([ct @ q / n ** 0.5, alpha ** 0.5 * torch.eye(q.shape[1], dtype=torch.float64)])
    rhs = torch.cat([(ca - ct) @ w.T / n ** 0.5, torch.zeros(q.shape[1], w.shape[0], dtype=torch.float64)])
    y = torch.linalg.lstsq(lhs, rhs).solution.T
    return y @ q.T


# --- the editor's solve against its stated objective -----------------------------------------------------
@pytest.mark.parametrize("iec,all_tokens", [(0, "never"), (3, "never"), (3, "always")])
def test_edit_equals_the_constrained_least_squares_of_its_objective(tiny_pipe, iec, all_tokens):
    """With λ₂ = 0 and no IPF/DPA (aug_num 0), Δ minimises mean ||(W+Δ)c − Wa||² + α||Δ||² subject to Δ(I−P) = 0 and
    Δ K2 = 0 (§1.6); here P and K2 are rebuilt from scratch and the minimum found by lstsq in a basis of the
    feasible rows, range(P) ∩ K2⊥. All tokens: 3 × 76 keys in 32 dimensions (the editor's dense path)."""
    alpha, thr = 0.3, 0.044
    res = _speed(aug_num=0, threshold=thr, retain_scale=alpha, iec_clusters=iec, preserve=RETAIN,
                 all_tokens=all_tokens).edit(tiny_pipe, REQS)
    if all_tokens == "always":
        et, _ = _encode(tiny_pipe, [r.source for r in REQS])
        ea, _ = _encode(tiny_pipe, [r.destination for r in REQS])
        ct, ca = et[:, 1:].reshape(-1, 32), ea[:, 1:].reshape(-1, 32)
    else:
        ct, ca = _keys(tiny_pipe, REQS)
    r = _last(tiny_pipe, RETAIN)
    u = _null_projector(r.T @ r / len(RETAIN), thr)
    q = u
    if iec:
        null, _ = _encode(tiny_pipe, [""])
        k2 = torch.cat([null[0, :1], _kmeans_reference(null[0, 1:], iec).double()]).T
        _, sv, vh = torch.linalg.svd(k2.T @ u)
        q = u @ vh[int((sv > 1e-9 * sv.max()).sum()):].T  # rows of Δ in range(P) and orthogonal to K2
    names = speed_names(tiny_pipe.unet)
    assert set(res.tensors) == set(names) and all(".to_v." in n for n in names)
    for name in names:
        w = get_tensor(tiny_pipe, name).detach().double()
        ref = w + _constrained_lstsq(w, ct, ca, q, alpha, len(REQS))
        new = res.tensors[name].double()
        err = float((new - ref).abs().max() / (ref - w).abs().max())
        assert err < 1e-5, (name, err)
        assert res.info["per_layer"][name]["projector_rank"] == u.shape[1]
        if iec:
            assert res.info["per_layer"][name]["iec_violation"] < 1e-7


def _random_problem(d=20, m=32, n=5, n_r=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, m, generator=g, dtype=torch.float64)
    ct = torch.randn(n, m, generator=g, dtype=torch.float64)
    ca = torch.randn(n, m, generator=g, dtype=torch.float64)
    r = torch.randn(n_r, m, generator=g, dtype=torch.float64)
    k2 = torch.randn(m, 4, generator=g, dtype=torch.float64)
    t, a = ct.T @ ct / n, ca.T @ ct / n
    return w, ct, ca, r, k2, t, a


@pytest.mark.parametrize("lamb", [0.0, 0.5])
def test_solve_equals_the_official_dense_formula(lamb):
    """Δ = W(A−T) P (I − M K2 (K2ᵀ P M K2 + λ₂I)⁻¹ K2ᵀ P) M, M = (TP + αI)⁻¹, written out with m×m inverses (§1.6)."""
    w, ct, ca, r, k2, t, a = _random_problem()
    u = _null_projector(r.T @ r / r.shape[0], 1e-8)
    p = u @ u.T
    eye = torch.eye(32, dtype=torch.float64)
    for alpha in (1.0, 0.05):
        mm = torch.linalg.inv(t @ p + alpha * eye)
        inner = torch.linalg.inv(k2.T @ p @ mm @ k2 + lamb * torch.eye(4, dtype=torch.float64))
        ref = w @ (a - t) @ p @ (eye - mm @ k2 @ inner @ k2.T @ p) @ mm
        got = speed_delta(w, a - t, t, u, k2, alpha, lamb)
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-10)
        low = speed_delta_lowrank(w, ct / 5 ** 0.5, (ca - ct) / 5 ** 0.5, u, k2, alpha, lamb)  # n = 5 < r = 20
        torch.testing.assert_close(low, ref, rtol=1e-9, atol=1e-10)
        assert float((got @ (eye - p)).abs().max()) < 1e-12 * float(got.abs().max())  # Δ(I − P) = 0 (§0)
        if lamb == 0:
            assert float((got @ k2).abs().max()) < 1e-10 * float(got.abs().max())  # Δ K2 = 0 exactly
        else:
            assert float((got @ k2).norm()) > 1e-6 * float(got.norm())  # λ₂ > 0 relaxes it


def test_limits_of_the_recipe(tiny_pipe):
    """§1.13.1: P = I (threshold above every eigenvalue), no K2, λ₂ = 0 gives W(A−T)(T+αI)⁻¹; §1.13.4: as α → 0 with
    the targets in range(P), (W + Δ)c_i → W a_i."""
    ct, ca = _keys(tiny_pipe, REQS)
    t, a = ct.T @ ct / len(REQS), ca.T @ ct / len(REQS)
    eye = torch.eye(t.shape[0], dtype=torch.float64)
    res = _speed(threshold=1e9, iec_clusters=0, retain_scale=0.7).edit(tiny_pipe, REQS)
    for name in speed_names(tiny_pipe.unet):
        w = get_tensor(tiny_pipe, name).detach().double()
        ref = w + w @ (a - t) @ torch.linalg.inv(t + 0.7 * eye)
        assert float((res.tensors[name].double() - ref).abs().max() / (ref - w).abs().max()) < 1e-5
        assert res.info["per_layer"][name]["projector_rank"] == t.shape[0]
    res = _speed(aug_num=0, threshold=1e-6, iec_clusters=0, retain_scale=1e-9, preserve=RETAIN[:4]).edit(tiny_pipe, REQS)
    for name in speed_names(tiny_pipe.unet):
        d = res.info["per_layer"][name]
        assert d["edit_capacity"] > 0.1 and d["edit_residual"] < 1e-4, d  # 3 keys, 28 free directions of 32


# --- the projector and the update's invariants --------------------------------------------------------------
def test_projector_is_idempotent_and_annihilates_the_retained_keys(tiny_pipe):
    r = _last(tiny_pipe, RETAIN)
    w = get_tensor(tiny_pipe, speed_names(tiny_pipe.unet)[0]).detach().double()
    ct, ca = _keys(tiny_pipe, REQS)
    t = ct.T @ ct / 3
    h = torch.linalg.solve(torch.eye(32, dtype=torch.float64) + t, (ca.T @ ct / 3 - t).T).T
    from editors.emcid.nullspace import eig_of, null_basis

    rm = retain_moment(w, h, r, aug_num=10, use_filter=True, chunk_size=128, direction="reduced_svd",
                       generator=torch.Generator().manual_seed(0))
    nb = null_basis(*eig_of(rm.moment), threshold=1e-9)
    p = nb.basis @ nb.basis.T
    torch.testing.assert_close(p @ p, p, rtol=0, atol=1e-12)
    kept = r[rm.kept]
    assert float((kept @ p).norm()) < 1e-10 * float(kept.norm())  # P c = 0 for every key C_r was built from
    n_kept = int(rm.kept.sum())
    # C_r has rank <= kept keys + 1 (the copies add only v_min): the projector keeps at least the rest
    assert 32 - (n_kept + 1) <= nb.rank <= 32 - n_kept


def test_update_is_blind_to_the_retained_directions_and_rank_bounded(tiny_pipe):
    """On the edited tensors: ||Δ c_r|| ≈ 0 for every retain key in the span of C_r's large eigenvalues (§1.13.3),
    rank Δ <= the number of target keys, and the info's ranks and counts are consistent."""
    res = _speed(aug_num=0, threshold=1e-6, preserve=RETAIN).edit(tiny_pipe, REQS)
    r = _last(tiny_pipe, RETAIN)
    for name in speed_names(tiny_pipe.unet):
        w = get_tensor(tiny_pipe, name).detach().double()
        delta = res.tensors[name].double() - w
        assert float(delta.norm()) > 1e-3 * float(w.norm())  # it edited
        assert float((r @ delta.T).norm()) < 1e-5 * float(delta.norm() * r.norm())
        assert int(torch.linalg.matrix_rank(delta, rtol=1e-5)) <= len(REQS)
        d = res.info["per_layer"][name]
        assert d["retain_keys"] == d["retain_after_ipf"] == d["retain_total"] == len(RETAIN) and d["dpa_copies_kept"] == 0
        assert d["projector_rank"] == 32 - len(RETAIN)  # 9 generic keys in 32 dimensions
        assert d["retain_drift"] < 1e-5


# --- IPF and DPA as the official code builds them ------------------------------------------------------------
def test_ipf_keeps_exactly_the_above_mean_influence_keys(tiny_pipe):
    res = _speed(preserve=RETAIN * 1 + ["penguin " + x for x in ("one", "two")]).edit(tiny_pipe, REQS)
    texts = RETAIN + ["penguin one", "penguin two"]
    r = _last(tiny_pipe, texts)
    ct, ca = _keys(tiny_pipe, REQS)
    t, a = ct.T @ ct / 3, ca.T @ ct / 3
    eye = torch.eye(32, dtype=torch.float64)
    for name in speed_names(tiny_pipe.unet):
        w = get_tensor(tiny_pipe, name).detach().double()
        e = w @ (a - t) @ torch.linalg.inv(eye + t)  # E_W, UCE's erase delta without preservation
        infl = (r @ e.T).norm(dim=1)
        assert res.info["per_layer"][name]["retain_after_ipf"] == int((infl > infl.mean()).sum())
    # and the mask itself, in the editor's function
    w = get_tensor(tiny_pipe, speed_names(tiny_pipe.unet)[0]).detach().double()
    h = torch.linalg.solve(eye + t, (a - t).T).T
    e = w @ h
    infl = (r @ e.T).norm(dim=1)
    rm = retain_moment(w, h, r, aug_num=10, use_filter=True, chunk_size=128, direction="reduced_svd",
                       generator=torch.Generator().manual_seed(0))
    assert torch.equal(rm.kept, infl > infl.mean())
    off = retain_moment(w, h, r, aug_num=10, use_filter=False, chunk_size=128, direction="reduced_svd",
                        generator=torch.Generator().manual_seed(0))
    assert bool(off.kept.all())
    none = retain_moment(w, h, r, aug_num=0, use_filter=True, chunk_size=128, direction="reduced_svd",
                         generator=torch.Generator().manual_seed(0))
    assert bool(none.kept.all()) and none.n_copies == 0  # aug_num 0 turns IPF off too (official)
    torch.testing.assert_close(none.moment, r.T @ r / len(texts), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("chunk", [128, 4])
def test_dpa_moment_equals_explicit_copies(chunk):
    """The official DPA, built explicitly: copies c + z v along the reduced-SVD v_min, the chunk's above-mean copies
    kept, C_r the mean over kept keys and kept copies. z are drawn chunk by chunk (the editor's documented order)."""
    w, ct, ca, r, _, t, a = _random_problem(d=20, m=32, n_r=30)
    h = torch.linalg.solve(torch.eye(32, dtype=torch.float64) + t, (a - t).T).T
    rm = retain_moment(w, h, r, aug_num=6, use_filter=False, chunk_size=chunk, direction="reduced_svd",
                       generator=torch.Generator().manual_seed(5))
    v = torch.linalg.svd(w, full_matrices=False).Vh[-1]  # torch.svd's reduced V, last column: the 20th direction
    v = v * torch.sign(v[v.abs().argmax()])
    g = torch.Generator().manual_seed(5)
    rows, n_copies = [r], 0
    for s in range(0, r.shape[0], chunk):
        c = r[s:s + chunk]
        z = torch.randn(c.shape[0], 6, generator=g, dtype=torch.float64)
        copies = (c[:, None, :] + z[..., None] * v).reshape(-1, 32)
        norm = (copies @ (w @ h).T).norm(dim=1)
        keep = copies[norm > norm.mean()]
        assert float(((keep[:, None, :] - c[None]) @ (torch.eye(32, dtype=torch.float64) - torch.outer(v, v))).norm(
            dim=-1).min(dim=1).values.max()) < 1e-12  # each kept copy differs from a source only along v
        rows.append(keep)
        n_copies += keep.shape[0]
    x = torch.cat(rows)
    assert rm.n_copies == n_copies and rm.n_total == x.shape[0]
    torch.testing.assert_close(rm.moment, x.T @ x / x.shape[0], rtol=1e-10, atol=1e-12)
    assert 0.3 * 30 * 6 < n_copies < 0.7 * 30 * 6  # about half above the mean
    # the editor's factored E_W = W D̂ᵀ [Ĉ (I + T)⁻¹] (rank n below m) draws and keeps the same
    c_hat, d_hat = ct / 5 ** 0.5, (ca - ct) / 5 ** 0.5
    right = torch.linalg.solve(torch.eye(32, dtype=torch.float64) + t, c_hat.T).T
    fac = retain_moment(w, (d_hat.T, right), r, aug_num=6, use_filter=True, chunk_size=chunk, direction="reduced_svd",
                        generator=torch.Generator().manual_seed(5))
    dense = retain_moment(w, h, r, aug_num=6, use_filter=True, chunk_size=chunk, direction="reduced_svd",
                          generator=torch.Generator().manual_seed(5))
    assert torch.equal(fac.kept, dense.kept) and fac.n_copies == dense.n_copies
    torch.testing.assert_close(fac.moment, dense.moment, rtol=1e-10, atol=1e-12)


def test_dpa_direction_is_the_reduced_svd_quirk():
    g = torch.Generator().manual_seed(1)
    for d in (20, 32, 50):  # d < m: the d-th right-singular direction; d >= m: the smallest
        w = torch.randn(d, 32, generator=g, dtype=torch.float64)
        vh = torch.linalg.svd(w, full_matrices=False).Vh
        v = dpa_direction(w)
        assert abs(float(v @ vh[-1])) > 1 - 1e-10 and abs(float(v.norm()) - 1) < 1e-12
        small = dpa_direction(w, "smallest")
        if d < 32:
            assert float((w @ small).norm()) < 1e-10 * float(w.norm())  # a true null direction of W
        else:
            assert abs(float(small @ vh[-1])) > 1 - 1e-10


def test_kmeans_matches_the_reference_and_iec_keys():
    x = torch.randn(76, 32, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(kmeans_centres(x, 3, 0), _kmeans_reference(x, 3, 0), rtol=1e-6, atol=1e-6)


# --- determinism, requests, retain set ----------------------------------------------------------------------
def test_seed_and_chunk_size_determine_the_edit(tiny_pipe):
    """§1.13.6: the same seed twice is bit-identical; another seed or chunk size changes the DPA draws/filter."""
    kw = {"preserve": RETAIN, "threshold": 0.05}
    a = _speed(**kw).edit(tiny_pipe, REQS).tensors
    b = _speed(**kw).edit(tiny_pipe, REQS).tensors
    c = _speed(seed=1, **kw).edit(tiny_pipe, REQS).tensors
    d = _speed(chunk_size=2, **kw).edit(tiny_pipe, REQS).tensors
    for k in a:
        assert torch.equal(a[k], b[k])
    assert any(not torch.equal(a[k], c[k]) for k in a) and any(not torch.equal(a[k], d[k]) for k in a)


def test_requests_map_onto_anchors_and_the_retain_filter():
    ed = _speed(preserve=["Snoopy", "a dog", "Cat food", "concatenate", "dogs"], preserve_destinations=True)
    assert ed.edit_pairs(REQS) == [("cat", "dog"), ("racing car", "bicycle"), ("gravel", "")]
    # whole words, case-insensitive: "Cat food" goes, "concatenate" stays; destinations join (then filtered too)
    assert ed.retain_texts(REQS) == ["Snoopy", "a dog", "concatenate", "dogs", "dog", "bicycle"]
    assert _speed(erase_anchor="art").edit_pairs(REQS[2:]) == [("gravel", "art")]
    assert _speed(templates=["a photo of {}"]).edit_pairs(REQS[2:]) == [("a photo of gravel", "")]
    assert _speed().retain_texts(REQS) == [""]  # no retain texts: [""] with all 76 tokens (official default)
    assert _speed(preserve=["cat"]).retain_texts(REQS) == [""]
    assert without_targets(["Van Gogh style", "van gogh", "Gogh"], ["Van Gogh"]) == ["Gogh"]


def test_nudity_uses_all_tokens_and_empty_retain_all_76(tiny_pipe):
    res = _speed(lamb=0.5, retain_scale=0.7).edit(tiny_pipe, [EditRequest("nudity", kind="erase")])
    assert res.info["all_tokens"] and res.info["n_target_tokens"] == 76 and res.info["n_retain_keys"] == 76
    res = _speed().edit(tiny_pipe, [EditRequest("nudity", kind="erase"), EditRequest("cat", kind="erase")])
    assert not res.info["all_tokens"] and res.info["n_target_tokens"] == 2
    assert all(np.isfinite(list(d.values())).all() for d in res.info["per_layer"].values())


def test_params_choose_the_matrices(tiny_pipe):
    names = speed_names(tiny_pipe.unet, "KV")
    assert [n.rsplit(".", 2)[1] for n in names[:2]] == ["to_k", "to_v"]  # the state-dict order
    assert set(_speed(params="KV").edit(tiny_pipe, REQS[:1]).tensors) == set(names)
    assert all(".to_k." in n for n in _speed(params="K").edit(tiny_pipe, REQS[:1]).tensors)


def test_presets_and_bad_hparams():
    sd = SPEEDEditor.load_hparams("sd-1.4")
    got = (sd.params, sd.aug_num, sd.threshold, sd.retain_scale, sd.lamb, sd.disable_filter, sd.seed, sd.chunk_size,
           sd.iec_clusters, sd.templates)
    assert got == ("V", 10, 0.1, 1.0, 0.0, False, 0, 128, 3, ("{}",))
    assert SPEEDEditor.load_hparams("tiny").params == SPEEDEditor.load_hparams("toy").params == "V"
    assert get_editor("speed") is SPEEDEditor
    from editors.hparams import HparamsError

    with pytest.raises(HparamsError, match="retain_scale"):
        SPEEDEditor.load_hparams("sd-1.4", overrides={"retain_scale": 0.0})
    with pytest.raises(HparamsError, match="params"):
        SPEEDEditor.load_hparams("sd-1.4", overrides={"params": "Q"})
    with pytest.raises(HparamsError, match="slot"):
        SPEEDEditor.load_hparams("sd-1.4", overrides={"templates": ["no slot"]})


# --- efficacy on the trained toy world -------------------------------------------------------------------------
# Measured on the shipped toy model with exactly this run (the untuned toy preset, toy-untuned: retain set [""], threshold 0.1, α 1), on
# this project's 2-core CPU, 1 thread, load ~2.5: Source2Dest 0.7411, Source Forget 0.9945, Holdout Delta +0.0046
# (UCE's toy preset, tests/toy/test_toy_efficacy.py: 0.9371 and -0.0328). Thresholds as that file's: half the
# measured effect; the damage bound twice the measured damage (none here) minus 0.05. About 30 s cold.
MEASURED = {"source2dest": 0.7411, "source_forget": 0.9945, "holdout_delta": 0.0046}


def test_toy_world_sources_move_to_destinations_and_the_holdout_is_spared(tmp_path):
    from iceb.models import TOY_DIR

    if not (TOY_DIR / "model_index.json").is_file():
        pytest.skip("toy world not shipped")
    import pandas as pd

    from iceb.harness import EvalConfig, evaluate

    cfg = EvalConfig(editor="speed", task="ace", model="toy", edits=(2,), out=str(tmp_path), device="cpu",
                     progress=False, preset="toy-untuned")
    df = pd.read_csv(evaluate(cfg) / "results.csv")
    v = {(r.subset, r.metric): r.value for r in df.itertuples()}
    assert v[("edit", "source2dest")] >= 0.5 * MEASURED["source2dest"]
    assert v[("edit", "source_forget")] >= 0.5 * MEASURED["source_forget"]
    assert v[("holdout", "holdout_delta")] >= 2 * min(MEASURED["holdout_delta"], 0.0) - 0.05
