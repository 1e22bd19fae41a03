"""``iceb``: a thin command line over the Python API.

Subcommands live in ``iceb/commands/<name>.py``; each defines ``register(subparsers)`` and imports its
heavy dependencies only when it runs, so ``iceb --help`` and ``iceb list`` start fast.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import iceb.commands


class CLIError(Exception):
    """An error to print as one line, without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iceb", description="ICEB: the ImageNet Concept Editing Benchmark")
    from iceb import __version__

    parser.add_argument("--version", action="version", version=f"iceb {__version__}")
    parser.add_argument("--traceback", action="store_true", help="show full tracebacks for errors")
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
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("iceb: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - known, user-facing errors become one line
        if _is_user_error(err) and not getattr(args, "traceback", False):
            print(f"iceb: error: {err}", file=sys.stderr)
            return 2
        raise


def _console_logging() -> None:
    """The ``[iceb] ...`` progress lines of the ``iceb.*`` loggers, printed to stdout as they always were."""
    from iceb.harness.logs import install_console

    install_console()


def _is_user_error(err: Exception) -> bool:
    from editors.requests import RequestError
    from editors.hparams import HparamsError
    from iceb.utils.registry import RegistryImportError, UnknownNameError

    user_types: list[type] = [CLIError, UnknownNameError, RegistryImportError, HparamsError, RequestError,
                              FileNotFoundError, FloatingPointError, ValueError]
    for mod, name in (("iceb.models", "ModelNotFoundError"), ("iceb.leaderboard.results", "RunLockedError"),
                      ("iceb.utils.download", "DownloadError"), ("iceb.utils.io", "DiskFullError"),
                      ("iceb.tasks.base", "TaskError")):
        try:
            user_types.append(getattr(importlib.import_module(mod), name))
        except (ImportError, AttributeError):
            pass
    return isinstance(err, tuple(user_types))


if __name__ == "__main__":
    raise SystemExit(main())
