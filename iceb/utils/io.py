"""Safe file writing: every write is atomic (temp file + fsync + rename), appends are whole lines.

A killed process leaves either the old file or the new one, never half of one; a full disk raises a clear
error and the files already written stay intact.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


class DiskFullError(OSError):
    pass


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _explain(err: OSError, path: Path) -> OSError:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(err.errno, f"no space left while writing {path}; free some space and run the same "
                                        f"command again: finished work is kept and the run resumes")
    return err


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes 0600 files; a written file gets the mode any new file would (or keeps the old one's).
    # Set after the write: writers such as safetensors' save_file replace the temporary file they are given.
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_UMASK
    try:
        yield tmp_path
        os.chmod(tmp_path, mode)
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except OSError as err:
        tmp_path.unlink(missing_ok=True)
        raise _explain(err, path) from err
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def share_mode(path: str | Path) -> None:
    """Give a file written by another library (e.g. through a 0600 temporary file) the mode any new file gets."""
    os.chmod(path, 0o666 & ~_UMASK)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def append_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Append rows as one write of whole lines, then fsync; readers drop a torn last line."""
    path = Path(path)
    data = "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in rows).encode()
    try:
        _drop_torn_tail(path)
        with open(path, "ab") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as err:
        raise _explain(err, path) from err


def _drop_torn_tail(path: Path) -> None:
    """Cut an unterminated last line left by a killed writer, so the next append starts clean."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) == b"\n":
            return
        data = fh.seek(0) or fh.read()
        fh.truncate(data.rfind(b"\n") + 1)


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) of a JSONL file of objects; a torn last line (a killed writer) is ignored, any
    other line that is not a JSON object is a ValueError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        return
    lines = path.read_bytes().split(b"\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            if i >= len(lines) - 2:  # only the last, unterminated line may be torn
                return
            raise ValueError(f"{path}: line {i + 1} is not valid JSON") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}: line {i + 1} is valid JSON but a {type(row).__name__}, not an object (a row)")
        yield i + 1, row


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file (see :func:`iter_jsonl`)."""
    return [row for _, row in iter_jsonl(path)]


def read_text(path: str | Path) -> str:
    """A UTF-8 text file; a file that is not UTF-8 is a ValueError naming it (OSErrors pass through)."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); "
                         f"save it as UTF-8") from None


def read_json(path: str | Path) -> Any:
    """A JSON file; malformed JSON is a ValueError naming the file, line and column."""
    path = Path(path)
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON (line {err.lineno} column {err.colno}: {err.msg})") from None
    except RecursionError:
        raise ValueError(f"{path}: not valid JSON (nested too deeply)") from None


@contextlib.contextmanager
def csv_reader(path: str | Path, required: "tuple[str, ...] | list[str]", error: type[Exception] = ValueError,
               what: str = "") -> Iterator[Any]:
    """A ``csv.DictReader`` over ``path`` whose header holds every column of ``required``.

    One place for the check every released CSV (COCO captions, artist prompts, I2P prompts) needs before its rows
    are read: a missing column is one ``error`` naming the file, the missing columns and what was expected.

    Args:
        path: The CSV file (UTF-8).
        required: The columns the caller reads.
        error: The exception class to raise.
        what: Appended to the message, e.g. where a good copy of the file comes from.

    Yields:
        The reader, positioned at the first row (``reader.line_num`` gives a row's last physical line).
    """
    import csv

    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise error(f"{path}: missing column(s) {missing}; expected {list(required)}{what}")
        yield reader
