"""EMCID's debiasing mode: one concept balanced between several destinations by a weighted sum of stage-I targets.

The official procedure (``emcid/emcid_main.py::execute_emcid_text_encoder_debias`` and ``get_factors`` at commit
10a392a, run by ``sh_scripts/debias.sh multiple`` → ``scripts/eval_debias.py --mixed --max_iters=10``):

1. Per profession (``dsets/debias_requests.py``: source = the ``old`` column, e.g. "a doctor"; templates
   "a photo of {}", "an image of {}", "{}"; ``seed_train`` from ``random.seed(2023)`` then
   ``random.sample(range(100000), 37)``; ``dests`` = [female, male] columns), stage I runs once towards each
   destination ("a female doctor", "a male doctor"), giving ``z_f`` and ``z_m``.
2. ``get_factors`` tunes the weights ``w`` (init ``1/k`` each, desired shares ``1/k`` each). In iteration ``i``
   (0-based, at most ``max_iter`` = 10):

   - the step is ``step = step - step / max_iter * i``, starting from 0.4 — a *cumulative* decay
     (0.4, 0.36, 0.288, 0.2016, 0.121, 0.0605, 0.0242, 0.0073, 0.0015, 0.00015), not a linear one;
   - ``z = Σ_j w_j z_j`` is written into the model **for this profession alone** (``cal_insert_deltas`` with the
     one request: stage II's closed form over the same layers, λ and α);
   - 25 images of ``"an image of {source}"`` are sampled from that model (guidance 7.5, the pipeline's default
     steps and size), all from one generator seeded once per iteration, so every iteration sees the same
     initial noise;
   - each image is classified by CLIP ViT-L/14 (``openai/clip-vit-large-patch14``) zero-shot between the
     destination texts themselves ("a female doctor", "a male doctor"): softmax of ``logits_per_image``,
     **argmax**; the shares are the counts over 25;
   - if ``max_j |share_j − 1/k| <= 0.02`` the loop stops; otherwise ``w_j ← max(w_j − step·(share_j − 1/k), 0)``,
     renormalised to sum 1, and the model is restored.

   The loop returns the weights after its last update; when the cap is hit they are the updated weights that
   were never judged.
3. All 37 professions' values ``Σ_j w_j z_j`` are written in **one** stage-II solve (the "mixed" mode; weights
   are tuned per profession with only that profession edited, as the released code does when its cache is
   empty; ``recompute_factors=False`` for mixed only means factors are not re-tuned once cached).

Quirks of the released code, and what ICEB does:

- **The stop test can never pass with 25 images.** ``12/25 − 0.5`` and ``13/25 − 0.5`` are ±0.020000000000000018
  in floating point, just above 0.02, and 12.5 of 25 is impossible, so the official loop always runs all 10
  iterations. ICEB compares with a 1e-9 slack (:data:`TOLERANCE_SLACK`), so 12 or 13 of 25 stops the loop as
  the tolerance intends; the weights differ from the official ones by at most the last few, tiny steps
  (≤ 0.0073 · 0.02 each). ``debias_tolerance: 0.019`` reproduces the released behaviour (never stop early).
- ``get_factors`` reads ``request["seed"]``, which debias requests do not have (they carry ``seed_train``): the
  released code raises a ``KeyError`` there unless its cache already holds the factors. ICEB seeds the judge's
  images with the request's seed (its ``seed_train``).
- The official generator is a CUDA generator on the pipeline's device; ICEB draws the initial latents of the
  judge's images from a CPU generator (as stage I draws its training images), in the same order as 25
  sequential one-image calls, so images do not depend on the device or on batching.
- The judge: ICEB uses OpenCLIP ViT-L/14 with OpenAI's weights (the same network; the metric ``gender-clip``),
  handed to the editor as a callable (:data:`editors.base.Judge`): editors never import the benchmark.
- The judge's images use the stage-I training-image settings (``train_steps``, ``train_size``,
  ``train_guidance``): the pipeline defaults and guidance 7.5 in the official code, as for the training images.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

#: Slack of the stop test: shares that are within ``tolerance`` up to floating-point rounding stop the loop
#: (the released code's exact comparison never stops at 25 images; see the module docstring).
TOLERANCE_SLACK = 1e-9


@dataclass
class Balance:
    """The weight loop's answer: the weights, each iteration's (weights, shares), and whether it stopped early."""

    weights: list[float]
    history: list[dict[str, list[float]]] = field(default_factory=list)
    converged: bool = False

    @property
    def iterations(self) -> int:
        return len(self.history)

    def to_info(self) -> dict[str, Any]:
        last = self.history[-1]["shares"] if self.history else None
        return {"weights": list(self.weights), "iterations": self.iterations, "converged": self.converged,
                "last_shares": last, "history": self.history}


def balance_weights(evaluate: Callable[[list[float]], Sequence[float]], k: int, *, iterations: int = 10,
                    step: float = 0.4, tolerance: float = 0.02,
                    desired: Sequence[float] | None = None) -> Balance:
    """The official ``get_factors`` loop (see the module docstring) around any ``evaluate(weights) -> shares``.

    Args:
        evaluate: Given the weights (summing to 1), the share of images the judge gives each destination.
        k: The number of destinations.
        iterations: The cap (official: 10).
        step: The first step (official: 0.4); decays cumulatively, ``step -= step / iterations * i``.
        tolerance: Stop once every share is within this of its desired share (official: 0.02; compared with
            :data:`TOLERANCE_SLACK`).
        desired: The desired shares; None: ``1/k`` each.

    Returns:
        The final :class:`Balance`: the weights after the last update (never judged when the cap is hit, as
        in the official code) or the judged weights that met the tolerance.
    """
    if k < 2:
        raise ValueError(f"balancing needs at least two destinations, got {k}")
    weights = [1.0 / k] * k
    want = list(desired) if desired is not None else [1.0 / k] * k
    out = Balance(weights)
    for i in range(iterations):
        step = step - step / iterations * i
        shares = [float(x) for x in evaluate(list(weights))]
        if len(shares) != k:
            raise ValueError(f"the judge gave {len(shares)} shares for {k} destinations")
        diffs = [s - d for s, d in zip(shares, want)]
        out.history.append({"weights": list(weights), "shares": shares})
        if max(abs(d) for d in diffs) <= tolerance + TOLERANCE_SLACK:
            out.converged = True
            break
        new = [max(w - step * d, 0.0) for w, d in zip(weights, diffs)]
        total = sum(new)
        if total > 0:
            weights = [w / total for w in new]
    out.weights = list(weights)
    return out


def shares_of(probs: Any, k: int) -> list[float]:
    """Each label's share of the images, by argmax of the judge's probabilities (as the official counts)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != k:
        raise ValueError(f"the judge must return an (images, {k}) array of probabilities, got shape {p.shape}")
    if not len(p):
        raise ValueError("the judge scored no images")
    counts = np.bincount(p.argmax(axis=1), minlength=k)
    return [float(c) / len(p) for c in counts]


@torch.no_grad()
def judge_images(pipe, prompt: str, n: int, seed: int, *, steps: int | None = None, size: int | None = None,
                 guidance: float = 7.5, max_images: int | None = None) -> list[np.ndarray]:
    """``n`` images of ``prompt`` from the pipeline as it is now (uint8 HxWx3), seeded by ``seed``.

    The initial latents are drawn from one CPU generator, one image after the other, exactly as ``n``
    one-image pipeline calls sharing that generator would draw them; with a scheduler that draws noise while
    sampling (not in :data:`~editors.emcid.stage1.DETERMINISTIC_SCHEDULERS`) the images are made by those ``n``
    calls.
    """
    from editors.emcid.stage1 import seeded_images

    gen = torch.Generator("cpu").manual_seed(int(seed))  # n one-image calls sharing one stream
    images = seeded_images(pipe, [[prompt]] * n, [gen] * n, steps=steps, size=size, guidance=guidance,
                           output_type="np", max_images=max_images)
    return [np.clip(np.round(im * 255), 0, 255).astype(np.uint8) for im in images]


__all__ = ["TOLERANCE_SLACK", "Balance", "balance_weights", "judge_images", "shares_of"]
