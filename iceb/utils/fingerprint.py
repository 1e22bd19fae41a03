"""Identities of weights for on-disk caches, shared by editors (stage-I, statistics, ESD caches) and metrics
(per-image record caches): a cache entry is reused only for exactly the weights that made it."""
from __future__ import annotations

import torch


@torch.no_grad()
def weights_fingerprint(module: torch.nn.Module, skip: tuple[str, ...] = ()) -> str:
    """Cheap identity of a module's weights for editors' on-disk caches: names, shapes, dtypes, the exact sum
    (catches any edit) and the first values of every tensor; tensors whose name contains a ``skip`` part
    are left out."""
    import hashlib

    from iceb.utils.hashing import KEY_LENGTH

    h = hashlib.sha256()  # streamed over tensor bytes: too large for a canonical-JSON stable_hash
    for name, p in module.state_dict().items():
        if any(s in name for s in skip):
            continue
        flat = p.detach().reshape(-1)
        h.update(f"{name}{tuple(p.shape)}{p.dtype}".encode())
        h.update(repr(float(flat.sum(dtype=torch.float64)) if flat.is_floating_point() else int(flat.sum())).encode())
        h.update(flat[:16].float().cpu().numpy().tobytes())
    return h.hexdigest()[:KEY_LENGTH]


def pipeline_fingerprint(pipe, tag: str = "pipeline") -> str:
    """Identity of everything a generation depends on: text encoder, UNet and VAE weights and the scheduler's
    type and config (``tag`` namespaces the key; the config through ``stable_hash``'s ``drop_private``: diffusers'
    private ``_use_default_values`` list is built from a set, so its order follows PYTHONHASHSEED)."""
    from iceb.utils.hashing import stable_hash

    parts = [weights_fingerprint(m) for m in (pipe.text_encoder, pipe.unet, pipe.vae)]
    return stable_hash(tag, parts, type(pipe.scheduler).__name__, dict(pipe.scheduler.config), drop_private=True)
