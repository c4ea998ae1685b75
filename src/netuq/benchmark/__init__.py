"""The netuq benchmark: train and compare every method on embedded data (``netuq benchmark``)."""

from typing import Any

from . import _logits_section  # noqa: F401,E402  (the logits_held_out section: results.json re-rendered)
from .config import METHODS, BenchmarkConfig, load_config
from .runner import run_benchmark

__all__ = ["BenchmarkConfig", "load_config", "run_benchmark", "METHODS", "CALIBRATORS"]


def __getattr__(name: str) -> Any:
    """``CALIBRATORS``: "none" plus netuq.calibration's registry, read at each access."""
    if name == "CALIBRATORS":
        from ..calibration import registry

        return registry.names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
