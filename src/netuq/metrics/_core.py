"""Private computational core shared by the functional and the streaming metrics.

Counts are integers and sums are float64, so exactness does not depend on the data size
(torchmetrics' float32 bins drift by ~5% relative ECE at 2e7 pixels).
"""

from __future__ import annotations

import math

import torch

from .._checks import MAX_N_BINS, check_n_bins, float_dtype  # noqa: F401  (re-exported to metrics)

NORMS = ("l1", "l2", "max")


def bin_edges(n_bins: int, device: torch.device | None = None) -> torch.Tensor:
    """(n_bins + 1,) equal-width edges k / n_bins on [0, 1] in float64 (correctly rounded, unlike linspace)."""
    return torch.arange(n_bins + 1, dtype=torch.float64, device=device) / n_bins


def bin_index(conf: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Index of the equal-width bin (lo, hi] holding each confidence; 0 goes to the first bin.

    Binned in float32 (float64 for float64 input) whatever the input precision: the edges k / n_bins
    are rounded to that dtype and half-precision confidences are widened to it exactly, so a
    float16 0.6 (0.60009765625) lands above the edge 0.6 as its value says (rounding the edges to
    float16 would make them equal and put it one bin lower).
    """
    dtype = float_dtype(conf)
    inner = bin_edges(n_bins, conf.device)[1:-1].to(dtype)
    return torch.bucketize(conf.to(dtype), inner, right=False)


def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise ValueError(f"`norm` must be one of {NORMS}, got {norm!r}")
    return norm


def binned_stats(
    conf: torch.Tensor, correct: torch.Tensor, n_bins: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-bin (count int64, Σ confidence float64, Σ correct int64) for (M,) confidences."""
    idx = bin_index(conf, n_bins)
    counts = torch.bincount(idx, minlength=n_bins)
    conf_sum = torch.zeros(n_bins, dtype=torch.float64, device=conf.device).index_add_(
        0, idx, conf.to(torch.float64)
    )
    correct_sum = torch.bincount(idx[correct], minlength=n_bins)
    return counts, conf_sum, correct_sum


def calibration_error_from_stats(
    counts: torch.Tensor, conf_sum: torch.Tensor, correct_sum: torch.Tensor, norm: str = "l1"
) -> torch.Tensor:
    """ECE-style error from per-bin sufficient statistics (any leading batch of classes allowed).

    l1: Σ_b |B_b|/n · |acc_b − conf_b|; l2: sqrt(Σ_b |B_b|/n · (acc_b − conf_b)²);
    max: max over non-empty bins of |acc_b − conf_b|. Returns a 0-dim float64 tensor (NaN when
    every bin is empty).
    """
    counts64 = counts.to(torch.float64)
    total = counts64.sum()
    nonempty = counts > 0
    gap = torch.zeros_like(conf_sum)
    gap[nonempty] = (correct_sum.to(torch.float64)[nonempty] - conf_sum[nonempty]) / counts64[nonempty]
    gap = gap.abs()
    if norm == "l1":
        return (counts64 / total * gap).sum()
    if norm == "l2":
        return torch.sqrt((counts64 / total * gap.square()).sum())
    return torch.where(nonempty, gap, -1.0).max().clamp_min(0.0) / (total > 0)  # NaN (0 / 0) when empty


def equal_mass_ece(
    counts: torch.Tensor, correct: torch.Tensor, conf_sum: torch.Tensor, n_bins: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Equal-mass (adaptive) ECE from groups sorted by confidence, and the mass the cuts split.

    ``counts``, ``correct`` and ``conf_sum`` (each (G,)) describe G consecutive groups of the
    sorted confidences (tie blocks for the exact metric, fine bins for the streaming one). The n
    samples are cut at the ranks of ``numpy.array_split(range(n), min(n_bins, n))``; a group that
    a cut splits (j of its m samples below the cut) is shared in proportion j / m, its correct
    count and confidence sum alike, so tied confidences act as one block and the order of the
    rows never matters. Returns ``(Σ_b |A_b − S_b| / n, Σ_interior cuts min(j, m − j))`` as 0-dim
    float64 tensors (NaN and 0 for n = 0).
    """
    device = counts.device
    n = int(counts.sum())
    if n == 0:
        nan = torch.tensor(math.nan, dtype=torch.float64, device=device)
        return nan, torch.zeros((), dtype=torch.float64, device=device)
    groups = min(n_bins, n)
    q, r = divmod(n, groups)
    sizes = torch.full((groups,), q, dtype=torch.int64, device=device)
    sizes[:r] += 1
    ranks = torch.cat([torch.zeros(1, dtype=torch.int64, device=device), sizes.cumsum(0)])  # (groups + 1,)
    zero64 = torch.zeros(1, dtype=torch.float64, device=device)
    c0 = torch.cat([torch.zeros(1, dtype=torch.int64, device=device), counts.cumsum(0)])
    a0 = torch.cat([zero64, correct.to(torch.float64).cumsum(0)])
    s0 = torch.cat([zero64, conf_sum.to(torch.float64).cumsum(0)])
    # The group k holding rank r: c0[k] <= r < c0[k + 1]; the last rank (r = n) is the total.
    k = (torch.searchsorted(c0, ranks, right=True) - 1).clamp_(0, counts.numel() - 1)
    m = counts[k]
    j = ranks - c0[k]
    frac = torch.where(m > 0, j.to(torch.float64) / m.clamp_min(1).to(torch.float64), 0.0)
    cum_a = a0[k] + frac * correct[k].to(torch.float64)
    cum_s = s0[k] + frac * conf_sum[k].to(torch.float64)
    cum_a[0], cum_s[0] = 0.0, 0.0
    cum_a[-1], cum_s[-1] = a0[-1], s0[-1]
    gaps = (cum_a.diff() - cum_s.diff()).abs().sum() / n
    split = torch.minimum(j, m - j).clamp_min(0)[1:-1].to(torch.float64).sum()  # interior cuts only
    return gaps, split


def top1(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, C) probs, (M,) labels -> (M,) top-1 confidence, (M,) bool correct."""
    conf, pred = probs.max(1)
    return conf, pred == labels


def true_class_prob(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return probs.gather(1, labels.unsqueeze(1)).squeeze(1)


NLL_EPS = 1e-12


def nll_terms(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(M,) −log p_y in float64, with p_y clamped at 1e-12 (so one certain mistake costs 27.6 nats)."""
    return -torch.log(true_class_prob(probs, labels).to(torch.float64).clamp_min(NLL_EPS))


def brier_terms(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(M,) Σ_c (p_c − 1[c=y])² = Σ_c p_c² − 2 p_y + 1, in float64."""
    p = probs.to(torch.float64)
    return p.square().sum(1) - 2.0 * true_class_prob(p, labels) + 1.0
