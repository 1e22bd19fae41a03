"""From a model spec to a ready ``StableDiffusionPipeline``.

A spec is a hub id (``CompVis/stable-diffusion-v1-4``), a local diffusers folder, or a built-in name:
``tiny`` (random weights, built from configs, for tests of mechanics: its numbers mean nothing) and
``toy`` (the trained toy world, when its bundle is present). The safety checker is always off, as in every
concept-editing paper. A hub model that is neither cached nor downloadable ends in one
:class:`ModelNotFoundError` that says how to get it.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from iceb.generation import ICEB_PROTOCOL, GenerationConfig
from iceb.toy.worlds import TOY_WORLDS, is_toy_world, toy_world_dir
from iceb.utils.hashing import KEY_LENGTH
from iceb.utils.paths import DATA_DIR

DEFAULT_HUB_MODEL = "CompVis/stable-diffusion-v1-4"
TOY_DIR = DATA_DIR / "toy" / "model"  # the default toy world's model; every toy world's: toy_model_dir(name)
#: Optional file in a model folder: {"family", "world", "classifier", "generation": {...}}
ICEB_MODEL_INFO = "iceb_model.json"


class ModelNotFoundError(RuntimeError):
    """The model cannot be loaded here; the message says how to get it."""


@dataclass
class LoadedModel:
    """A pipeline plus what the benchmark needs to know about it."""

    pipe: Any
    spec: str
    model_id: str
    revision: str | None
    family: str  # selects the editors' hparams files: "sd-1.4", "tiny", "toy", ...
    world: str  # "imagenet" or "toy": which concepts and classifier the model speaks
    generation: GenerationConfig
    classifier: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        """Identifies the weights for caching: id plus revision (or a hash of the local folder's files)."""
        return f"{self.model_id}@{self.revision or 'unknown'}"


def toy_model_dir(world: str = "toy") -> Path:
    """The diffusers folder of a built-in toy world's model (``data/<world>/model``)."""
    return toy_world_dir(world) / "model"


def toy_quality_passed(world: str = "toy") -> bool:
    """Whether a shipped toy world's model met its quality gates (``data/<world>/quality.json``, written by
    ``iceb toy eval``; the gates are :data:`iceb.toy.evaluate.GATES`)."""
    folder = toy_model_dir(world)
    quality = folder.parent / "quality.json"
    if not (folder / "model_index.json").is_file() or not quality.is_file():
        return False
    try:
        return bool(json.loads(quality.read_text())["summary"]["gates"]["passed"])
    except (json.JSONDecodeError, KeyError, TypeError):
        return False


def default_model_spec() -> str:
    """The built-in default: the trained toy world once it is shipped and meets its quality gates, else
    ``tiny``. A toy model below the gates stays usable as ``--model toy`` but is never the silent default."""
    return "toy" if toy_quality_passed() else "tiny"


DEVICE_TYPES = ("cpu", "cuda", "mps")


def check_device(name: str | None) -> str:
    """``name`` if this machine has that device (``auto``/None: always); else a ValueError saying what to pass.

    Cheap, and called while the command line is parsed, so a wrong ``--device`` fails before any model loads.
    """
    if name in (None, "auto"):
        return "auto"
    text = str(name).strip()
    kind, _, index = text.partition(":")
    if kind not in DEVICE_TYPES or (index and not index.isdigit()) or (kind == "cpu" and index not in ("", "0")):
        raise ValueError(f"unknown device {text!r}; use auto, cpu, cuda, cuda:N or mps")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {text!r}: CUDA is not available on this machine (torch "
                             f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}); use --device cpu "
                             f"or auto")
        count = torch.cuda.device_count()
        if index and int(index) >= count:
            raise ValueError(f"device {text!r}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {text!r}: MPS is not available on this machine; use --device cpu or auto")
    return text


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(check_device(device))


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto", "float32", "fp32"):
        return torch.float32
    table = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; use float32, float16 or bfloat16")
    if device.type == "cpu" and table[dtype] == torch.float16:
        raise ValueError("float16 is not supported for generation on the CPU; use float32 or bfloat16")
    return table[dtype]


# --------------------------------------------------------------------------------------------------
# tiny: random weights from configs (no download, ever)
# --------------------------------------------------------------------------------------------------
TINY_TEXT_LAYERS = 12  # keeps layer indices 0-10 (EMCID), 7/9 (ReFACT) meaningful


def build_tiny_pipeline(seed: int = 0):
    """A random-weight SD-architecture pipeline small enough for unit tests (16 px images)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from iceb.data.tokenizer import load_clip_tokenizer

    torch.manual_seed(seed)
    tokenizer = load_clip_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=TINY_TEXT_LAYERS,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8,
    )
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    for module in (text_encoder, unet, vae):
        module.eval()
    return pipe


def _tiny_fingerprint(pipe) -> str:
    h = hashlib.sha256()
    for comp in ("text_encoder", "unet", "vae"):
        for _, p in getattr(pipe, comp).state_dict().items():
            h.update(p.detach().cpu().numpy().tobytes()[:4096])
    return h.hexdigest()[:KEY_LENGTH]


def _folder_fingerprint(folder: Path) -> str:
    """Hash of the weight files' names, sizes and first bytes: cheap, and changes when weights change."""
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file() and f.suffix in (".safetensors", ".bin", ".json", ".txt"):
            h.update(str(f.relative_to(folder)).encode())
            h.update(str(f.stat().st_size).encode())
            with open(f, "rb") as fh:
                h.update(fh.read(1 << 16))
    return h.hexdigest()[:KEY_LENGTH]


#: keys of ``iceb_model.json`` (anything else is a typo, refused with the file named)
INFO_KEYS = ("family", "world", "classifier", "generation", "model_id", "world_config", "note", "edits", "dtype")
WORLDS = ("imagenet", *TOY_WORLDS)
#: the components a Stable Diffusion folder needs; those with weights must hold safetensors files
_COMPONENTS = {"unet": True, "vae": True, "text_encoder": True, "tokenizer": False, "scheduler": False}
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _read_info(folder: Path) -> dict[str, Any]:
    from iceb.utils.io import read_json

    f = folder / ICEB_MODEL_INFO
    if not f.is_file():
        return {}
    info = read_json(f)
    if not isinstance(info, dict):
        raise ModelNotFoundError(f"{f}: expected a JSON object with {', '.join(INFO_KEYS)}; got "
                                 f"{type(info).__name__}")
    unknown = sorted(set(info) - set(INFO_KEYS))
    if unknown:
        from iceb.utils.registry import closest

        parts = [f"{k!r}" + (f" (did you mean {closest(k, list(INFO_KEYS))!r}?)" if closest(k, list(INFO_KEYS))
                             else "") for k in unknown]
        raise ModelNotFoundError(f"{f}: unknown key(s) {', '.join(parts)}; known keys: {', '.join(INFO_KEYS)}")
    if "world" in info and info["world"] not in WORLDS:
        raise ModelNotFoundError(f"{f}: 'world' must be one of {', '.join(WORLDS)}, got {info['world']!r}")
    for key in ("family", "classifier", "model_id"):
        if key in info and info[key] is not None and not isinstance(info[key], str):
            raise ModelNotFoundError(f"{f}: {key!r} must be a string, got {info[key]!r}")
    if "generation" in info:
        import dataclasses as _dc

        gen = info["generation"]
        known = [x.name for x in _dc.fields(GenerationConfig)]
        if not isinstance(gen, dict) or set(gen) - set(known):
            raise ModelNotFoundError(f"{f}: 'generation' must be an object with keys among {', '.join(known)}; "
                                     f"got {gen!r}")
        for key in ("num_inference_steps", "batch_size", "height", "width"):
            v = gen.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ModelNotFoundError(f"{f}: generation.{key} must be a positive integer, got {v!r}")
        g = gen.get("guidance_scale")
        if g is not None and (isinstance(g, bool) or not isinstance(g, (int, float)) or not g == g
                              or g in (float("inf"), float("-inf")) or g < 0):
            raise ModelNotFoundError(f"{f}: generation.guidance_scale must be a finite number >= 0, got {g!r}")
    return info


def _check_safetensors(f: Path) -> str | None:
    """Why ``f`` is not a complete safetensors file (header read only), or None when it looks whole."""
    import struct

    size = f.stat().st_size
    if size < 8:
        return f"{f.name} is {size} bytes long (truncated)"
    with open(f, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        if n > min(size - 8, 100_000_000):
            return f"{f.name} has a broken header (truncated or not safetensors)"
        try:
            header = json.loads(fh.read(n))
        except (ValueError, UnicodeDecodeError):
            return f"{f.name} has a broken header (truncated or not safetensors)"
    if not isinstance(header, dict):
        return f"{f.name} has a broken header"
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
               and isinstance(v.get("data_offsets"), list) and len(v["data_offsets"]) == 2), default=0)
    if 8 + n + end > size:
        return f"{f.name} is truncated ({size} bytes; its header needs {8 + n + end})"
    return None


def check_model_folder(folder: str | Path) -> None:
    """Refuse, before diffusers sees it, a folder that cannot be a complete Stable Diffusion pipeline.

    Checks ``model_index.json``, every component folder and its ``config.json``, and the weights: ICEB loads
    safetensors only, so a folder whose weights are pickles (``.bin``, ``.ckpt``) is refused, never unpickled.
    """
    from iceb.utils.io import read_json

    folder = Path(folder)
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise ModelNotFoundError(f"{folder} is not a diffusers pipeline folder (no model_index.json); pass the "
                                 f"folder that 'save_pretrained' or 'huggingface-cli download' wrote")
    index = read_json(index_file)
    if not isinstance(index, dict):
        raise ModelNotFoundError(f"{index_file}: expected a JSON object, got {type(index).__name__}")
    missing = [c for c in _COMPONENTS if c not in index]
    if missing:
        raise ModelNotFoundError(f"{index_file} lists no {', '.join(missing)}: not a Stable Diffusion pipeline")
    for comp, has_weights in _COMPONENTS.items():
        sub = folder / comp
        if not sub.is_dir():
            raise ModelNotFoundError(f"{folder}: the component folder {comp}/ is missing; download the model "
                                     f"again (or copy the whole folder)")
        if comp == "tokenizer":
            continue
        config = sub / ("scheduler_config.json" if comp == "scheduler" else "config.json")
        if not config.is_file():
            raise ModelNotFoundError(f"{folder}: {comp}/{config.name} is missing; download the model again")
        if not isinstance(read_json(config), dict):
            raise ModelNotFoundError(f"{config}: expected a JSON object")
        if not has_weights:
            continue
        files = [p for p in sub.iterdir() if p.is_file()]
        st = [p for p in files if p.name.endswith(".safetensors")]
        pickles = [p for p in files if p.suffix in _PICKLE_SUFFIXES]
        if not st:
            if pickles:
                raise ModelNotFoundError(
                    f"{sub}: holds only pickle weights ({', '.join(sorted(p.name for p in pickles))}); ICEB loads "
                    f"safetensors only and never unpickles a file. Convert the model to safetensors (load it with "
                    f"diffusers where you trust it and save_pretrained(..., safe_serialization=True)) and pass "
                    f"that folder")
            raise ModelNotFoundError(f"{sub}: no weights (*.safetensors); download the model again")
        if any(p.name.endswith(".index.json") for p in files):
            continue  # sharded: diffusers checks the shards it lists
        for p in st:
            why = _check_safetensors(p)
            if why:
                raise ModelNotFoundError(f"{sub}: {why}; download or copy the model again")
    _read_info(folder)


def check_model_spec(spec: str | None) -> None:
    """Cheap checks of a model spec before anything loads (a folder's layout and iceb_model.json)."""
    if spec in (None, "tiny") or is_toy_world(spec):
        return
    path = Path(spec).expanduser()
    if path.is_dir():
        check_model_folder(path)
    elif path.exists():
        raise ModelNotFoundError(f"--model {spec}: is a file, not a model folder; pass a diffusers folder, a hub "
                                 f"id, 'toy' or 'tiny'")
    elif not _looks_like_hub_id(spec):
        raise ModelNotFoundError(
            f"model spec {spec!r} is neither a built-in name (toy, tiny), an existing local folder, nor a hub id "
            f"of the form 'owner/name' (e.g. {DEFAULT_HUB_MODEL})")


def model_world(spec: str | None) -> str | None:
    """The world a spec speaks, when known without loading it (None: unknown)."""
    if spec in (None,):
        return None
    if spec == "tiny":
        return "imagenet"
    if is_toy_world(spec):
        return spec
    path = Path(spec).expanduser()
    if path.is_dir():
        return _read_info(path).get("world", "imagenet")
    return "imagenet" if _looks_like_hub_id(spec) else None


def _family_from_pipe(pipe) -> str:
    hidden = getattr(getattr(pipe.text_encoder, "config", None), "hidden_size", None)
    return {768: "sd-1.4", 1024: "sd-2"}.get(hidden, "custom")


def _hub_error(spec: str, err: Exception) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"cannot load the model {spec!r}: it is not in the local Hugging Face cache and could not be downloaded "
        f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}).\n"
        f"To use it: on a machine with access to the Hugging Face Hub run\n"
        f"    huggingface-cli download {spec} --local-dir /path/to/{spec.split('/')[-1]}\n"
        f"(accept the model licence on its hub page first if it asks), copy the folder here and pass\n"
        f"    --model /path/to/{spec.split('/')[-1]}\n"
        f"or set HF_HOME to a cache that holds it. Without real weights, '--model toy' runs the trained toy "
        f"world and '--model tiny' a random-weight pipeline (numbers meaningless)."
    )


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~"))


def load_model(spec: str = "toy", *, device: str | None = "auto", dtype: str | torch.dtype | None = None,
               revision: str | None = None) -> LoadedModel:
    """Load ``spec`` as a StableDiffusionPipeline on ``device`` in ``dtype``, safety checker off.

    Args:
        spec: ``"toy"`` (the trained toy-world model), ``"tiny"`` (random weights, no download), a local
            diffusers folder (safetensors only), or a hub id ``owner/name`` (the local cache is tried first).
        device: ``"auto"`` or None (CUDA when available, else CPU), or a torch device string.
        dtype: ``float32`` (default), ``float16``/``fp16`` or ``bfloat16``/``bf16``, or a ``torch.dtype``.
        revision: The hub revision to load (hub ids only).

    Returns:
        A :class:`LoadedModel`: the pipeline plus its id, fingerprint, family (selects the editors' hparams),
        world and generation protocol.

    Raises:
        ModelNotFoundError: The spec names no loadable model here; the message says how to get it.
        ValueError: An unknown dtype, or float16 on the CPU.
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if spec == "tiny":
        pipe = build_tiny_pipeline()
        loaded = LoadedModel(pipe, "tiny", "iceb/tiny-random", _tiny_fingerprint(pipe), "tiny", "imagenet",
                             GenerationConfig(num_inference_steps=2, guidance_scale=7.5, batch_size=16),
                             classifier=None, info={"note": "random weights: numbers mean nothing"})
    elif is_toy_world(spec):
        folder = toy_model_dir(spec)
        if not (folder / "model_index.json").is_file():
            how = "'iceb toy train' (about 30 CPU-minutes)" if spec == "toy" else \
                f"'iceb toy train --world {spec} --out {folder.parent}' (about 4 CPU-hours)"
            raise ModelNotFoundError(
                f"the {spec!r} toy-world model is not present at {folder}. Train it with {how}, or use "
                f"'--model tiny' for a random-weight pipeline.")
        loaded = _load_folder(folder, spec, dt)
    elif Path(spec).expanduser().is_dir():
        loaded = _load_folder(Path(spec).expanduser(), spec, dt)
    elif _looks_like_hub_id(spec):
        loaded = _load_hub(spec, dt, revision)
    else:
        raise ModelNotFoundError(
            f"model spec {spec!r} is neither a built-in name (toy, tiny), an existing local folder, nor a hub id "
            f"of the form 'owner/name' (e.g. {DEFAULT_HUB_MODEL})")
    loaded.pipe.to(dev)
    if loaded.pipe.unet.dtype != dt:
        loaded.pipe.to(dtype=dt)
    return loaded


def _dtype_kwargs(dtype: torch.dtype) -> dict[str, Any]:
    """diffusers >= 0.40 takes ``dtype`` (``torch_dtype`` is deprecated there); older versions only ``torch_dtype``."""
    import diffusers
    from packaging.version import Version

    return {"dtype": dtype} if Version(diffusers.__version__).release >= (0, 40) else {"torch_dtype": dtype}


def _load_folder(folder: Path, spec: str, dtype: torch.dtype) -> LoadedModel:
    from diffusers import StableDiffusionPipeline

    from iceb.weight_layout import TOKEN_ROWS, check_text_encoder_readable, quiet_transformers, read_token_rows

    check_model_folder(folder)
    with quiet_transformers((folder / "text_encoder" / TOKEN_ROWS).is_file()):
        # a table stored as rows is "missing" to transformers, which says so loudly; read_token_rows fills it
        pipe = StableDiffusionPipeline.from_pretrained(
            folder, **_dtype_kwargs(dtype), safety_checker=None, requires_safety_checker=False,
            local_files_only=True, use_safetensors=True)

    read_token_rows(pipe.text_encoder, folder / "text_encoder")  # a table stored as the rows the model uses (the toy worlds at SD widths)
    check_text_encoder_readable(pipe, folder)  # an error, never a text encoder left at random weights
    info = _read_info(folder)
    family = info.get("family") or _family_from_pipe(pipe)
    gen = GenerationConfig(**info["generation"]) if "generation" in info else ICEB_PROTOCOL
    model_id = info.get("model_id", str(folder.resolve()) if not is_toy_world(spec) else f"iceb/{spec}-world")
    return LoadedModel(pipe, spec, model_id, _folder_fingerprint(folder), family, info.get("world", "imagenet"),
                       gen, classifier=info.get("classifier"), info=info)


def _load_hub(spec: str, dtype: torch.dtype, revision: str | None) -> LoadedModel:
    from diffusers import StableDiffusionPipeline

    kwargs = dict(**_dtype_kwargs(dtype), safety_checker=None, requires_safety_checker=False, revision=revision)
    try:  # the cache first: no network when the weights are already here
        pipe = StableDiffusionPipeline.from_pretrained(spec, local_files_only=True, **kwargs)
    except Exception as cache_err:  # noqa: BLE001 - diffusers raises several types for a cache miss
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise _hub_error(spec, cache_err) from None
        try:
            pipe = StableDiffusionPipeline.from_pretrained(spec, **kwargs)
        except Exception as err:  # noqa: BLE001
            raise _hub_error(spec, err) from None
    rev = getattr(pipe, "_internal_dict", {}).get("_commit_hash") if hasattr(pipe, "_internal_dict") else None
    return LoadedModel(pipe, spec, spec, revision or rev, _family_from_pipe(pipe), "imagenet", ICEB_PROTOCOL,
                       classifier="vit-b16")
