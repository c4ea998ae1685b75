"""The netuq benchmark: train and compare every method on embedded data (``netuq benchmark``)."""

from .config import CALIBRATORS, METHODS, BenchmarkConfig, load_config
from .runner import run_benchmark

__all__ = ["BenchmarkConfig", "load_config", "run_benchmark", "METHODS", "CALIBRATORS"]
