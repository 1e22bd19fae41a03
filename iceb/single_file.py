"""A diffusers Stable Diffusion pipeline as one checkpoint file in the original (CompVis/LDM) layout — the file
the Stable Diffusion UIs load — and its exact inverse is diffusers' own ``from_single_file``.

The key layout is the inverse of diffusers' ``convert_ldm_unet_checkpoint`` / ``convert_ldm_vae_checkpoint``
(as the diffusers repository's ``scripts/convert_diffusers_to_original_stable_diffusion.py`` writes it for
SD 1.x), generalised from SD-1.x's fixed four blocks of two layers to any block count and
``layers_per_block`` read from the configs, so the toy and tiny models convert too:

- UNet under ``model.diffusion_model.``: down block ``i``, layer ``j`` → ``input_blocks.{1 + i(L+1) + j}``
  (``.0`` the resnet, ``.1`` the transformer), its downsampler → ``input_blocks.{(i+1)(L+1)}.0.op``; up block
  ``i``, layer ``j`` (L+1 of them) → ``output_blocks.{i(L+1) + j}``, its upsampler → ``output_blocks.{i(L+1) + L}``
  ``.1`` (``.2`` when the block has attentions); the mid block → ``middle_block.{0,1,2}``; resnet parts
  ``norm1/conv1/norm2/conv2/time_emb_proj/conv_shortcut`` → ``in_layers.0/in_layers.2/out_layers.0/out_layers.3/
  emb_layers.1/skip_connection``.
- VAE under ``first_stage_model.``: ``encoder.down.{i}.block.{j}``, ``decoder.up.{n-1-i}.block.{j}`` (the
  decoder's blocks are numbered from the bottom), ``mid.block_{1,2}``, ``mid.attn_1`` whose q/k/v/proj_out are
  1×1 convolutions there (diffusers keeps them as linear layers: reshaped, not changed), ``nin_shortcut``,
  ``norm_out``.
- Text encoder under ``cond_stage_model.transformer.``, in the checkpoint layout (``text_model.…``).

Values are copied bit for bit (a reshape is a view); the test loads the file back with ``from_single_file`` and
compares every tensor.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
           ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))
_UNET_TOP = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
             "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2."}
_VAE_ATTN = (("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."), ("to_out.0.", "proj_out."))


def _unet_prefixes(cfg: Any) -> list[tuple[str, str]]:
    L = int(cfg.layers_per_block)
    n = len(cfg.down_block_types)
    out: list[tuple[str, str]] = []
    for i in range(n):
        for j in range(L):
            out += [(f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{1 + i * (L + 1) + j}.0."),
                    (f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{1 + i * (L + 1) + j}.1.")]
        if i < n - 1:
            out.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(i + 1) * (L + 1)}.0.op."))
        attn = "CrossAttn" in cfg.up_block_types[i] or "Attn" in cfg.up_block_types[i]
        for j in range(L + 1):
            out += [(f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{i * (L + 1) + j}.0."),
                    (f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{i * (L + 1) + j}.1.")]
        if i < n - 1:
            out.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{i * (L + 1) + L}.{2 if attn else 1}."))
    out += [("mid_block.attentions.0.", "middle_block.1."), ("mid_block.resnets.0.", "middle_block.0."),
            ("mid_block.resnets.1.", "middle_block.2.")]
    return out


def _unet_key(key: str, prefixes: list[tuple[str, str]]) -> str:
    for hf, sd in _UNET_TOP.items():
        if key.startswith(hf):
            return sd + key[len(hf):]
    for hf, sd in prefixes:
        if key.startswith(hf):
            rest = key[len(hf):]
            if ".resnets." in hf:
                for a, b in _RESNET:
                    if rest.startswith(a + "."):
                        rest = b + rest[len(a):]
                        break
            return sd + rest
    raise KeyError(f"no original-layout name for UNet tensor {key!r}")


def _vae_key(key: str, n: int) -> tuple[str, bool]:
    """(original name, whether the value is a linear weight stored there as a 1×1 convolution)."""
    part, _, rest = key.partition(".")
    k = rest
    conv = False
    m = re.match(r"(down|up)_blocks\.(\d+)\.(resnets\.(\d+)|downsamplers\.0|upsamplers\.0)\.(.*)", k)
    if m:
        kind, i, inner, j, tail = m.groups()
        i = int(i)
        block = i if kind == "down" else n - 1 - i
        if inner.startswith("resnets"):
            head = f"{'down' if kind == 'down' else 'up'}.{block}.block.{j}."
        else:
            head = f"{'down' if kind == 'down' else 'up'}.{block}.{'downsample' if kind == 'down' else 'upsample'}."
        k = head + tail
    elif k.startswith("mid_block.resnets."):
        j = int(k.split(".")[2])
        k = f"mid.block_{j + 1}." + ".".join(k.split(".")[3:])
    elif k.startswith("mid_block.attentions.0."):
        tail = k[len("mid_block.attentions.0."):]
        for a, b in _VAE_ATTN:
            if tail.startswith(a):
                conv = tail.endswith("weight") and a != "group_norm."
                tail = b + tail[len(a):]
                break
        k = "mid.attn_1." + tail
    elif k.startswith("conv_norm_out."):
        k = "norm_out." + k[len("conv_norm_out."):]
    k = k.replace("conv_shortcut.", "nin_shortcut.")
    return f"{part}.{k}" if part in ("encoder", "decoder") else key, conv


def original_state_dict(pipe: Any) -> dict[str, torch.Tensor]:
    """The pipeline's UNet, VAE and text encoder under the original single-file names.

    Args:
        pipe: A Stable Diffusion pipeline (UNet2DConditionModel, AutoencoderKL, CLIP text encoder).

    Returns:
        Name -> tensor (the pipeline's own values; 1×1-convolution views where the layout asks for them).

    Raises:
        KeyError: A tensor of an architecture this layout does not describe (e.g. SDXL's second text encoder).
    """
    from editors.weights import checkpoint_name

    out: dict[str, torch.Tensor] = {}
    prefixes = _unet_prefixes(pipe.unet.config)
    for k, v in pipe.unet.state_dict().items():
        out["model.diffusion_model." + _unet_key(k, prefixes)] = v
    n = len(pipe.vae.config.block_out_channels)
    for k, v in pipe.vae.state_dict().items():
        name, conv = _vae_key(k, n)
        out["first_stage_model." + name] = v[:, :, None, None] if conv and v.dim() == 2 else v
    for k, v in pipe.text_encoder.state_dict().items():
        out["cond_stage_model.transformer." + checkpoint_name(pipe, f"text_encoder.{k}")[len("text_encoder."):]] = v
    return out


def save_single_file(pipe: Any, path: str | Path, *, dtype: torch.dtype | None = None) -> Path:
    """Write the pipeline as one ``.safetensors`` checkpoint in the original layout.

    Args:
        pipe: The (edited) pipeline.
        path: The file, ending in ``.safetensors``.
        dtype: Store the floating-point tensors in this dtype (default: as they are).

    Returns:
        ``path``.
    """
    from safetensors.torch import save_file

    from iceb.utils.io import atomic_path

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"a single-file checkpoint ends in .safetensors; got {path}")
    sd = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
          for k, v in original_state_dict(pipe).items()}
    with atomic_path(path) as tmp:
        save_file(sd, str(tmp), metadata={"format": "pt", "written_by": "iceb"})
    return path


__all__ = ["original_state_dict", "save_single_file"]
