"""The toy world's modules (VAE, CLIP text encoder, UNet, schedulers) and the pipeline assembled from them."""
from __future__ import annotations

import json
from pathlib import Path

from iceb.toy import world as W
from iceb.toy.train.common import load_ckpt
from iceb.toy.train.config import TrainConfig


def build_vae(cfg: TrainConfig):
    from diffusers import AutoencoderKL

    n = len(cfg.vae_block_out)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=cfg.latent_channels, layers_per_block=1,
                         block_out_channels=cfg.vae_block_out, down_block_types=("DownEncoderBlock2D",) * n,
                         up_block_types=("UpDecoderBlock2D",) * n, norm_num_groups=min(8, cfg.vae_block_out[0]),
                         sample_size=W.IMAGE_SIZE)


def build_text_encoder(cfg: TrainConfig, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.text_hidden, intermediate_size=cfg.text_intermediate,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads, max_position_embeddings=77,
        projection_dim=cfg.text_hidden, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))


def text_autocast(cfg: TrainConfig):
    """bf16 autocast for the text encoder in training when ``cfg.text_autocast`` (a no-op context otherwise)."""
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.text_autocast)


def build_unet(cfg: TrainConfig):
    from diffusers import UNet2DConditionModel

    if len(cfg.unet_attention) != len(cfg.unet_block_out):
        raise ValueError("unet_attention needs one flag per unet_block_out level")
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.unet_attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.unet_attention))
    latent = W.IMAGE_SIZE // 2 ** (len(cfg.vae_block_out) - 1)
    return UNet2DConditionModel(sample_size=latent, in_channels=cfg.latent_channels,
                                out_channels=cfg.latent_channels, layers_per_block=1,
                                block_out_channels=cfg.unet_block_out, down_block_types=down, up_block_types=up,
                                cross_attention_dim=cfg.text_hidden, attention_head_dim=cfg.unet_heads,
                                norm_num_groups=min(16, cfg.unet_block_out[0]))


def train_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                         beta_end=0.012, clip_sample=False)


def sample_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                         beta_end=0.012, clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def load_vae(cfg: TrainConfig, work: Path):
    vae = build_vae(cfg)
    if load_ckpt(work / "vae_ckpt", {"vae": vae}, None) is None:
        raise FileNotFoundError(f"no VAE checkpoint in {work}; run the 'vae' stage first")
    return vae.eval()


def assemble_pipeline(tokenizer, text_encoder, unet, vae, scaling: float):
    """A StableDiffusionPipeline (DDIM, no safety checker) of the given modules, in eval mode."""
    from diffusers import StableDiffusionPipeline

    vae.register_to_config(scaling_factor=scaling)
    for m in (text_encoder, unet, vae):
        m.eval()
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=sample_scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def build_pipeline(cfg: TrainConfig, work: Path, ema: bool = True):
    """The StableDiffusionPipeline from the checkpoints (EMA weights by default)."""
    from safetensors.torch import load_file

    from iceb.data.tokenizer import load_clip_tokenizer

    tokenizer = load_clip_tokenizer()
    text_encoder, unet, vae = build_text_encoder(cfg, tokenizer), build_unet(cfg), load_vae(cfg, work)
    tensors = load_file(str((work / "diffusion_ckpt").with_suffix(".safetensors")))
    meta = json.loads((work / "diffusion_ckpt").with_suffix(".json").read_text())
    for name, module in (("text_encoder", text_encoder), ("unet", unet)):
        pre = {"text_encoder": "ema_te.", "unet": "ema_unet."}[name] if ema else f"{name}."
        module.load_state_dict({k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)})
    return assemble_pipeline(tokenizer, text_encoder, unet, vae, float(meta["scaling_factor"]))
