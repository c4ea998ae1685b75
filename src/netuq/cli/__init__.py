"""The ``netuq`` command line: :mod:`netuq.cli.main` parses and dispatches, one module per subcommand.

Each subcommand (``benchmark``, ``report``, ``calibrate``, ``evaluate``) is a module here with
``register(subparsers)`` and ``run(args, echo) -> int``; :mod:`netuq.cli._common` holds the file
reading the ``calibrate``/``evaluate`` commands share.
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
