"""Scoring a pipeline while it trains: concept accuracy under the work folder's classifier."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from iceb.toy.train.config import TrainConfig


def work_classifier(work: Path):
    from iceb.toy.classifier import ToyClassifier

    return ToyClassifier(weights=work / "classifier.safetensors", config=work / "classifier.json")


def concept_accuracy(cfg: TrainConfig, pipe, clf, prompts: list[str], seeds: list[int], true: list[int],
                      guidance: float, **gen_kw: Any) -> float:
    """Top-1 concept accuracy of ``pipe``'s images of ``prompts`` under the toy classifier."""
    from iceb.generation import GenerationConfig, generate

    images = generate(pipe, prompts, seeds, GenerationConfig(32, 32, cfg.gen_steps, guidance, None, 64), **gen_kw)
    return float(np.mean(clf.predict_proba(images).argmax(-1) == np.array(true)))
