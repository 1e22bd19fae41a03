"""EMCID's artist-style erasure data (UCE's format): per edit count, the artists erased and the evaluation prompts.

The released files, at the pinned commit (``data/artists/`` of SilentView/EMCID 10a392a):

- ``info/erased-{n}artists-towards_art-preserve_true-sd_1_4-method_replace.txt``: a JSON list of ``n`` artist
  names, for n in 1, 5, 10, 50, 100, 500, 1000 (the paper's counts) and 1500. **The lists are drawn
  independently per count**: the 10 artists of ``n = 10`` are not the first 10 of ``n = 50``, so a sweep over n
  edits different artists at each count, exactly as the official runs did.
- ``prompts_dir/erased-{n}artists-...csv``: columns ``case_number, prompt, evaluation_seed, artist, type`` (and a
  leading unnamed index). ``type`` is ``erased`` (5 prompts per erased artist, **capped at 100 artists**: from
  n = 500 on only 100 of the n erased artists are evaluated), ``holdout`` (100 artists never erased x 5 prompts)
  or ``preserved`` (100 x 5; skipped in scoring by the official code, and so here). The holdout artists differ
  per count too.

Requests (``dsets/artist_requests.py``): source = the artist, destination = ``"art"`` (the ``--dest`` default of
``experiments/emcid_test.py``; the dataset class's own default, "a photographer, real world scene", is not what
the scripts pass), the three templates below, and ``seed_train`` from ``torch.manual_seed(2023)`` then one
``torch.randint(0, 100000, (1,))`` per artist in file order (reproduced here with a generator of its own). The
official script then shuffles the requests with an unseeded ``random.shuffle``; ICEB keeps file order (EMCID's
edit is a batch: its result does not depend on the order beyond float rounding).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from iceb.utils.download import emcid_file
from iceb.utils.io import csv_reader

#: the counts with an official list (the paper's seven, and the 1500 list the repository also ships)
ARTIST_COUNTS: tuple[int, ...] = (1, 5, 10, 50, 100, 500, 1000, 1500)
#: ``dsets/artist_requests.py``'s training templates
ARTIST_TEMPLATES: tuple[str, ...] = ("painting by {}", "artwork by {}", "style of {}")
ARTIST_DESTINATION = "art"
#: ``torch.random.manual_seed(2023)`` in ``ArtistRequestsDataset.__init__``
SEED_TRAIN_SEED = 2023
PROMPT_COLUMNS = ("case_number", "prompt", "evaluation_seed", "artist", "type")
PROMPT_TYPES = ("erased", "holdout", "preserved")

_STEM = "erased-{n}artists-towards_art-preserve_true-sd_1_4-method_replace"
#: sha256 of the released files at the pinned commit
SHA256: dict[str, str] = {
    "info/erased-1": "0071ec36a43ded859c01a6692fe935dd7e1fc8f38a9919a4e0e0585c25355e8a",
    "info/erased-5": "0785843b60ca0cc7cd755b4f7c1418639dbb09fe0466d667b992391fdcb3c4da",
    "info/erased-10": "5905ffd705bb4d3aa32793be43c8a48753d075c5c6e5423d88b5c50362258313",
    "info/erased-50": "8b1ad8b3ec47f0b4954fdee3ab66739468fc6cec18e3e3204b0702f5fef813e9",
    "info/erased-100": "f6feb125a4425f4a61e5dd5dd4fe11c8a98fafce7616a31943369a734ead5c59",
    "info/erased-500": "2c6f6e10473ad1921597498d750ae21905f74635348f517f56ac5827a1568806",
    "info/erased-1000": "57f93ceeb41fa24ca84479d58754062906b55b9dfaa6e9f64aa0417ba19557e2",
    "info/erased-1500": "d971eebc0e88a943075cd0e9740f8ed175f0d64fa50fe79494a21266b54ac9c7",
    "prompts_dir/erased-1": "30cce986071a5a89464530955589e9214f4b4cd90c28d2401b218cae8c90c2f3",
    "prompts_dir/erased-5": "77bb0943dbba8a61996b8d8da84961b2f2eda3e82687ede262d6bd859d6f790c",
    "prompts_dir/erased-10": "4860acb9dc2966f6245135f69366b0b478a77b0d5a29ac6d6d91bc8a76cf60a7",
    "prompts_dir/erased-50": "68ec907cd1b5184db628269623af9b863eeafbd8fd95b9996fb36ea707b08309",
    "prompts_dir/erased-100": "54beacc68760a1a264de3501f3cd69d423eb696dcb7122d9967d7bb560ca22ae",
    "prompts_dir/erased-500": "991482814e578304f549115a0ac6ee40f11a5338b609a4001b9935173aed1170",
    "prompts_dir/erased-1000": "f52f33533f2477a69ccd076e32987e891ef5c96cc2ed3a70ad0eccf264ce6377",
    "prompts_dir/erased-1500": "4e65b785c53502f42145b1a55c92e31c9b02abb4094a7562b3a005af89393b89",
}


class ArtistDataError(ValueError):
    """An artist count without an official list, or a released file that is not in the expected form."""


@dataclass(frozen=True)
class ArtistPrompt:
    """One row of an artist prompt file."""

    case_number: int
    prompt: str
    seed: int
    artist: str
    type: str  # erased | holdout | preserved


def check_count(n: int) -> None:
    """Refuse an edit count the release has no artist list for.

    Raises:
        ArtistDataError: ``n`` is not one of :data:`ARTIST_COUNTS`.
    """
    if n not in ARTIST_COUNTS:
        raise ArtistDataError(f"EMCID releases artist lists for {', '.join(map(str, ARTIST_COUNTS))} artists only; "
                              f"got {n} (the lists are drawn independently per count, so another count cannot be "
                              f"cut from a larger list without changing what the benchmark measures)")


def artist_file(kind: str, n: int, data_dir: str | Path | None = None) -> Path:
    """The local path of one released file: ``kind`` "info" (the names) or "prompts_dir" (the prompts).

    Args:
        kind: ``"info"`` or ``"prompts_dir"``.
        n: An artist count of :data:`ARTIST_COUNTS`.
        data_dir: A local copy of EMCID's ``data/`` folder or of its ``data/artists/`` folder; default
            ``$ICEB_EMCID_DATA``, the cache, or a download (:func:`iceb.utils.download.emcid_file`).

    Returns:
        The file's path.
    """
    check_count(n)
    name = f"{_STEM.format(n=n)}.{'txt' if kind == 'info' else 'csv'}"
    rel = f"{kind}/{name}"
    if data_dir is not None:
        root = Path(data_dir)
        root = root / "artists" if (root / "artists").is_dir() else root
        path = root / rel
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist; --data-dir should be EMCID's data/ or data/artists/ folder")
        return path
    return emcid_file(f"artists/{rel}", sha256=SHA256[f"{kind}/erased-{n}"])


def load_artists(n: int, data_dir: str | Path | None = None) -> list[str]:
    """The ``n`` artists the official run erases at count ``n``, in file order.

    Raises:
        ArtistDataError: No list for ``n``, or the file is not a JSON list of ``n`` distinct names.
    """
    path = artist_file("info", n, data_dir)
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtistDataError(f"{path}: not a JSON list of artist names ({e})") from None
    if not isinstance(names, list) or not all(isinstance(x, str) and x.strip() for x in names):
        raise ArtistDataError(f"{path}: expected a JSON list of non-empty artist names")
    if len(names) != n or len(set(names)) != n:
        raise ArtistDataError(f"{path}: expected {n} distinct artists, found {len(names)} ({len(set(names))} distinct)")
    return names


def load_artist_prompts(n: int, data_dir: str | Path | None = None) -> list[ArtistPrompt]:
    """Every row of the prompt file of count ``n`` (preserved rows too: the caller skips them).

    Raises:
        ArtistDataError: A missing column, a bad seed, an unknown ``type``, or a prompt that does not name its
            artist; each message names the file and line.
    """
    path = artist_file("prompts_dir", n, data_dir)
    out: list[ArtistPrompt] = []
    with csv_reader(path, PROMPT_COLUMNS, ArtistDataError) as reader:
        for line, row in enumerate(reader, start=2):
            where = f"{path}, line {line}"
            try:
                case, seed = int(row["case_number"]), int(row["evaluation_seed"])
            except (TypeError, ValueError):
                raise ArtistDataError(f"{where}: case_number/evaluation_seed {row['case_number']!r}/"
                                      f"{row['evaluation_seed']!r} are not integers") from None
            if row["type"] not in PROMPT_TYPES:
                raise ArtistDataError(f"{where}: type {row['type']!r} is not one of {PROMPT_TYPES}")
            if row["artist"] not in row["prompt"]:
                raise ArtistDataError(f"{where}: prompt {row['prompt']!r} does not name its artist {row['artist']!r}")
            out.append(ArtistPrompt(case, row["prompt"], seed, row["artist"], row["type"]))
    return out


def seed_train(n_artists: int) -> list[int]:
    """The official ``seed_train`` of each of ``n_artists`` requests, in file order.

    ``ArtistRequestsDataset`` seeds torch's global generator with 2023 and draws ``torch.randint(0, 100000, (1,))``
    once per artist; a fresh generator seeded the same way gives the same stream.

    Returns:
        ``n_artists`` integers in ``[0, 100000)``.
    """
    import torch

    g = torch.Generator().manual_seed(SEED_TRAIN_SEED)
    return [int(torch.randint(0, 100000, (1,), generator=g).item()) for _ in range(n_artists)]


__all__ = ["ARTIST_COUNTS", "ARTIST_DESTINATION", "ARTIST_TEMPLATES", "ArtistDataError", "ArtistPrompt",
           "artist_file", "check_count", "load_artist_prompts", "load_artists", "seed_train"]
