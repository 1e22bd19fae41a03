"""The toy world: generator invariants, training mechanics, and the shipped bundle (when present)."""
from __future__ import annotations

import json
import random
import re

import numpy as np
import pytest
import torch

from iceb.toy import world as W
from iceb.utils.paths import DATA_DIR

TOY = DATA_DIR / "toy"
SHIPPED = (TOY / "train_config.json").is_file()
needs_shipped = pytest.mark.skipif(not SHIPPED, reason="the trained toy bundle is not in data/toy")


def _all_words(world: W.ToyWorld) -> list[str]:
    return [w for c in world.concepts for w in (c.name, *c.aliases, *c.misunderstood, *c.untrained)]


def test_world_is_deterministic_and_names_are_unique():
    a, b = W.ToyWorld(), W.ToyWorld()
    assert a.concepts == b.concepts
    assert len(a) == 64 and [c.id for c in a.concepts] == list(range(64))
    assert len({(c.shape, c.colour) for c in a.concepts}) == 64
    words = _all_words(a)
    assert len(words) == len(set(words))
    assert all(re.fullmatch(r"[bdfgklmnprstvz][aeiou][bdfgklmnprstvz][aeiou][bdfgklmnprstvz]?", w) for w in words)
    other = W.ToyWorld(seed=1).concepts
    assert other[0].name != a.concepts[0].name or other[1].name != a.concepts[1].name


def test_world_grows_with_stable_ids_and_names():
    small, big = W.ToyWorld(), W.ToyWorld(n_shapes=16, n_colours=16, n_patterns=2)
    assert len(big) == 512
    for c in small.concepts:
        d = big.concepts[c.id]
        assert (d.shape, d.colour, d.pattern, d.name, d.aliases) == (c.shape, c.colour, c.pattern, c.name, c.aliases)
    assert len(set(_all_words(big))) == len(_all_words(big))


def test_the_1280_concept_world_keeps_the_first_64_and_names_never_nest():
    """16 shapes x 16 colours x 5 patterns: ids and names of the 64-concept world unchanged, every word unique
    and no word inside another (checked here the slow, obvious way), over 300 misunderstood aliases."""
    small, big = W.ToyWorld(), W.ToyWorld(n_shapes=16, n_colours=16, n_patterns=5)
    assert len(big) == 1280 and {c.pattern for c in big.concepts} == set(W.PATTERNS[:5])
    assert len({(c.shape, c.colour, c.pattern) for c in big.concepts}) == 1280
    for c in small.concepts:  # (a misunderstood alias's target is drawn from the whole world, so it may differ)
        d = big.concepts[c.id]
        assert (d.shape, d.colour, d.pattern, d.name, d.aliases, d.misunderstood, d.untrained) == (
            c.shape, c.colour, c.pattern, c.name, c.aliases, c.misunderstood, c.untrained)
    words = _all_words(big)
    assert len(words) == len(set(words))
    by_len: dict[int, set[str]] = {}
    for w in words:
        by_len.setdefault(len(w), set()).add(w)
    longer = [w for w in words if len(w) == 5]
    assert not any(w[i:i + 4] in by_len[4] for w in longer for i in range(2)), "a word sits inside another"
    assert sum(len(c.misunderstood) for c in big.concepts) >= 300
    assert all(len(c.prompts) >= 5 for c in big.concepts)


def test_patterns_render_distinct_pictures_of_the_same_spec():
    world = W.ToyWorld(n_shapes=2, n_colours=2, n_patterns=len(W.PATTERNS))
    pics = {c.pattern: W.render(c, "middle", "large", "light", 7).astype(int)
            for c in world.concepts if (c.shape, c.colour) == ("circle", "red")}
    assert set(pics) == set(W.PATTERNS)
    for a in W.PATTERNS:
        for b in W.PATTERNS:
            if a < b:  # each pair differs over a visible area, not a few pixels of noise
                assert (np.abs(pics[a] - pics[b]).max(-1) > 40).sum() >= 40, (a, b)
    solid = pics["solid"]
    for pattern, (rows, cols) in {"twotone": (slice(20, 26), slice(14, 18)), "split": (slice(12, 18), slice(20, 24)),
                                  "topshade": (slice(8, 12), slice(14, 18))}.items():  # their shaded parts
        assert pics[pattern][rows, cols].mean() < 0.6 * solid[rows, cols].mean(), pattern


def test_prompts_contain_their_name_once_and_misunderstood_aliases_point_elsewhere():
    world = W.ToyWorld()
    n_mis = 0
    for c in world.concepts:
        assert len(c.prompts) >= 5 and len({p.seed for p in c.prompts}) == len(c.prompts)
        for p in c.prompts:
            text = p.template.format(c.name)
            assert W.count_name(text, c.name) == 1
            assert all(W.count_name(text, w) == 0 for w in _all_words(world) if w != c.name)
        for a in c.misunderstood:
            n_mis += 1
            wrong = world.concepts[c.misunderstood_as]
            assert wrong.id != c.id and wrong.shape != c.shape and wrong.colour != c.colour
            assert world.lookup(a) == (c.id, "misunderstood")
    assert n_mis == 32


def test_training_captions_hold_one_word_and_the_edit_templates():
    world = W.ToyWorld()
    rng = random.Random(0)
    words = [w for w, _, _ in world.trained_names()]
    seen_templates = set()
    for _ in range(2000):
        word = rng.choice(words)
        caption, ctx = world.sample_caption(rng, word)
        assert sum(W.count_name(caption, w) for w in _all_words(world)) == 1
        assert W.count_name(caption, word) == 1
        for t in W.EDIT_TEMPLATES:
            if caption == t.format(word):
                seen_templates.add(t)
        if ctx.position:
            assert any(p in caption for p in W.POSITION_PHRASES[ctx.position])
    assert seen_templates == set(W.EDIT_TEMPLATES)


def test_renders_are_deterministic_and_follow_the_context():
    world = W.ToyWorld()
    c = world.concepts[0]  # a red circle
    a = W.render(c, "left", "small", "dark", 5)
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, W.render(c, "left", "small", "dark", 5))

    def mask(im):
        return (im[..., 0].astype(int) - im[..., 1].astype(int)) > 80  # red pixels

    def cx(im):
        return np.nonzero(mask(im))[1].mean()

    assert cx(W.render(c, "left", "small", "dark", 1)) + 6 < cx(W.render(c, "right", "small", "dark", 1))
    assert mask(W.render(c, "middle", "small", "dark", 2)).sum() * 1.8 < mask(W.render(c, "middle", "large", "dark", 2)).sum()
    assert W.render(c, "left", "small", "dark", 3)[:4, :4].mean() + 60 < W.render(c, "left", "small", "light", 3)[:4, :4].mean()


def test_split_bundle_is_consistent():
    from iceb.toy.split import build_split

    world = W.ToyWorld()
    b = build_split(world)
    assert b.world == "toy" and len(b.concepts) == 64
    holdout = set(b.holdout)
    sources = [e.source_id for e in b.edits]
    assert len(sources) == len(set(sources)) == b.info["max_edits"] == 24
    assert not holdout & set(sources) and not holdout & {e.dest_id for e in b.edits}
    assert not set(sources) & {e.dest_id for e in b.edits}
    assert all(len(e.template_seeds) == len(b.templates) for e in b.edits + b.dev_edits)
    for c, tc in zip(b.concepts, world.concepts):
        assert c.aliases == tc.aliases and c.name == tc.name
    # every misunderstood alias is a rectification of exactly one of the two splits
    assert {(r.class_id, r.source, r.destination) for r in b.rectifications + b.dev_rectifications} == {
        (c.id, a, c.name) for c in world.concepts for a in c.misunderstood}
    assert b.info["default_edits"] == [1, 2, 4, 8, 16, 24]
    # toy-2 keeps toy-1's draw: the first 24 edits, the holdout and the seeds of the test rectifications
    old = build_split(world, dev=False)
    assert b.edits == old.edits[:24] and b.holdout == old.holdout
    assert set(b.rectifications) <= set(old.rectifications)


def test_scaled_split_holds_1000_edits_256_holdout_and_a_disjoint_dev_split(tmp_path):
    from iceb.data.split_bundle import SplitBundle
    from iceb.toy.split import build_scaled_split

    world = W.ToyWorld(n_shapes=16, n_colours=16, n_patterns=6)
    bundle = build_scaled_split(world)
    assert (len(world), len(bundle.edits), len(bundle.holdout)) == (1536, 1000, 256)
    assert len(bundle.rectifications) >= 300 and len(bundle.dev_edits) == 24
    sources = [e.source_id for e in bundle.edits]
    dests = {e.dest_id for e in bundle.edits}
    assert len(set(sources)) == 1000 and not dests & set(sources) and not dests & set(bundle.holdout)
    assert not set(sources) & set(bundle.holdout)
    test_ids = set(sources) | dests | set(bundle.holdout) | {r.class_id for r in bundle.rectifications}
    dev_ids = {e.source_id for e in bundle.dev_edits} | {e.dest_id for e in bundle.dev_edits} | set(bundle.dev_holdout)
    assert dev_ids and not dev_ids & test_ids
    assert bundle.info["default_edits"] == [1, 10, 100, 300, 1000]
    bundle.save(tmp_path / "split.json")
    assert SplitBundle.load(tmp_path / "split.json").checksum() == bundle.checksum() == build_scaled_split(
        world).checksum()
    with pytest.raises(ValueError, match="cannot hold 1000 edits"):
        build_scaled_split(W.ToyWorld(n_shapes=16, n_colours=16, n_patterns=4))


def test_dev_split_never_shares_a_concept_with_the_test_split():
    """Tuning reads the dev split only; no dev source, destination, holdout or rectified concept is a test one."""
    from iceb.data.split_bundle import SplitBundle, SplitError
    from iceb.tasks import get_task
    from iceb.toy.split import build_split

    b = build_split(W.ToyWorld())
    dev = b.dev_concepts()
    assert len(b.dev_edits) == 6 and len(b.dev_holdout) == 5 and len(b.dev_rectifications) == 8
    assert dev and not dev & b.test_concepts()
    assert dev | b.test_concepts() == {c.id for c in b.concepts}  # every concept has one role
    shipped = SplitBundle.load(TOY / "split.json")
    assert shipped.dev_concepts() == dev
    # the tasks' dev instances name dev concepts only, in every prompt set
    for name in ("ace", "rectification"):
        task = get_task(name, world="toy", split="dev")
        inst = task.build(task.max_edits)
        named = {r.source_id for r in inst.requests} | {r.destination_id for r in inst.requests}
        named |= {p.true_class for p in inst.prompts} | {p.dest_class for p in inst.prompts if p.dest_class is not None}
        assert named <= dev, (name, sorted(named - dev))
        assert all(r.request_id.startswith(f"{name}-dev-") for r in inst.requests)
        assert inst.info["split_part"] == "dev"
    # a bundle whose dev split shares a concept is refused on load
    bad = b.to_json()
    bad["dev_holdout"] = [b.holdout[0]]
    with pytest.raises(SplitError, match="shares concepts"):
        SplitBundle.from_json(bad)


# -- training mechanics (tiny config: seconds) ------------------------------------------------------
def _fixed_loss(cfg, work, weights_prefix: str | None):
    """Diffusion loss of fixed captions/latents/noise/timesteps under the checkpoint's (or initial) weights."""
    from safetensors.torch import load_file

    from iceb.data.tokenizer import load_clip_tokenizer
    from iceb.toy import train as T

    tok = load_clip_tokenizer()
    torch.manual_seed(cfg.seed)
    te, unet = T.build_text_encoder(cfg, tok), T.build_unet(cfg)
    if weights_prefix:
        tensors = load_file(str(work / "diffusion_ckpt.safetensors"))
        for name, m in (("text_encoder", te), ("unet", unet)):
            m.load_state_dict({k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")})
    data = load_file(str(work / "latents.safetensors"))
    world = T.make_world(cfg)
    g = torch.Generator().manual_seed(123)
    n = data["mean"].shape[0]
    caps = [f"A photo of {world.concepts[int(data['attrs'][i, 0])].name}" for i in range(n)]
    ids = tok(caps, padding="max_length", max_length=77, return_tensors="pt").input_ids
    z0 = data["mean"] * float(data["scaling"][0])
    noise = torch.randn(z0.shape, generator=g)
    t = torch.linspace(50, 950, n).long()
    sched = T.train_scheduler()
    with torch.no_grad():
        pred = unet(sched.add_noise(z0, noise, t), t, encoder_hidden_states=te(ids).last_hidden_state).sample
    return float(((pred - noise) ** 2).mean())


def test_tiny_training_lowers_the_loss_and_resumes_bit_for_bit(tmp_path):
    from safetensors.torch import load_file

    from iceb.toy import train as T

    cfg = T.TrainConfig.tiny()
    cfg.steps, cfg.vae_steps, cfg.checkpoint_every = 30, 2, 10
    work = tmp_path / "a"
    T.train_all(cfg, work, tmp_path / "out", stages=("vae", "latents"), log=lambda *_: None)
    before = _fixed_loss(cfg, work, None)
    T.train_diffusion(cfg, work, log=lambda *_: None)
    after = _fixed_loss(cfg, work, "ckpt")
    assert after < 0.8 * before, (before, after)
    # resume: 10 steps, stop, then on to 30 == 30 in one go
    work_b = tmp_path / "b"
    work_b.mkdir()
    for f in ("vae_ckpt.safetensors", "vae_ckpt.json", "latents.safetensors"):
        (work_b / f).write_bytes((work / f).read_bytes())
    short = T.TrainConfig.tiny()
    short.steps, short.vae_steps, short.checkpoint_every = 10, 2, 10
    T.train_diffusion(short, work_b, log=lambda *_: None)
    meta = json.loads((work_b / "diffusion_ckpt.json").read_text())
    assert meta["step"] == 10
    T.train_diffusion(cfg, work_b, log=lambda *_: None)
    a, b = load_file(str(work / "diffusion_ckpt.safetensors")), load_file(str(work_b / "diffusion_ckpt.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "a resumed run differs from an uninterrupted one"


def test_text_stage_learns_resumes_bit_for_bit_and_stays_frozen_in_diffusion(tmp_path):
    from safetensors.torch import load_file

    from iceb.toy import train as T

    def cfg_with(steps: int):
        cfg = T.TrainConfig.tiny()
        cfg.text_steps, cfg.text_batch, cfg.checkpoint_every, cfg.freeze_text = steps, 32, 10, True
        return cfg

    work = tmp_path / "a"
    work.mkdir()
    meta = T.train_text(cfg_with(40), work, log=lambda *_: None)
    assert meta["history"][-1]["loss"] < 0.7 * meta["history"][0]["loss"]
    assert meta["eval"]["primary"] >= 0.75, meta["eval"]  # 4 primary names after 40 steps
    # resume: stopped after its first step (max_seconds=0), then rerun to the end == 40 steps in one go
    work_b = tmp_path / "b"
    work_b.mkdir()
    assert T.train_text(cfg_with(40), work_b, log=lambda *_: None, max_seconds=0)["step"] == 1
    T.train_text(cfg_with(40), work_b, log=lambda *_: None)
    a, b = load_file(str(work / "text_ckpt.safetensors")), load_file(str(work_b / "text_ckpt.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the diffusion stage refuses to start without it, then trains the UNet only
    cfg = cfg_with(40)
    empty = tmp_path / "c"
    T.train_all(cfg, empty, tmp_path / "out", stages=("vae", "latents"), log=lambda *_: None)
    with pytest.raises(FileNotFoundError, match="'text' stage"):
        T.train_diffusion(cfg, empty, log=lambda *_: None)
    for f in ("vae_ckpt.safetensors", "vae_ckpt.json", "latents.safetensors"):
        (work / f).write_bytes((empty / f).read_bytes())
    T.train_diffusion(cfg, work, log=lambda *_: None)
    d = load_file(str(work / "diffusion_ckpt.safetensors"))
    # frozen as it will ship: the text stage's weights rounded to fp16, rows outside the world's vocabulary zero
    from iceb.data.tokenizer import load_clip_tokenizer
    from iceb.toy.train.text_stage import world_token_ids

    keep = world_token_ids(T.make_world(cfg), load_clip_tokenizer())
    te = {k[len("text_encoder."):]: v.half().float() for k, v in a.items() if k.startswith("text_encoder.")}
    table = next(k for k in te if k.endswith("token_embedding.weight"))
    rows = torch.zeros_like(te[table])
    rows[keep] = te[table][keep]
    te[table] = rows
    for pre in ("text_encoder.", "ema_te."):
        assert all(torch.equal(d[pre + k], v) for k, v in te.items()), pre
    n_unet = sum(1 for _ in T.build_unet(cfg).parameters())
    assert sum(1 for k in d if k.startswith("opt.") and k.endswith(".exp_avg")) == n_unet  # the UNet alone trains


def test_caption_bank_holds_the_frozen_encoders_states_and_diffusion_resumes_on_it(tmp_path):
    """With ``text_bank`` the diffusion stage trains on states encoded once: they are the frozen encoder's own
    (exactly in fp32; to bf16 rounding under ``text_autocast``), and a resumed run equals an uninterrupted one."""
    from safetensors.torch import load_file

    from iceb.data.tokenizer import load_clip_tokenizer
    from iceb.toy import train as T
    from iceb.toy.train.captions import CaptionSampler
    from iceb.toy.train.common import stage_random
    from iceb.toy.train.text_stage import load_text_encoder

    cfg = T.TrainConfig.tiny()
    cfg.text_steps, cfg.text_batch, cfg.freeze_text, cfg.text_bank, cfg.steps = 4, 8, True, 20, 6
    work = tmp_path / "a"
    T.train_all(cfg, work, tmp_path / "out", stages=("vae", "latents", "text"), log=lambda *_: None)
    work_b = tmp_path / "b"
    work_b.mkdir()
    for f in work.iterdir():
        (work_b / f.name).write_bytes(f.read_bytes())
    T.train_diffusion(cfg, work, log=lambda *_: None)
    bank = load_file(str(work / "text_bank.safetensors"))
    tok = load_clip_tokenizer()
    te = load_text_encoder(cfg, work, tok).eval()
    sampler = CaptionSampler(T.make_world(cfg), load_file(str(work / "latents.safetensors"))["attrs"], cfg)
    draws = [sampler.draw(stage_random(cfg, "bank", j)) for j in (0, 7, 19)]
    ids = tok([d[0] for d in draws], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        direct = te(ids).last_hidden_state
    assert torch.equal(bank["image"][[0, 7, 19]], torch.tensor([d[1] for d in draws]))
    assert torch.equal(bank["hidden"][[0, 7, 19]], direct.to(torch.float16))
    T.train_diffusion(cfg, work_b, log=lambda *_: None, max_seconds=0)  # one step, then resumed
    T.train_diffusion(cfg, work_b, log=lambda *_: None)
    a, b = load_file(str(work / "diffusion_ckpt.safetensors")), load_file(str(work_b / "diffusion_ckpt.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a), "a resumed run on the bank differs from an uninterrupted one"
    # under bf16 autocast the bank differs from the fp32 states by bf16 rounding only
    cfg.text_autocast = True
    (work / "text_bank.safetensors").unlink()
    T.train_diffusion(cfg, work, log=lambda *_: None)  # finished already: the bank is not rebuilt
    from iceb.toy.train.diffusion import caption_bank

    bf = caption_bank(cfg, work, sampler, tok, te)["hidden"][[0, 7, 19]].float()
    err = (bf - direct).abs().max() / direct.abs().max()
    assert 0 < err < 2e-2, err


def test_a_run_rebuilt_from_its_parts_trains_bit_for_bit_as_one_that_kept_its_folder(tmp_path):
    """``parts`` commits the stages before diffusion; ``--from-parts`` rebuilds a work folder from them: the
    recomputed latents hash as recorded and the diffusion stage's checkpoint equals the original folder's."""
    from safetensors.torch import load_file

    from iceb.toy import train as T
    from iceb.toy.train.parts import PARTS_FILE, seed_from_parts

    cfg = T.TrainConfig.tiny()
    cfg.text_steps, cfg.text_batch, cfg.freeze_text, cfg.text_bank, cfg.steps = 3, 8, True, 16, 4
    work, parts = tmp_path / "a", tmp_path / "parts"
    T.train_all(cfg, work, parts, stages=("vae", "latents", "classifier", "text", "parts"), log=lambda *_: None)
    record = json.loads((parts / PARTS_FILE).read_text())
    assert not (parts / "model" / "model_index.json").exists() and record["files_sha256"]
    assert {"model/vae/diffusion_pytorch_model.safetensors", "model/text_encoder/token_rows.safetensors",
            "classifier.safetensors", "split.json"} <= set(record["files_sha256"])
    T.train_all(cfg, work, parts, stages=("diffusion",), log=lambda *_: None)
    later = T.TrainConfig.from_json(cfg.to_json())
    later.probe_every = 0  # a field only the stages from diffusion on read may change
    rebuilt = tmp_path / "b"
    T.train_all(later, rebuilt, tmp_path / "out", stages=("latents", "diffusion"), log=lambda *_: None,
                from_parts=parts)
    a, b = load_file(str(work / "diffusion_ckpt.safetensors")), load_file(str(rebuilt / "diffusion_ckpt.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = T.TrainConfig.from_json(cfg.to_json())
    other.vae_steps += 1
    with pytest.raises(ValueError, match="vae_steps"):
        seed_from_parts(other, parts, tmp_path / "c")
    (parts / "classifier.json").write_text("{}")
    with pytest.raises(ValueError, match="does not match"):
        seed_from_parts(cfg, parts, tmp_path / "d")


def test_ema_follows_its_formula_and_copies_integer_buffers():
    from iceb.toy.train import EMA

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    ema = EMA(module, max_decay=0.9)
    ref = {k: v.clone().double() for k, v in module.state_dict().items()}
    for step in range(6):
        with torch.no_grad():  # the optimizer updates parameters in place; the EMA must see every update
            for p in module.parameters():
                p.add_(torch.randn_like(p))
            module[1].num_batches_tracked += 1
        ema.update(module, step)
        d = min(0.9, (1 + step) / (10 + step))
        for k, v in module.state_dict().items():
            ref[k] = ref[k] * d + v.double() * (1 - d) if v.dtype.is_floating_point else v.clone().double()
    for k, v in ema.shadow.items():
        assert torch.allclose(v.double(), ref[k], atol=1e-6), k
    assert int(ema.shadow["1.num_batches_tracked"]) == 6


def test_guidance_stage_ships_the_grid_point_with_the_best_accuracy(tmp_path, monkeypatch):
    import numpy as np

    from iceb.toy import train as T
    from iceb.toy.classifier import ToyClassifier

    cfg = T.TrainConfig.tiny()
    cfg.guidance_grid, cfg.guidance_images = (1.0, 3.0, 9.0), 1
    work = tmp_path / "w"
    T.train_all(cfg, work, tmp_path / "out", stages=("vae", "latents", "classifier", "diffusion"),
                log=lambda *_: None)
    # a classifier that is right only on images made at guidance 3: each grid point renders other pixels
    import iceb.generation as G

    real_generate = G.generate
    seen: list[float] = []

    def spy(pipe, prompts, seeds, gen, **kw):
        seen.append(gen.guidance_scale)
        return real_generate(pipe, prompts, seeds, gen, **kw)

    monkeypatch.setattr(G, "generate", spy)
    n = len(T.make_world(cfg))
    monkeypatch.setattr(ToyClassifier, "predict_proba", lambda self, ims: np.eye(n)[
        [i % n if seen[-1] == 3.0 else (i + 1) % n for i in range(len(ims))]])
    res = T.train_all(cfg, work, tmp_path / "out", stages=("guidance", "export"), log=lambda *_: None)
    assert seen == [1.0, 3.0, 9.0]
    assert res["guidance"]["chosen"] == 3.0 and res["guidance"]["accuracy"]["3.0"] == 1.0
    shipped = json.loads((tmp_path / "out" / "model" / "iceb_model.json").read_text())
    assert shipped["generation"]["guidance_scale"] == 3.0
    assert json.loads((tmp_path / "out" / "train_config.json").read_text())["stages"]["guidance"]["chosen"] == 3.0


def test_toy_eval_counts_its_sets_and_its_gates_follow_the_measured_values(tmp_path):
    from iceb.toy import train as T
    from iceb.toy.evaluate import GATES, evaluate_quality

    cfg = T.TrainConfig.tiny()
    T.train_all(cfg, tmp_path / "w", tmp_path / "out", stages=("vae", "latents", "classifier", "diffusion", "export"),
                log=lambda *_: None)
    world = T.make_world(cfg)
    res = evaluate_quality(str(tmp_path / "out" / "model"), out=tmp_path / "q.json", images_per_concept=2,
                           classifier_dir=tmp_path / "out", free_form_per_concept=1, alias_images=1,
                           misunderstood_images=2, untrained_images=0, classifier_images=16)
    s = res["summary"]
    n_mis = sum(len(c.misunderstood) for c in world.concepts)
    assert (s["primary"]["n"], s["free_form"]["n"], s["misunderstood"]["n"]) == (2 * len(world), len(world), 2 * n_mis)
    assert "untrained" not in s and s["classifier"]["n"] == 16 and 0 <= s["classifier"]["vae"] <= 1
    p = s["primary"]  # concepts are the clusters of the standard error; the widths are the model's own
    assert p["n_concepts"] == len(world) and p["accuracy_ci95"][0] <= p["accuracy"] <= p["accuracy_ci95"][1]
    per_concept = np.array(list(res["primary_accuracy_per_concept"].values()))  # equal sizes: sd / sqrt(G)
    assert p["accuracy_se"] == pytest.approx(per_concept.std(ddof=1) / np.sqrt(len(world)), rel=1e-9, abs=1e-12)
    space = res["edit_space"]
    assert space["model"]["text_mlp"] == cfg.text_intermediate and space["sd1"]["text_mlp"] == 3072
    assert space["fraction"]["text_mlp"] == space["n_edits"] / cfg.text_intermediate and space["n_edits"] == len(world)
    g = s["gates"]
    assert g["checks"] == {
        "primary_accuracy_min": g["primary_accuracy"] >= GATES["primary_accuracy_min"],
        "misunderstood_true_prob_max": g["misunderstood_max_alias_prob_true"] < GATES["misunderstood_true_prob_max"],
        "aliases_accuracy_min": g["aliases_accuracy"] >= GATES["aliases_accuracy_min"],
        "classifier_clean_min": g["classifier_clean"] >= GATES["classifier_clean_min"],
        "classifier_vae_min": g["classifier_vae"] >= GATES["classifier_vae_min"]}
    assert g["passed"] == all(g["checks"].values())
    assert json.loads((tmp_path / "q.json").read_text())["summary"]["gates"] == g


# -- the shipped bundle --------------------------------------------------------------------------------
@needs_shipped
def test_shipped_weights_match_train_config_and_size_budget():
    from iceb.utils.download import sha256_file

    record = json.loads((TOY / "train_config.json").read_text())
    assert record["weights_sha256"], "no weight files recorded"
    for rel, digest in record["weights_sha256"].items():
        assert sha256_file(TOY / rel) == digest, f"{rel} does not match train_config.json"
    model_bytes = sum(p.stat().st_size for p in (TOY / "model").rglob("*") if p.is_file())
    assert model_bytes <= 30 * 1024 * 1024
    assert sorted(str(p.relative_to(TOY)) for p in TOY.rglob("*.safetensors")) == sorted(record["weights_sha256"])


@needs_shipped
def test_shipped_quality_was_measured_on_these_weights_and_makes_toy_the_default():
    from iceb.models import TOY_DIR, _folder_fingerprint, default_model_spec

    quality = json.loads((TOY / "quality.json").read_text())
    assert quality["fingerprint"] == f"iceb/toy-world@{_folder_fingerprint(TOY_DIR)}", (
        "quality.json is stale: rerun 'iceb toy eval' after changing the weights")
    summary = quality["summary"]
    passed = (summary["primary"]["accuracy"] >= 0.90 and summary["misunderstood"]["max_alias_prob_true"] < 0.2
              and summary["aliases"]["accuracy"] >= 0.85 and summary["classifier"]["clean"] >= 0.99
              and summary["classifier"]["vae"] >= 0.99)
    assert summary["gates"]["passed"] == passed and summary["primary"]["n"] == 512  # 8 images x 64 concepts
    assert default_model_spec() == ("toy" if passed else "tiny")


@needs_shipped
def test_shipped_split_is_what_the_generator_builds():
    from iceb.data.split_bundle import SplitBundle
    from iceb.toy.split import build_split

    assert SplitBundle.load(TOY / "split.json").checksum() == build_split(W.ToyWorld()).checksum()
    world = W.ToyWorld()
    words = [w for w, _, _ in world.trained_names()]
    lines = (TOY / "captions.txt").read_text().splitlines()
    assert len(lines) >= 2000
    assert all(sum(W.count_name(line, w) for w in words) == 1 for line in lines[:300])


@needs_shipped
def test_load_model_toy_generates_32px_images():
    from iceb.generation import generate
    from iceb.models import load_model

    m = load_model("toy", device="cpu")
    assert (m.family, m.world, m.classifier) == ("toy", "toy", "toy")
    c = m.pipe.text_encoder.config
    assert (c.num_hidden_layers, c.hidden_size, c.intermediate_size, c.num_attention_heads, c.vocab_size,
            c.max_position_embeddings) == (4, 128, 512, 4, 49408, 77)
    assert m.pipe.unet.config.cross_attention_dim == 128
    assert m.pipe.text_encoder.dtype == torch.float32 and m.pipe.unet.dtype == torch.float32
    name = W.ToyWorld().concepts[0].name
    images = generate(m.pipe, [f"A photo of {name}", ""], [1, 2], m.generation.replace(num_inference_steps=2),
                      progress=False)
    assert [im.shape for im in images] == [(32, 32, 3)] * 2 and images[0].dtype == np.uint8


@needs_shipped
def test_toy_classifier_recognises_clean_renders():
    from iceb.toy.classifier import ToyClassifier

    world = W.ToyWorld()
    clf = ToyClassifier()
    assert clf.num_classes == 64
    specs = W.random_specs(world, 320, seed=987654)  # seeds never used in training
    probs = clf.predict_proba(list(W.render_many(world, specs)))
    assert probs.shape == (320, 64) and np.allclose(probs.sum(1), 1)
    acc = np.mean(probs.argmax(1) == np.array([s.concept_id for s in specs]))
    assert acc >= 0.99, acc




def test_small_batches_see_the_whole_world_only_when_shuffled():
    """A batch smaller than the world cycles from concept 0 (the shipped recipe, kept reproducible) unless
    shuffled; shuffled batches cover every concept over a few steps, with the same contexts and seeds."""
    world = W.ToyWorld(n_shapes=4, n_colours=4)  # 16 concepts
    plain = W.random_specs(world, 4, seed=3)
    assert [s.concept_id for s in plain] == [0, 1, 2, 3]
    mixed = W.random_specs(world, 4, seed=3, shuffle=True)
    assert [(s.position, s.size, s.background, s.seed) for s in mixed] == [
        (s.position, s.size, s.background, s.seed) for s in plain]
    seen = {s.concept_id for step in range(40) for s in W.random_specs(world, 4, seed=step, shuffle=True)}
    assert seen == set(range(16))
    assert W.random_specs(world, 4, seed=3, shuffle=True) == mixed  # deterministic


def test_toy_1k_recipe_has_sd_text_widths_and_its_first_steps_run(tmp_path):
    """The toy-1k recipe (not trained in CI): SD-1.x's text widths, a world of >= 1,250 concepts whose scaled split
    holds 1,000 edits, and two steps of its own text stage plus one UNet step on its encoder's states."""
    from iceb.data.tokenizer import load_clip_tokenizer
    from iceb.toy import train as T
    from iceb.toy.split import build_scaled_split
    from iceb.toy.train.config import recipe

    cfg = recipe("toy-1k")
    assert (cfg.text_hidden, cfg.text_intermediate, cfg.freeze_text) == (768, 3072, True)
    world = T.make_world(cfg)
    assert len(world) >= 1250 and len(build_scaled_split(world).edits) == 1000
    cfg.text_steps, cfg.threads = 2, 1
    meta = T.train_text(cfg, tmp_path, log=lambda *_: None)
    assert meta["step"] == 2 and np.isfinite(meta["history"][-1]["loss"])
    from iceb.toy.train.text_stage import load_text_encoder

    te = load_text_encoder(cfg, tmp_path, load_clip_tokenizer())
    unet = T.build_unet(cfg)
    ids = load_clip_tokenizer()(["A photo of " + world.concepts[1300].name], padding="max_length", max_length=77,
                                return_tensors="pt").input_ids
    with torch.no_grad():
        states = te(ids).last_hidden_state
    assert states.shape == (1, 77, 768)
    z = torch.randn(1, cfg.latent_channels, 16, 16)
    loss = unet(z, torch.tensor([500]), encoder_hidden_states=states).sample.pow(2).mean()
    loss.backward()
    assert all(p.grad is not None for p in unet.parameters() if p.requires_grad)
