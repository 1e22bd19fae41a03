"""P4D, Prompting4Debugging (Chin et al., ICML 2024), in the variant Diffusion-MU-Attack runs beside
UnlearnDiffAtk (``src/attackers/hard_prompt_.py`` + ``src/tasks/P4D_.py``, configs ``hard_prompt_*_P4D.json``):
a white-box prompt attack that makes the **edited** model with the adversarial prompt predict the noise the
**unedited** model predicts with the original prompt,

    ℓ = ‖ε_SD(x_t, t, E(p)) − ε_θ*(x_t, t, E(p_adv))‖²,   x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε,

with x₀ the VAE mean of the unedited model's image of p (as for UnlearnDiffAtk). k = 5 prefix embeddings,
initialised from random tokens of the attack vocabulary, are optimised PEZ-style: every step projects them to
their nearest vocabulary rows by cosine, runs forward with the projected rows, and applies the gradient to the
continuous ones (AdamW, lr 0.1, weight decay 0.1, P4D's ``optimize_n``). Schedule, judge and early stop are
UnlearnDiffAtk's (ascending timestep blocks; the toy world's 5 × 10).

The unedited predictions ε_SD are computed before the search, on the unedited model
(:meth:`P4D.prepare`: every step's noise, x_t and target in one batched pass), so the search never needs the
unedited weights back; the noise stream is the generator seeded from the budget's seed and the prompt's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from iceb.attacks.base import AttackContext, AttackPrompt, AttackTarget
from iceb.attacks.unlearndiff import UnlearnDiffAtk, insert_prefix, latents_of, no_param_grads, slot_embeddings
from iceb.utils.hashing import stable_hash


class P4D(UnlearnDiffAtk):
    """See the module docstring."""

    name = "p4d"
    description = "P4D (white box): k projected prefix embeddings, edited(p_adv) matched to unedited(p)"
    sees = "edited"
    prepares = True

    @dataclass(frozen=True)
    class Budget(UnlearnDiffAtk.Budget):  # UnlearnDiffAtk's schedule (and its toy variant), P4D's k and optimiser
        k: int = 5
        lr: float = 0.1

    def _generator(self, target: AttackTarget) -> torch.Generator:
        return torch.Generator("cpu").manual_seed(int(stable_hash("p4d", self.budget.seed, target.seed), 16) % 2**63)

    @torch.no_grad()
    def prepare(self, ctx: AttackContext, target: AttackTarget) -> dict[str, Any]:
        """Every step's (t, x_t, ε_SD(x_t, t, E(p))) on the unedited model, the noise drawn in search order."""
        if target.reference is None:
            raise ValueError(f"p4d needs the unedited model's image of {target.prompt!r}")
        b, pipe = self.budget, ctx.pipe
        enc, unet, sched = pipe.text_encoder, pipe.unet, pipe.scheduler
        x0 = latents_of(pipe, target.reference)
        g = self._generator(target)
        cond = enc(torch.tensor([ctx.tokenize(target.prompt)], device=enc.device))[0].to(unet.dtype)
        ts, xs = [], []
        for t in self.timesteps(int(sched.config.num_train_timesteps)):
            a = sched.alphas_cumprod[t].to(x0.device, x0.dtype)
            for _ in range(b.iterations):
                eps = torch.randn(x0.shape, generator=g).to(x0.device, x0.dtype)
                ts.append(t)
                xs.append(a.sqrt() * x0 + (1 - a).sqrt() * eps)
        x = torch.cat(xs)
        t = torch.tensor(ts, device=unet.device)
        goal = torch.cat([unet(x[i:i + 16], t[i:i + 16], encoder_hidden_states=cond.expand(len(x[i:i + 16]), -1, -1)
                               ).sample for i in range(0, len(x), 16)])
        init = torch.randint(len(ctx.vocab), (b.k,), generator=g)
        return {"t": t, "x_t": x, "goal": goal, "init": init}

    def search(self, ctx: AttackContext, target: AttackTarget) -> AttackPrompt:
        st = ctx.prepared if ctx.prepared is not None else self.prepare(ctx, target)
        b, pipe = self.budget, ctx.pipe
        enc, unet = pipe.text_encoder, pipe.unet
        vocab = torch.as_tensor(ctx.vocab, dtype=torch.long)
        table = enc.get_input_embeddings().weight.detach()[vocab.to(enc.device)]  # (V, d)
        unit = torch.nn.functional.normalize(table, dim=-1)
        ids, positions = insert_prefix(ctx.tokenize(target.prompt), b.k, int(vocab[0]), ctx.tokenizer.eos_token_id)
        ids_t = torch.tensor([ids], device=enc.device)
        free = table[st["init"].to(table.device)].clone().requires_grad_(True)  # the continuous embeddings
        opt = torch.optim.AdamW([free], lr=b.lr, weight_decay=b.weight_decay)

        def nearest() -> torch.Tensor:
            return (torch.nn.functional.normalize(free.detach(), dim=-1) @ unit.T).argmax(1)

        steps, blocks, adv = 0, [], list(ids)
        per_block = b.iterations
        with no_param_grads(enc, unet):
            for block, t in enumerate(self.timesteps(int(pipe.scheduler.config.num_train_timesteps))):
                for i in range(per_block):
                    s = block * per_block + i
                    rows = [table[nearest()].clone().requires_grad_(True)]
                    with slot_embeddings(enc, positions, rows):
                        cond = enc(ids_t)[0]
                    pred = unet(st["x_t"][s:s + 1], st["t"][s:s + 1], encoder_hidden_states=cond.to(unet.dtype)).sample
                    loss = torch.nn.functional.mse_loss(pred.float(), st["goal"][s:s + 1].float())
                    (grad,) = torch.autograd.grad(loss, rows[0])
                    opt.zero_grad()
                    free.grad = grad.to(free.dtype)
                    opt.step()
                    steps += 1
                adv = list(ids)
                for pos, j in zip(positions, nearest().tolist()):
                    adv[pos] = int(vocab[j])
                judged = ctx.judge_ids(adv, target.seed) if ctx.judge_ids is not None else (False, float("nan"))
                blocks.append({"t": t, "loss": float(loss.detach()), "success": bool(judged[0]),
                               "p_source": float(judged[1])})
                if judged[0]:
                    break
        return AttackPrompt(ids=tuple(adv), steps=steps, info={"blocks": blocks, "slots": positions})
