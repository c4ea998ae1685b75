"""Plain-loop numpy references for conformal prediction, written from the papers, not from netuq.

* Split conformal (Vovk et al. 2005; Angelopoulos & Bates 2021): q̂ is the k-th smallest
  calibration score, k the smallest integer with k >= (n+1)(1-α) (found by counting, in exact
  decimal arithmetic); k > n means every class.
* LAC (Sadinle et al. 2019): 1 - p_y. APS (Romano et al. 2020): classes sorted by decreasing p
  (ties: lower class index first), the running total up to and including y, minus u·p_y when
  randomised. RAPS (Angelopoulos et al. 2021): APS + λ·max(0, rank - k_reg).
* Conformal risk control (Angelopoulos et al. 2022): λ̂ = the smallest λ of a grid with
  n/(n+1)·R̂(λ) + 1/(n+1) <= α, per-image losses counted pixel by pixel.
"""

from __future__ import annotations

from decimal import Decimal

import numpy as np


def rank_k(n: int, alpha: float) -> int:
    """Smallest integer k with k >= (n + 1)(1 - alpha), by counting up."""
    target = (n + 1) * (1 - Decimal(repr(alpha)))
    k = 0
    while k < target:
        k += 1
    return k


def quantile(scores, alpha: float) -> float:
    scores = sorted(float(s) for s in scores)
    k = rank_k(len(scores), alpha)
    return float("inf") if k > len(scores) else scores[k - 1]


def _order(p_row) -> list[int]:
    return sorted(range(len(p_row)), key=lambda c: (-float(p_row[c]), c))


def score_row(p_row, score: str, u: float | None = None, k_reg: int = 0, lam: float = 0.0) -> np.ndarray:
    """Scores of every class of one example."""
    C = len(p_row)
    out = np.empty(C)
    if score == "lac":
        for c in range(C):
            out[c] = 1.0 - float(p_row[c])
        return out
    total = 0.0
    for rank, c in enumerate(_order(p_row), start=1):
        total += float(p_row[c])
        s = total
        if u is not None:
            s -= u * float(p_row[c])
        if score == "raps":
            s += lam * max(0, rank - k_reg)
        out[c] = s
    return out


def conformal_sets(p_cal, y_cal, p_test, alpha: float, score: str, *, u_cal=None, u_test=None, k_reg: int = 0,
                   lam: float = 0.0, class_conditional: bool = False) -> np.ndarray:
    """(N_test, C) bool sets of split conformal with the given scores (loops over examples and classes)."""
    p_cal, p_test = np.asarray(p_cal, np.float64), np.asarray(p_test, np.float64)
    C = p_cal.shape[1]
    cal = [score_row(p_cal[i], score, None if u_cal is None else float(u_cal[i]), k_reg, lam)[int(y_cal[i])]
           for i in range(len(p_cal))]
    if class_conditional:
        q = [quantile([s for s, y in zip(cal, y_cal) if int(y) == c], alpha) for c in range(C)]
    else:
        q = [quantile(cal, alpha)] * C
    sets = np.zeros((len(p_test), C), dtype=bool)
    for i in range(len(p_test)):
        row = score_row(p_test[i], score, None if u_test is None else float(u_test[i]), k_reg, lam)
        for c in range(C):
            sets[i, c] = row[c] <= q[c]
    return sets


def image_loss(p_img, y_img, threshold: float, loss: str, target: int | None, ignore_index: int | None) -> float:
    """One image's loss of the sets {p >= threshold}: p (C, H, W), y (H, W)."""
    missed = total = 0
    H, W = y_img.shape
    for h in range(H):
        for w in range(W):
            y = int(y_img[h, w])
            if ignore_index is not None and y == ignore_index:
                continue
            if loss == "fnr":
                if y != target:
                    continue
                value = float(p_img[target, h, w])
            else:
                value = float(p_img[y, h, w])
            total += 1
            missed += value < threshold
    return missed / total if total else 0.0


def crc_threshold(p, y, thresholds, alpha: float, loss: str, target: int | None = None,
                  ignore_index: int | None = None) -> float:
    """The CRC threshold t̂ = 1 - λ̂ on a grid of thresholds (searched from λ = 0 upwards)."""
    n = len(p)
    for t in sorted((float(t) for t in thresholds), reverse=True):  # decreasing t = increasing λ
        risk = sum(image_loss(p[i], y[i], t, loss, target, ignore_index) for i in range(n)) / n
        if n / (n + 1) * risk + 1 / (n + 1) <= alpha:
            return t
    return 0.0
