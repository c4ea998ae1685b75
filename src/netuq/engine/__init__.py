"""The evaluation engine: :func:`predict` and :func:`compare` over any loader, for any method."""

from .compare import compare
from .predict import predict

__all__ = ["predict", "compare"]
