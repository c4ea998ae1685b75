"""The ``netuq`` command line: argument parsing and dispatch only.

Each subcommand lives in :mod:`netuq.cli` as a module with ``register(subparsers)`` and
``run(args, echo) -> int``. Any expected failure (bad flags, unreadable or mismatched files, bad
values) prints one line on stderr and exits with code 2 — never a traceback. Warnings are printed
as one line each (``netuq: warning: ...``).
"""

from __future__ import annotations

import argparse
import pickle
import sys
import warnings
from collections.abc import Sequence

from . import benchmark, calibrate, conformal, evaluate, report

__all__ = ["main", "build_parser"]

COMMANDS = (benchmark, report, calibrate, evaluate, conformal)


class _OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a single line on stderr and exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        raise _UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


class _UsageError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="netuq", description="Uncertainty estimation and calibration for PyTorch networks.")
    from .._version import __version__

    parser.add_argument("--version", action="version", version=f"netuq {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_OneLineParser)
    for module in COMMANDS:
        module.register(sub)
    return parser


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    text = str(message).strip()
    print(f"netuq: warning: {text.splitlines()[0] if text else category.__name__}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``netuq`` script; returns the exit code."""
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if getattr(args, "command", None) is None:
            parser.print_help()
            return 2
        return int(args.run(args, echo=print) or 0)  # commands write through `echo`: output lives here
    except _UsageError as err:
        print(str(err), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("netuq: interrupted (finished results are kept; rerun to resume)", file=sys.stderr)
        return 130
    except (ValueError, TypeError, KeyError, OSError, RuntimeError, ImportError, EOFError,
            pickle.UnpicklingError) as err:
        msg = _first_line(err)
        if isinstance(err, KeyError):
            msg = msg.strip("'\"")
        print(f"netuq: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
