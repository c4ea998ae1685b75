"""Uncertainty and calibration metrics: functional (in memory), streaming (bounded memory), detection."""

from .detection import aupr, auroc, fpr_at_tpr, roc_curve
from .functional import (
    ReliabilityBins,
    accuracy,
    adaptive_ece,
    augrc,
    aurc,
    brier,
    classwise_ece,
    ece,
    evaluate,
    mce,
    nll,
    reliability_bins,
    risk_coverage_curve,
    selective_risk,
)

_STREAMING = ("CalibrationError", "UncertaintyMetrics")


def __getattr__(name: str):
    # The streaming metrics subclass torchmetrics.Metric, and importing torchmetrics imports
    # matplotlib when it is installed: load them on first use so `import netuq` stays light.
    if name in _STREAMING:
        from . import streaming

        return getattr(streaming, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "accuracy",
    "nll",
    "brier",
    "ece",
    "mce",
    "adaptive_ece",
    "classwise_ece",
    "reliability_bins",
    "ReliabilityBins",
    "risk_coverage_curve",
    "aurc",
    "augrc",
    "selective_risk",
    "evaluate",
    "auroc",
    "aupr",
    "fpr_at_tpr",
    "roc_curve",
    "CalibrationError",
    "UncertaintyMetrics",
]
