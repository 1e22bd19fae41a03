"""Build the project's ImageNet data in data/imagenet/ (deterministic; run from the repository root).

    python scripts/build_splits.py --wordnet /usr/share/wordnet   # once: extract wordnet_1k.json
    python scripts/build_splits.py                                 # split1k.json + MANIFEST.json
    python scripts/build_splits.py --check                         # rebuild in memory and compare

wordnet_1k.json holds, per ImageNet-1k wnid, every hypernym ancestor (hypernyms and instance hypernyms)
with its path length, the ancestors' first lemmas, and the direct hypernym's name; it is read from
WordNet 3.0's data.noun (Debian ``wordnet-base``), where a wnid's offset is the byte offset of its line.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iceb.data.imagenet import IMAGENET_DATA_DIR, imagenet_concepts  # noqa: E402


def _read_synset(fh, offset: int) -> tuple[list[str], list[str]]:
    fh.seek(offset)
    line = fh.readline().decode("utf-8")
    fields = line.split(" | ")[0].split()
    if int(fields[0]) != offset:
        raise ValueError(f"data.noun has no synset at byte offset {offset}")
    n_words = int(fields[3], 16)
    words = [fields[4 + 2 * i].replace("_", " ") for i in range(n_words)]
    k = 4 + 2 * n_words
    n_ptr = int(fields[k])
    hypers = []
    for i in range(n_ptr):
        sym, off, pos = fields[k + 1 + 4 * i: k + 4 + 4 * i]
        if sym in ("@", "@i") and pos == "n":
            hypers.append(off)
    return words, hypers


def extract_wordnet(wordnet_dir: Path) -> dict:
    data = {"source": "WordNet 3.0 data.noun", "synsets": {}}
    with open(wordnet_dir / "data.noun", "rb") as fh:
        for c in imagenet_concepts():
            dist = {c.wnid: 0}
            names = {}
            queue = deque([c.wnid])
            direct = None
            while queue:
                w = queue.popleft()
                words, hypers = _read_synset(fh, int(w[1:]))
                names[w] = words[0]
                if w == c.wnid and hypers:
                    direct = "n" + hypers[0]
                for h in hypers:
                    h = "n" + h
                    if h not in dist:
                        dist[h] = dist[w] + 1
                        queue.append(h)
            for w in dist:
                if w not in names:
                    names[w] = _read_synset(fh, int(w[1:]))[0][0]
            data["synsets"][c.wnid] = {
                "ancestors": dict(sorted(dist.items())),
                "ancestor_names": sorted({names[w] for w in dist if w != c.wnid}),
                "hypernym_name": names[direct] if direct else "",
            }
    return data


def main() -> int:
    import hashlib

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wordnet", type=Path, default=None, help="WordNet dict folder (extract wordnet_1k.json)")
    ap.add_argument("--check", action="store_true", help="rebuild and compare with the shipped files")
    args = ap.parse_args()
    out = IMAGENET_DATA_DIR
    if args.wordnet:
        from iceb.utils.io import write_text

        write_text(out / "wordnet_1k.json", json.dumps(extract_wordnet(args.wordnet), sort_keys=True) + "\n")
        print(f"wrote {out / 'wordnet_1k.json'}")
    from iceb.data.split_1k import VERSION, build_split1k

    bundle = build_split1k()
    text = json.dumps(bundle.to_json(), sort_keys=True, indent=None, separators=(",", ":")) + "\n"
    manifest = {"version": VERSION, "split_checksum": bundle.checksum(),
                "files": {"split1k.json": hashlib.sha256(text.encode()).hexdigest(),
                          "wordnet_1k.json": hashlib.sha256((out / "wordnet_1k.json").read_bytes()).hexdigest()}}
    if args.check:
        shipped = json.loads((out / "MANIFEST.json").read_text())
        same = shipped == manifest and (out / "split1k.json").read_text() == text
        print("identical" if same else "DIFFERENT from the shipped files")
        return 0 if same else 1
    from iceb.utils.io import write_json, write_text

    write_text(out / "split1k.json", text)
    write_json(out / "MANIFEST.json", manifest)
    print(f"wrote {out / 'split1k.json'} ({len(text)} bytes), version {VERSION}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
