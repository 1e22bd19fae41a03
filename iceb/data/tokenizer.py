"""The CLIP BPE tokenizer, built offline from the vocabulary file that open_clip ships.

No model hub is needed: ``build_clip_tokenizer_files`` turns open_clip's ``bpe_simple_vocab_16e6.txt.gz``
into the ``vocab.json`` and ``merges.txt`` of a transformers ``CLIPTokenizer`` (49,408 tokens, the same ids
as ``openai/clip-vit-large-patch14``). The project ships the result in ``data/tokenizer/`` (made by
``scripts/build_tokenizer.py``); ``load_clip_tokenizer`` reads it. Padding is ``<|endoftext|>`` as in
Stable Diffusion v1 (open_clip pads with 0), and ``model_max_length`` is 77.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

from iceb.utils.paths import DATA_DIR

TOKENIZER_DIR = DATA_DIR / "tokenizer"
N_MERGES = 49152 - 256 - 2  # open_clip's SimpleTokenizer takes lines [1 : 49152-256-2+1]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-unicode table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def open_clip_bpe_path() -> Path:
    import open_clip  # noqa: F401 - located, not used

    path = Path(open_clip.__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
    if not path.is_file():
        raise FileNotFoundError(f"open_clip does not ship {path.name} at {path}; reinstall open_clip_torch")
    return path


def build_clip_tokenizer_files(out_dir: str | Path, bpe_path: str | Path | None = None) -> tuple[Path, Path]:
    """Write ``vocab.json`` and ``merges.txt`` for transformers' CLIPTokenizer into ``out_dir``."""
    bpe_path = Path(bpe_path) if bpe_path else open_clip_bpe_path()
    lines = gzip.open(bpe_path, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1:N_MERGES + 1]]
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab.extend("".join(m) for m in merges)
    vocab.extend(["<|startoftext|>", "<|endoftext|>"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab_path, merges_path = out / "vocab.json", out / "merges.txt"
    vocab_path.write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    merges_path.write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    return vocab_path, merges_path


def load_clip_tokenizer(folder: str | Path | None = None):
    """The shipped CLIP tokenizer (transformers ``CLIPTokenizer``), built offline."""
    from transformers import CLIPTokenizer

    folder = Path(folder) if folder else TOKENIZER_DIR
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    if not vocab.is_file() or not merges.is_file():
        raise FileNotFoundError(
            f"the CLIP tokenizer files are missing from {folder}; rebuild them with "
            f"'python scripts/build_tokenizer.py' (needs open_clip_torch, no network)"
        )
    return CLIPTokenizer(str(vocab), str(merges), model_max_length=77, pad_token="<|endoftext|>")
