"""Attack registry (same shape as editors, tasks and metrics): prompts that try to bring an edited concept back.

``iceb list attacks`` lists them; ``iceb evaluate ... --attacks unlearndiff,ringabell`` runs them on every edit
count (:mod:`iceb.harness.attacks`); a third party registers one through the entry-point group
``iceb.attacks`` or names it as ``package.module:Class``.
"""
from __future__ import annotations

from iceb.attacks.base import Attack
from iceb.utils.registry import Registry

ATTACKS: Registry = Registry("attack", entry_point_group="iceb.attacks", base_cls=Attack)

ATTACKS.register("unlearndiff", "iceb.attacks.unlearndiff:UnlearnDiffAtk",
                 description="UnlearnDiffAtk (white box): k prefix tokens through a relaxed one-hot, the edited "
                             "model's noise loss on an unedited reference image, early stop on the judge")
ATTACKS.register("p4d", "iceb.attacks.p4d:P4D",
                 description="P4D (white box, Diffusion-MU-Attack's variant): 5 cosine-projected prefix embeddings, "
                             "the edited model with them matched to the unedited model's noise on the original prompt")
ATTACKS.register("ringabell", "iceb.attacks.ringabell:RingABell",
                 description="Ring-A-Bell (black box, transfer): concept vector from prompt pairs, genetic search "
                             "over tokens on the unedited text encoder; no UNet, no gradients")
ATTACKS.register("aliases", "iceb.attacks.text:Aliases",
                 description="baseline: the source's other names (correct aliases, then untrained ones) in the "
                             "original prompt; success if any shows the concept")
ATTACKS.register("misspell", "iceb.attacks.text:Misspell",
                 description="baseline: four fixed misspellings of the source's name in the original prompt")


def get_attack(name: str, **kwargs):
    """An instantiated attack.

    Args:
        name: A registered attack name (``iceb list attacks``), an entry point of the group ``iceb.attacks``, or
            ``package.module:Class``.
        **kwargs: Passed to the constructor (``world``, ``vocab``, budget overrides).

    Returns:
        The :class:`~iceb.attacks.base.Attack` instance.

    Raises:
        KeyError: An unknown name (:class:`~iceb.utils.registry.UnknownNameError`, with the closest match).
    """
    return ATTACKS.get(name)(**kwargs)


__all__ = ["ATTACKS", "Attack", "get_attack"]
