"""``iceb``: a thin command line over the Python API.

Subcommands live in ``iceb/commands/<name>.py``; each defines ``register(subparsers)`` and imports its
heavy dependencies only when it runs, so ``iceb --help`` and ``iceb list`` start fast.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import os
import pkgutil
import sys

import iceb.commands


class CLIError(Exception):
    """An error to print as one line, without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iceb", description="ICEB: the ImageNet Concept Editing Benchmark")
    from iceb import __version__

    parser.add_argument("--version", action="version", version=f"iceb {__version__}")
    parser.add_argument("--debug", "--traceback", dest="traceback", action="store_true",
                        help="show the full traceback of an error (also: ICEB_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(iceb.commands.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"iceb.commands.{info.name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    _console_logging()
    debug = bool(getattr(args, "traceback", False)) or os.environ.get("ICEB_DEBUG", "") not in ("", "0")
    try:
        from iceb.commands._args import preflight

        if getattr(args, "no_progress", False):
            from iceb.utils.progress import silence_progress_bars

            silence_progress_bars()  # the libraries' bars too, not only ICEB's
        preflight(args)  # checks across flags, before anything heavy
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("iceb: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - every error ends in one line (the traceback only with --debug)
        if debug:
            raise
        user = _is_user_error(err)
        print(f"iceb: error: {error_message(err, user)}", file=sys.stderr)
        return 2 if user else 1


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


#: errno -> (what happened, what to do), for OSErrors that carry no message of ICEB's own
_OS_ADVICE = {
    errno.ENOTDIR: ("a part of this path is a file, not a folder", "pass another --out (or path)"),
    errno.EISDIR: ("is a folder, not a file", "pass a file path"),
    errno.EEXIST: ("exists and is a file, not a folder", "pass another --out"),
    errno.EACCES: ("permission denied", "choose a writable --out, or fix the permissions"),
    errno.EPERM: ("operation not permitted", "choose a writable --out, or fix the permissions"),
    errno.EROFS: ("read-only file system", "choose an --out on a writable disk (a read-only run folder cannot "
                                           "be resumed in place: copy it to a writable disk first)"),
    errno.ENOSPC: ("no space left on device", "free space, then run the same command again to resume"),
    errno.EDQUOT: ("disk quota exceeded", "free space, then run the same command again to resume"),
    errno.ENOENT: ("no such file or folder", "check the path"),
    errno.ENAMETOOLONG: ("file name too long", "choose a shorter path"),
    errno.EMFILE: ("too many open files", "raise the limit (ulimit -n) and run the same command again"),
    errno.EIO: ("input/output error", "check the disk, then run the same command again to resume"),
}


def error_message(err: BaseException, user: bool = True) -> str:
    """The one line an error prints after ``iceb: error:``."""
    if isinstance(err, OSError) and err.errno in _OS_ADVICE:
        what, todo = _OS_ADVICE[err.errno]
        path = err.filename if err.filename is not None else None
        if path is None and err.errno in (errno.ENOSPC, errno.EDQUOT) and err.strerror:
            return _one_line(err.strerror if "run" in err.strerror else f"{what}: {err.strerror}; {todo}")
        if path is None:
            if err.strerror and err.strerror[:1].islower():  # a message of ICEB's own
                return _one_line(err.strerror)
            return f"{what}; {todo}"
        where = f"{path} -> {err.filename2}" if err.filename2 else str(path)
        return f"{what}: {where}: {todo}"
    if isinstance(err, OSError) and err.filename is not None:
        return _one_line(f"{err.strerror or type(err).__name__}: {err.filename}")
    if isinstance(err, MemoryError):
        return "out of memory; try a smaller --batch-size or fewer edits at once"
    if isinstance(err, RecursionError):
        return "an input is nested too deeply to read (a file with thousands of brackets?); check the inputs"
    if isinstance(err, UnicodeDecodeError):
        return f"a file is not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8"
    text = _one_line(str(err))
    if user:
        return text or type(err).__name__
    return (f"internal error ({type(err).__name__}: {text[:300]}); run with --debug for the traceback "
            f"and report it")


def _console_logging() -> None:
    """The ``[iceb] ...`` progress lines of the ``iceb.*`` loggers, printed to stdout as they always were."""
    from iceb.harness.logs import install_console

    install_console()


def _is_user_error(err: Exception) -> bool:
    from editors.hparams import HparamsError
    from editors.requests import RequestError
    from iceb.utils.registry import RegistryImportError, UnknownNameError

    user_types: list[type] = [CLIError, UnknownNameError, RegistryImportError, HparamsError, RequestError,
                              OSError, FloatingPointError, ValueError]
    for mod, name in (("iceb.models", "ModelNotFoundError"), ("iceb.leaderboard.results", "RunLockedError"),
                      ("iceb.utils.download", "DownloadError"), ("iceb.utils.io", "DiskFullError"),
                      ("iceb.tasks.base", "TaskError"), ("yaml", "YAMLError"),
                      ("iceb.editfile", "EditFileError")):
        try:
            user_types.append(getattr(importlib.import_module(mod), name))
        except (ImportError, AttributeError):
            pass
    return isinstance(err, tuple(user_types))


if __name__ == "__main__":
    raise SystemExit(main())
