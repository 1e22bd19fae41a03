"""``iceb env``: versions, device and cache folders, for bug reports (like ``diffusers-cli env``)."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("env", help="print versions, device and cache folders")
    p.set_defaults(func=run)


def run(args) -> int:
    import os
    import platform

    import torch

    from iceb.leaderboard.results import git_revision, package_versions
    from iceb.models import default_model_spec, toy_model_dir
    from iceb.utils.paths import DATA_DIR, cache_dir, editor_cache_dir

    lines = [("platform", platform.platform())]
    lines += list(package_versions().items())
    lines.append(("git revision", git_revision() or "-"))
    cuda = torch.cuda.is_available()
    lines.append(("cuda available", str(cuda)))
    if cuda:
        lines.append(("gpu", torch.cuda.get_device_name(0)))
    lines.append(("cpu threads", str(torch.get_num_threads())))
    lines.append(("data folder", str(DATA_DIR)))
    lines.append(("iceb cache", f"{cache_dir()} (ICEB_CACHE overrides; 'iceb cache ls' lists it)"))
    lines.append(("editor cache", str(editor_cache_dir())))
    lines.append(("HF_HOME", os.environ.get("HF_HOME", "~/.cache/huggingface")))
    lines.append(("HF_HUB_OFFLINE", os.environ.get("HF_HUB_OFFLINE", "0")))
    from iceb.models import toy_quality_passed
    from iceb.toy.worlds import TOY_WORLDS

    for world in TOY_WORLDS:
        state = ("not trained" if not (toy_model_dir(world) / "model_index.json").is_file()
                 else "present, quality gates passed" if toy_quality_passed(world) else "present, below its quality gates")
        lines.append((f"toy world {world}" if world != "toy" else "toy world", state))
    lines.append(("default model", default_model_spec()))
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        print(f"{k:<{width}}  {v}")
    return 0
