"""The split-conformal quantile: the ⌈(n+1)(1−α)⌉-th smallest of n calibration scores.

Vovk et al. 2005; Angelopoulos & Bates 2021 ("A gentle introduction", §1). With exchangeable
scores, a new point's score is at most q̂ with probability ≥ 1−α, and < 1−α + 1/(n+1) when the
scores have no ties. When ⌈(n+1)(1−α)⌉ > n there are too few points for that α and q̂ = +∞
(every class is in the set).

The rank is computed exactly in rational arithmetic from α as written (``repr``): in floating
point (n+1)·(1−α) can land just above an integer (1000·(1 − 0.059) = 941.0000000000001) and the
ceiling then takes one rank too many.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch

__all__ = ["check_alpha", "conformal_rank", "conformal_quantile", "min_calibration_size"]


def check_alpha(alpha: object, name: str = "alpha") -> float:
    """``alpha`` as a float after checking it is a number in (0, 1).

    Example:
        >>> check_alpha(0.1)
        0.1
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"`{name}` must be a number in (0, 1), got {alpha!r}")
    return float(alpha)


def _fraction(alpha: float) -> Fraction:
    return Fraction(repr(float(alpha)))


def conformal_rank(n: int, alpha: float) -> int:
    """⌈(n+1)(1−α)⌉, computed exactly (may exceed ``n``: then q̂ = +∞).

    Example:
        >>> conformal_rank(99, 0.1), conformal_rank(999, 0.059), conformal_rank(5, 0.1)
        (90, 941, 6)
    """
    return math.ceil((n + 1) * (1 - _fraction(alpha)))


def min_calibration_size(alpha: float) -> int:
    """The smallest n with ⌈(n+1)(1−α)⌉ ≤ n, i.e. n ≥ 1/α − 1 (fewer points give q̂ = +∞).

    Example:
        >>> min_calibration_size(0.1), min_calibration_size(0.05), min_calibration_size(0.3)
        (9, 19, 3)
    """
    a = _fraction(alpha)
    return max(1, math.ceil((1 - a) / a))


def conformal_quantile(scores: torch.Tensor, alpha: float) -> float:
    """q̂: the ⌈(n+1)(1−α)⌉-th smallest of the (n,) ``scores`` (+∞ if that rank exceeds n).

    Args:
        scores: (n,) calibration scores (n ≥ 1).
        alpha: miscoverage level in (0, 1).

    Returns:
        q̂ as a Python float (float64 scores keep every bit).

    Example:
        >>> conformal_quantile(torch.arange(1.0, 11.0), 0.2)  # ⌈11·0.8⌉ = 9th smallest
        9.0
        >>> conformal_quantile(torch.arange(1.0, 5.0), 0.1)  # ⌈5·0.9⌉ = 5 > 4
        inf
    """
    alpha = check_alpha(alpha)
    scores = scores.reshape(-1)
    n = scores.numel()
    if n == 0:
        raise ValueError("`scores` must not be empty: conformal calibration needs at least one point")
    k = conformal_rank(n, alpha)
    if k > n:
        return math.inf
    return float(torch.kthvalue(scores.to(torch.float64).cpu(), k).values)
