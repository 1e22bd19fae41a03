"""Artist-style erasure (EMCID section 4.3, UCE's protocol): erase 1 to 1,000 artists' styles towards "art".

For N artists (one of the official counts, :data:`iceb.data.artists.ARTIST_COUNTS`), the instance holds:

- requests: one per artist of the official ``erased-{N}`` list, ``source`` = the artist, ``destination`` =
  ``"art"``, the three artist templates and the official ``seed_train`` (:mod:`iceb.data.artists`);
- ``general``: the file's ``erased`` prompts (5 per artist, at most 100 artists: the official cap), each with its
  ``evaluation_seed``, grouped by its artist's request; an edit should change them (LPIPS up) and move them away
  from their caption (CLIP score down);
- ``holdout``: the file's ``holdout`` prompts (100 artists never erased x 5), which should not change.

The ``preserved`` rows are skipped, as the official scoring skips them. One image per prompt (the official
``--sample_num`` default). Metrics: ``lpips`` (AlexNet, 64 px, pre vs post) and ``clip-score`` (ViT-L/14),
reported per subset with their spread over artists; add ``fid`` for the general-capability metrics.

Erase-only editors (ESD) need ``--editor-args treat_updates_as_erase=true`` (towards the unconditional prompt
instead of "art"), or the task built with ``destination=""``, which makes every request an erase.
"""
from __future__ import annotations

from pathlib import Path

from editors.requests import EditRequest
from iceb.data.artists import (
    ARTIST_COUNTS,
    ARTIST_DESTINATION,
    ARTIST_TEMPLATES,
    ArtistDataError,
    load_artist_prompts,
    load_artists,
    seed_train,
)
from iceb.tasks import TASKS
from iceb.tasks.base import EvalPrompt, Task, TaskError, TaskInstance


class ArtistsTask(Task):
    worlds = ("imagenet",)
    name = "artists"
    description = "artist-style erasure towards 'art', 1 to 1000 artists (EMCID/UCE lists and prompts)"
    default_edits = (1, 5, 10, 50, 100, 500, 1000)
    default_metrics = ("lpips", "clip-score")
    edit_counts = ARTIST_COUNTS

    def __init__(self, world: str = "imagenet", data_dir: str | Path | None = None,
                 destination: str = ARTIST_DESTINATION) -> None:
        if world != "imagenet":
            raise TaskError(f"task 'artists' needs a Stable Diffusion-like model (world 'imagenet'), not the "
                            f"{world!r} world: the toy world has no artists or styles. Use --model tiny to check the "
                            f"mechanics, or a Stable Diffusion model")
        self.world_name = world
        self.data_dir = data_dir
        self.destination = destination

    @property
    def world(self) -> str:  # type: ignore[override]
        return self.world_name

    @property
    def max_edits(self) -> int:
        return ARTIST_COUNTS[-1]

    def _build(self, n: int) -> TaskInstance:
        try:
            artists = load_artists(n, self.data_dir)
            rows = load_artist_prompts(n, self.data_dir)
        except ArtistDataError as e:
            raise TaskError(str(e)) from None
        kind = "update" if self.destination else "erase"
        rid = {a: f"{self.name}-{i:04d}" for i, a in enumerate(artists)}
        requests = [EditRequest(a, self.destination, ARTIST_TEMPLATES, seed=s, kind=kind, source_id=a,
                                destination_id=self.destination or None, request_id=rid[a])
                    for a, s in zip(artists, seed_train(n))]
        prompts = []
        for r in rows:
            if r.type == "erased":
                if r.artist not in rid:
                    raise TaskError(f"artist prompt {r.case_number} ({r.artist!r}) is marked erased, but the "
                                    f"official {n}-artist list does not hold that artist")
                prompts.append(EvalPrompt(r.prompt, r.seed, "general", r.artist, self.destination or None,
                                          rid[r.artist]))
            elif r.type == "holdout":
                if r.artist in rid:
                    raise TaskError(f"holdout artist {r.artist!r} (prompt {r.case_number}) is also erased at N={n}")
                prompts.append(EvalPrompt(r.prompt, r.seed, "holdout", r.artist, None, f"holdout:{r.artist}"))
        evaluated = {p.true_class for p in prompts if p.subset == "general"}
        return TaskInstance(self.name, n, tuple(requests), tuple(prompts), self.world_name,
                            {"destination": self.destination, "erased_artists_evaluated": len(evaluated),
                             "holdout_artists": len({p.true_class for p in prompts if p.subset == "holdout"}),
                             "preserved_rows_skipped": sum(r.type == "preserved" for r in rows),
                             "source": "EMCID data/artists (10a392a)"})


TASKS.register("artists", ArtistsTask)
