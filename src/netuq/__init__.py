"""netuq: make PyTorch networks say how sure they are.

Importing netuq imports neither matplotlib nor torchvision.

Example:
    >>> import torch, netuq
    >>> pred = netuq.Prediction.from_logits(torch.tensor([[2.0, 0.0], [0.0, 0.0]]))
    >>> pred.prediction.tolist()
    [0, 0]
"""

from . import measures, metrics
from .exceptions import NotFittedError
from .prediction import Prediction

__version__ = "0.1.0"

__all__ = [
    "Prediction",
    "NotFittedError",
    "measures",
    "metrics",
    "__version__",
]
