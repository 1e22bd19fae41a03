"""Shared helpers for the benchmarks: SD-1.4-size random models, timing, peak memory, JSON output."""
from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def machine() -> dict[str, Any]:
    import torch

    info = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "cores": os.cpu_count(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def peak_rss_gb() -> float:
    """Lifetime peak resident memory of this process, GB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


@contextmanager
def timed(out: dict[str, Any], key: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    out[key] = round(time.perf_counter() - t0, 4)


def sd14_text_encoder(seed: int = 0, token_ids: tuple[int, int, int] = (49406, 49407, 49407)):
    """CLIP ViT-L/14's text encoder shape (SD-1.4), random weights, fp32, eval.

    ``token_ids`` are (bos, eos, pad): CLIP's by default; the official stage-II timing spec used (0, 2, 1)."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    bos, eos, pad = token_ids
    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                         num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                         projection_dim=768, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)
    return CLIPTextModel(cfg).eval()


def emit(name: str, result: dict[str, Any]) -> None:
    print(json.dumps({"benchmark": name, "machine": machine(), **result}, indent=2, default=str))
