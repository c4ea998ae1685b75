"""What :func:`netuq.compare` records for the report's per-class, per-kind and protocol views.

Kept apart from the passes of ``compare`` (which only call these): each function turns state the
passes already hold into plain data of :mod:`netuq.report.schema`.

* :class:`ClassCounts`: a streaming confusion matrix over the valid rows (pixels), (C, C) int64.
* :func:`per_class`: support, accuracy (recall) and class-wise ECE of each class (Kull et al.
  2019: the calibration of ``p_c`` alone, so the mean over classes is ``classwise_ece``), plus the
  confusion matrix for at most :data:`MAX_CONFUSION` classes.
* :func:`kind_curves`: per OOD kind, each score's histogram and ROC curve.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .. import metrics as M
from ._scoring import downsample, histogram

__all__ = ["ClassCounts", "per_class", "kind_curves", "MAX_CONFUSION"]

#: Classes up to which the confusion matrix is recorded (C x C counts in results.json).
MAX_CONFUSION = 100


class ClassCounts:
    """Confusion counts ``[true, predicted]`` over valid rows, streamed batch by batch.

    Example:
        >>> cc = ClassCounts(3)
        >>> cc.update(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 1, 2]))
        >>> cc.confusion.tolist()
        [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = int(num_classes)
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def update(self, prediction: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        """Add a batch: ``prediction`` and ``labels`` (N, ...) integers, ``valid`` (N, ...) bool."""
        p, y = prediction.reshape(-1).cpu(), labels.reshape(-1).cpu()
        if valid is not None:
            keep = valid.reshape(-1).cpu()
            p, y = p[keep], y[keep]
        c = self.num_classes
        self.confusion += torch.bincount(y.long() * c + p.long(), minlength=c * c).view(c, c)


def per_class(counts: ClassCounts, metric: Any | None) -> dict[str, Any]:
    """Per-class numbers: ``{"support", "accuracy", "ece"[, "confusion"]}`` (lists of length C).

    ``metric`` is a :class:`netuq.metrics.UncertaintyMetrics` built with ``classwise=True`` on the
    same rows (its per-class bins give each class's ECE); ``None`` leaves ``ece`` out.
    """
    conf = counts.confusion
    support = conf.sum(1)
    acc = [float(conf[c, c]) / int(support[c]) if int(support[c]) else None for c in range(counts.num_classes)]
    out: dict[str, Any] = {"support": support.tolist(), "accuracy": acc}
    if metric is not None and getattr(metric, "classwise", False):
        n = int(metric.counts.sum())
        gap = (metric.cw_hits.to(torch.float64) - metric.cw_conf_sum).abs().sum(1)
        out["ece"] = [float(g) / n if n else None for g in gap]
    if counts.num_classes <= MAX_CONFUSION:
        out["confusion"] = conf.tolist()
    return out


def kind_curves(in_scores: Mapping[str, torch.Tensor],
                out_by_kind: Mapping[str, Mapping[str, torch.Tensor]]) -> tuple[dict, dict]:
    """``(hist, roc)``: ``{KIND: {SCORE: histogram}}`` and ``{KIND: {SCORE: {"fpr", "tpr"}}}``."""
    hists: dict[str, dict] = {}
    rocs: dict[str, dict] = {}
    for kind, outs in out_by_kind.items():
        for score, u_in in in_scores.items():
            u_out = outs.get(score)
            if u_out is None or not u_out.numel() or not u_in.numel():
                continue
            hists.setdefault(kind, {})[score] = histogram(u_in, u_out)
            fpr, tpr = M.roc_curve(u_out, u_in)
            f, t = downsample(fpr, tpr)
            rocs.setdefault(kind, {})[score] = {"fpr": f, "tpr": t}
    return hists, rocs
