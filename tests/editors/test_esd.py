"""ESD-x / ESD-u on the tiny random pipeline: parameter sets, teacher, target identities, resume, requests."""
from __future__ import annotations

import pytest
import torch

from editors import get_editor
from editors.esd import ESDRun, ESDUEditor, ESDXEditor, ddim_level_timestep, select_parameters
from editors.requests import EditRequest, RequestError

ERASE = [EditRequest("cat", kind="erase", seed=3)]




def _hp(name: str, **overrides):
    return get_editor(name).load_hparams("tiny", overrides={"checkpoint_every": 0, **overrides})


def _unet_state(pipe):
    return {k: v.clone() for k, v in pipe.unet.state_dict().items()}


def _assert_unet_unchanged(pipe, before):
    for k, v in pipe.unet.state_dict().items():
        assert torch.equal(v, before[k]), f"the UNet was left changed at {k}"
    assert not any(p.requires_grad is False for p in pipe.unet.parameters()), "requires_grad flags not restored"
    assert all(p.grad is None for p in pipe.unet.parameters())


def _make_run(pipe, method="esd-x", n_concepts=1, **overrides) -> ESDRun:
    """An ESDRun as the editor builds it, for direct checks of the teacher and the target."""
    hp = _hp(method, **overrides)
    dev = pipe.unet.device
    with torch.no_grad():
        embeds = [pipe.encode_prompt([w], dev, 1, False)[0] for w in ["cat", "dog", "car"][:n_concepts]]
        uncond = pipe.encode_prompt([""], dev, 1, False)[0]
    names = select_parameters(pipe.unet, method)
    run = ESDRun(pipe.unet, pipe.scheduler.config, names, embeds, uncond, hp, (4, 8, 8), seed=0)
    return run


@pytest.fixture()
def restore_unet(tiny_pipe):
    before = _unet_state(tiny_pipe)
    yield tiny_pipe
    with torch.no_grad():
        for k, v in tiny_pipe.unet.state_dict().items():
            v.copy_(before[k])


def test_registered_names_presets_and_panels():
    assert get_editor("esd-x") is ESDXEditor and get_editor("esd-u") is ESDUEditor
    for name in ("esd-x", "esd-u"):
        cls = get_editor(name)
        assert cls.supports == frozenset({"erase"}) and not hasattr(cls, "scored_panels")
        paper = cls.load_hparams("sd-1.4")
        assert (paper.iterations, paper.lr, paper.negative_guidance, paper.ddim_steps, paper.image_size,
                paper.start_guidance) == (1000, 1e-5, 1.0, 50, 512, 3.0)
        new = cls.load_hparams("sd-1.4", preset="sd-1.4-diffusers")
        assert (new.iterations, new.lr, new.negative_guidance, new.ddim_steps) == (200, 5e-5, 2.0, 50)
        for family in ("tiny", "toy"):
            hp = cls.load_hparams(family)
            assert hp.image_size is None and hp.iterations <= 300 and hp.ddim_steps <= 10


def test_parameter_sets_by_name(tiny_model):
    unet = tiny_model.pipe.unet
    all_names = [n for n, _ in unet.named_parameters()]
    x, u = set(select_parameters(unet, "esd-x")), set(select_parameters(unet, "esd-u"))
    assert x == {n for n in all_names if "attn2" in n}
    assert {n.split("attn2.")[1] for n in x} == {"to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight",
                                                 "to_out.0.bias"}
    excluded = set(all_names) - x - u
    assert not x & u
    assert excluded == {n for n in all_names if n.startswith(("time_embedding.", "conv_norm_out.", "conv_out."))}
    assert excluded and "conv_in.weight" in u and any(".attn1." in n for n in u) and any("norm2" in n for n in u)


@pytest.mark.parametrize("name", ["esd-x", "esd-u"])
def test_only_selected_parameters_change(tiny_pipe, name):
    before = _unet_state(tiny_pipe)
    res = get_editor(name)(_hp(name, iterations=2), progress=False).edit(tiny_pipe, ERASE)
    selected = {f"unet.{n}" for n in select_parameters(tiny_pipe.unet, name)}
    assert res.tensors and set(res.tensors) <= selected
    assert len(res.tensors) >= 0.9 * len(selected)  # Adam moves every tensor that gets a gradient
    for k, v in res.tensors.items():
        assert not torch.equal(v, before[k[len("unet."):]]), f"{k} returned but unchanged"
    assert len(res.losses["esd"]) == 2 and all(l == l and l >= 0 for l in res.losses["esd"])


def test_teacher_never_changes(tiny_pipe):
    before = _unet_state(tiny_pipe)
    g = torch.Generator().manual_seed(1)
    z = torch.randn(1, 4, 8, 8, generator=g)
    seen = {}

    def callback(run: ESDRun):
        emb = run.concept_embeds[0]
        if run.iteration == 1:
            seen["teacher0"] = run.teacher(z, 500, emb)
        seen["teacher"] = run.teacher(z, 500, emb)
        with torch.no_grad():
            seen["student"] = run.student(z, 500, emb)
        seen["originals"] = {n: v.clone() for n, v in run.originals.items()}

    get_editor("esd-x")(_hp("esd-x", iterations=5, lr=1e-2), progress=False, callback=callback) .edit(tiny_pipe, ERASE)
    assert torch.equal(seen["teacher"], seen["teacher0"])
    assert not torch.allclose(seen["student"], seen["teacher"])  # the student did move
    for n, v in seen["originals"].items():
        assert torch.equal(v, before[n])
    with torch.no_grad():  # the teacher is the untouched pipeline's UNet
        plain = tiny_pipe.unet(z, torch.full((1,), 500), encoder_hidden_states=tiny_pipe.encode_prompt(
            ["cat"], "cpu", 1, False)[0]).sample
    assert torch.allclose(plain, seen["teacher"], atol=1e-6)


@torch.no_grad()
def test_target_identities(restore_unet):
    pipe = restore_unet
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    t = 321
    run = _make_run(pipe, "esd-x", negative_guidance=0.0)
    emb_c, emb_u = run.concept_embeds[0], run.uncond_embed
    e_u, e_c = run.teacher(z, t, emb_u), run.teacher(z, t, emb_c)
    assert not torch.allclose(e_u, e_c, atol=1e-4)  # the identities below are not vacuous
    # eta = 0: the target is the teacher's UNCONDITIONAL prediction.
    assert torch.allclose(run.target(z, t, emb_c), e_u, atol=1e-6)
    # eta = 2: the formula, with the teacher evaluated separately.
    run.hp = run.hp.replace(negative_guidance=2.0)
    assert torch.allclose(run.target(z, t, emb_c), e_u - 2.0 * (e_c - e_u), atol=1e-5)
    # eta = -1: the target is the teacher's conditional prediction, so the untrained student's loss is 0.
    run.hp = run.hp.replace(negative_guidance=-1.0)
    target = run.target(z, t, emb_c)
    assert torch.allclose(target, e_c, atol=1e-6)
    assert torch.nn.functional.mse_loss(run.student(z, t, emb_c), target) < 1e-10


def test_ddim_level_and_training_timestep_agree(restore_unet):
    """x_t stops at DDIM level j (0 = least noisy), whose scheduler timestep lies in training bin j."""
    run = _make_run(restore_unet, ddim_steps=50)
    steps = run.scheduler.timesteps
    g = torch.Generator().manual_seed(0)
    for j in range(50):
        ddim_t = int(steps[len(steps) - 1 - j])
        lo, hi = round(j / 50 * 1000), round((j + 1) / 50 * 1000)
        assert lo <= ddim_t < hi
        t = ddim_level_timestep(j, 50, 1000, "bin", g, ddim_t)
        assert lo <= t < hi
        assert ddim_level_timestep(j, 50, 1000, "exact", g, ddim_t) == ddim_t
    # level S-1 is pure noise (no DDIM step run); level 0 runs S-1 steps and changes the latent
    noise = torch.randn(1, 4, 8, 8, generator=g)
    run4 = _make_run(restore_unet, ddim_steps=4)
    z, t = run4.sample_xt(run4.concept_embeds[0], 3, noise)
    assert torch.equal(z, noise) and t == int(run4.scheduler.timesteps[0])
    z0, t0 = run4.sample_xt(run4.concept_embeds[0], 0, noise)
    assert not torch.allclose(z0, noise) and t0 == int(run4.scheduler.timesteps[-1])


def test_concepts_drawn_per_iteration_seeded(restore_unet):
    run1, run2 = _make_run(restore_unet, n_concepts=3), _make_run(restore_unet, n_concepts=3)
    d1 = [run1.draw() for _ in range(30)]
    d2 = [run2.draw() for _ in range(30)]
    assert {d["concept"] for d in d1} == {0, 1, 2}
    assert [d["concept"] for d in d1] == [d["concept"] for d in d2]
    assert all(torch.equal(x["noise"], y["noise"]) for x, y in zip(d1, d2))


def test_a_few_iterations_lower_the_loss(restore_unet):
    """On fixed probes (x_t from the frozen model at several levels), training lowers the ESD loss."""
    run = _make_run(restore_unet, "esd-x", lr=3e-3, ddim_steps=4)
    g = torch.Generator().manual_seed(5)
    emb = run.concept_embeds[0]
    probes = []
    for level in range(4):
        z, t = run.sample_xt(emb, level, torch.randn(1, 4, 8, 8, generator=g))
        probes.append((z, t, run.target(z, t, emb)))

    def probe_loss():
        with torch.no_grad():
            return sum(float(torch.nn.functional.mse_loss(run.student(z, t, emb), y)) for z, t, y in probes)

    before = probe_loss()
    for _ in range(15):
        run.step()
    assert probe_loss() < 0.5 * before


class Interrupted(Exception):
    pass


def test_resume_after_interruption_matches_uninterrupted_run(tiny_pipe, tmp_path):
    before = _unet_state(tiny_pipe)
    reqs = [EditRequest("cat", kind="erase", seed=1), EditRequest("apple", kind="erase", seed=2)]
    hp = _hp("esd-u", iterations=6, checkpoint_every=2, lr=1e-3)

    def interrupt(run):
        if run.iteration == 5:
            raise Interrupted

    with pytest.raises(Interrupted):
        ESDUEditor(hp, cache_dir=tmp_path / "a", progress=False, callback=interrupt).edit(tiny_pipe, reqs)
    _assert_unet_unchanged(tiny_pipe, before)
    resumed = ESDUEditor(hp, cache_dir=tmp_path / "a", progress=False).edit(tiny_pipe, reqs)
    assert resumed.info["resumed_from"] == 4
    straight = ESDUEditor(hp, cache_dir=tmp_path / "b", progress=False).edit(tiny_pipe, reqs)
    assert straight.info["resumed_from"] == 0
    assert resumed.losses["esd"] == straight.losses["esd"] and len(straight.losses["esd"]) == 6
    assert set(resumed.tensors) == set(straight.tensors)
    for k in straight.tensors:
        assert torch.equal(resumed.tensors[k], straight.tensors[k]), k
    # a finished edit is served from its final checkpoint
    again = ESDUEditor(hp, cache_dir=tmp_path / "b", progress=False).edit(tiny_pipe, reqs)
    assert again.info["resumed_from"] == 6 and all(torch.equal(again.tensors[k], v) for k, v in straight.tensors.items())
    # other requests do not pick up this checkpoint
    other = ESDUEditor(hp.replace(iterations=1), cache_dir=tmp_path / "b", progress=False).edit(tiny_pipe, reqs[:1])
    assert other.info["resumed_from"] == 0
    _assert_unet_unchanged(tiny_pipe, before)


def test_requests_with_a_destination_are_rejected(tiny_pipe):
    editor = ESDXEditor(_hp("esd-x", iterations=1), progress=False)
    for req in (EditRequest("cat", "dog"), EditRequest("cat", "dog", kind="erase"),
                EditRequest("cat", "dog", kind="rectify")):
        with pytest.raises(RequestError, match="treat_updates_as_erase"):
            editor.edit(tiny_pipe, [req])
    editor = ESDXEditor(_hp("esd-x", iterations=1, treat_updates_as_erase=True), progress=False)
    ok = editor.edit(tiny_pipe, [EditRequest("cat", "dog")])
    assert ok.tensors and ok.info["ignored_destinations"] == ["dog"]


def test_gradient_checkpointing_gives_the_same_edit(tiny_pipe):
    plain = ESDXEditor(_hp("esd-x", iterations=2), progress=False).edit(tiny_pipe, ERASE)
    ckpt = ESDXEditor(_hp("esd-x", iterations=2, gradient_checkpointing=True), progress=False).edit(tiny_pipe, ERASE)
    assert not tiny_pipe.unet.is_gradient_checkpointing
    assert set(plain.tensors) == set(ckpt.tensors)
    for k, v in plain.tensors.items():
        assert torch.allclose(v, ckpt.tensors[k], atol=1e-6), k


def test_half_precision_pipeline_is_trained_in_fp32_and_restored(tiny_pipe):
    state = _unet_state(tiny_pipe)
    try:
        tiny_pipe.unet.to(torch.bfloat16)
        half = _unet_state(tiny_pipe)
        res = ESDXEditor(_hp("esd-x", iterations=2, lr=1e-2), progress=False).edit(tiny_pipe, ERASE)
        assert tiny_pipe.unet.dtype == torch.bfloat16
        for k, v in tiny_pipe.unet.state_dict().items():
            assert torch.equal(v, half[k]), k
        assert res.tensors and all(v.dtype == torch.bfloat16 for v in res.tensors.values())
        assert all(not torch.equal(v, half[k[5:]]) for k, v in res.tensors.items())
    finally:
        tiny_pipe.unet.to(torch.float32)
        with torch.no_grad():
            for k, v in tiny_pipe.unet.state_dict().items():
                v.copy_(state[k])
