"""Uncertainty and calibration metrics: functional (in memory), streaming (bounded memory), detection."""

from .detection import aupr, auroc, fpr_at_tpr, roc_curve
from .functional import (
    ReliabilityBins,
    accuracy,
    adaptive_ece,
    aurc,
    brier,
    classwise_ece,
    ece,
    evaluate,
    mce,
    nll,
    reliability_bins,
    risk_coverage_curve,
)

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
    "evaluate",
    "auroc",
    "aupr",
    "fpr_at_tpr",
    "roc_curve",
]
