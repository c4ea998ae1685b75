"""Small pieces of the comparison: uncertainty scores, detection figures, curves, calibrator names."""

from __future__ import annotations

from typing import Any

import torch

from .. import metrics as M
from ..prediction import Prediction

__all__ = ["CALIBRATOR_NAMES", "make_calibrator", "uncertainty_scores", "detection", "histogram", "downsample",
           "held_out_scores", "metric_values", "reliability_dict"]

CURVE_POINTS = 101
SCORE_ORDER = ("max_prob", "entropy", "mutual_information", "sigma", "confidence")


def _registry() -> dict[str, type]:
    from ..calibration import CALIBRATORS  # the calibrator registry (name -> class); imported late (cycle)

    return dict(CALIBRATORS)


#: "none" (no calibration) plus every registered calibrator name.
CALIBRATOR_NAMES: tuple[str, ...] = ("none", *_registry())


def make_calibrator(name: str):
    """A fresh calibrator in its recommended configuration."""
    return _registry()[name]()


def uncertainty_scores(pred: Prediction, epistemic: bool) -> dict[str, torch.Tensor]:
    """Every score the prediction offers (higher = less sure), each (N, ...).

    ``mutual_information`` needs several samples and an epistemic part (``epistemic``).
    """
    scores = {"max_prob": 1.0 - pred.confidence, "entropy": pred.entropy}
    if epistemic and pred.num_samples > 1:
        scores["mutual_information"] = pred.epistemic
    if "sigma" in pred.scores:
        scores["sigma"] = pred.scores["sigma"]
    if "confidence" in pred.scores:
        scores["confidence"] = 1.0 - pred.scores["confidence"]
    return scores


def detection(u_in: torch.Tensor, u_out: torch.Tensor) -> dict[str, float]:
    """OOD is the positive class for AUROC/AUPR; FPR@95 keeps 95% of in-distribution inputs."""
    return {
        "auroc": M.auroc(u_out, u_in),
        "aupr": M.aupr(u_out, u_in),
        "fpr95": M.fpr_at_tpr(-u_in, -u_out, tpr=0.95),
    }


def histogram(u_in: torch.Tensor, u_out: torch.Tensor, bins: int = 30) -> dict[str, Any]:
    """Both score sets binned on shared edges, as fractions."""
    lo = float(torch.minimum(u_in.min(), u_out.min()))
    hi = float(torch.maximum(u_in.max(), u_out.max()))
    hi = hi if hi > lo else lo + 1e-6
    edges = torch.linspace(lo, hi, bins + 1)
    h_in = torch.histc(u_in.double(), bins, lo, hi) / u_in.numel()
    h_out = torch.histc(u_out.double(), bins, lo, hi) / u_out.numel()
    return {"edges": edges.tolist(), "in": h_in.tolist(), "out": h_out.tolist()}


def downsample(*arrays: torch.Tensor, points: int = CURVE_POINTS) -> list[list[float]]:
    n = arrays[0].numel()
    idx = torch.linspace(0, n - 1, min(points, n)).round().long()
    return [a[idx].tolist() for a in arrays]


def held_out_scores(probs: torch.Tensor, labels: torch.Tensor, n_bins: int) -> dict[str, float]:
    """The four numbers of the 2-fold protocol (as netuq.calibration.cross_validate scores them)."""
    kw = {"validate_args": False}
    return {
        "nll": M.nll(probs, labels, **kw),
        "ece": M.ece(probs, labels, n_bins=n_bins, **kw),
        "brier": M.brier(probs, labels, **kw),
        "accuracy": M.accuracy(probs, labels, **kw),
    }


def _float(value: Any) -> float | None:
    if value is None:
        return None
    v = float(value)
    return v if v == v and abs(v) != float("inf") else None


def metric_values(metric) -> dict[str, float | None]:
    """A streaming UncertaintyMetrics' values as floats (works whether compute() returns floats or tensors)."""
    out = metric.compute()
    return {k: _float(v) for k, v in out.items() if k != "reliability"}


def reliability_dict(metric) -> dict[str, Any]:
    rel = metric.reliability() if callable(getattr(metric, "reliability", None)) else metric.compute()["reliability"]
    return rel.to_dict()
