"""netuq: make PyTorch networks say how sure they are.

Importing netuq imports neither matplotlib nor torchvision.

Example:
    >>> import torch, netuq
    >>> pred = netuq.Prediction.from_logits(torch.tensor([[2.0, 0.0], [0.0, 0.0]]))
    >>> pred.prediction.tolist()
    [0, 0]
"""

from . import calibration, conformal, data, detectors, distributed, measures, metrics, report, tta
from . import nn as nn  # netuq.nn: public, but not in __all__ (a star import must not shadow torch.nn)
from ._version import __version__
from .engine import compare, predict
from .exceptions import NotFittedError
from .methods.confidence import (
    ConfidenceBudget,
    ConfidenceClassifier,
    ConfidenceHead,
    confidence_loss,
    confidence_perturbation,
    confidence_predict,
)
from .methods.ensemble import Ensemble, train_ensemble
from .methods.heteroscedastic import (
    HeteroscedasticClassifier,
    HeteroscedasticHead,
    heteroscedastic_loss,
    heteroscedastic_nll,
    heteroscedastic_predict,
)
from .methods.mc_dropout import MCDropout
from .methods.tta import TTA
from .prediction import Prediction

__all__ = [
    "Prediction",
    "predict",
    "compare",
    "NotFittedError",
    "measures",
    "metrics",
    "calibration",
    "conformal",
    "detectors",
    "tta",  # netuq.nn is importable but not in __all__: `from netuq import *` must not shadow torch.nn
    "data",
    "distributed",
    "report",
    "MCDropout",
    "TTA",
    "HeteroscedasticHead",
    "HeteroscedasticClassifier",
    "heteroscedastic_loss",
    "heteroscedastic_nll",
    "heteroscedastic_predict",
    "ConfidenceHead",
    "ConfidenceClassifier",
    "ConfidenceBudget",
    "confidence_loss",
    "confidence_predict",
    "confidence_perturbation",
    "Ensemble",
    "train_ensemble",
    "__version__",
]
