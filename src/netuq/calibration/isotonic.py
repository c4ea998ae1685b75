"""Isotonic regression, one-vs-rest and renormalised (Zadrozny & Elkan 2002, "Transforming classifier
scores into accurate multiclass probability estimates", KDD).

For each class c a non-decreasing map of p_c to P(y = c) is fitted by least squares (the pool
adjacent violators solve of ``scipy.optimize.isotonic_regression``), applied as scikit-learn's
``IsotonicRegression(out_of_bounds="clip")`` applies it, and each row is then renormalised.
"""

from __future__ import annotations

import warnings
from typing import ClassVar

import numpy as np
import torch

from ._stepwise import StepwiseCalibrator, check_counts, segment_ids

__all__ = ["IsotonicRegression", "isotonic_breakpoints"]


def isotonic_breakpoints(x: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The breakpoints (X, Y) of the least-squares non-decreasing fit of ``target`` on ``x``.

    As scikit-learn's ``IsotonicRegression``: equal x are pooled first (their mean target, weighted
    by their count; like scikit-learn, x within 1e-15 — float64 ``resolution`` — of the first x of
    a pool join it, which merges probabilities that differ by rounding only), the pooled points
    are fitted by pool adjacent violators, and of each run of equal fitted values only its first
    and last points are kept; between breakpoints the map is linear, outside them constant
    (``out_of_bounds="clip"``).

    Args:
        x: (n,) float64 inputs.
        target: (n,) float64 targets.

    Returns:
        ``(X, Y)``, float64 arrays of equal length m <= n, X strictly increasing, Y non-decreasing.

    Example:
        >>> X, Y = isotonic_breakpoints(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.0, 1.0, 0.0, 1.0]))
        >>> X.tolist(), Y.tolist()
        ([0.1, 0.2, 0.3, 0.4], [0.0, 0.5, 0.5, 1.0])
    """
    from scipy.optimize import isotonic_regression

    ux, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse.reshape(-1), weights=target, minlength=ux.size)
    ux, sums, counts = _pool_within_resolution(ux, sums, counts)
    fitted = isotonic_regression(sums / counts, weights=counts.astype(np.float64), increasing=True).x
    if ux.size <= 2:
        return ux, fitted
    # keep the ends of each constant run (interior points of a run lie on a flat segment)
    keep = np.ones(ux.size, dtype=bool)
    keep[1:-1] = (fitted[1:-1] != fitted[:-2]) | (fitted[1:-1] != fitted[2:])
    return ux[keep], fitted[keep]


def _pool_within_resolution(ux, sums, counts):
    """Merge sorted unique ``ux`` closer than float64 resolution to a pool's first value (scikit-learn's rule).

    scikit-learn walks the sorted values and starts a new pool at the first x with
    ``x - first >= eps``; here each pool start is found by a binary search (then checked with
    that exact test), so long runs of tiny probabilities (all within 1e-15 of 0) cost one step.
    """
    eps = np.finfo(np.float64).resolution
    close = np.diff(ux) < eps
    if not close.any():
        return ux, sums, counts
    starts = np.ones(ux.size, dtype=bool)
    starts[1:] = ~close
    chain = np.cumsum(starts) - 1  # runs of neighbours closer than eps; split each greedily
    for c in np.unique(chain[1:][close]):
        lo, hi = int(np.searchsorted(chain, c, "left")), int(np.searchsorted(chain, c, "right"))
        starts[lo + 1:hi] = False
        seg = ux[lo:hi]
        values = seg.tolist()
        n, at = hi - lo, 0
        while True:
            first = values[at]
            j = int(seg.searchsorted(first + eps))
            while j > at + 1 and values[j - 1] - first >= eps:
                j -= 1
            j = max(j, at + 1)
            while j < n and values[j] - first < eps:
                j += 1
            if j >= n:
                break
            starts[lo + j] = True
            at = j
    group = np.cumsum(starts) - 1
    n = int(group[-1]) + 1
    return ux[starts], np.bincount(group, weights=sums, minlength=n), np.bincount(group, weights=counts, minlength=n)


def _interp(p: torch.Tensor, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """numpy.interp(p, X, Y) (constant beyond the ends) in torch, for strictly increasing X."""
    if X.numel() == 1:
        return Y.expand_as(p).clone()
    i = torch.searchsorted(X, p.contiguous(), right=True).clamp(1, X.numel() - 1)
    x0, x1, y0, y1 = X[i - 1], X[i], Y[i - 1], Y[i]
    t = ((p - x0) / (x1 - x0)).clamp(0.0, 1.0)
    return torch.where(t >= 1.0, y1, y0 + t * (y1 - y0))


class IsotonicRegression(StepwiseCalibrator):
    """One-vs-rest isotonic regression of each class probability, rows renormalised.

    Fit: for each class c, the non-decreasing least-squares map of the softmax probability p_c
    to the indicator 1[y = c] over the calibration rows (scikit-learn's
    ``IsotonicRegression(out_of_bounds="clip")`` fit, see :func:`isotonic_breakpoints`).
    Apply: each class's map (linear between its breakpoints, constant beyond them), then each row
    divided by its sum; a row whose maps are all 0 becomes uniform (as scikit-learn's
    ``CalibratedClassifierCV``). A class that never occurs among the calibration labels has no
    information to fit (its map would be 0 everywhere, making the class impossible): its
    probability passes through uncalibrated before the renormalisation, with a warning.

    It can change the predicted class and create ties (``changes_prediction``). The output goes
    out as floored log-probabilities (``min_prob``, see :mod:`netuq.calibration._stepwise`). It is
    a step function: its ECE on the fit data is optimistic, evaluate it on held-out data.

    Args:
        min_prob: floor of the calibrated probabilities before their log.

    Attributes:
        points_: (C,) number of breakpoints of each class (0: a class never seen, passed through).
        x_: (Σ points_,) the breakpoints' probabilities, class by class, increasing within a class.
        y_: (Σ points_,) their fitted values in [0, 1], non-decreasing within a class.
        num_classes_, n_samples_, nll_before_, nll_after_: as for the other calibrators.

    Shapes:
        logits (N, C) or (N, C, H, W, ...); labels (N,) or (N, H, W, ...).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> z = 3 * torch.randn(2000, 4, generator=g)
        >>> y = torch.multinomial((z / 3).softmax(1), 1, generator=g).squeeze(1)
        >>> iso = IsotonicRegression().fit(z, y)
        >>> iso.nll_after_ < iso.nll_before_, bool(torch.allclose(iso.predict_proba(z).sum(1), torch.ones(2000)))
        (True, True)
    """

    name: ClassVar[str] = "isotonic"
    label: ClassVar[str] = "isotonic regression"
    order: ClassVar[float] = 50  # display position (after temperature, vector, matrix scaling)
    changes_prediction: ClassVar[bool] = True
    _param_names = ("min_prob",)

    def __init__(self, *, min_prob: float = 1e-6) -> None:
        super().__init__(min_prob=min_prob)

    def _fitted_shapes(self, num_classes: int) -> dict[str, tuple[int | None, ...]]:
        return {"points_": (num_classes,), "x_": (None,), "y_": (None,)}

    def _check_fitted_values(self) -> str | None:
        problem = super()._check_fitted_values()
        if problem is not None:
            return problem
        problem = check_counts(self.points_, self.x_.numel(), "x", "points")
        if problem is None and self.y_.numel() != self.x_.numel():
            problem = f"`y` must have the length of `x` ({self.x_.numel()}), got {self.y_.numel()}"
        if problem is not None:
            return problem
        for name, v in (("x", self.x_), ("y", self.y_)):
            if bool(((v < 0) | (v > 1)).any()):
                return f"`{name}` must lie in [0, 1]"
        _, offsets = segment_ids(self.points_)
        for c in range(self.num_classes_):
            x, y = self.x_[offsets[c]:offsets[c + 1]], self.y_[offsets[c]:offsets[c + 1]]
            if x.numel() > 1 and not (bool((x[1:] > x[:-1]).all()) and bool((y[1:] >= y[:-1]).all())):
                return f"`x` must increase strictly and `y` must not decrease within each class (class {c})"
        return None

    def _fit_probs(self, p: torch.Tensor, y: torch.Tensor) -> None:
        P = p.detach().cpu().to(torch.float64).numpy()
        labels = y.cpu().numpy()
        points, xs, ys, unseen = [], [], [], []
        for c in range(P.shape[1]):
            target = (labels == c).astype(np.float64)
            if not target.any():
                unseen.append(c)
                points.append(0)
                continue
            X, Y = isotonic_breakpoints(P[:, c], target)
            points.append(X.size)
            xs.append(X)
            ys.append(np.clip(Y, 0.0, 1.0))
        if unseen:
            warnings.warn(
                f"IsotonicRegression: {len(unseen)} class(es) never occur among the calibration labels (e.g. class "
                f"{unseen[0]}); their probabilities pass through uncalibrated",
                RuntimeWarning,
                stacklevel=4,
            )
        self.points_ = torch.tensor(points, dtype=torch.float64)
        self.x_ = torch.from_numpy(np.concatenate(xs)) if xs else torch.zeros(0, dtype=torch.float64)
        self.y_ = torch.from_numpy(np.concatenate(ys)) if ys else torch.zeros(0, dtype=torch.float64)

    def _probs(self, p: torch.Tensor) -> torch.Tensor:
        lengths, offsets = segment_ids(self.points_)
        x = self.x_.to(device=p.device, dtype=p.dtype)
        y = self.y_.to(device=p.device, dtype=p.dtype)
        out = torch.empty_like(p)
        for c in range(p.shape[1]):
            if lengths[c] == 0:
                out[:, c] = p[:, c]
            else:
                out[:, c] = _interp(p[:, c], x[offsets[c]:offsets[c + 1]], y[offsets[c]:offsets[c + 1]])
        total = out.sum(1, keepdim=True)
        uniform = torch.full_like(out, 1.0 / p.shape[1])
        return torch.where(total > 0, out / total.clamp_min(torch.finfo(p.dtype).tiny), uniform)
