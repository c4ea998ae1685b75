"""Streaming calibration and uncertainty metrics with fixed-size, exact, DDP-syncable state.

Segmentation validation sets hold 10^7-10^9 pixels. Storing every confidence (as torchmetrics'
``MulticlassCalibrationError`` does) makes memory grow with the data, and float32 bins drift
(5-7% relative ECE error at 2e7 pixels). The metrics here keep only *sufficient statistics*: integer
counts (int64) and float64 sums, registered as torchmetrics states with ``dist_reduce_fx="sum"``,
so memory does not depend on the number of updates and ``compute()`` is exact (identical to the
functional metric on the concatenated data, up to float64 rounding) on one process or many.

* :class:`CalibrationError` - ECE / RMS-CE / MCE, the streaming twin of :func:`netuq.metrics.ece`.
* :class:`UncertaintyMetrics` - one pass per batch for accuracy, NLL, Brier, ECE, MCE, the
  reliability diagram, optional class-wise ECE, and - from a fine confidence histogram - adaptive
  ECE, the misclassification AUROC of the confidence and AURC, each returned with a guaranteed
  bound on its approximation error.

Shapes: ``probs`` (N, C) or (N, C, H, W, ...) probabilities, ``labels`` (N,) or (N, H, W, ...)
integers; pixels whose label is ``ignore_index`` drop out. Work follows the input's device (the
small per-batch statistics are added to the states wherever the metric lives); float16/bfloat16
inputs are computed in float32.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torchmetrics import Metric

from .._checks import (
    as_tensor,
    check_bool,
    check_ignore_index,
    check_int,
    check_labels,
    check_probs,
    sum_tolerance,
)
from ._approx import adaptive_ece_from_hist, aurc_from_hist, auroc_from_hist
from ._core import (
    NLL_EPS,
    bin_edges,
    bin_index,
    calibration_error_from_stats,
    check_n_bins,
    check_norm,
)
from .functional import ReliabilityBins, classwise_stats

__all__ = ["CalibrationError", "UncertaintyMetrics"]

_LOG_EPS = 1e-8  # floor of 1 - confidence in the fine grid's log part (below float32 resolution at 1)


# ----------------------------------------------------------------------------------------------
# One pass over a batch, in cache-sized chunks
# ----------------------------------------------------------------------------------------------

# A batch is processed in chunks of about _CHUNK_VALUES / C pixels (at least _MIN_CHUNK): temporaries stay
# bounded (16 MiB of float32 on CPU: reused by malloc, no page faults) while each op stays large
# enough to use all intra-op threads.
_CHUNK_VALUES = {"cpu": 1 << 22}
_CHUNK_VALUES_OTHER = 1 << 27
_MIN_CHUNK = 1 << 14
_DEFAULT_FINE = 10_000  # fine grid used to find the coarse bins when no fine histogram is kept
MAX_FINE_BINS = 10_000_000  # 240 MB of state: refuse more before anything is allocated
_LUTS: dict[tuple, torch.Tensor] = {}


def _prepare(probs, labels, num_classes: int | None, ignore_index: int | None, validate_args: bool):
    """Tensors, shape checks (always: they are free) and dtype checks; the value checks run per chunk."""
    probs = as_tensor(probs, "probs")
    labels = as_tensor(labels, "labels")
    if not (labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool):
        check_ignore_index(ignore_index, labels.dtype)  # the same rule as the functional metrics
    if validate_args:
        if not probs.is_floating_point() or probs.ndim < 2 or probs.numel() == 0:
            check_probs(probs)  # raises the canonical TypeError / ValueError
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool or labels.numel() == 0:
            check_labels(labels, probs.shape[1], probs.shape[:1] + probs.shape[2:], ignore_index=ignore_index)
    if probs.ndim < 2:
        raise ValueError(f"`probs` must have shape (N, C) or (N, C, ...), got shape {tuple(probs.shape)}")
    if num_classes is not None and probs.shape[1] != num_classes:
        raise ValueError(
            f"`probs` must have {num_classes} classes (num_classes) in dim 1, got shape {tuple(probs.shape)}"
        )
    expected = probs.shape[:1] + probs.shape[2:]
    if tuple(labels.shape) != tuple(expected):
        raise ValueError(
            f"`labels` must have shape {tuple(expected)} to match `probs` (the class dimension removed), "
            f"got shape {tuple(labels.shape)}"
        )
    tol = sum_tolerance(probs.dtype, probs.shape[1])  # the sum tolerance of check_probs, by dtype
    original = probs
    if probs.dtype not in (torch.float32, torch.float64):
        probs = probs.float()  # half precision is computed in float32
    return probs, labels.to(probs.device), original, tol


def _chunks(probs: torch.Tensor, labels: torch.Tensor, chunk: int):
    """Yield ``(p (n, C, l), y (n, l))`` views covering the batch, about ``chunk`` pixels each."""
    N, C = probs.shape[:2]
    p = probs.reshape(N, C, -1)  # a view for contiguous input: no class-last copy
    y = labels.reshape(N, -1)
    L = p.shape[2]
    if L >= chunk:
        for n in range(N):
            for start in range(0, L, chunk):
                yield p[n : n + 1, :, start : start + chunk], y[n : n + 1, start : start + chunk]
    else:
        step = max(1, chunk // L)
        for start in range(0, N, step):
            yield p[start : start + step], y[start : start + step]


class _BatchStats:
    """Small per-batch sums, filled chunk by chunk and added to the metric states at the end (so a
    batch that fails validation half-way leaves the states untouched).

    Histograms are indexed by ``code = 2 * bin + correct`` with one extra trash slot (2 * bins) that
    collects the ignored pixels.
    """

    def __init__(self, n_bins: int, fine_bins: int, num_classes: int | None, device: torch.device) -> None:
        self.n_bins, self.fine_bins = n_bins, fine_bins
        i64, f64 = torch.int64, torch.float64
        self.coarse = torch.zeros(2 * n_bins + 1, dtype=i64, device=device)
        self.coarse_conf = torch.zeros(2 * n_bins + 1, dtype=f64, device=device)
        self.fine = torch.zeros(2 * fine_bins + 1, dtype=i64, device=device) if fine_bins else None
        self.fine_conf = torch.zeros(2 * fine_bins + 1, dtype=f64, device=device) if fine_bins else None
        self.nll = torch.zeros((), dtype=f64, device=device)
        self.brier = torch.zeros((), dtype=f64, device=device)
        self.classwise = None
        if num_classes is not None:
            shape = (num_classes, n_bins)
            self.classwise = [torch.zeros(shape, dtype=dt, device=device) for dt in (i64, f64, i64)]

    @staticmethod
    def split(hist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(2 bins + 1,) histogram by code -> per-bin totals and per-bin correct part (trash dropped)."""
        both = hist[:-1].view(-1, 2)
        return both.sum(1), both[:, 1]


def _accumulate(
    probs: torch.Tensor,
    labels: torch.Tensor,
    stats: _BatchStats,
    ignore_index: int | None,
    *,
    scores: bool,
    validate: bool,
    original: torch.Tensor,
    tol: float,
) -> None:
    """The whole per-batch pass, chunk by chunk: one ``amax`` (top-1), one ``gather`` (p_y) and, with
    ``scores``, one Σ_c p_c² over the classes; the rest is per pixel, ending in ``index_add_``s."""
    C = probs.shape[1]
    if probs.numel() == 0:  # only reachable with validate_args=False
        return
    chunk = max(_MIN_CHUNK, _CHUNK_VALUES.get(probs.device.type, _CHUNK_VALUES_OTHER) // C)
    nb, fb = stats.n_bins, stats.fine_bins
    grid = fb or _DEFAULT_FINE
    ones = torch.ones(min(chunk, labels.numel()), dtype=torch.int64, device=probs.device)
    for p, y in _chunks(probs, labels, chunk):
        y = y.long()
        keep = None if ignore_index is None else y != ignore_index
        if keep is not None:
            y = torch.where(keep, y, 0)  # a safe class index; the pixel goes to the trash slot below
        conf = p.amax(1)  # (n, l) top-1 confidence
        if validate:
            # Reductions along dim 1 only (a full reduction would copy the strided chunk);
            # NaN propagates through amin / amax, so finite bounds mean finite values.
            lo, hi = float(p.amin(1).min()), float(conf.max())
            bad = not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0.0 or hi > 1.0 + tol
            if bad or float((p.sum(1) - 1.0).abs().max()) > tol:  # float32 sums: ~1e-6 error << tol
                check_probs(original)  # raises the canonical message for the whole batch
            ylo, yhi = torch.aminmax(y)
            if int(ylo) < 0 or int(yhi) >= C:
                check_labels(labels, C, probs.shape[:1] + probs.shape[2:], ignore_index=ignore_index)
        py = p.gather(1, y.unsqueeze(1)).squeeze(1)
        sq = (p * p).sum(1) if scores else None  # Σ_c p_c² in the input precision
        correct = py == conf
        # Top-1 is the *first* maximal class (torch.max / argmax), so a correct-looking pixel whose
        # label is not the first of tied maxima is wrong. Two classes tie at the max only if
        # conf <= (1 + tol) / 2 (probabilities sum to 1 within tol) and Σ p² >= 2 conf² (up to
        # rounding), so only those few pixels are re-checked.
        suspect = correct & (conf <= 0.5 * (1.0 + tol))
        if sq is not None:
            suspect &= sq >= 2.0 * (1.0 - (C + 4) * torch.finfo(sq.dtype).eps) * conf * conf
        suspect = suspect.nonzero(as_tuple=True)
        if suspect[0].numel():
            rows, cols = suspect
            correct[rows, cols] = p[rows, :, cols].argmax(1) == y[rows, cols]
        conf, correct, py = conf.reshape(-1), correct.reshape(-1), py.reshape(-1)
        flat_keep = None if keep is None else keep.reshape(-1)
        conf64 = conf.to(torch.float64)
        ones_m = ones[: conf.numel()]
        fine = _fine_index(conf, grid)
        code = _coarse_index(conf, fine, nb, grid) * 2 + correct
        if flat_keep is not None:
            code = torch.where(flat_keep, code, 2 * nb)
        stats.coarse.index_add_(0, code, ones_m)
        stats.coarse_conf.index_add_(0, code, conf64)
        if not scores:
            continue
        code = fine * 2 + correct
        if flat_keep is not None:
            code = torch.where(flat_keep, code, 2 * fb)
        stats.fine.index_add_(0, code, ones_m)
        stats.fine_conf.index_add_(0, code, conf64)
        py64 = py.to(torch.float64)
        nll = -torch.log(py64.clamp_min(NLL_EPS))  # as _core.nll_terms
        brier = sq.reshape(-1).to(torch.float64) - 2.0 * py64 + 1.0  # as _core.brier_terms
        if flat_keep is not None:
            nll = torch.where(flat_keep, nll, 0.0)
            brier = torch.where(flat_keep, brier, 0.0)
        stats.nll += nll.sum()
        stats.brier += brier.sum()
        if stats.classwise is not None:
            flat_p = p.movedim(1, -1).reshape(-1, C)
            flat_y = y.reshape(-1)
            if flat_keep is not None:
                flat_p, flat_y = flat_p[flat_keep], flat_y[flat_keep]
            for acc, value in zip(stats.classwise, classwise_stats(flat_p, flat_y, nb)):
                acc += value


def _fine_index(conf: torch.Tensor, fine_bins: int) -> torch.Tensor:
    """Fine-grid index of each confidence, in [0, fine_bins), non-decreasing in the confidence.

    The grid is uniform in ``g(c) = (c + log(1 - c + 1e-8) / log(1e-8)) / 2``: half of it is
    equal-width in c (bins at most 2 / fine_bins wide), half logarithmic in 1 - c, so the pile-up
    of segmentation confidences just below 1 is still resolved down to 1 - c ~ 1e-7. Computed in
    the confidence's dtype (float32 for float32 input).
    """
    g = torch.log1p(_LOG_EPS - conf).mul_(0.5 / math.log(_LOG_EPS)).add_(conf, alpha=0.5)
    return g.mul_(fine_bins).floor_().clamp_(0, fine_bins - 1).long()


def _coarse_lut(n_bins: int, fine_bins: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(fine_bins,) coarse bin of every fine bin, or -1 where a fine bin may straddle a coarse edge.

    With f_i the fine index of the i-th inner edge of ``_core.bin_index`` (same dtype), a fine bin
    k with f_i < k < f_{i+1} only holds confidences in (edge_i, edge_{i+1}], since the fine index
    is non-decreasing; the bins f_i - 1 .. f_i + 1 (a margin for last-ulp rounding) are checked
    exactly with ``bin_index``.
    """
    key = (n_bins, fine_bins, dtype, str(device))
    lut = _LUTS.get(key)
    if lut is None:
        inner = bin_edges(n_bins, device)[1:-1].to(dtype)
        f = _fine_index(inner, fine_bins)
        k = torch.arange(fine_bins, device=device)
        lut = torch.searchsorted(f, k, right=False)  # number of inner edges with f_i < k
        for shift in (-1, 0, 1):
            lut[(f + shift).clamp(0, fine_bins - 1)] = -1
        _LUTS[key] = lut
    return lut


def _coarse_index(conf: torch.Tensor, fine: torch.Tensor, n_bins: int, fine_bins: int) -> torch.Tensor:
    """Exactly ``_core.bin_index(conf, n_bins)`` (equal-width bins (lo, hi]), read from the fine index
    through a lookup table; only confidences next to a coarse edge are binned with ``bin_index``."""
    coarse = _coarse_lut(n_bins, fine_bins, conf.dtype, conf.device).index_select(0, fine)
    unsure = (coarse < 0).nonzero().squeeze(1)
    if unsure.numel():
        coarse.index_copy_(0, unsure, bin_index(conf.index_select(0, unsure), n_bins))
    return coarse


def _add(state: torch.Tensor, value: torch.Tensor) -> None:
    state += value.to(device=state.device, dtype=state.dtype)


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------


class _FixedStateMetric(Metric):
    """Shared behaviour: integer and float64 states keep their dtype under ``set_dtype``."""

    is_differentiable = False
    full_state_update = False

    def set_dtype(self, dst_type: str | torch.dtype) -> Metric:
        """No-op: the states are int64 counts and float64 sums by design (exactness)."""
        return self

    def reliability(self) -> ReliabilityBins:
        """The reliability-diagram table of the state: per-bin counts, mean confidence and accuracy.

        Synchronised across processes like ``compute()`` (every rank gets the whole-set table) and
        detached from the state (later updates do not change it). Empty bins hold NaN.
        """
        should_sync = self._to_sync and not self._is_synced
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=should_sync,
                               should_unsync=self._should_unsync):
            return ReliabilityBins.from_stats(self.counts.clone(), self.conf_sum.clone(), self.correct_sum.clone())


class CalibrationError(_FixedStateMetric):
    """Streaming top-1 calibration error with a fixed-size exact state (Guo et al. 2017).

    The streaming twin of :func:`netuq.metrics.ece`: the same equal-width bins (lo, hi] on the
    top-1 confidence and the same private code (``_core.calibration_error_from_stats`` in
    ``compute()``; the bins are exactly ``_core.bin_index``'s, read through a lookup table on a fine
    grid, with ``bin_index`` itself next to the edges), so batch-by-batch equals all-at-once.
    State: per-bin counts (int64), confidence sums (float64) and correct counts (int64), summed
    across processes under DDP; memory is ``n_bins * 24`` bytes whatever the data.

    Args:
        n_bins: number of equal-width bins (15 as in Guo et al.).
        norm: ``"l1"`` (ECE, Σ_b |B_b|/n · |acc_b − conf_b|), ``"l2"`` (root of the weighted mean
            squared gap) or ``"max"`` (MCE, Naeini et al. 2015).
        ignore_index: label value whose pixels drop out.
        validate_args: check probabilities and labels at every update (a few fused passes); set
            False on hot paths with trusted inputs.
        **kwargs: passed to :class:`torchmetrics.Metric` (``sync_on_compute``, ``process_group``, ...).

    ``update(probs, labels)`` takes ``probs`` (N, C) or (N, C, H, W, ...) and ``labels`` (N,) or
    (N, H, W, ...); a batch whose labels are all ``ignore_index`` adds nothing. ``compute()``
    returns a 0-dim float64 tensor (NaN before any valid pixel), so a LightningModule can
    ``self.log("val_ece", metric)``; ``reliability()`` returns the per-bin table.

    Example:
        >>> metric = CalibrationError(n_bins=10)
        >>> metric.update(torch.tensor([[0.9, 0.1], [0.9, 0.1]]), torch.tensor([0, 0]))
        >>> metric.update(torch.tensor([[0.6, 0.4], [0.6, 0.4]]), torch.tensor([0, 1]))
        >>> round(float(metric.compute()), 4)
        0.1
    """

    higher_is_better = False

    def __init__(
        self,
        n_bins: int = 15,
        norm: str = "l1",
        ignore_index: int | None = None,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.n_bins = check_n_bins(n_bins)
        self.norm = check_norm(norm)
        self.ignore_index = check_ignore_index(ignore_index)
        check_bool(validate_args, "validate_args")
        self.validate_args = validate_args
        self.add_state("counts", torch.zeros(n_bins, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("conf_sum", torch.zeros(n_bins, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("correct_sum", torch.zeros(n_bins, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, probs: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch: ``probs`` (N, C, ...) probabilities, ``labels`` (N, ...) integers."""
        probs, labels, original, tol = _prepare(probs, labels, None, self.ignore_index, self.validate_args)
        stats = _BatchStats(self.n_bins, 0, None, probs.device)
        _accumulate(probs, labels, stats, self.ignore_index, scores=False, validate=self.validate_args,
                    original=original, tol=tol)
        counts, correct = stats.split(stats.coarse)
        _add(self.counts, counts)
        _add(self.conf_sum, stats.split(stats.coarse_conf)[0])
        _add(self.correct_sum, correct)

    def compute(self) -> torch.Tensor:
        """The calibration error over everything seen since the last ``reset()`` (all processes).

        Returns:
            A 0-dim float64 tensor on the metric's device, NaN before any valid pixel.
        """
        return calibration_error_from_stats(self.counts, self.conf_sum, self.correct_sum, norm=self.norm)


class UncertaintyMetrics(_FixedStateMetric):
    """Every calibration / selective-prediction metric in one streaming pass with a fixed-size state.

    Per batch, over cache-sized chunks of (N, C, ...) views (no class-last copy): one top-1
    (``amax``; ties resolved to the first class like ``argmax``), one ``gather`` of the true-class
    probability and one Σ_c p_c², then ``index_add_``s into fixed-size states (int64 counts,
    float64 sums) summed across processes under DDP. No softmax is taken: pass probabilities.

    Exact (equal to the functional metrics on the concatenated data up to float64 rounding):
    ``accuracy``, ``nll`` (Σ −log max(p_y, 1e-12) / n), ``ece`` (l1, Guo et al. 2017), ``mce``
    (Naeini et al. 2015), the table of :meth:`reliability` and, with
    ``classwise=True``, ``classwise_ece`` (Kull et al. 2019; per-class bins, state C × n_bins, and
    a class-last copy of each chunk). ``brier`` (mean of Σ_c (p_c − 1[c = y])², Brier 1950) sums
    in float64 too, but takes each pixel's Σ_c p_c² in the input precision (float32: ~1e-8 from
    the functional value on 2e7 pixels).

    Approximate, from a histogram of the top-1 confidence on ``fine_bins`` monotone bins (half
    equal-width, half logarithmic in 1 − confidence, so over-confident pixels near 1 stay
    resolved), each with a *guaranteed* bound ``<name>_error_bound`` computed from the state (the
    test suite checks both against the exact values; on 2e7 benchmark pixels the errors were
    1e-6 to 1e-8, the bounds 2e-3 to 1e-4):

    * ``adaptive_ece`` (equal-mass bins, Nguyen & O'Connor 2015; Nixon et al. 2019): cut ranks
      exact, a fine bin that a cut splits (j of its m pixels below the cut) shared in proportion;
      |approx − exact| <= (2/n) Σ_cuts min(j, m − j) (1 + 3/fine_bins), about twice the mass of
      the fine bins the cuts fall in.
    * ``misclassification_auroc``: AUROC of the confidence separating correct (positive) from
      wrong pixels (Hendrycks & Gimpel 2017), pairs within a fine bin counted as ties;
      |approx − exact| <= ½ Σ_k pos_k neg_k / (P · N).
    * ``aurc`` (Geifman et al. 2019): each fine bin a tie group;
      |approx − exact| <= (1/n) Σ_k min(e_k, m_k − e_k)(ψ(s_k + m_k + 1) − ψ(s_k + 1)).

    Args:
        num_classes: C; checked against ``probs`` when given, required when ``classwise=True``.
        n_bins: equal-width bins for ECE / MCE / reliability (and the groups of adaptive ECE).
        ignore_index: label value whose pixels drop out.
        classwise: also accumulate per-class bins for class-wise ECE.
        fine_bins: size F of the fine confidence histogram (3 states of F values: 24 F bytes).
        validate_args: check probabilities and labels at every update.
        **kwargs: passed to :class:`torchmetrics.Metric`.

    ``compute()`` returns a dict of 0-dim float64 tensors (NaN before any valid pixel; ``"n"`` is
    the number of pixels counted), so a LightningModule can ``self.log_dict(metric.compute())``.
    The reliability table is :meth:`reliability` (a :class:`~netuq.metrics.ReliabilityBins`). The
    metric works inside a :class:`torchmetrics.MetricCollection` (its keys are flattened into the
    collection's dict).

    Example:
        >>> metric = UncertaintyMetrics(n_bins=10)
        >>> metric.update(torch.tensor([[0.9, 0.1], [0.9, 0.1]]), torch.tensor([0, 0]))
        >>> metric.update(torch.tensor([[0.6, 0.4], [0.6, 0.4]]), torch.tensor([0, 1]))
        >>> out = metric.compute()
        >>> round(float(out["accuracy"]), 4), round(float(out["ece"]), 4), round(float(out["brier"]), 4)
        (0.75, 0.1, 0.27)
        >>> metric.reliability().counts.tolist()
        [0, 0, 0, 0, 0, 2, 0, 0, 2, 0]
    """

    higher_is_better = None

    def __init__(
        self,
        num_classes: int | None = None,
        *,
        n_bins: int = 15,
        ignore_index: int | None = None,
        classwise: bool = False,
        fine_bins: int = 10_000,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        num_classes = check_int(num_classes, "num_classes", 1, allow_none=True)
        self.n_bins = n_bins = check_n_bins(n_bins)
        fine_bins = check_n_bins(fine_bins, "fine_bins", MAX_FINE_BINS)
        self.ignore_index = check_ignore_index(ignore_index)
        check_bool(classwise, "classwise")
        check_bool(validate_args, "validate_args")
        if classwise and num_classes is None:
            raise ValueError("`num_classes` must be given when classwise=True, got None")
        if classwise and num_classes * n_bins > 10 * MAX_FINE_BINS:
            raise ValueError(
                f"`num_classes` * `n_bins` must be at most {10 * MAX_FINE_BINS} with classwise=True (the per-class "
                f"state), got {num_classes} * {n_bins}"
            )
        self.num_classes = num_classes
        self.classwise = classwise
        self.fine_bins = fine_bins
        self.validate_args = validate_args
        i64, f64 = torch.int64, torch.float64
        self.add_state("counts", torch.zeros(n_bins, dtype=i64), dist_reduce_fx="sum")
        self.add_state("conf_sum", torch.zeros(n_bins, dtype=f64), dist_reduce_fx="sum")
        self.add_state("correct_sum", torch.zeros(n_bins, dtype=i64), dist_reduce_fx="sum")
        self.add_state("fine_counts", torch.zeros(fine_bins, dtype=i64), dist_reduce_fx="sum")
        self.add_state("fine_conf_sum", torch.zeros(fine_bins, dtype=f64), dist_reduce_fx="sum")
        self.add_state("fine_correct", torch.zeros(fine_bins, dtype=i64), dist_reduce_fx="sum")
        self.add_state("nll_sum", torch.zeros((), dtype=f64), dist_reduce_fx="sum")
        self.add_state("brier_sum", torch.zeros((), dtype=f64), dist_reduce_fx="sum")
        if classwise:
            shape = (num_classes, n_bins)
            self.add_state("cw_counts", torch.zeros(shape, dtype=i64), dist_reduce_fx="sum")
            self.add_state("cw_conf_sum", torch.zeros(shape, dtype=f64), dist_reduce_fx="sum")
            self.add_state("cw_hits", torch.zeros(shape, dtype=i64), dist_reduce_fx="sum")

    def update(self, probs: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch: ``probs`` (N, C, ...) probabilities, ``labels`` (N, ...) integers."""
        probs, labels, original, tol = _prepare(probs, labels, self.num_classes, self.ignore_index, self.validate_args)
        stats = _BatchStats(self.n_bins, self.fine_bins, self.num_classes if self.classwise else None, probs.device)
        _accumulate(probs, labels, stats, self.ignore_index, scores=True, validate=self.validate_args,
                    original=original, tol=tol)
        counts, correct = stats.split(stats.coarse)
        _add(self.counts, counts)
        _add(self.conf_sum, stats.split(stats.coarse_conf)[0])
        _add(self.correct_sum, correct)
        counts, correct = stats.split(stats.fine)
        _add(self.fine_counts, counts)
        _add(self.fine_conf_sum, stats.split(stats.fine_conf)[0])
        _add(self.fine_correct, correct)
        _add(self.nll_sum, stats.nll)
        _add(self.brier_sum, stats.brier)
        if self.classwise:
            for state, value in zip((self.cw_counts, self.cw_conf_sum, self.cw_hits), stats.classwise):
                _add(state, value)

    def compute(self) -> dict[str, torch.Tensor]:
        """All metrics over everything seen since the last ``reset()`` (all processes).

        Returns:
            ``{name: 0-dim float64 tensor}`` on the metric's device (NaN before any valid pixel);
            ``"n"`` is the number of pixels counted (exact up to 2^53). The reliability table is
            :meth:`reliability`.
        """
        n_t = self.counts.sum()
        n = int(n_t)
        f64 = {"dtype": torch.float64, "device": self.counts.device}
        out: dict[str, torch.Tensor] = {"n": n_t.to(torch.float64)}  # float: Lightning reduces floats only
        if n == 0:
            nan = torch.tensor(math.nan, **f64)
            keys = ["accuracy", "nll", "brier", "ece", "mce"] + (["classwise_ece"] if self.classwise else [])
            for key in ("adaptive_ece", "misclassification_auroc", "aurc"):
                keys += [key, f"{key}_error_bound"]
            out.update({key: nan.clone() for key in keys})
            return out
        out["accuracy"] = self.correct_sum.sum().to(torch.float64) / n
        out["nll"] = self.nll_sum / n
        out["brier"] = self.brier_sum / n
        out["ece"] = calibration_error_from_stats(self.counts, self.conf_sum, self.correct_sum, norm="l1")
        out["mce"] = calibration_error_from_stats(self.counts, self.conf_sum, self.correct_sum, norm="max")
        if self.classwise:
            gap = (self.cw_hits.to(torch.float64) - self.cw_conf_sum).abs()  # as functional.classwise_ece
            out["classwise_ece"] = gap.sum() / n / self.num_classes
        fine = (self.fine_counts, self.fine_correct)
        out["adaptive_ece"], out["adaptive_ece_error_bound"] = adaptive_ece_from_hist(
            *fine, self.fine_conf_sum, self.n_bins
        )
        out["misclassification_auroc"], out["misclassification_auroc_error_bound"] = auroc_from_hist(*fine)
        out["aurc"], out["aurc_error_bound"] = aurc_from_hist(*fine)
        return out
