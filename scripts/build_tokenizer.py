"""Build data/tokenizer/{vocab.json,merges.txt} from open_clip's shipped BPE file (no network)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iceb.data.tokenizer import TOKENIZER_DIR, build_clip_tokenizer_files  # noqa: E402

if __name__ == "__main__":
    vocab, merges = build_clip_tokenizer_files(TOKENIZER_DIR)
    print(f"wrote {vocab} and {merges}")
