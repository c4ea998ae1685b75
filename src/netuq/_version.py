"""netuq's version, in one place (the package and the CLI read it; pyproject.toml repeats it)."""

__version__ = "0.1.0"
