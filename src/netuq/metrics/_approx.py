"""Approximate equal-mass ECE, misclassification AUROC and AURC from a fine confidence histogram.

Private to :class:`netuq.metrics.UncertaintyMetrics`: each function returns the value and a
*guaranteed* bound on its distance to the exact metric on the same samples (0-dim float64 tensors).
"""

from __future__ import annotations

import math

import torch

from ._core import equal_mass_ece


def _scalar(value: float, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float64, device=like.device)


def adaptive_ece_from_hist(
    counts: torch.Tensor, correct: torch.Tensor, conf_sum: torch.Tensor, n_bins: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive (equal-mass) ECE from a fine histogram sorted by confidence, and its error bound.

    ``_core.equal_mass_ece`` with the fine bins as groups (the exact metric uses the tie blocks):
    the cut ranks are exact, and a fine bin that a cut splits is shared between its two groups in
    proportion. If the cut leaves j of the bin's m samples below it, the correct count below is
    off by at most min(j, m - j) and the confidence sum by at most min(j, m - j) · w (w = bin
    width <= 2 / F), so |approx - exact| <= (2 / n) Σ_cuts min(j, m - j) (1 + w). (The exact
    metric shares a split tie block in proportion too, i.e. it averages the orders of the block,
    so the bound holds for it as for any order.)
    """
    n = int(counts.sum())
    gaps, split = equal_mass_ece(counts, correct, conf_sum, n_bins)
    if n == 0:
        return gaps, gaps.clone()
    return gaps, split * (2.0 * (1.0 + 3.0 / counts.numel()) / n)


def auroc_from_hist(counts: torch.Tensor, correct: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """AUROC of the confidence separating correct (positive) from wrong samples, and its bound.

    Pairs in different fine bins are ordered exactly; pairs in the same bin count as ties (½).
    Their true contribution lies in [0, 1], so |approx - exact| <= ½ Σ_k pos_k neg_k / (P · N).
    """
    pos = correct.to(torch.float64)
    neg = (counts - correct).to(torch.float64)
    n_pos, n_neg = float(pos.sum()), float(neg.sum())
    if n_pos == 0 or n_neg == 0:
        return _scalar(math.nan, counts), _scalar(math.nan, counts)
    neg_below = neg.cumsum(0) - neg
    tie = (pos * neg).sum()
    wins = (pos * neg_below).sum() + 0.5 * tie
    return wins / (n_pos * n_neg), 0.5 * tie / (n_pos * n_neg)


def aurc_from_hist(counts: torch.Tensor, correct: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """AURC (mean selective risk over k = 1..n, most confident first) and its error bound.

    Each fine bin is treated as one tie group whose errors spread evenly, as the exact metric does
    for tied scores. For a bin with m samples, e errors, s samples and E errors before it:
    Σ_{i=1..m} (E + e i / m) / (s + i) = E · D + (e / m)(m - s · D), D = ψ(s + m + 1) - ψ(s + 1).
    The true error count among its first i samples differs from e i / m by at most min(e, m - e),
    so |approx - exact| <= (1 / n) Σ_k min(e_k, m_k - e_k) D_k.
    """
    m = counts.flip(0).to(torch.float64)  # most confident first
    e = (counts - correct).flip(0).to(torch.float64)
    n = float(m.sum())
    if n == 0:
        return _scalar(math.nan, counts), _scalar(math.nan, counts)
    s = m.cumsum(0) - m
    err_before = e.cumsum(0) - e
    d = torch.special.digamma(s + m + 1.0) - torch.special.digamma(s + 1.0)
    within = torch.where(m > 0, e / m.clamp_min(1.0) * (m - s * d), 0.0)
    area = (err_before * d + within).sum() / n
    bound = (torch.minimum(e, m - e) * d).sum() / n
    return area, bound
