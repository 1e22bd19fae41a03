"""FID on COCO captions: torchmetrics' FrechetInceptionDistance over Inception pool3 features (2048-d).

Features come from torchmetrics' ``NoTrainInceptionV3`` (torch-fidelity's port of the TF FID Inception, the
same ``2015-12-05`` graph pytorch-fid uses; torchmetrics resizes to 299 with antialiasing, pytorch-fid with
plain bilinear, so values differ slightly from the paper's pytorch-fid 0.3.0). torchmetrics and torch-fidelity
would download the weights; here they are never downloaded: give ``weights=``/``$ICEB_FID_INCEPTION`` (a
``.safetensors`` file, or torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth`` read with
``torch.load(weights_only=True)``), or have that file in torch's hub cache. Otherwise one clear error.

Per image, :meth:`FID.score` keeps the pool3 feature (float32, base64) so that pre-edit features are cached;
:meth:`FID.aggregate` streams them into torchmetrics' running sums, over the run's COCO captions alone when it
has them (subset ``coco``, ``--coco N``: the paper's general-capability FID), else over all its images. Rows: ``fid_pre_post`` (pre- vs post-edit
images, needs no real images) and, with real statistics, ``fid_pre`` and ``fid`` (against real COCO).
Real statistics (mu, sigma, n) are computed once from a COCO val2014 folder, streamed in batches, and cached
as safetensors; or given directly (``real_stats=``/``$ICEB_FID_REAL_STATS``).
"""
from __future__ import annotations

import base64
import io
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from iceb.metrics import METRICS
from iceb.metrics.base import Metric, MetricValue
from iceb.metrics.classifiers import WeightsNotFoundError
from iceb.tasks.base import EvalPrompt
from iceb.utils.hashing import KEY_LENGTH, stable_hash

INCEPTION_FILES = ("weights-inception-2015-12-05-6726825d.pth", "pt_inception-2015-12-05-6726825d.pth")
INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 "weights-inception-2015-12-05-6726825d.pth")


# -- the feature extractor ------------------------------------------------------------------------
def find_inception_weights(weights: str | Path | None = None) -> Path:
    """The local Inception file: ``weights``, ``$ICEB_FID_INCEPTION``, or torch's hub cache; else a clear error."""
    from iceb.metrics.classifiers import find_local_weights

    return find_local_weights(
        weights, "ICEB_FID_INCEPTION", INCEPTION_FILES, "FID's Inception-v3",
        f"torchmetrics/torch-fidelity would try to download them. On a machine with internet fetch {INCEPTION_URL}, "
        f"copy it here and set ICEB_FID_INCEPTION=/path/to/that.pth (or put it in torch's hub checkpoints folder). "
        f"It is read with torch.load(weights_only=True); a .safetensors copy also works.")


def load_state(path: str | Path) -> dict[str, Any]:
    """A state dict from safetensors, or from a ``.pth`` with ``weights_only=True`` (tensors only, no code)."""
    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsNotFoundError(f"{path} is not a state dict")
    return state


def _file_id(path: Path) -> str:
    from iceb.utils.download import sha256_file

    return sha256_file(path)[:KEY_LENGTH]


def inception_pool3(weights: str | Path | None = None, device: str = "cpu"):
    """torchmetrics' NoTrainInceptionV3 (2048-d pool3), weights loaded safely; returns (module, weights id)."""
    import torch
    from torchmetrics.image.fid import NoTrainInceptionV3

    path = find_inception_weights(weights)
    state = load_state(path)
    # torch-fidelity unpickles whatever it is given (weights_only=False): hand it a buffer we wrote ourselves
    # from plain tensors, never the user's file.
    buf = io.BytesIO()
    torch.save(dict(state.items()), buf)
    buf.seek(0)
    net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=buf)
    return _Pool3(net).to(device).eval(), f"inception-{_file_id(path)}"


def _Pool3(net):
    """Wrap ``net`` as a module mapping uint8 (B, 3, H, W) to float (B, 2048) (torch imported lazily)."""
    import torch

    class Pool3(torch.nn.Module):
        num_features = 2048

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x).reshape(x.shape[0], -1)

    return Pool3(net)


def extract_features(extractor: Callable, images: Iterable[np.ndarray], batch_size: int = 32,
                     device: str = "cpu") -> Iterable[np.ndarray]:
    """Features of images, streamed in batches (consecutive images of one size share a batch)."""
    import torch

    batch: list[np.ndarray] = []

    def run(b):
        x = torch.from_numpy(np.stack(b).transpose(0, 3, 1, 2).copy()).to(device)
        with torch.no_grad():
            return extractor(x).double().cpu().numpy()

    for im in images:
        im = np.asarray(im)
        if im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
            raise ValueError(f"expected uint8 HxWx3 images, got {im.dtype} {im.shape}")
        if batch and (len(batch) >= batch_size or im.shape != batch[0].shape):
            yield run(batch)
            batch = []
        batch.append(im)
    if batch:
        yield run(batch)


# -- torchmetrics' FID on precomputed features ------------------------------------------------------
class FeatureFID:
    """torchmetrics ``FrechetInceptionDistance`` fed with features (its running float64 sums, its distance)."""

    def __init__(self, dim: int = 2048):
        import torch
        from torchmetrics.image.fid import FrechetInceptionDistance

        class _Given(torch.nn.Module):
            num_features = dim

            def forward(self, x):
                return x

        self.dim = dim
        self.fid = FrechetInceptionDistance(feature=_Given(), reset_real_features=False)

    def add(self, features: np.ndarray, real: bool) -> None:
        import torch

        f = np.asarray(features, dtype=np.float64).reshape(-1, self.dim)
        if len(f):
            self.fid.update(torch.from_numpy(f), real=real)

    def set_real(self, mu: np.ndarray, sigma: np.ndarray, n: int) -> None:
        import torch

        mu_t, sig_t = torch.as_tensor(mu, dtype=torch.float64), torch.as_tensor(sigma, dtype=torch.float64)
        self.fid.real_features_sum = mu_t * n
        self.fid.real_features_cov_sum = sig_t * (n - 1) + n * torch.outer(mu_t, mu_t)
        self.fid.real_features_num_samples = torch.tensor(int(n))

    def stats(self, real: bool = True) -> tuple[np.ndarray, np.ndarray, int]:
        pre = "real" if real else "fake"
        n = int(getattr(self.fid, f"{pre}_features_num_samples"))
        if n < 2:
            raise ValueError(f"FID needs at least 2 {pre} images, got {n}")
        mu = getattr(self.fid, f"{pre}_features_sum").double().cpu().numpy() / n
        cov = (getattr(self.fid, f"{pre}_features_cov_sum").double().cpu().numpy() - n * np.outer(mu, mu)) / (n - 1)
        return mu, cov, n

    def compute(self) -> float:
        for pre in ("real", "fake"):
            n = int(getattr(self.fid, f"{pre}_features_num_samples"))
            if n < 2:
                raise ValueError(f"FID needs at least 2 {pre} images, got {n}")
        self.fid.orig_dtype = self.fid.real_features_sum.dtype
        return float(self.fid.compute())


def save_stats(path: str | Path, mu: np.ndarray, sigma: np.ndarray, n: int, info: dict[str, str]) -> Path:
    from safetensors.numpy import save_file

    from iceb.utils.io import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({"mu": np.asarray(mu, np.float64), "sigma": np.asarray(sigma, np.float64),
                   "n": np.asarray([n], np.int64)}, str(tmp), metadata={k: str(v) for k, v in info.items()})
    return path


def load_stats(path: str | Path) -> tuple[np.ndarray, np.ndarray, int]:
    from safetensors.numpy import load_file

    d = load_file(str(path))
    missing = {"mu", "sigma", "n"} - set(d)
    if missing:
        raise ValueError(f"{path}: FID statistics need tensors mu, sigma and n; missing {sorted(missing)}")
    return d["mu"], d["sigma"], int(d["n"][0])


def real_stats(extractor: Callable, extractor_id: str, n: int, coco_root: str | Path | None = None,
               csv_path: str | Path | None = None, size: int = 512, batch_size: int = 32, device: str = "cpu",
               cache: str | Path | None = None, progress: bool = True) -> tuple[np.ndarray, np.ndarray, int]:
    """(mu, sigma, n) of the real COCO val2014 images of the first ``n`` captions, computed once and cached."""
    from tqdm.auto import tqdm

    from iceb.metrics.coco import coco_image_path, load_coco_captions, load_real_image
    from iceb.utils.paths import cache_dir

    cache = Path(cache) if cache else cache_dir() / "fid"
    path = cache / f"coco-val2014-n{n}-s{size}-{extractor_id}.safetensors"
    if path.is_file():
        return load_stats(path)
    root = coco_root or os.environ.get("ICEB_COCO_ROOT")
    if not root:
        raise FileNotFoundError("real COCO statistics need the COCO val2014 images: set ICEB_COCO_ROOT (or pass "
                                "coco_root=), or give ready statistics with ICEB_FID_REAL_STATS")
    caps = load_coco_captions(n, csv_path)
    acc = FeatureFID(getattr(extractor, "num_features", 2048))
    images = (load_real_image(coco_image_path(root, c.coco_id), size) for c in caps)  # streamed, never all
    bar = tqdm(total=len(caps), desc="real COCO features", unit="img", disable=not progress)
    for f in extract_features(extractor, images, batch_size, device):
        acc.add(f, real=True)
        bar.update(len(f))
    bar.close()
    mu, sigma, m = acc.stats(real=True)
    save_stats(path, mu, sigma, m, {"n": str(n), "size": str(size), "extractor": extractor_id})
    return mu, sigma, m


# -- the metric ------------------------------------------------------------------------------------
def encode_feature(f: np.ndarray) -> str:
    return base64.b64encode(np.asarray(f, dtype="<f4").tobytes()).decode("ascii")


def decode_feature(s: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype="<f4")


class FID(Metric):
    name = "fid"
    description = "FID of generated COCO-caption images against real COCO images (Inception pool3)"
    version = "1"

    def __init__(self, world: str = "imagenet", device: str = "cpu", classifier: str | None = None,
                 weights: str | None = None, real_stats: str | None = None, coco_root: str | None = None,
                 coco_csv: str | None = None, real_n: int | None = None, real_size: int = 512,
                 batch_size: int = 32, extractor: Callable | None = None, extractor_id: str | None = None,
                 cache: str | None = None, progress: bool = True, **kwargs: Any) -> None:
        super().__init__(world=world, device=device, classifier=classifier, **kwargs)
        self.weights, self.batch_size, self.progress = weights, batch_size, progress
        self.real_stats_path = real_stats or os.environ.get("ICEB_FID_REAL_STATS")
        self.coco_root = coco_root or os.environ.get("ICEB_COCO_ROOT")
        self.coco_csv, self.real_n, self.real_size, self.cache = coco_csv, real_n, real_size, cache
        self._extractor, self._extractor_id = extractor, extractor_id or ("custom" if extractor else None)
        self._memo: dict[str, float] = {}

    @property
    def extractor(self):
        if self._extractor is None:
            self._extractor, self._extractor_id = inception_pool3(self.weights, self.device)
        return self._extractor

    def record_key(self) -> str:
        return f"{self.name}-v{self.version}-pool3"

    def score(self, images: Sequence[np.ndarray], prompts: Sequence[EvalPrompt]) -> list[dict[str, Any]]:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        feats = extract_features(self.extractor, images, self.batch_size, self.device)
        return [{"f": encode_feature(f)} for batch in feats for f in batch]

    def _real(self, n: int):
        if self.real_stats_path:
            return load_stats(self.real_stats_path)
        if self.coco_root:
            return real_stats(self.extractor, self._extractor_id, self.real_n or n, self.coco_root,
                              self.coco_csv, self.real_size, self.batch_size, self.device, self.cache,
                              self.progress)
        return None

    def aggregate(self, prompts: Sequence[EvalPrompt], pre: Sequence[dict[str, Any]],
                  post: Sequence[dict[str, Any]]) -> list[MetricValue]:
        if not (len(prompts) == len(pre) == len(post)):
            raise ValueError(f"misaligned inputs: {len(prompts)} prompts, {len(pre)} pre, {len(post)} post")
        if any(p.subset == "coco" for p in prompts):  # the general-capability FID: the COCO captions alone
            keep = [i for i, p in enumerate(prompts) if p.subset == "coco"]
            prompts, pre, post = [prompts[i] for i in keep], [pre[i] for i in keep], [post[i] for i in keep]
        if len(prompts) < 2:
            return []
        subsets = {p.subset for p in prompts}
        subset = subsets.pop() if len(subsets) == 1 else "-"
        dim = len(decode_feature(pre[0]["f"]))
        n = len(prompts)

        def feed(acc: FeatureFID, recs, real: bool, chunk: int = 1024):
            for i in range(0, len(recs), chunk):  # streamed: never all features at once
                acc.add(np.stack([decode_feature(r["f"]) for r in recs[i:i + chunk]]), real=real)

        pp = FeatureFID(dim)
        feed(pp, pre, True)
        feed(pp, post, False)
        # FID is a distance between two feature distributions, a statistic of the whole set, not a mean over
        # images: there is no per-request decomposition to resample cheaply (a bootstrap would recompute a
        # 2048-d Frechet distance per replicate, and FID is biased in n), so its rows carry no stderr/interval.
        rows = [MetricValue(subset, "fid_pre_post", pp.compute(), None, n, False)]
        real = self._real(n)
        if real is None:
            warnings.warn("FID against real COCO images skipped: set ICEB_COCO_ROOT (COCO val2014) or "
                          "ICEB_FID_REAL_STATS; only fid_pre_post is reported", stacklevel=2)
            return rows
        for name, recs in (("fid_pre", pre), ("fid", post)):
            # pre-edit features are the same at every edit count: their FID is computed once per run
            key = stable_hash("fid-memo", self.real_n or n, [r["f"] for r in recs])
            if key not in self._memo:
                acc = FeatureFID(dim)
                acc.set_real(*real)
                feed(acc, recs, False)
                self._memo[key] = acc.compute()
            rows.append(MetricValue(subset, name, self._memo[key], None, n, False))
        return rows


METRICS.register("fid", FID)
