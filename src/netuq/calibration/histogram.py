"""Top-label histogram binning (Gupta & Ramdas 2022, "Top-label calibration and multiclass-to-binary
reductions", ICLR).

For each predicted class c, the top-label confidences of the calibration points predicted as c
are cut into equal-mass bins of at least ``points_per_bin`` points, and a test point predicted as c
gets its bin's empirical accuracy as its top-label confidence. The predicted class is kept.
"""

from __future__ import annotations

import warnings
from typing import ClassVar

import torch

from .._checks import check_positive_int
from ._stepwise import StepwiseCalibrator, check_counts, segment_ids

__all__ = ["HistogramBinning", "share_rest"]

#: The other classes stay below (1 − 2⁻¹⁶) · q, so the predicted class is the strict argmax even
#: after the calibrated probabilities go through float32 log and softmax.
_CAP = 1.0 - 2.0**-16


def share_rest(p: torch.Tensor, top: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """A distribution with ``q`` on each row's predicted class ``top`` and the rest shared by the others.

    The predicted class gets q, floored at 1/C (no distribution has a strict maximum below 1/C).
    The other classes share 1 − q in proportion to their probabilities ``p`` (uniformly where those
    are all 0), each capped at (1 − 2⁻¹⁶) · q, a cap's excess going to the uncapped classes in the
    same proportions (water-filling); what no other class can take goes to the predicted class.
    So the predicted class stays the strict argmax, and it gets exactly q unless some other class
    would otherwise reach q (a bin whose accuracy is below a competitor's share).

    Args:
        p: (M, C) probabilities (rows sum to 1).
        top: (M,) the predicted class of each row.
        q: (M,) its calibrated probability, in [0, 1].

    Returns:
        (M, C) probabilities in ``p``'s dtype, rows summing to 1.

    Example:
        >>> p = torch.tensor([[0.6, 0.3, 0.1], [0.5, 0.45, 0.05]], dtype=torch.float64)
        >>> share_rest(p, torch.tensor([0, 0]), torch.tensor([0.8, 0.4], dtype=torch.float64)).round(decimals=4)
        tensor([[0.8000, 0.1500, 0.0500],
                [0.4000, 0.4000, 0.2000]], dtype=torch.float64)
    """
    M, C = p.shape
    q = q.to(p.dtype).clamp(min=1.0 / C, max=1.0)
    rows = torch.arange(M, device=p.device)
    p_top = p[rows, top]
    # fast path: proportional shares (1 − q) p_j / (1 − p_top); the caps bind in few rows
    rest_w = (1.0 - p_top).unsqueeze(1)
    out = p * ((1.0 - q).unsqueeze(1) / rest_w.clamp_min(torch.finfo(p.dtype).tiny))
    out[rows, top] = 0.0
    slow = (rest_w.squeeze(1) <= 0) | (out.amax(1) > q * _CAP)
    if bool(slow.any()):
        out[slow] = _water_fill(p[slow], top[slow], q[slow])
    top_p = torch.maximum(q, 1.0 - out.sum(1))  # = q (to rounding) unless the caps left mass over
    out[rows, top] = top_p
    return out


def _water_fill(p: torch.Tensor, top: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The other classes' shares of :func:`share_rest` where a cap binds (the predicted class's column 0)."""
    M, C = p.shape
    cap = q * _CAP
    others = torch.ones_like(p, dtype=torch.bool)
    others[torch.arange(M), top] = False
    w = torch.where(others, p, torch.zeros((), dtype=p.dtype))
    capped = torch.zeros_like(others)
    rest = 1.0 - q
    out = w
    for _ in range(C):  # each round caps at least one more class, or stops
        free = others & ~capped
        fw = torch.where(free, w, torch.zeros((), dtype=p.dtype))
        total = fw.sum(1, keepdim=True)
        fw = torch.where((total > 0) | ~free, fw, free.to(p.dtype))  # all-zero weights: share uniformly
        total = fw.sum(1, keepdim=True)
        mass = (rest - cap * capped.sum(1)).clamp_min(0.0).unsqueeze(1)
        share = torch.where(total > 0, fw * mass / total.clamp_min(torch.finfo(p.dtype).tiny), fw)
        out = torch.where(capped, cap.unsqueeze(1), share)
        over = free & (out > cap.unsqueeze(1))
        if not bool(over.any()):
            break
        capped |= over
    return torch.where(others, out, torch.zeros((), dtype=p.dtype))


class HistogramBinning(StepwiseCalibrator):
    """Top-label histogram binning with equal-mass bins (Gupta & Ramdas 2022).

    Fit: the calibration points predicted as class c (argmax of softmax, first index on ties)
    are sorted by their top-label confidence and cut into ``b_c = n_c // points_per_bin``
    equal-mass groups (``numpy.array_split`` sizes); each group's largest confidence is the
    upper edge of its bin, a bin is ``(lower edge, upper edge]`` (the last one open above), and
    its value is the fraction of its points whose label is c. Tied confidences stay in one bin
    (duplicate edges are merged, and an edge with no point above it dropped: every bin holds
    points), where the paper's code breaks ties at random. A class predicted by fewer than
    ``points_per_bin`` calibration points is left as it is, as in the paper's code.

    Apply: a point predicted as c with confidence s gets q = the value of c's bin holding s as
    its top-label probability. The predicted class is kept: the other classes share 1 − q in
    proportion to their uncalibrated probabilities, none reaching q (see :func:`share_rest` for the
    exact rule, which moves q only where a bin's accuracy is below a competitor's share or 1/C).
    The result goes out as floored log-probabilities (``min_prob``, see
    :mod:`netuq.calibration._stepwise`). It is a step function: its ECE on the fit data is
    optimistic, evaluate it on held-out data.

    Args:
        points_per_bin: minimum number of calibration points per bin (the paper uses 50).
        min_prob: floor of the calibrated probabilities before their log.

    Attributes:
        bins_: (C,) number of bins of each predicted class (0: left as it is).
        edges_: (Σ max(b_c − 1, 0),) the finite upper edges, class by class, increasing within a class.
        values_: (Σ b_c,) each bin's accuracy, class by class.
        num_classes_, n_samples_, nll_before_, nll_after_: C, the valid rows (pixels) fitted on, the
            NLL of the fit data before and after.

    Shapes:
        logits (N, C) or (N, C, H, W, ...); labels (N,) or (N, H, W, ...).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> z = 3 * torch.randn(2000, 4, generator=g)
        >>> y = torch.multinomial((z / 3).softmax(1), 1, generator=g).squeeze(1)  # overconfident logits
        >>> hb = HistogramBinning().fit(z, y)
        >>> hb.bins_.tolist()
        [9.0, 10.0, 9.0, 10.0]
        >>> torch.equal(hb(z).argmax(1), z.argmax(1)), hb.nll_after_ < hb.nll_before_
        (True, True)
    """

    name: ClassVar[str] = "histogram"
    label: ClassVar[str] = "top-label histogram binning"
    order: ClassVar[float] = 40  # display position (after temperature, vector, matrix scaling)
    changes_prediction: ClassVar[bool] = False
    _param_names = ("points_per_bin", "min_prob")

    def __init__(self, *, points_per_bin: int = 50, min_prob: float = 1e-6) -> None:
        super().__init__(min_prob=min_prob)
        self.points_per_bin = check_positive_int(points_per_bin, "points_per_bin")

    def _fitted_shapes(self, num_classes: int) -> dict[str, tuple[int | None, ...]]:
        return {"bins_": (num_classes,), "edges_": (None,), "values_": (None,)}

    def _check_fitted_values(self) -> str | None:
        problem = super()._check_fitted_values()
        if problem is not None:
            return problem
        bins = self.bins_
        problem = check_counts(bins, self.values_.numel(), "values", "bins")
        if problem is None:
            problem = check_counts(
                (bins - 1).clamp_min(0), self.edges_.numel(), "edges", "bins minus one per class with bins"
            )
        if problem is not None:
            return problem
        if bool(((self.values_ < 0) | (self.values_ > 1)).any()):
            return "`values` must lie in [0, 1]"
        if bool(((self.edges_ < 0) | (self.edges_ > 1)).any()):
            return "`edges` must lie in [0, 1]"
        _, offsets = segment_ids((bins - 1).clamp_min(0))
        for c in range(self.num_classes_):
            e = self.edges_[offsets[c]:offsets[c + 1]]
            if e.numel() > 1 and not bool((e[1:] > e[:-1]).all()):
                return f"`edges` must increase strictly within each class (class {c})"
        return None

    def _fit_probs(self, p: torch.Tensor, y: torch.Tensor) -> None:
        conf, pred = p.max(1)
        conf, pred, hit = conf.cpu(), pred.cpu(), (pred == y).cpu().to(torch.float64)
        C = p.shape[1]
        bins, edges, values, few = [], [], [], []
        for c in range(C):
            rows = pred == c
            s, order = torch.sort(conf[rows].to(torch.float64))
            n = s.numel()
            b = n // self.points_per_bin
            if b == 0:
                bins.append(0)
                if n:
                    few.append(c)
                continue
            ends = torch.tensor([(i + 1) * (n // b) + min(i + 1, n % b) - 1 for i in range(b - 1)], dtype=torch.int64)
            e = torch.unique(s[ends])  # sorted, ties merged
            if e.numel() and e[-1] >= s[-1]:
                e = e[:-1]  # no point above the last edge: that bin would be empty
            which = torch.searchsorted(e, s, right=False)  # number of edges strictly below each score
            total = torch.zeros(e.numel() + 1, dtype=torch.float64).index_add_(0, which, hit[rows][order])
            count = torch.bincount(which, minlength=e.numel() + 1).to(torch.float64)
            bins.append(e.numel() + 1)
            edges.append(e)
            values.append(total / count)
        if few:
            warnings.warn(
                f"HistogramBinning: {len(few)} class(es) predicted by fewer than points_per_bin="
                f"{self.points_per_bin} calibration points are left uncalibrated (e.g. class {few[0]})",
                RuntimeWarning,
                stacklevel=4,
            )
        empty = torch.zeros(0, dtype=torch.float64)
        self.bins_ = torch.tensor(bins, dtype=torch.float64)
        self.edges_ = torch.cat(edges) if edges else empty
        self.values_ = torch.cat(values) if values else empty

    def _probs(self, p: torch.Tensor) -> torch.Tensor:
        conf, top = p.max(1)
        bins, _ = segment_ids(self.bins_)
        _, value_at = segment_ids(self.bins_)
        _, edge_at = segment_ids((self.bins_ - 1).clamp_min(0))
        q = conf.clone()
        touched = torch.zeros_like(top, dtype=torch.bool)
        edges = self.edges_.to(device=p.device, dtype=p.dtype)
        values = self.values_.to(device=p.device, dtype=p.dtype)
        for c in torch.nonzero(bins > 0).squeeze(1).tolist():
            rows = torch.nonzero(top == c).squeeze(1)
            if not rows.numel():
                continue
            e = edges[edge_at[c]:edge_at[c + 1]]
            which = torch.searchsorted(e, conf[rows].contiguous(), right=False)
            q[rows] = values[value_at[c] + which]
            touched[rows] = True
        if not bool(touched.any()):
            return p
        out = p.clone()
        out[touched] = share_rest(p[touched], top[touched], q[touched])
        return out
