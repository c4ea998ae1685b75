"""Functional calibration and selective-prediction metrics for data that fits in memory.

Every function takes ``probs`` (N, C) or (N, C, H, W, ...) and integer ``labels`` (N,) or
(N, H, W, ...); pixels whose label equals ``ignore_index`` drop out. Counts are kept as integers
and sums in float64. The streaming metrics in :mod:`netuq.metrics.streaming` share this code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._checks import as_tensor, check_scores, validate_probs_labels
from ._core import (
    bin_edges,
    binned_stats,
    brier_terms,
    calibration_error_from_stats,
    check_n_bins,
    check_norm,
    equal_mass_ece,
    nll_terms,
    top1,
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
    "augrc",
    "selective_risk",
    "evaluate",
]


def accuracy(probs, labels, *, ignore_index: int | None = None, validate_args: bool = True) -> float:
    """Top-1 accuracy.

    Args:
        probs: (N, C, ...) probabilities (logits work too: only the argmax is used, but they fail
            the probability check unless ``validate_args=False``).
        labels: (N,) or (N, ...) integer labels in [0, C) or ``ignore_index``.
        ignore_index: label value whose samples (pixels) are left out.
        validate_args: check ``probs`` and ``labels`` (skip on hot paths).

    Returns:
        The fraction of correct top-1 predictions, a float in [0, 1].

    Example:
        >>> accuracy(torch.tensor([[0.9, 0.1], [0.4, 0.6]]), torch.tensor([0, 0]))
        0.5
    """
    p, y = validate_probs_labels(probs, labels, ignore_index, validate_args=validate_args)
    return float((p.argmax(1) == y).to(torch.float64).mean())


def nll(probs, labels, *, ignore_index: int | None = None, validate_args: bool = True) -> float:
    """Mean negative log-likelihood −(1/n) Σ log max(p_y, 1e-12) (natural log).

    A strictly proper scoring rule (Gneiting & Raftery 2007). The clamp convention: p_y is
    clamped at 1e-12 whatever the dtype, so a certain mistake costs −log 1e-12 ≈ 27.63 nats.
    scikit-learn's ``log_loss`` clips at the dtype's epsilon instead (2.2e-16 for float64, about
    36.04 nats), so the two agree exactly when every p_y >= 1e-12 and differ only for samples whose
    true class got (almost) zero probability.

    Args:
        probs: (N, C) or (N, C, ...) probabilities (each row sums to 1 over C).
        labels: (N,) or (N, ...) integer labels in [0, C) or ``ignore_index``.
        ignore_index: label value whose samples (pixels) are left out.
        validate_args: check ``probs`` and ``labels`` (skip on hot paths).

    Returns:
        The mean NLL in nats, a float >= 0 (at most −log 1e-12 ≈ 27.6 per sample).

    Example:
        >>> round(nll(torch.tensor([[0.5, 0.5], [0.9, 0.1]]), torch.tensor([0, 0])), 4)
        0.3993
    """
    p, y = validate_probs_labels(probs, labels, ignore_index, validate_args=validate_args)
    return float(nll_terms(p, y).mean())


def brier(probs, labels, *, ignore_index: int | None = None, validate_args: bool = True) -> float:
    """Multi-class Brier score: mean over samples of Σ_c (p_c − 1[c = y])², in [0, 2] (Brier 1950).

    Note scikit-learn's ``brier_score_loss`` is the binary version (mean over samples of
    (p_1 − y)²); for C = 2 this score is exactly twice it.

    Args:
        probs: (N, C) or (N, C, ...) probabilities (each row sums to 1 over C).
        labels: (N,) or (N, ...) integer labels in [0, C) or ``ignore_index``.
        ignore_index: label value whose samples (pixels) are left out.
        validate_args: check ``probs`` and ``labels`` (skip on hot paths).

    Returns:
        The Brier score, a float in [0, 2].

    Example:
        >>> brier(torch.tensor([[1.0, 0.0], [0.5, 0.5]]), torch.tensor([0, 0]))
        0.25
    """
    p, y = validate_probs_labels(probs, labels, ignore_index, validate_args=validate_args)
    return float(brier_terms(p, y).mean())


def ece(
    probs,
    labels,
    *,
    n_bins: int = 15,
    norm: str = "l1",
    ignore_index: int | None = None,
    validate_args: bool = True,
) -> float:
    """Expected calibration error of the top-1 confidence (Guo et al. 2017; Naeini et al. 2015).

    Equal-width bins (lo, hi] on [0, 1]. ``norm="l1"``: Σ_b |B_b|/n · |acc_b − conf_b|;
    ``"l2"``: the root of the weighted mean squared gap; ``"max"``: the maximum calibration error.

    Args:
        probs: (N, C) or (N, C, ...) probabilities (each row sums to 1 over C).
        labels: (N,) or (N, ...) integer labels in [0, C) or ``ignore_index``.
        n_bins: number of bins (15 as in Guo et al.).
        norm: "l1", "l2" or "max".
        ignore_index: label value whose samples (pixels) are left out.
        validate_args: check ``probs`` and ``labels`` (skip on hot paths).

    Returns:
        The error as a float in [0, 1].

    Example:
        >>> probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
        >>> round(ece(probs, torch.tensor([0, 0, 0, 1]), n_bins=10), 4)
        0.1
    """
    check_n_bins(n_bins)
    check_norm(norm)
    p, y = validate_probs_labels(probs, labels, ignore_index, validate_args=validate_args)
    conf, correct = top1(p, y)
    return float(calibration_error_from_stats(*binned_stats(conf, correct, n_bins), norm=norm))


def mce(probs, labels, *, n_bins: int = 15, ignore_index: int | None = None, validate_args: bool = True) -> float:
    """Maximum calibration error: the largest |acc_b − conf_b| over non-empty bins (Naeini et al. 2015).

    The same as ``ece(..., norm="max")``.

    Args:
        probs: (N, C) or (N, C, ...) probabilities (each row sums to 1 over C).
        labels: (N,) or (N, ...) integer labels in [0, C) or ``ignore_index``.
        n_bins: number of equal-width bins (lo, hi] on [0, 1].
        ignore_index: label value whose samples (pixels) are left out.
        validate_args: check ``probs`` and ``labels`` (skip on hot paths).

    Returns:
        The error as a float in [0, 1] (0 when every non-empty bin is calibrated).

    Example:
        >>> probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
        >>> round(mce(probs, torch.tensor([0, 0, 0, 1]), n_bins=10), 4)
        0.1
    """
    return ece(probs, labels, n_bins=n_bins, norm="max", ignore_index=ignore_index, validate_args=validate_args)


def adaptive_ece(
    probs, labels, *, n_bins: int = 15, ignore_index: int | None = None, validate_args: bool = True
) -> float:
    """ECE with equal-mass bins (Nguyen & O'Connor 2015; Nixon et al. 2019).

    The n top-1 confidences are sorted and split into ``n_bins`` consecutive groups whose sizes
    differ by at most one (``numpy.array_split``); the error is Σ_b |B_b|/n · |acc_b − conf_b|.
    Tied confidences form one block: a block that a cut splits is shared between its bins in
    proportion (its correct count and confidence sum alike), so the result never depends on the
    order of the rows (without ties it is exactly the sorted ``array_split`` definition).

    Args:
        probs: (N, C) or (N, C, ...) probabilities (each row sums to 1 over C).
        labels: (N,) or (N, ...) integer labels in [0, C) or ``ignore_index``.
        n_bins: number of equal-mass bins (fewer if there are fewer than ``n_bins`` samples).
        ignore_index: label value whose samples (pixels) are left out.
        validate_args: check ``probs`` and ``labels`` (skip on hot paths).

    Returns:
        The error as a float in [0, 1].

    Example:
        >>> probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.7, 0.3]])
        >>> round(adaptive_ece(probs, torch.tensor([0, 0, 1, 0]), n_bins=2), 4)
        0.15
    """
    check_n_bins(n_bins)
    p, y = validate_probs_labels(probs, labels, ignore_index, validate_args=validate_args)
    conf, correct = top1(p, y)
    # One group per distinct confidence (ascending); the sums are taken per group, so ties are one block.
    values, group, counts = torch.unique(conf.to(torch.float64), sorted=True, return_inverse=True, return_counts=True)
    hits = torch.bincount(group[correct], minlength=values.numel())
    return float(equal_mass_ece(counts, hits, values * counts, n_bins)[0])


def classwise_ece(
    probs, labels, *, n_bins: int = 15, ignore_index: int | None = None, validate_args: bool = True
) -> float:
    """Class-wise ECE (Kull et al. 2019): the mean over classes c of the ECE of p_c against 1[y = c].

    For each class, all n probabilities p_c are binned in equal-width bins (lo, hi]; the class
    error is Σ_b |B_b|/n · |freq_b − conf_b| with freq_b the fraction of y = c in the bin.

    Args:
        probs: (N, C) or (N, C, ...) probabilities (each row sums to 1 over C).
        labels: (N,) or (N, ...) integer labels in [0, C) or ``ignore_index``.
        n_bins: number of equal-width bins (lo, hi] on [0, 1], per class.
        ignore_index: label value whose samples (pixels) are left out.
        validate_args: check ``probs`` and ``labels`` (skip on hot paths).

    Returns:
        The error averaged over the C classes, a float in [0, 1].

    Example:
        >>> probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
        >>> round(classwise_ece(probs, torch.tensor([0, 0, 0, 1]), n_bins=10), 4)
        0.1
    """
    check_n_bins(n_bins)
    p, y = validate_probs_labels(probs, labels, ignore_index, validate_args=validate_args)
    counts, conf_sum, hit_sum = classwise_stats(p, y, n_bins)
    n = p.shape[0]
    gap = (hit_sum.to(torch.float64) - conf_sum).abs()  # |Σ 1[y=c] − Σ p_c| per (class, bin)
    return float(gap.sum() / n / p.shape[1])


def classwise_stats(p: torch.Tensor, y: torch.Tensor, n_bins: int):
    """Per (class, bin) counts, Σ p_c and Σ 1[y = c]; shapes (C, n_bins)."""
    from ._core import bin_index

    C = p.shape[1]
    idx = bin_index(p, n_bins) + torch.arange(C, device=p.device) * n_bins  # (M, C) flat (class, bin)
    counts = torch.bincount(idx.reshape(-1), minlength=C * n_bins).view(C, n_bins)
    conf_sum = torch.zeros(C * n_bins, dtype=torch.float64, device=p.device)
    conf_sum.index_add_(0, idx.reshape(-1), p.to(torch.float64).reshape(-1))
    hit_idx = idx.gather(1, y.unsqueeze(1)).squeeze(1)
    hit_sum = torch.bincount(hit_idx, minlength=C * n_bins)
    return counts, conf_sum.view(C, n_bins), hit_sum.view(C, n_bins)


@dataclass(frozen=True)
class ReliabilityBins:
    """What a reliability diagram draws: per-bin counts, mean confidence and accuracy.

    Attributes:
        edges: (n_bins + 1,) bin edges on [0, 1].
        counts: (n_bins,) number of samples in each bin (int64).
        confidence: (n_bins,) mean top-1 confidence per bin (NaN where empty).
        accuracy: (n_bins,) accuracy per bin (NaN where empty).
    """

    edges: torch.Tensor
    counts: torch.Tensor
    confidence: torch.Tensor
    accuracy: torch.Tensor

    @classmethod
    def from_stats(cls, counts: torch.Tensor, conf_sum: torch.Tensor, correct_sum: torch.Tensor) -> ReliabilityBins:
        denom = counts.to(torch.float64)
        empty = counts == 0
        confidence = torch.where(empty, torch.nan, conf_sum / denom.clamp_min(1))
        acc = torch.where(empty, torch.nan, correct_sum.to(torch.float64) / denom.clamp_min(1))
        return cls(bin_edges(counts.numel(), counts.device), counts, confidence, acc)

    def to_dict(self) -> dict[str, list]:
        """Plain lists (NaN kept as None) for JSON."""

        def clean(t):
            return [None if v != v else v for v in t.tolist()]

        return {
            "edges": self.edges.tolist(),
            "counts": self.counts.tolist(),
            "confidence": clean(self.confidence),
            "accuracy": clean(self.accuracy),
        }


def reliability_bins(
    probs, labels, *, n_bins: int = 15, ignore_index: int | None = None, validate_args: bool = True
) -> ReliabilityBins:
    """Per-bin counts, mean confidence and accuracy on equal-width bins (lo, hi] (Guo et al. 2017).

    Args:
        probs: (N, C) or (N, C, ...) probabilities (each row sums to 1 over C).
        labels: (N,) or (N, ...) integer labels in [0, C) or ``ignore_index``.
        n_bins: number of equal-width bins (lo, hi] on [0, 1].
        ignore_index: label value whose samples (pixels) are left out.
        validate_args: check ``probs`` and ``labels`` (skip on hot paths).

    Returns:
        A :class:`ReliabilityBins` with (n_bins,) tensors (NaN confidence/accuracy for empty bins).

    Example:
        >>> rb = reliability_bins(torch.tensor([[0.9, 0.1], [0.6, 0.4]]), torch.tensor([0, 1]), n_bins=2)
        >>> rb.counts.tolist(), rb.accuracy.tolist()
        ([0, 2], [nan, 0.5])
    """
    check_n_bins(n_bins)
    p, y = validate_probs_labels(probs, labels, ignore_index, validate_args=validate_args)
    conf, correct = top1(p, y)
    return ReliabilityBins.from_stats(*binned_stats(conf, correct, n_bins))


def _selective_inputs(probs, labels, scores, ignore_index, validate_args):
    labels = as_tensor(labels, "labels")  # numpy (N, H, W) labels: len() would count only N
    p, y = validate_probs_labels(probs, labels, ignore_index, validate_args=validate_args)
    conf, correct = top1(p, y)
    if scores is not None:
        s = as_tensor(scores, "scores")
        if s.numel() != labels.numel():
            raise ValueError(f"`scores` must have one value per label ({labels.numel()}), got shape {tuple(s.shape)}")
        s = check_scores(s, "scores").to(conf.device)  # scores on another device follow the probabilities
        if ignore_index is not None:  # ignore_index fits the labels' dtype (checked above): no wrap-around
            s = s[labels.reshape(-1).to(conf.device) != ignore_index]
        conf = s.to(torch.float64)
    return conf.to(torch.float64), (~correct).to(torch.float64)


def risk_coverage_curve(
    probs,
    labels,
    *,
    scores=None,
    ignore_index: int | None = None,
    validate_args: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Selective risk (error rate of the kept samples) against coverage (Geifman & El-Yaniv 2017).

    Samples are kept in order of decreasing confidence (``scores``, default the top-1
    probability; pass a *confidence*, i.e. higher = keep first, such as ``-entropy``). Tied
    scores are treated as one threshold: within a tie the errors are spread evenly, so the curve
    does not depend on the input order.

    Args:
        probs: (N, C) or (N, C, ...) probabilities (each row sums to 1 over C).
        labels: (N,) or (N, ...) integer labels in [0, C) or ``ignore_index``.
        scores: optional (N,) or (N, ...) confidence per sample (pixel), higher = kept first;
            default the top-1 probability.
        ignore_index: label value whose samples (pixels) are left out (with their scores).
        validate_args: check ``probs`` and ``labels`` (skip on hot paths).

    Returns:
        ``(coverage, risk)``, each a float64 tensor of shape (n,) with n the number of valid
        samples (pixels): coverage k/n and the error rate among the k most confident samples,
        for k = 1..n.

    Example:
        >>> cov, risk = risk_coverage_curve(torch.tensor([[0.9, 0.1], [0.6, 0.4]]), torch.tensor([0, 1]))
        >>> cov.tolist(), risk.tolist()
        ([0.5, 1.0], [0.0, 0.5])
    """
    conf, err = _selective_inputs(probs, labels, scores, ignore_index, validate_args)
    order = torch.argsort(conf, descending=True, stable=True)
    conf, err = conf[order], err[order]
    n = conf.numel()
    cum_err = torch.cumsum(err, 0)
    # Group ties: positions where the next score differs end a group.
    ends = torch.ones(n, dtype=torch.bool, device=conf.device)
    ends[:-1] = conf[1:] != conf[:-1]
    end_pos = torch.nonzero(ends).squeeze(1)
    group = torch.cumsum(torch.cat([torch.zeros(1, dtype=torch.long, device=conf.device), ends[:-1].long()]), 0)
    group_end = end_pos[group]  # last index of each sample's tie group
    group_start = torch.cat([torch.zeros(1, dtype=torch.long, device=conf.device), end_pos[:-1] + 1])[group]
    err_before = torch.where(group_start > 0, cum_err[(group_start - 1).clamp_min(0)], torch.zeros_like(cum_err))
    group_err = cum_err[group_end] - err_before
    group_size = (group_end - group_start + 1).to(torch.float64)
    pos = torch.arange(n, device=conf.device)
    cum_err_even = err_before + group_err * (pos - group_start + 1).to(torch.float64) / group_size
    k = (pos + 1).to(torch.float64)
    return k / n, cum_err_even / k


def aurc(
    probs,
    labels,
    *,
    scores=None,
    ignore_index: int | None = None,
    validate_args: bool = True,
) -> float:
    """Area under the risk-coverage curve: the mean selective risk over k = 1..n (Geifman et al. 2019).

    Lower is better; 0 needs no errors, a random ranking gives about the error rate.

    Args:
        probs: (N, C) or (N, C, ...) probabilities (each row sums to 1 over C).
        labels: (N,) or (N, ...) integer labels in [0, C) or ``ignore_index``.
        scores: optional (N,) or (N, ...) confidence per sample (pixel), higher = kept first;
            default the top-1 probability.
        ignore_index: label value whose samples (pixels) are left out (with their scores).
        validate_args: check ``probs`` and ``labels`` (skip on hot paths).

    Returns:
        The area as a float in [0, 1].

    Example:
        >>> aurc(torch.tensor([[0.9, 0.1], [0.6, 0.4]]), torch.tensor([0, 1]))
        0.25
    """
    _, risk = risk_coverage_curve(probs, labels, scores=scores, ignore_index=ignore_index, validate_args=validate_args)
    return float(risk.mean())


def augrc(
    probs,
    labels,
    *,
    scores=None,
    ignore_index: int | None = None,
    validate_args: bool = True,
) -> float:
    """Area under the generalised risk-coverage curve (Traub et al. 2024, "Overcoming Common Flaws in
    the Evaluation of Selective Classification Systems", NeurIPS).

    The generalised risk at coverage k/n is (errors among the k most confident) / n, the joint
    probability of being accepted and wrong; AUGRC is its mean over k = 1..n. Unlike AURC it does
    not weigh the few most confident samples heavily. Tied scores are accepted together (their
    errors spread evenly, as in :func:`risk_coverage_curve`), so a permutation of rows never
    changes it. Lower is better; 0 needs no errors, a random ranking gives about error_rate / 2.

    Args:
        probs: (N, C) or (N, C, ...) probabilities (each row sums to 1 over C).
        labels: (N,) or (N, ...) integer labels in [0, C) or ``ignore_index``.
        scores: optional (N,) or (N, ...) confidence per sample (pixel), higher = kept first;
            default the top-1 probability.
        ignore_index: label value whose samples (pixels) are left out (with their scores).
        validate_args: check ``probs`` and ``labels`` (skip on hot paths).

    Returns:
        The area as a float in [0, 1].

    Example:
        >>> augrc(torch.tensor([[0.9, 0.1], [0.6, 0.4]]), torch.tensor([0, 1]))
        0.25
    """
    cov, risk = risk_coverage_curve(probs, labels, scores=scores, ignore_index=ignore_index,
                                    validate_args=validate_args)
    return float((risk * cov).mean())


def selective_risk(
    probs,
    labels,
    *,
    coverage: float,
    scores=None,
    ignore_index: int | None = None,
    validate_args: bool = True,
) -> float:
    """Selective risk at a coverage: the error rate among the ⌈coverage · n⌉ most confident samples.

    Read off :func:`risk_coverage_curve` (Geifman & El-Yaniv 2017), so a tie group cut at that
    count contributes its errors in proportion (permutation invariant). The count is
    ``max(1, ceil(coverage · n − 1e-9))``: a coverage like 0.3 of 10 samples keeps 3 despite the
    binary rounding of 0.3.

    Args:
        probs: (N, C) or (N, C, ...) probabilities (each row sums to 1 over C).
        labels: (N,) or (N, ...) integer labels in [0, C) or ``ignore_index``.
        coverage: the fraction of samples kept, in (0, 1].
        scores: optional (N,) or (N, ...) confidence per sample (pixel), higher = kept first;
            default the top-1 probability.
        ignore_index: label value whose samples (pixels) are left out (with their scores).
        validate_args: check ``probs`` and ``labels`` (skip on hot paths).

    Returns:
        The error rate as a float in [0, 1].

    Raises:
        ValueError: ``coverage`` is not a number in (0, 1].

    Example:
        >>> p = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.55, 0.45]])
        >>> y = torch.tensor([0, 0, 1, 1])
        >>> selective_risk(p, y, coverage=0.5), selective_risk(p, y, coverage=1.0)
        (0.0, 0.5)
    """
    if isinstance(coverage, bool) or not isinstance(coverage, (int, float)) or not 0.0 < coverage <= 1.0:
        raise ValueError(f"`coverage` must be a number in (0, 1], got {coverage!r}")
    cov, risk = risk_coverage_curve(probs, labels, scores=scores, ignore_index=ignore_index,
                                    validate_args=validate_args)
    n = cov.numel()
    k = max(1, math.ceil(coverage * n - 1e-9))
    return float(risk[min(k, n) - 1])


def evaluate(
    probs,
    labels,
    *,
    n_bins: int = 15,
    ignore_index: int | None = None,
    validate_args: bool = True,
) -> dict[str, float]:
    """Every scalar metric at once: accuracy, nll, brier, ece, mce, adaptive_ece, classwise_ece, aurc.

    The inputs are validated and flattened once; each metric is the same as its function.

    Args:
        probs: (N, C) or (N, C, ...) probabilities (each row sums to 1 over C).
        labels: (N,) or (N, ...) integer labels in [0, C) or ``ignore_index``.
        n_bins: number of bins of the ECE-type metrics.
        ignore_index: label value whose samples (pixels) are left out.
        validate_args: check ``probs`` and ``labels`` (skip on hot paths).

    Returns:
        ``{name: value}`` with the eight metric names above as keys and floats as values.

    Example:
        >>> m = evaluate(torch.tensor([[0.9, 0.1], [0.6, 0.4]]), torch.tensor([0, 1]))
        >>> sorted(m)
        ['accuracy', 'adaptive_ece', 'aurc', 'brier', 'classwise_ece', 'ece', 'mce', 'nll']
    """
    check_n_bins(n_bins)
    p, y = validate_probs_labels(probs, labels, ignore_index, validate_args=validate_args)
    kw = {"n_bins": n_bins, "validate_args": False}
    return {
        "accuracy": accuracy(p, y, validate_args=False),
        "nll": nll(p, y, validate_args=False),
        "brier": brier(p, y, validate_args=False),
        "ece": ece(p, y, **kw),
        "mce": mce(p, y, **kw),
        "adaptive_ece": adaptive_ece(p, y, **kw),
        "classwise_ece": classwise_ece(p, y, **kw),
        "aurc": aurc(p, y, validate_args=False),
    }
