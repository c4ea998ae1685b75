"""RAPS parameters chosen on a held-out split of the calibration data (Angelopoulos et al. 2021, §2.2).

As the paper's code (``conformal.py``: ``pick_kreg``, ``pick_lamda_size``, ``pct_paramtune=0.3``):

* k_reg: the (1−α) quantile (numpy's ``"higher"`` rule) of the 1-based rank of the true label
  on the tuning split — the rank that covers 1−α of it;
* λ: from the grid {0.001, 0.01, 0.1, 0.2, 0.5}, the value whose RAPS sets, calibrated and
  measured on the tuning split, have the smallest mean size (the first on ties).

The tuning split is then set aside: q̂ comes from the rest only, so the guarantee is untouched.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch

from .quantile import conformal_quantile
from .scores import class_ranks, raps_from_sorted, sort_desc

__all__ = ["LAMBDA_GRID", "pick_k_reg", "pick_lambda"]

LAMBDA_GRID = (0.001, 0.01, 0.1, 0.2, 0.5)


def pick_k_reg(probs: torch.Tensor, labels: torch.Tensor, alpha: float) -> int:
    """k_reg: the "higher" (1−α) quantile of the true label's 1-based rank on (M, C) ``probs``.

    Example:
        >>> p = torch.tensor([[0.6, 0.3, 0.1]] * 10, dtype=torch.float64)
        >>> pick_k_reg(p, torch.tensor([0] * 8 + [1, 2]), 0.1)  # ranks 1 x8, 2, 3
        3
    """
    ranks = class_ranks(probs).gather(1, labels.unsqueeze(1)).squeeze(1)
    m = ranks.numel()
    position = math.ceil((m - 1) * (1 - Fraction(repr(float(alpha)))))
    return int(ranks.sort().values[position])


def pick_lambda(probs: torch.Tensor, labels: torch.Tensor, alpha: float, k_reg: int,
                u: torch.Tensor | None, grid=LAMBDA_GRID) -> float:
    """λ from ``grid`` with the smallest mean RAPS set size, calibrated and measured on the same (M, C) split.

    Example:
        >>> p = torch.softmax(torch.randn(50, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64), 1)
        >>> pick_lambda(p, torch.zeros(50, dtype=torch.long), 0.1, 1, None) in LAMBDA_GRID
        True
    """
    best, best_size = grid[0], math.inf
    order, ps = sort_desc(probs)
    for lam in grid:
        s = raps_from_sorted(order, ps, u, k_reg=k_reg, lam=lam)
        q = conformal_quantile(s.gather(1, labels.unsqueeze(1)).squeeze(1), alpha)
        size = float((s <= q).sum(1, dtype=torch.float64).mean())
        if size < best_size:
            best, best_size = lam, size
    return best
