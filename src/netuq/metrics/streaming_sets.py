"""Streaming metrics of prediction sets with a fixed-size, exact, DDP-syncable state.

:class:`SetMetrics` sums :class:`~netuq.metrics.sets.SetStats` (per-class counts and hits,
set-size histogram and hits per size: 4 int64 vectors of C or C + 1 entries) batch by batch, so
memory does not depend on the number of points or pixels and ``compute()`` equals the functional
metrics of :mod:`netuq.metrics.sets` on the concatenated data exactly.
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric

from .._checks import check_bool, check_ignore_index, check_int, check_labels
from .sets import (
    SetStats,
    SizeStratifiedCoverage,
    _flatten,
    check_sets,
    classwise_from_stats,
    coverage_from_stats,
    set_size_from_stats,
    set_stats,
    stratified_from_stats,
)

__all__ = ["SetMetrics"]


class SetMetrics(Metric):
    """Coverage, mean set size and worst-class coverage of prediction sets, streamed.

    Args:
        num_classes: C.
        ignore_index: label value whose points (pixels) drop out.
        validate_args: check sets and labels at every update.
        **kwargs: passed to :class:`torchmetrics.Metric`.

    ``update(sets, labels)``: bool sets (N, C) or (N, C, ...), labels (N,) or (N, ...).
    ``compute()``: ``{"coverage", "set_size", "worst_class_coverage", "n"}`` as 0-dim float64
    tensors (NaN before any point); :meth:`classwise` and :meth:`size_stratified` give the tables.

    Example:
        >>> m = SetMetrics(2)
        >>> m.update(torch.tensor([[True, False], [True, True]]), torch.tensor([0, 1]))
        >>> m.update(torch.tensor([[False, True]]), torch.tensor([0]))
        >>> {k: round(float(v), 4) for k, v in m.compute().items()}
        {'n': 3.0, 'coverage': 0.6667, 'set_size': 1.3333, 'worst_class_coverage': 0.5}
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(self, num_classes: int, *, ignore_index: int | None = None, validate_args: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_classes = check_int(num_classes, "num_classes", 1)
        self.ignore_index = check_ignore_index(ignore_index)
        self.validate_args = check_bool(validate_args, "validate_args")
        for name, size in (("class_count", num_classes), ("class_hits", num_classes),
                           ("size_count", num_classes + 1), ("size_hits", num_classes + 1)):
            self.add_state(name, torch.zeros(size, dtype=torch.int64), dist_reduce_fx="sum")

    def set_dtype(self, dst_type: str | torch.dtype) -> Metric:
        """No-op: the states are int64 counts by design."""
        return self

    def update(self, sets: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch: bool ``sets`` (N, C, ...), integer ``labels`` (N, ...)."""
        sets = check_sets(sets)
        if sets.shape[1] != self.num_classes:
            raise ValueError(f"`sets` must have {self.num_classes} classes (num_classes) in dim 1, got shape "
                             f"{tuple(sets.shape)}")
        if self.validate_args:
            labels = check_labels(labels, self.num_classes, sets.shape[:1] + sets.shape[2:],
                                  ignore_index=self.ignore_index, probs_name="sets")
        flat, y = _flatten(sets, torch.as_tensor(labels), self.ignore_index)
        if y.numel() == 0:
            return
        for state, value in zip((self.class_count, self.class_hits, self.size_count, self.size_hits),
                                set_stats(flat, y)):
            state += value.to(state.device)

    def _stats(self) -> SetStats:
        return SetStats(self.class_count, self.class_hits, self.size_count, self.size_hits)

    def compute(self) -> dict[str, torch.Tensor]:
        """Coverage, mean set size, worst-class coverage and the number of points (all processes)."""
        stats = self._stats()
        cw = classwise_from_stats(stats)
        present = cw[~torch.isnan(cw)]
        worst = present.min() if present.numel() else torch.tensor(float("nan"), dtype=torch.float64)
        return {
            "n": stats.class_count.sum().to(torch.float64),
            "coverage": coverage_from_stats(stats),
            "set_size": set_size_from_stats(stats),
            "worst_class_coverage": worst,
        }

    def _synced(self, fn):
        should_sync = self._to_sync and not self._is_synced
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=should_sync,
                               should_unsync=self._should_unsync):
            return fn(SetStats(*(t.clone() for t in self._stats())))

    def classwise(self) -> torch.Tensor:
        """(C,) float64 coverage per true class (NaN for a class not seen)."""
        return self._synced(classwise_from_stats)

    def size_stratified(self, edges: Any = None) -> SizeStratifiedCoverage:
        """Coverage per range of set sizes (see :func:`netuq.metrics.size_stratified_coverage`)."""
        return self._synced(lambda s: stratified_from_stats(s, edges))
