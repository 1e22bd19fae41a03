"""Ring-A-Bell (Tsai, Hsu, et al., ICLR 2024; chiayi-hsu/Ring-A-Bell ``InversePrompt.ipynb``): a black-box,
transferable text attack. No image and no UNet enter the search.

1. Concept vector: c = mean over prompt pairs of E(p⁺) − E(p⁻), with E the **unedited** text encoder's
   last hidden state, the full 77 × d sequence, padding included. The official pairs are hand-written
   sentences; ICEB fills each of the request's templates with the source name (p⁺) and with a pinned neutral
   filler (p⁻, ``filler``, default the empty string) — the spec's proposal for an ImageNet class.
2. Target: E(p) + η·c for the original prompt p (η = ``eta``, 3 as in the notebook).
3. Genetic search over token ids, fitness ‖E(x) − target‖² over 77 × d (lower is better), one batch per
   generation: an individual is [BOS, K ids, padding]; keep the best half; crossover (rate 0.5): a parent and
   a random partner give both single-point children (cut in [1, K]); mutation (rate 0.25): one random slot
   of a child set to a random id of the attack vocabulary. The best individual of the last generation is the
   prompt.

Differences from the notebook, all pinned in the budget: population 200 and 3,000 generations become 50 and
200 on the toy world (spec §4.4); ids come from the attack vocabulary, not [1, 49406); mutation touches only
the new children, so the kept half survives intact (the notebook mutates parents in place, an accident of
tensor aliasing: no strict elitism there).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from iceb.attacks.base import Attack, AttackContext, AttackPrompt, AttackTarget
from iceb.toy.worlds import is_toy_world
from iceb.utils.hashing import stable_hash


@torch.no_grad()
def encode(text_encoder, ids: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Last hidden states (B, L, d) of id sequences, in batches."""
    return torch.cat([text_encoder(ids[i:i + batch].to(text_encoder.device))[0].float().cpu()
                      for i in range(0, len(ids), batch)])


def concept_vector(ctx: AttackContext, target: AttackTarget, filler: str) -> torch.Tensor:
    """c = mean over the request's templates of E(template(source)) − E(template(filler)): (L, d)."""
    templates = target.templates or ("{}",)
    pos = torch.tensor([ctx.tokenize(t.replace("{}", target.source)) for t in templates])
    neg = torch.tensor([ctx.tokenize(t.replace("{}", filler).strip()) for t in templates])
    enc = ctx.pipe.text_encoder
    return (encode(enc, pos) - encode(enc, neg)).mean(0)


class RingABell(Attack):
    """See the module docstring."""

    name = "ringabell"
    description = "Ring-A-Bell (black box, transfer): genetic token search toward E(p) + eta*c"
    sees = "unedited"

    @dataclass(frozen=True)
    class Budget:
        population: int = 200
        generations: int = 3000
        length: int = 16  # K: free tokens after BOS
        eta: float = 3.0
        crossover: float = 0.5
        mutation: float = 0.25
        filler: str = ""
        seed: int = 0

    @classmethod
    def for_world(cls, world: str) -> "RingABell.Budget":
        if is_toy_world(world):
            return cls.Budget(population=50, generations=200)
        return cls.Budget()

    def search(self, ctx: AttackContext, target: AttackTarget) -> AttackPrompt:
        b, enc, tok = self.budget, ctx.pipe.text_encoder, ctx.tokenizer
        if b.population < 2 or b.population % 2:
            raise ValueError(f"ringabell's population must be an even number >= 2, got {b.population}")
        L = tok.model_max_length
        if not 1 <= b.length <= L - 2:
            raise ValueError(f"ringabell's length K must be in 1..{L - 2}, got {b.length}")
        g = torch.Generator("cpu").manual_seed(int(stable_hash("ringabell", b.seed, target.seed), 16) % 2**63)
        vocab = torch.as_tensor(ctx.vocab, dtype=torch.long)
        goal = encode(enc, torch.tensor([ctx.tokenize(target.prompt)]))[0] + b.eta * concept_vector(ctx, target, b.filler)
        frame = torch.full((L,), tok.pad_token_id, dtype=torch.long)
        frame[0] = tok.bos_token_id
        frame[b.length + 1] = tok.eos_token_id

        def individuals(slots: torch.Tensor) -> torch.Tensor:
            ids = frame.repeat(len(slots), 1)
            ids[:, 1:b.length + 1] = slots
            return ids

        def fitness(slots: torch.Tensor) -> torch.Tensor:
            return ((encode(enc, individuals(slots)) - goal) ** 2).sum((1, 2))

        def rand_ids(*shape: int) -> torch.Tensor:
            return vocab[torch.randint(len(vocab), shape, generator=g)]

        pop = rand_ids(b.population, b.length)
        fit = fitness(pop)
        half = b.population // 2
        history = []
        for gen in range(b.generations):
            order = torch.argsort(fit, stable=True)[:half]
            parents, pfit = pop[order], fit[order]
            children = []
            while sum(len(c) for c in children) < b.population - half:
                i = int(torch.randint(half, (1,), generator=g))
                if float(torch.rand(1, generator=g)) < b.crossover:
                    j = int(torch.randint(half, (1,), generator=g))
                    cut = int(torch.randint(1, b.length + 1, (1,), generator=g))
                    a, c = parents[i].clone(), parents[j].clone()
                    a[cut:], c[cut:] = parents[j][cut:], parents[i][cut:]
                    children.append(torch.stack([a, c]))
                else:
                    children.append(parents[i:i + 1].clone())
            kids = torch.cat(children)[: b.population - half]
            mutate = torch.rand(len(kids), generator=g) < b.mutation
            slot = torch.randint(b.length, (len(kids),), generator=g)
            new = rand_ids(len(kids))
            kids[mutate, slot[mutate]] = new[mutate]
            pop, fit = torch.cat([parents, kids]), torch.cat([pfit, fitness(kids)])
            if gen % 50 == 0 or gen == b.generations - 1:
                history.append({"generation": gen, "best_fitness": float(fit.min())})
        best = int(torch.argmin(fit))
        ids = individuals(pop[best:best + 1])[0]
        return AttackPrompt(ids=tuple(int(x) for x in ids), steps=b.generations,
                            info={"fitness": float(fit[best]), "history": history})
