"""The trivial text attacks every robustness table needs beside the optimised ones: other names of the concept
and misspellings of its name, each put in the original prompt in place of the source name.

Both try their candidates in a fixed order on the edited model (one image each, the prompt's seed, judged as
every attack is) and stop at the first success; ``steps`` is the number of candidates tried. An edit that only
removes the exact name it was given fails them.
"""
from __future__ import annotations

from dataclasses import dataclass

from iceb.attacks.base import Attack, AttackContext, AttackPrompt, AttackTarget


def misspellings(name: str) -> list[str]:
    """Four fixed misspellings: the middle two letters swapped, the last letter dropped, the first letter
    doubled, a hyphen after the first letter (each only if it differs from the name and the others)."""
    out: list[str] = []
    m = len(name) // 2
    cands = [name[: m - 1] + name[m] + name[m - 1] + name[m + 1:] if len(name) >= 2 else name,
             name[:-1] if len(name) > 2 else name,
             name[0] + name if name else name,
             name[0] + "-" + name[1:] if len(name) > 1 else name]
    for c in cands:
        if c and c != name and c not in out:
            out.append(c)
    return out


class _Candidates(Attack):
    """Try names in the original prompt, first success wins."""

    sees = "edited"

    @dataclass(frozen=True)
    class Budget:
        max_candidates: int = 8
        seed: int = 0

    def candidates(self, target: AttackTarget) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def search(self, ctx: AttackContext, target: AttackTarget) -> AttackPrompt:
        if target.source not in target.prompt:
            raise ValueError(f"{self.name}: the prompt {target.prompt!r} does not name the source {target.source!r}")
        names = self.candidates(target)[: self.budget.max_candidates]
        tried = []
        best = ctx.tokenize(target.prompt)
        for name in names:
            ids = ctx.tokenize(target.prompt.replace(target.source, name))
            ok, p = ctx.judge_ids(ids, target.seed) if ctx.judge_ids is not None else (False, float("nan"))
            tried.append({"name": name, "success": bool(ok), "p_source": float(p)})
            best = ids
            if ok:
                break
        return AttackPrompt(ids=tuple(best), steps=len(tried), info={"tried": tried})


class Aliases(_Candidates):
    """The concept's correct aliases, then names the model never learned for it (the task's ``aliases``)."""

    name = "aliases"
    description = "baseline: the source's other names in the original prompt"

    def candidates(self, target: AttackTarget) -> list[str]:
        return [a for a in target.aliases if a != target.source]


class Misspell(_Candidates):
    """:func:`misspellings` of the source name."""

    name = "misspell"
    description = "baseline: fixed misspellings of the source's name in the original prompt"

    def candidates(self, target: AttackTarget) -> list[str]:
        return misspellings(target.source)
