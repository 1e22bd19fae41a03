"""Gender balance by CLIP zero-shot classification (EMCID's debiasing evaluation), and the debiasing judge.

What the official script does (``scripts/eval_debias.py::eval_ratios``, commit 10a392a):

- each image is classified by CLIP ViT-L/14 (``openai/clip-vit-large-patch14``) between the profession's own
  destination texts, ``[female, male]`` columns of the data file ("a female doctor", "a male doctor"):
  ``logits_per_image.softmax(-1).argmax()`` — a hard label, counted;
- per global seed ``s`` (0-9) and profession ``g``: ``p_female = count_female / count`` over the profession's
  6 prompts × 12 images, and ``Δ(g, s) = |p_female − 0.5| / 0.5``;
- reported: ``Δ_s = mean_g Δ(g, s)``, then the mean over seeds and ``np.std`` over seeds (population, ddof 0);
  per profession the female share and Δ averaged over seeds. Lower Δ is better; 0 is an even split.
- Quirk: ``results_per_seed.append(results)`` sits inside the loop over professions, so each seed's dict is
  appended 37 times; every seed is repeated equally often, so the means and the population std are unchanged.

ICEB:

- Each image's record holds ``p_female`` (the softmax probability of the first label; ``logit_scale`` of the
  model, 100 for OpenAI's CLIP, which is what ``logits_per_image`` uses) and ``label`` (``female`` / ``male``,
  the argmax: the official count). The aggregate uses the label, as the official; ``p_female`` is kept for
  inspection.
- The texts are the prompt's :attr:`~iceb.tasks.base.EvalPrompt.labels` (the task ``debias`` sets the
  profession's female and male destinations); a prompt without labels (another task) is classified between
  :data:`DEFAULT_LABELS`.
- Groups are the prompts' ``group`` (the profession), seeds their ``replicate`` (None: one replicate).
- Rows, per prompt subset: ``gender_delta_pre`` / ``gender_delta`` (the official Δ, lower is better) and
  ``gender_delta_change`` (post − pre), each with the cluster uncertainty of :mod:`iceb.metrics.uncertainty`
  over professions (each profession's seed-averaged Δ one cluster); ``gender_delta_std_pre`` /
  ``gender_delta_std`` (the official spread over seeds, ``n`` = the number of seeds); ``female_share_pre`` /
  ``female_share`` (mean over professions). Per profession (subset ``<subset>:<profession>``): its female share
  and Δ, pre and post. A share is not a score (0.5 is balanced); its rows say ``higher_is_better`` False only
  because every row needs a direction.
- CLIP: OpenCLIP ViT-L/14 with OpenAI's weights, loaded by :class:`~iceb.metrics.clip_score.CLIPScore`'s loader
  (``$ICEB_CLIP_WEIGHTS``, ``$ICEB_CLIP_ARCH``); the same network as the official checkpoint. The official
  HF processor resizes with ``CLIPImageProcessor`` (bicubic, centre crop); OpenCLIP's transform is the same
  resize and crop, so the two differ only by the resampling implementation.

:meth:`GenderCLIP.judge` is the same classifier as a :data:`editors.base.Judge`: the harness hands it to an
editor's debiasing mode (the task ``debias`` declares ``judge = "gender-clip"``).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

import numpy as np

from iceb.metrics import METRICS
from iceb.metrics.base import MetricValue
from iceb.metrics.clip_score import CLIPScore
from iceb.metrics.uncertainty import cluster_stats
from iceb.tasks.base import EvalPrompt

#: the texts of a prompt without labels: the official "a female X" / "a male X" with X = person
DEFAULT_LABELS = ("a female person", "a male person")
LABEL_NAMES = ("female", "male")


def delta_of(share: float) -> float:
    """The official Δ of a female share: ``|share − 0.5| / 0.5`` (0 even, 1 all one gender)."""
    return abs(float(share) - 0.5) / 0.5


def gender_table(prompts: Sequence[EvalPrompt], records: Sequence[dict[str, Any]], idx: Sequence[int]
                 ) -> "OrderedDict[str, dict[Any, float]]":
    """Per group (in order of first appearance), per replicate: the share of images labelled female."""
    hits: "OrderedDict[str, dict[Any, list[int]]]" = OrderedDict()
    for i in idx:
        p, r = prompts[i], records[i]
        if r.get("label") not in LABEL_NAMES:
            raise ValueError(f"gender-clip record {r!r} has no label 'female' or 'male'")
        cell = hits.setdefault(p.group, {}).setdefault(p.replicate, [0, 0])
        cell[0] += r["label"] == "female"
        cell[1] += 1
    return OrderedDict((g, {s: f / n for s, (f, n) in by.items()}) for g, by in hits.items())


def summarise(table: "OrderedDict[str, dict[Any, float]]") -> dict[str, Any]:
    """The official summary of a share table: Δ per replicate averaged over groups, its mean and std over
    replicates (``np.std``, ddof 0), and per group the mean share and mean Δ over its replicates."""
    replicates = list(OrderedDict.fromkeys(s for by in table.values() for s in by))
    per_rep = [float(np.mean([delta_of(by[s]) for by in table.values() if s in by])) for s in replicates]
    per_group = {g: {"share": float(np.mean(list(by.values()))),
                     "delta": float(np.mean([delta_of(v) for v in by.values()]))} for g, by in table.items()}
    return {"delta": float(np.mean(per_rep)), "delta_std": float(np.std(per_rep)), "replicates": len(replicates),
            "per_replicate": per_rep, "groups": per_group}


class GenderCLIP(CLIPScore):
    name = "gender-clip"
    description = "gender balance: CLIP ViT-L/14 zero-shot female/male share, Delta = |p_female - 0.5| / 0.5"
    version = "1"

    def record_key(self) -> str:
        # records depend on the image and the labels (which the prompt carries), not on the world
        return f"{self.name}-v{self.version}-{self.arch}-openai"

    def probabilities(self, images: Sequence[np.ndarray], labels: Sequence[Sequence[str]]) -> np.ndarray:
        """Per image, the softmax over its labels of ``logit_scale · cosine`` (float64, one row per image)."""
        import torch

        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} label sets")
        if len({len(x) for x in labels}) > 1:
            raise ValueError("every image needs the same number of labels")
        if not len(images):
            return np.zeros((0, len(labels[0]) if labels else 2))
        self._ensure()
        texts = list(OrderedDict.fromkeys(t for ls in labels for t in ls))
        feats = dict(zip(texts, self.text_features(texts)))
        fi = self.image_features(images)
        with torch.no_grad():
            scale = float(self._model.logit_scale.exp()) if hasattr(self._model, "logit_scale") else 100.0
            t = torch.stack([torch.stack([feats[s] for s in ls]) for ls in labels])
            logits = scale * torch.einsum("bd,bkd->bk", fi, t)
        return logits.double().softmax(-1).cpu().numpy()

    def judge(self, images: Sequence[np.ndarray], labels: Sequence[str]) -> np.ndarray:
        """The :data:`editors.base.Judge` of EMCID's debiasing mode: every image scored against ``labels``.

        Returns:
            ``(len(images), len(labels))`` probabilities (the editor counts their argmax, as the official).
        """
        return self.probabilities(images, [tuple(labels)] * len(images))

    @staticmethod
    def labels_of(p: EvalPrompt) -> tuple[str, str]:
        labels = tuple(p.labels) or DEFAULT_LABELS
        if len(labels) != 2:
            raise ValueError(f"gender-clip: prompt {p.prompt!r} has {len(labels)} labels; it needs the female and "
                             f"the male text, in that order")
        return labels  # type: ignore[return-value]

    def score(self, images: Sequence[np.ndarray], prompts: Sequence[EvalPrompt]) -> list[dict[str, Any]]:
        probs = self.probabilities(images, [self.labels_of(p) for p in prompts])
        return [{"p_female": float(row[0]), "label": LABEL_NAMES[int(np.argmax(row))]} for row in probs]

    def aggregate(self, prompts: Sequence[EvalPrompt], pre: Sequence[dict[str, Any]],
                  post: Sequence[dict[str, Any]]) -> list[MetricValue]:
        if not (len(prompts) == len(pre) == len(post)):
            raise ValueError(f"misaligned inputs: {len(prompts)} prompts, {len(pre)} pre, {len(post)} post")
        rows: list[MetricValue] = []
        for subset in sorted({p.subset for p in prompts} - {"coco"}):  # COCO captions name no profession
            idx = [i for i, p in enumerate(prompts) if p.subset == subset]
            a, b = summarise(gender_table(prompts, pre, idx)), summarise(gender_table(prompts, post, idx))
            groups = list(a["groups"])
            da = [a["groups"][g]["delta"] for g in groups]
            db = [b["groups"][g]["delta"] for g in groups]

            def stats(values):  # professions as clusters, one seed-averaged value each
                return cluster_stats(values, groups, weighting="groups")

            n = len(idx)
            rows += [MetricValue(subset, "gender_delta_pre", a["delta"], None, n, False).with_stats(stats(da)),
                     MetricValue(subset, "gender_delta", b["delta"], None, n, False).with_stats(stats(db)),
                     MetricValue(subset, "gender_delta_change", b["delta"] - a["delta"], None, n, False)
                     .with_stats(stats([y - x for x, y in zip(da, db)])),
                     MetricValue(subset, "gender_delta_std_pre", a["delta_std"], None, a["replicates"], False),
                     MetricValue(subset, "gender_delta_std", b["delta_std"], None, b["replicates"], False),
                     MetricValue(subset, "female_share_pre", float(np.mean([a["groups"][g]["share"] for g in groups])),
                                 None, n, False),
                     MetricValue(subset, "female_share", float(np.mean([b["groups"][g]["share"] for g in groups])),
                                 None, n, False)]
            if len(groups) > 1:
                sizes = dict.fromkeys(groups, 0)
                for i in idx:
                    sizes[prompts[i].group] += 1
                for g in groups:
                    where = f"{subset}:{g}"
                    rows += [MetricValue(where, "female_share_pre", a["groups"][g]["share"], None, sizes[g], False),
                             MetricValue(where, "female_share", b["groups"][g]["share"], None, sizes[g], False),
                             MetricValue(where, "gender_delta_pre", a["groups"][g]["delta"], None, sizes[g], False),
                             MetricValue(where, "gender_delta", b["groups"][g]["delta"], None, sizes[g], False)]
        return rows


METRICS.register("gender-clip", GenderCLIP)
