"""Uncertainty methods: wrappers around a trained model that return a :class:`netuq.Prediction`."""

from .confidence import (
    ConfidenceBudget,
    ConfidenceClassifier,
    ConfidenceHead,
    confidence_loss,
    confidence_perturbation,
    confidence_predict,
)
from .ensemble import Ensemble, make_splits, train_ensemble
from .heteroscedastic import (
    HeteroscedasticClassifier,
    HeteroscedasticHead,
    heteroscedastic_loss,
    heteroscedastic_nll,
    heteroscedastic_predict,
)
from .mc_dropout import MCDropout, dropout_active
from .tta import TTA

__all__ = ["MCDropout", "dropout_active", "TTA", "Ensemble", "train_ensemble", "make_splits"]
__all__ += ["HeteroscedasticHead", "HeteroscedasticClassifier", "heteroscedastic_loss", "heteroscedastic_predict"]
__all__ += ["heteroscedastic_nll"]
__all__ += ["ConfidenceHead", "ConfidenceClassifier", "ConfidenceBudget", "confidence_loss", "confidence_predict"]
__all__ += ["confidence_perturbation"]
