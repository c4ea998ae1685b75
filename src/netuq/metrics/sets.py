"""Metrics of prediction sets: coverage, set size, coverage per class and per set size.

A set mask is a bool tensor (N, C) (or (N, C, H, W, ...)): ``sets[i, c]`` is True when class c
is in the set of example (pixel) i; labels are (N,) (or (N, H, W, ...)) with ``ignore_index``.
Every function reduces the same sufficient statistics (:class:`SetStats`: per-class counts and
hits, and a histogram of set sizes with the hits per size), which the streaming
:class:`~netuq.metrics.SetMetrics` sums batch by batch, so both agree exactly.

* coverage: the fraction of points whose label is in their set (the target of 1 − α);
* set size: the mean number of classes in a set (smaller is better at equal coverage);
* class-wise and worst-class coverage (Vovk 2012; Angelopoulos & Bates 2021, §3.1);
* size-stratified coverage (Angelopoulos et al. 2021, "SSCV"): coverage among the points whose
  set size falls in each range — adaptive sets keep it near 1 − α in every range.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .._checks import as_tensor, check_ignore_index, check_labels

__all__ = [
    "SetStats",
    "SizeStratifiedCoverage",
    "set_stats",
    "coverage",
    "set_size",
    "classwise_coverage",
    "worst_class_coverage",
    "size_stratified_coverage",
]


class SetStats(NamedTuple):
    """Sufficient statistics of sets against labels (int64 tensors).

    Attributes:
        class_count: (C,) points per true class.
        class_hits: (C,) points per true class whose label is in the set.
        size_count: (C + 1,) points per set size 0..C.
        size_hits: (C + 1,) covered points per set size.
    """

    class_count: torch.Tensor
    class_hits: torch.Tensor
    size_count: torch.Tensor
    size_hits: torch.Tensor

    @classmethod
    def zeros(cls, num_classes: int, device=None) -> SetStats:
        """Empty statistics for ``num_classes`` classes."""
        z = lambda k: torch.zeros(k, dtype=torch.int64, device=device)  # noqa: E731
        return cls(z(num_classes), z(num_classes), z(num_classes + 1), z(num_classes + 1))


class SizeStratifiedCoverage(NamedTuple):
    """Coverage per range of set sizes [lower, upper] (inclusive).

    Attributes:
        lower, upper: (K,) int64 bounds of each range of sizes.
        counts: (K,) int64 points whose set size is in the range.
        coverage: (K,) float64 coverage among them (NaN for an empty range).
    """

    lower: torch.Tensor
    upper: torch.Tensor
    counts: torch.Tensor
    coverage: torch.Tensor


def check_sets(sets: Any, name: str = "sets") -> torch.Tensor:
    """A bool set mask of shape (N, C, ...), non-empty."""
    sets = as_tensor(sets, name)
    if sets.dtype != torch.bool:
        raise TypeError(f"`{name}` must be a bool set mask (N, C) or (N, C, ...), got dtype {sets.dtype}")
    if sets.ndim < 2 or sets.numel() == 0:
        raise ValueError(f"`{name}` must have shape (N, C) or (N, C, ...) and not be empty, got shape "
                         f"{tuple(sets.shape)}")
    return sets


def _flatten(sets: torch.Tensor, labels: torch.Tensor | None, ignore_index: int | None):
    from .._checks import move_class_last

    flat = move_class_last(sets)
    if labels is None:
        return flat, None
    y = labels.reshape(-1).to(flat.device)
    if ignore_index is not None:
        keep = y != ignore_index
        flat, y = flat[keep], y[keep]
    return flat, y.long()


def _validate(sets: Any, labels: Any, ignore_index: int | None):
    sets = check_sets(sets)
    ignore_index = check_ignore_index(ignore_index)
    labels = check_labels(labels, sets.shape[1], sets.shape[:1] + sets.shape[2:], ignore_index=ignore_index,
                          probs_name="sets")
    return _flatten(sets, labels, ignore_index)


def set_stats(flat_sets: torch.Tensor, y: torch.Tensor) -> SetStats:
    """:class:`SetStats` of (M, C) bool sets against (M,) labels in [0, C) (already validated)."""
    C = flat_sets.shape[1]
    hit = flat_sets.gather(1, y.unsqueeze(1)).squeeze(1)
    size = flat_sets.sum(1)
    return SetStats(
        torch.bincount(y, minlength=C),
        torch.bincount(y[hit], minlength=C),
        torch.bincount(size, minlength=C + 1),
        torch.bincount(size[hit], minlength=C + 1),
    )


def _stats(sets, labels, ignore_index) -> SetStats:
    return set_stats(*_validate(sets, labels, ignore_index))


def coverage_from_stats(stats: SetStats) -> torch.Tensor:
    """0-dim float64 coverage (NaN without points)."""
    n = stats.class_count.sum()
    return stats.class_hits.sum().to(torch.float64) / n if int(n) else torch.tensor(float("nan"), dtype=torch.float64)


def set_size_from_stats(stats: SetStats) -> torch.Tensor:
    """0-dim float64 mean set size (NaN without points)."""
    n = stats.size_count.sum()
    if not int(n):
        return torch.tensor(float("nan"), dtype=torch.float64)
    sizes = torch.arange(stats.size_count.numel(), dtype=torch.float64, device=stats.size_count.device)
    return (sizes * stats.size_count).sum() / n


def classwise_from_stats(stats: SetStats) -> torch.Tensor:
    """(C,) float64 coverage per true class (NaN for a class without points)."""
    count = stats.class_count.to(torch.float64)
    return torch.where(count > 0, stats.class_hits / count.clamp_min(1.0), float("nan"))


def stratified_from_stats(stats: SetStats, edges: Any = None) -> SizeStratifiedCoverage:
    """Coverage per range of set sizes; ``edges`` are the ascending inclusive upper bounds of the ranges."""
    C = stats.size_count.numel() - 1
    if edges is None:
        upper = torch.arange(C + 1)
    else:
        upper = torch.as_tensor(list(edges), dtype=torch.int64).reshape(-1)
        if upper.numel() == 0 or bool((upper[1:] <= upper[:-1]).any()) or int(upper[0]) < 0:
            raise ValueError(f"`edges` must be strictly increasing non-negative set sizes, got {edges!r}")
        if int(upper[-1]) < C:
            upper = torch.cat([upper, torch.tensor([C])])
    lower = torch.cat([torch.zeros(1, dtype=torch.int64), upper[:-1] + 1])
    which = torch.searchsorted(upper, torch.arange(C + 1), right=False)  # range of each size
    K = upper.numel()
    counts = torch.zeros(K, dtype=torch.int64).index_add_(0, which, stats.size_count.cpu())
    hits = torch.zeros(K, dtype=torch.int64).index_add_(0, which, stats.size_hits.cpu())
    cov = torch.where(counts > 0, hits / counts.clamp_min(1).to(torch.float64), float("nan"))
    return SizeStratifiedCoverage(lower, upper, counts, cov.to(torch.float64))


def coverage(sets: Any, labels: Any, *, ignore_index: int | None = None) -> float:
    """Empirical coverage: the fraction of points whose label is in their set.

    Args:
        sets: (N, C) or (N, C, ...) bool set mask.
        labels: (N,) or (N, ...) integer labels in [0, C) or ``ignore_index``.
        ignore_index: label value whose points are left out.

    Returns:
        Coverage in [0, 1].

    Example:
        >>> sets = torch.tensor([[True, False], [True, True], [False, True]])
        >>> coverage(sets, torch.tensor([0, 1, 0]))
        0.6666666666666666
    """
    return float(coverage_from_stats(_stats(sets, labels, ignore_index)))


def set_size(sets: Any, labels: Any = None, *, ignore_index: int | None = None) -> float:
    """Mean set size (number of classes per set); with ``labels``, over the points not ``ignore_index``.

    Example:
        >>> set_size(torch.tensor([[True, False], [True, True], [False, False]]))
        1.0
    """
    if labels is None:
        flat, _ = _flatten(check_sets(sets), None, None)
        return float(flat.sum(1, dtype=torch.float64).mean())
    return float(set_size_from_stats(_stats(sets, labels, ignore_index)))


def classwise_coverage(sets: Any, labels: Any, *, ignore_index: int | None = None) -> torch.Tensor:
    """(C,) float64 coverage among the points of each true class (NaN for an absent class).

    Example:
        >>> sets = torch.tensor([[True, False], [True, True], [False, True]])
        >>> classwise_coverage(sets, torch.tensor([0, 1, 0])).tolist()
        [0.5, 1.0]
    """
    return classwise_from_stats(_stats(sets, labels, ignore_index))


def worst_class_coverage(sets: Any, labels: Any, *, ignore_index: int | None = None) -> float:
    """The smallest coverage over the classes present in ``labels``.

    Example:
        >>> worst_class_coverage(torch.tensor([[True, False], [True, True], [False, True]]), torch.tensor([0, 1, 0]))
        0.5
    """
    cw = classwise_coverage(sets, labels, ignore_index=ignore_index)
    return float(cw[~torch.isnan(cw)].min())


def size_stratified_coverage(sets: Any, labels: Any, *, edges: Any = None,
                             ignore_index: int | None = None) -> SizeStratifiedCoverage:
    """Coverage among the points whose set size lies in each range (Angelopoulos et al. 2021).

    Args:
        sets: (N, C) or (N, C, ...) bool set mask.
        labels: (N,) or (N, ...) integer labels.
        edges: ascending inclusive upper bounds of the size ranges, e.g. ``(1, 3, 10)`` for
            0–1, 2–3, 4–10 and 11–C; None: one range per size 0..C.
        ignore_index: label value whose points are left out.

    Returns:
        :class:`SizeStratifiedCoverage` (lower, upper, counts, coverage per range).

    Example:
        >>> sets = torch.tensor([[True, False, False], [True, True, False], [False, True, True]])
        >>> r = size_stratified_coverage(sets, torch.tensor([0, 2, 2]), edges=(1,))
        >>> r.lower.tolist(), r.upper.tolist(), r.counts.tolist(), r.coverage.tolist()
        ([0, 2], [1, 3], [1, 2], [1.0, 0.5])
    """
    return stratified_from_stats(_stats(sets, labels, ignore_index), edges)
