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
from .sets import (
    SizeStratifiedCoverage,
    classwise_coverage,
    coverage,
    set_size,
    size_stratified_coverage,
    worst_class_coverage,
)

_STREAMING = ("CalibrationError", "UncertaintyMetrics")
_STREAMING_SETS = ("SetMetrics",)


def __getattr__(name: str):
    # The streaming metrics subclass torchmetrics.Metric, and importing torchmetrics imports
    # matplotlib when it is installed: load them on first use so `import netuq` stays light.
    if name in _STREAMING:
        from . import streaming

        return getattr(streaming, name)
    if name in _STREAMING_SETS:
        from . import streaming_sets

        return getattr(streaming_sets, name)
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
    "coverage",
    "set_size",
    "classwise_coverage",
    "worst_class_coverage",
    "size_stratified_coverage",
    "SizeStratifiedCoverage",
    "SetMetrics",
]
