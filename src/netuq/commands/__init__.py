"""Subcommands of the ``netuq`` CLI: each module has ``register(subparsers)`` and ``run(args)``."""
