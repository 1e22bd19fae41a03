"""Rendering prompts with a model, before and after edits: the library side of ``iceb generate``.

:func:`read_prompts` reads prompt files; :func:`render_prompts` renders (prompt, seed) pairs with a model and
optional edit files and writes the PNGs, before/after grids and a manifest of every prompt, seed and file.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, NamedTuple, Sequence

GRID_ROWS = 32  # rows per grid image; more images give grid_2.png, ...


def parse_seed(value: Any, where: str) -> int:
    """A seed from a prompt file or the command line.

    Args:
        value: an int or its text.
        where: where it came from, for the error.

    Returns:
        The seed.

    Raises:
        ValueError: ``"<where>: seed ... is not an integer"``.
    """
    try:
        if isinstance(value, bool):
            raise ValueError
        return int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise ValueError(f"{where}: seed {value!r} is not an integer") from None


class PromptItem(NamedTuple):
    """One prompt of a prompt file: its text, the seed the file gives (None: none) and, for ESD/UCE CSVs, its
    ``case_number`` (None: none), which ``iceb generate`` keeps in the image file names."""

    prompt: str
    seed: int | None
    case: str | None = None


def read_prompts(path: str | Path) -> list[tuple[str, int | None]]:
    """(prompt, seed) pairs from a prompt file (:func:`read_prompt_items` without the case numbers).

    Args:
        path: A prompt file, as for :func:`read_prompt_items`.

    Returns:
        The prompts in file order, each with its seed or None where the file gives none.
    """
    return [(it.prompt, it.seed) for it in read_prompt_items(path)]


def read_prompt_items(path: str | Path) -> list[PromptItem]:
    """The prompts of a prompt file, each with its seed and (ESD/UCE CSVs) case number.

    Args:
        path: ``.txt`` (one prompt a line, ``#`` comments), ``.csv`` (a ``prompt`` column, optional ``seed``
            or ``evaluation_seed`` and ``case_number``, as ESD's and UCE's CSVs), ``.json``/``.yaml`` (a list of strings or of ``{"prompt", "seed"}``
            objects, or an object with ``prompts`` or EMCID's ``val_prompts``).

    Returns:
        The prompts in file order, each with its seed or None where the file gives none, and its case
        number (text) or None.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a malformed file, naming the file and row.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    out: list[PromptItem] = []
    if suffix == ".txt":
        out = [PromptItem(line.strip(), None) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    elif suffix == ".csv":
        try:
            rows = list(csv.DictReader(io.StringIO(text, newline=""), strict=True))
        except csv.Error as err:
            raise ValueError(f"{path}: malformed CSV: {err}") from None
        if rows and "prompt" not in rows[0]:
            raise ValueError(f"{path}: no 'prompt' column (columns: {', '.join(rows[0])})")
        for n, row in enumerate(rows, start=1):
            seed = row.get("seed") or row.get("evaluation_seed")
            case = (row.get("case_number") or "").strip() or None
            out.append(PromptItem(row["prompt"].strip(),
                                  parse_seed(seed, f"{path} row {n}") if seed not in (None, "") else None, case))
    elif suffix in (".json", ".yaml", ".yml"):
        if suffix == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: malformed JSON at line {err.lineno}: {err.msg}") from None
        else:
            import yaml

            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as err:
                mark = getattr(err, "problem_mark", None)
                where = f" at line {mark.line + 1}" if mark is not None else ""
                raise ValueError(f"{path}: malformed YAML{where}: {getattr(err, 'problem', None) or err}") from None
        if isinstance(data, dict):
            key = next((k for k in ("prompts", "val_prompts") if k in data), None)
            if key is None:
                raise ValueError(f"{path}: expected a list of prompts or an object with 'prompts' or 'val_prompts'")
            data = data[key]
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a list of prompts")
        for n, item in enumerate(data, start=1):
            if isinstance(item, str):
                out.append(PromptItem(item, None))
            elif isinstance(item, dict) and isinstance(item.get("prompt"), str):
                out.append(PromptItem(item["prompt"],
                                      parse_seed(item["seed"], f"{path} row {n}") if "seed" in item else None))
            else:
                raise ValueError(f"{path} row {n}: expected a string or an object with 'prompt', got {item!r}")
    else:
        raise ValueError(f"{path}: unknown prompt file type {suffix!r}; use .txt, .csv, .json or .yaml")
    empty = [i + 1 for i, it in enumerate(out) if not it.prompt]
    if empty:
        raise ValueError(f"{path} row {empty[0]}: empty prompt")
    if not out:
        raise ValueError(f"{path}: no prompts")
    return out


def _file_part(case: str) -> str:
    """A case number as a safe piece of a file name (anything but letters, digits, ``-`` and ``.`` is ``_``)."""
    return "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in str(case))[:64] or "_"


def _grid(images: Sequence[Any], rows: int, cols: int):
    from diffusers.utils import make_image_grid
    from PIL import Image

    pil = [Image.fromarray(im) for im in images]
    w = pil[0].width
    return make_image_grid(pil, rows=rows, cols=cols, resize=128 if w < 128 else None)


def render_prompts(loaded, items: Sequence[tuple[str, int]], out: str | Path, edits: Sequence[Any] = (),
                   config=None, force: bool = False, progress: bool = True,
                   cases: Sequence[str | None] | None = None) -> dict[str, Any]:
    """Render (prompt, seed) items with the base model and, given edits, with the edited model.

    Writes ``images/NNNN_sSEED.png`` (with edits ``..._before.png`` and ``..._after.png``), ``grid.png``
    (``grid_2.png``, ... past :data:`GRID_ROWS` rows; with edits the columns are before | after) and
    ``images.json`` / ``images.csv`` listing each prompt, seed and file.

    Args:
        loaded: a model from :func:`iceb.models.load_model`.
        items: (prompt, seed) pairs, one image each.
        out: the output folder (created).
        edits: edit files or paths, applied in order (composed with :func:`iceb.editfile.merge_edits`);
            none renders the base model only.
        config: generation settings (default: the model's own).
        force: apply edits even where the recorded base model differs.
        progress: show progress bars.
        cases: one case number (or None) per item, e.g. an ESD CSV's ``case_number``: kept in the file names
            (``NNNN_cCASE_sSEED.png``) and in the manifest, so images can be matched to the file's rows.

    Returns:
        The manifest written to ``images.json``.

    Raises:
        EditFileError: an edit cannot be read, or does not fit the model (without ``force``).
    """
    from PIL import Image

    from iceb.editfile import edited, load_edit, merge_edits
    from iceb.generation import generate
    from iceb.utils.io import atomic_path, write_json, write_text

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    cfg = config or loaded.generation
    files = [e if not isinstance(e, (str, Path)) else load_edit(e) for e in edits]
    prompts, seeds = [p for p, _ in items], [s for _, s in items]
    before = generate(loaded.pipe, prompts, seeds, cfg, progress=progress, desc="base model")
    after = None
    if files:
        with edited(loaded, merge_edits(files) if len(files) > 1 else files[0], force=force):
            after = generate(loaded.pipe, prompts, seeds, cfg, progress=progress, desc="edited model")
    rows = []

    def save_png(img, name: str) -> str:
        with atomic_path(out / "images" / name) as tmp:
            Image.fromarray(img).save(tmp, format="PNG")
        return f"images/{name}"

    case_of = list(cases) if cases is not None else [None] * len(items)
    if len(case_of) != len(items):
        raise ValueError(f"{len(items)} items but {len(case_of)} case numbers")
    with_cases = any(c is not None for c in case_of)
    for i, ((p, s), case) in enumerate(zip(items, case_of)):
        row = {"index": i, "prompt": p, "seed": s}
        stem = f"{i:04d}_s{s}"
        if with_cases:
            row["case_number"] = case if case is not None else ""
            stem = f"{i:04d}_c{_file_part(case)}_s{s}" if case is not None else stem
        if after is None:
            row["file"] = save_png(before[i], f"{stem}.png")
        else:
            row["file_before"] = save_png(before[i], f"{stem}_before.png")
            row["file_after"] = save_png(after[i], f"{stem}_after.png")
        rows.append(row)
    grids = []
    for g, start in enumerate(range(0, len(items), GRID_ROWS)):
        stop = min(start + GRID_ROWS, len(items))
        if after is None:
            cells = before[start:stop]
            grid = _grid(cells, rows=len(cells), cols=1)
        else:
            cells = [im for pair in zip(before[start:stop], after[start:stop]) for im in pair]
            grid = _grid(cells, rows=stop - start, cols=2)
        name = "grid.png" if g == 0 else f"grid_{g + 1}.png"
        with atomic_path(out / name) as tmp:
            grid.save(tmp, format="PNG")
        grids.append({"file": name, "rows": [start, stop]})
    manifest = {
        "model": {"spec": loaded.spec, "id": loaded.model_id, "revision": loaded.revision},
        "generation": cfg.key(), "generator": "torch.Generator('cpu').manual_seed(seed), one per image",
        "edits": [{"file": str(f.path) if f.path else None, "editor": f.editor,
                   "requests_hash": f.meta.get("requests_hash")} for f in files],
        "grid_layout": "one row per (prompt, seed); columns: before | after" if files else "one row per (prompt, seed)",
        "grids": grids, "images": rows,
    }
    write_json(out / "images.json", manifest)
    cols = (["index"] + (["case_number"] if with_cases else []) + ["prompt", "seed"]
            + (["file_before", "file_after"] if files else ["file"]))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_text(out / "images.csv", buf.getvalue())
    return manifest
