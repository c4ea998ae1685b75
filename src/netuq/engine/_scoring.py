"""Small pieces of the comparison: uncertainty scores, detection figures, curves, calibrator names."""

from __future__ import annotations

from typing import Any

import torch

from .. import metrics as M
from .. import scores as vocabulary
from ..calibration import registry
from ..prediction import Prediction

__all__ = ["streaming", "make_calibrator", "uncertainty_scores", "detection", "histogram", "downsample",
           "held_out_scores", "metric_values", "reliability_dict"]

CURVE_POINTS = 101


def streaming(num_classes: int, n_bins: int, ignore_index: int | None, *, full: bool = False, validate: bool = False):
    """A streaming :class:`~netuq.metrics.UncertaintyMetrics` (``full``: class-wise ECE too)."""
    from ..metrics.streaming import UncertaintyMetrics

    kw = {"classwise": True} if full else {"fine_bins": 64}
    # Every rank streams the gathered whole set (netuq.distributed): a torchmetrics sync would count it W times.
    return UncertaintyMetrics(num_classes, n_bins=n_bins, ignore_index=ignore_index, validate_args=validate,
                              sync_on_compute=False, **kw)


def make_calibrator(name: str):
    """A fresh calibrator in its recommended configuration (read from the registry at call time)."""
    return registry.make(name)


def uncertainty_scores(pred: Prediction, epistemic: bool, names=None, fitted=None) -> dict[str, torch.Tensor]:
    """Every score of :data:`netuq.scores.SCORES` the prediction offers (higher = less sure), each (N, ...).

    ``names``: the scores asked for (default: every ``compared`` one); a score whose needs the
    prediction (or the method: ``epistemic``) does not meet is left out. ``fitted``: name ->
    compute function of the fitted scores (a fitted score without one is left out).
    """
    out = {}
    for score in vocabulary.compared_scores(names):
        if not vocabulary.available(score, pred, epistemic):
            continue
        if score.fitted:
            if fitted is None or score.name not in fitted:
                continue
            out[score.name] = score(pred, fitted[score.name])
        else:
            out[score.name] = score(pred)
    return out


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
