"""UnlearnDiffAtk (Zhang et al., ECCV 2024; OPTML-Group/Diffusion-MU-Attack ``src/attackers/text_grad_.py``):
a white-box discrete prompt attack in which the diffusion model is its own classifier.

k adversarial token slots are inserted after BOS (``prefix_k``). Each slot is a probability vector over the
attack vocabulary, initialised uniform. A step samples one token per slot (``torch.multinomial``), puts its
one-hot row through the token-embedding table, and minimises

    ℓ = ‖ε − ε_θ*(x_t, t, E(p_adv))‖²,   x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε,   ε ~ N(0, I) fresh each step,

where θ* is the **edited** model (text encoder and UNet) and x₀ the VAE posterior mean of a reference image of
the concept made by the **unedited** model (ICEB's cached pre-edit image of the original prompt: the
maintainers' "target images generated using the original base model"). The gradient reaches the
probabilities straight through the sampled one-hot, clipped by ``hardtanh``; after each Adam step (lr 0.01,
weight decay 0.1) every vector is projected back onto the probability simplex (the Euclidean projection; the
official code bisects, this sorts: the same point). Timesteps are visited in ascending blocks
(``sampled_t`` = T/n/2 + i·T/n); after each block the argmax prompt is rendered with the edited model and
judged, and the attack stops at the first success.

Budgets (:meth:`UnlearnDiffAtk.for_world`): the official objects/style setting on ImageNet (k 3, 50 blocks of
40 steps: t = 10, 30, ..., 990); on the toy world the spec's CPU variant, 5 blocks of 10 steps
(t = 100, 300, ..., 900), everything else as official.

Not kept: the official re-seeds the global RNG at every evaluation (so its noise and sampling streams restart
after each block); here one generator per target, seeded from the budget's seed and the prompt's seed, runs
through, which is deterministic and does not depend on how many blocks ran before.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from iceb.attacks.base import Attack, AttackContext, AttackPrompt, AttackTarget
from iceb.toy.worlds import is_toy_world
from iceb.utils.hashing import stable_hash


def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row of ``v`` onto the probability simplex {u ≥ 0, Σu = 1}.

    The sorting algorithm (Held, Wolfe and Crowder; Duchi et al. 2008): u = max(v − τ, 0) with τ chosen so
    that u sums to 1. The official code finds the same τ by bisection.

    Args:
        v: ``(..., V)`` values.

    Returns:
        The projections, same shape; rows are non-negative and sum to 1.
    """
    s, _ = torch.sort(v, dim=-1, descending=True)
    css = s.cumsum(-1) - 1
    k = torch.arange(1, v.shape[-1] + 1, device=v.device, dtype=v.dtype)
    rho = ((s - css / k) > 0).sum(-1, keepdim=True)
    tau = css.gather(-1, rho - 1) / rho.to(v.dtype)
    return (v - tau).clamp_min(0)


@contextlib.contextmanager
def no_param_grads(*modules: torch.nn.Module) -> Iterator[None]:
    """Modules' parameters leave autograd for the block (gradients flow through them, none accumulate)."""
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


@contextlib.contextmanager
def slot_embeddings(text_encoder, positions: list[int], rows: "list[torch.Tensor]") -> Iterator[None]:
    """Token-embedding outputs at ``positions`` replaced by ``rows[0]`` (a (k, d) tensor, may need grad),
    through a forward hook: the rest of the encoder (positions, causal mask, layers) runs unchanged."""
    emb = text_encoder.get_input_embeddings()

    def hook(module, args, out):
        out = out.clone()
        out[:, positions] = rows[0].to(out.dtype)
        return out

    handle = emb.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def insert_prefix(ids: list[int], k: int, filler: int, eos: int) -> tuple[list[int], list[int]]:
    """``ids`` with k slots after BOS; the sequence keeps its length (k trailing pads make room).

    Args:
        ids: A full-length id sequence: BOS, the prompt, EOS, padding.
        k: Slots to insert.
        filler: The id the slots hold until the attack sets them.
        eos: The tokenizer's EOS id (the prompt ends at its first occurrence).

    Returns:
        The new ids and the slot positions (1 … k).

    Raises:
        ValueError: The prompt leaves no room for k slots before the maximum length.
    """
    end = ids.index(eos) if eos in ids else len(ids)
    if end + k > len(ids) - 1:
        raise ValueError(f"the prompt fills {end + 1} of {len(ids)} tokens; no room for {k} adversarial tokens")
    return [ids[0]] + [filler] * k + ids[1: len(ids) - k], list(range(1, k + 1))


def latents_of(pipe, image: np.ndarray) -> torch.Tensor:
    """The VAE posterior mean × scaling factor of a uint8 HxWx3 image (x₀ of the loss)."""
    vae = pipe.vae
    x = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    with torch.no_grad():
        mean = vae.encode(x.to(vae.device, vae.dtype)).latent_dist.mean
    return mean * vae.config.scaling_factor


class UnlearnDiffAtk(Attack):
    """See the module docstring."""

    name = "unlearndiff"
    description = "UnlearnDiffAtk (white box): k prefix tokens optimised through a relaxed one-hot"
    sees = "edited"

    @dataclass(frozen=True)
    class Budget:
        k: int = 3  # adversarial slots, after BOS
        n_timesteps: int = 50  # sampled_t = T/n/2 + i*T/n, ascending blocks
        iterations: int = 40  # Adam steps per timestep block
        lr: float = 0.01
        weight_decay: float = 0.1
        seed: int = 0

    @classmethod
    def for_world(cls, world: str) -> "UnlearnDiffAtk.Budget":
        if is_toy_world(world):
            return cls.Budget(n_timesteps=5, iterations=10)
        return cls.Budget()

    def timesteps(self, num_train_timesteps: int) -> list[int]:
        """The ascending timestep blocks (official ``sampled_t``)."""
        n, T = self.budget.n_timesteps, num_train_timesteps
        return [int(T / n / 2 + i * T / n) for i in range(n)]

    def search(self, ctx: AttackContext, target: AttackTarget) -> AttackPrompt:
        if target.reference is None:
            raise ValueError(f"unlearndiff needs the unedited model's image of {target.prompt!r}")
        b, pipe = self.budget, ctx.pipe
        enc, unet, sched = pipe.text_encoder, pipe.unet, pipe.scheduler
        device = unet.device
        vocab = torch.as_tensor(ctx.vocab, dtype=torch.long)
        table = enc.get_input_embeddings().weight.detach()[vocab.to(enc.device)]  # (V, d)
        ids, positions = insert_prefix(ctx.tokenize(target.prompt), b.k, int(vocab[0]), ctx.tokenizer.eos_token_id)
        x0 = latents_of(pipe, target.reference)
        g = torch.Generator("cpu").manual_seed(int(stable_hash("unlearndiff", b.seed, target.seed), 16) % 2**63)
        probs = torch.full((b.k, len(vocab)), 1.0 / len(vocab), requires_grad=True)
        opt = torch.optim.Adam([probs], lr=b.lr, weight_decay=b.weight_decay)
        alphas = sched.alphas_cumprod
        ids_t = torch.tensor([ids], device=enc.device)
        steps, blocks, best = 0, [], None
        with no_param_grads(enc, unet):
            for t in self.timesteps(int(sched.config.num_train_timesteps)):
                for _ in range(b.iterations):
                    pick = torch.multinomial(probs.detach(), 1, generator=g).squeeze(1)
                    onehot = torch.zeros_like(probs).scatter_(1, pick[:, None], 1.0).requires_grad_(True)
                    rows = [onehot.to(table.device, table.dtype) @ table]
                    with slot_embeddings(enc, positions, rows):
                        cond = enc(ids_t)[0]
                    eps = torch.randn(x0.shape, generator=g).to(device, x0.dtype)
                    a = alphas[t].to(device, x0.dtype)
                    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
                    pred = unet(x_t, torch.tensor([t], device=device), encoder_hidden_states=cond.to(unet.dtype)).sample
                    loss = torch.nn.functional.mse_loss(pred.float(), eps.float())
                    (grad,) = torch.autograd.grad(loss, onehot)
                    opt.zero_grad()
                    probs.grad = torch.nn.functional.hardtanh(grad.to(probs.dtype))
                    opt.step()
                    with torch.no_grad():
                        probs.copy_(project_simplex(probs))
                    steps += 1
                adv = list(ids)
                for pos, j in zip(positions, probs.detach().argmax(1).tolist()):
                    adv[pos] = int(vocab[j])
                best = adv
                judged = ctx.judge_ids(adv, target.seed) if ctx.judge_ids is not None else (False, float("nan"))
                blocks.append({"t": t, "loss": float(loss.detach()), "success": bool(judged[0]), "p_source": float(judged[1])})
                if judged[0]:
                    break
        return AttackPrompt(ids=tuple(best), steps=steps, info={"blocks": blocks, "slots": positions})
