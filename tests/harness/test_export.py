"""Exports: an EMCID edit as a LoRA that diffusers' own loader turns back into the edited weights, truncation with
its error reported, formats a LoRA cannot hold refused, and the diffusers folder with its model card."""
from __future__ import annotations

import json

import pytest
import torch

from editors import EditRequest
from editors.weights import get_tensor
from iceb.editfile import edit_model, save_edit
from iceb.export import ExportError, export_edit, lora_factors

EMCID_ARGS = {"layers": [1, 3], "v_num_grad_steps": 2, "train_steps": 1, "train_size": 8, "mom2_n_samples": 100}
REQS = [EditRequest("cat", "dog", seed=1), EditRequest("apple", "orange", seed=2), EditRequest("car", "boat", seed=3)]


@pytest.fixture(scope="module")
def emcid_edit(tiny_model, tmp_path_factory):
    res, hp = edit_model("emcid", tiny_model, REQS, overrides=EMCID_ARGS, progress=False,
                         cache_dir=tmp_path_factory.mktemp("cache"))
    path = save_edit(tmp_path_factory.mktemp("edit") / "e.safetensors", res, editor="emcid", hparams=hp,
                     model=tiny_model, requests=REQS)
    return res, path


def test_emcid_lora_is_exact_through_load_lora_weights(tiny_model, emcid_edit, tmp_path):
    from iceb.models import load_model

    res, path = emcid_edit
    out = export_edit(tiny_model, [path], tmp_path / "lora", fmt="lora")
    assert out["exact"] and out["rank"]["text_encoder"] == len(REQS)  # EMCID's ΔW is exactly rank N
    assert out["rel_error"] < 1e-6
    card = (tmp_path / "lora" / "README.md").read_text()
    assert "base_model: " in card and "emcid" in card and "cat → dog" in card
    assert json.loads((tmp_path / "lora" / "iceb_lora.json").read_text())["requests_hash"]
    import os

    umask = os.umask(0)
    os.umask(umask)
    for f in (tmp_path / "lora").iterdir():  # readable as any other output (diffusers writes its file 0600)
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask, f.name
    fresh = load_model("tiny", device="cpu").pipe  # another copy of the base: load, fuse at strength 1
    fresh.load_lora_weights(str(tmp_path / "lora"), adapter_name="iceb")
    fresh.fuse_lora(lora_scale=1.0)
    fresh.unload_lora_weights()
    for name, want in res.tensors.items():
        got = get_tensor(fresh, name).detach()
        base = get_tensor(tiny_model.pipe, name).detach()
        assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max()), name
        assert not torch.equal(got, base)
    half = load_model("tiny", device="cpu").pipe  # the strength knob scales ΔW
    half.load_lora_weights(str(tmp_path / "lora"), adapter_name="iceb")
    half.fuse_lora(lora_scale=0.5)
    name = next(iter(res.tensors))
    base = get_tensor(tiny_model.pipe, name).detach()
    torch.testing.assert_close(get_tensor(half, name).detach(), base + 0.5 * (res.tensors[name] - base),
                               rtol=0, atol=1e-5 * float(base.abs().max()))


def test_truncated_lora_reports_its_error():
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(20, 5, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(30, 5, generator=g, dtype=torch.float64))
    s = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0], dtype=torch.float64)
    delta = (u * s) @ v.T
    exact = lora_factors(delta)
    assert exact.rank == exact.full_rank == 5 and exact.rel_error < 1e-12
    torch.testing.assert_close(exact.up @ exact.down, delta, rtol=0, atol=1e-12)
    cut = lora_factors(delta, max_rank=2)
    assert cut.rank == 2 and cut.full_rank == 5
    assert cut.rel_error == pytest.approx(float((s[2:] ** 2).sum().sqrt() / (s ** 2).sum().sqrt()), rel=1e-9)


def test_a_lora_cannot_hold_a_convolution_or_a_bias(tiny_model, tmp_path):
    conv = "unet.conv_in.weight"
    w = get_tensor(tiny_model.pipe, conv).detach()
    path = save_edit(tmp_path / "c.safetensors", {conv: w + 0.1}, editor="manual", model=tiny_model)
    with pytest.raises(ExportError, match="--format diffusers"):
        export_edit(tiny_model, [path], tmp_path / "lora", fmt="lora")
    with pytest.raises(ExportError, match="did you mean 'lora'"):
        export_edit(tiny_model, [path], tmp_path / "x", fmt="loar")


def test_diffusers_export_is_the_applied_folder_with_a_card(tiny_model, emcid_edit, tmp_path):
    from iceb.models import load_model

    res, path = emcid_edit
    export_edit(tiny_model, [path], tmp_path / "full", fmt="diffusers")
    assert "# emcid edit of" in (tmp_path / "full" / "README.md").read_text()
    reloaded = load_model(str(tmp_path / "full"), device="cpu")
    for name, want in res.tensors.items():
        assert torch.equal(get_tensor(reloaded.pipe, name), want)


def test_export_command(emcid_edit, tmp_path, capsys):
    from iceb.cli import main

    _, path = emcid_edit
    assert main(["export", str(path), "--model", "tiny", "--out", str(tmp_path / "l")]) == 0
    assert "exact" in capsys.readouterr().out and (tmp_path / "l" / "pytorch_lora_weights.safetensors").is_file()
    assert main(["export", str(path), "--model", "tiny", "--format", "lora2", "--out", str(tmp_path / "m")]) == 2
    assert "did you mean 'lora'" in capsys.readouterr().err and not (tmp_path / "m").exists()


@pytest.mark.parametrize("spec", ["tiny", "toy"])  # two block layouts (toy: three down blocks, the first plain)
def test_single_file_round_trips_through_from_single_file(spec, tiny_model, tmp_path):
    from diffusers import StableDiffusionPipeline

    from iceb.models import load_model
    from iceb.single_file import save_single_file

    pipe = tiny_model.pipe if spec == "tiny" else load_model("toy", device="cpu").pipe
    pipe.save_pretrained(str(tmp_path / "base"), safe_serialization=True)  # configs for the loader, offline
    save_single_file(pipe, tmp_path / "one.safetensors")
    back = StableDiffusionPipeline.from_single_file(str(tmp_path / "one.safetensors"), config=str(tmp_path / "base"),
                                                    local_files_only=True, safety_checker=None,
                                                    requires_safety_checker=False)
    for comp in ("unet", "vae", "text_encoder"):
        a, b = getattr(pipe, comp).state_dict(), getattr(back, comp).state_dict()
        assert set(a) == set(b), comp
        for k, v in a.items():
            assert torch.equal(v, b[k].reshape(v.shape)), (comp, k)


def test_single_file_names_are_the_sd14_checkpoint_names():
    """On SD-1.4's own architecture (empty weights: names only) the keys are those of the original v1-4 file."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from iceb.single_file import _unet_key, _unet_prefixes, _vae_key

    with init_empty_weights():
        unet = UNet2DConditionModel(cross_attention_dim=768, sample_size=64)  # the SD-1.x defaults
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    pre = _unet_prefixes(unet.config)
    names = {_unet_key(k, pre) for k in unet.state_dict()}
    for want in ("input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", "input_blocks.3.0.op.weight",
                 "input_blocks.11.0.out_layers.3.weight", "middle_block.1.proj_in.weight",
                 "middle_block.2.emb_layers.1.weight", "output_blocks.2.1.conv.weight",
                 "output_blocks.5.2.conv.weight", "output_blocks.11.1.proj_out.weight",
                 "output_blocks.3.0.skip_connection.weight", "time_embed.2.bias", "out.2.weight"):
        assert want in names, want
    assert len(names) == len(unet.state_dict()) == 686
    vnames = {_vae_key(k, 4)[0] for k in vae.state_dict()}
    for want in ("decoder.up.3.block.0.conv1.weight", "decoder.up.1.upsample.conv.weight", "encoder.down.0.downsample.conv.weight",
                 "encoder.mid.attn_1.q.weight", "decoder.mid.block_2.norm2.bias", "encoder.norm_out.weight",
                 "decoder.up.0.block.0.nin_shortcut.weight", "quant_conv.weight"):
        assert want in vnames, want


def test_a_lora_scores_through_file_editor(tiny_model, emcid_edit, tmp_path):
    """``--editor file:<LoRA folder>`` reads the LoRA back through diffusers into the edited weights, and leaves the
    base pipeline bit for bit as it was."""
    from iceb.harness.external import is_lora, load_external

    res, path = emcid_edit
    export_edit(tiny_model, [path], tmp_path / "lora", fmt="lora")
    before = {k: v.clone() for k, v in tiny_model.pipe.text_encoder.state_dict().items()}
    assert is_lora(tmp_path / "lora") and not is_lora(path)
    ext = load_external(f"file:{tmp_path / 'lora'}", tiny_model)
    assert ext.kind == "lora" and len(ext.tensors) == len(res.tensors)
    from editors.weights import checkpoint_name

    for name, want in res.tensors.items():  # named as edit files name them (the checkpoint layout)
        got = ext.tensors[checkpoint_name(tiny_model.pipe, name)]
        assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max())
    after = tiny_model.pipe.text_encoder.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], v) for k, v in before.items())
