"""Repeated k-fold (default 2-fold) evaluation of a calibrator on a test set (Ashukha et al. 2020).

Ashukha, Lyzhov, Molchanov & Vetrov 2020, "Pitfalls of In-Domain Uncertainty Estimation and
Ensembling in Deep Learning", ICLR: the test set is split at random in two halves, the
calibrator is fitted on one and scored on the other, then the halves swap; this is repeated
(5 times on CIFAR, 2 on ImageNet in the paper) and the mean ± std of the 2·R scores is reported.
The NLL of the calibrated held-out predictions is their "calibrated log-likelihood".
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch

from .. import metrics
from .._checks import check_labels, check_n_bins, float_dtype
from ..exceptions import NotEnoughMemoryError
from .base import Calibrator, check_calibration_logits

__all__ = ["cross_validate", "split_indices", "CATASTROPHIC_FACTOR"]

METRICS = ("nll", "ece", "brier", "accuracy")

#: A split is *catastrophic* when calibration more than doubles the held-out NLL:
#: calibrated NLL > CATASTROPHIC_FACTOR × the uncalibrated NLL of the same held-out part. One such
#: split (e.g. a temperature fitted on an error-free half) can dominate a mean over 10 splits,
#: which is why the median and the count are reported beside mean ± std.
CATASTROPHIC_FACTOR = 2.0


def split_indices(n: int, *, folds: int = 2, repeats: int = 5, seed: int = 0) -> list[tuple[int, int, torch.Tensor]]:
    """The random splits :func:`cross_validate` uses: (repeat, fold, held-out indices) for each split.

    Each repeat draws a permutation of range(n) from ``torch.Generator().manual_seed(seed)`` and
    cuts it into ``folds`` parts whose sizes differ by at most one; part k is held out in split
    (repeat, k) and the calibrator is fitted on the other parts.

    Example:
        >>> [(r, k, idx.tolist()) for r, k, idx in split_indices(4, folds=2, repeats=1)]
        [(0, 0, [0, 1]), (0, 1, [2, 3])]
    """
    gen = torch.Generator().manual_seed(seed)
    out = []
    for r in range(repeats):
        perm = torch.randperm(n, generator=gen)
        for k, part in enumerate(torch.tensor_split(perm, folds)):
            out.append((r, k, part.sort().values))
    return out


def _factory(calibrator) -> Callable[[], Any]:
    if isinstance(calibrator, type):
        return calibrator
    if isinstance(calibrator, Calibrator):
        if calibrator.is_fitted:
            raise ValueError(
                f"`calibrator` must be a class or a zero-argument factory, got a fitted {type(calibrator).__name__}"
            )
        params = calibrator.get_params()
        return lambda: type(calibrator)(**params)
    if callable(calibrator) and not hasattr(calibrator, "fit"):
        try:
            inspect.signature(calibrator).bind()
        except TypeError as err:
            raise TypeError(f"`calibrator` must be a class or a zero-argument factory, got {calibrator!r}") from err
        except ValueError:  # builtins without a signature
            pass
        return calibrator
    raise TypeError(
        f"`calibrator` must be a class or a zero-argument factory (e.g. lambda: MatrixScaling(odir='auto')), "
        f"got {type(calibrator).__name__}"
    )


def _scores(probs: torch.Tensor, labels: torch.Tensor, n_bins: int, ignore_index: int | None) -> dict[str, float]:
    kw = {"ignore_index": ignore_index, "validate_args": False}
    return {
        "nll": metrics.nll(probs, labels, **kw),
        "ece": metrics.ece(probs, labels, n_bins=n_bins, **kw),
        "brier": metrics.brier(probs, labels, **kw),
        "accuracy": metrics.accuracy(probs, labels, **kw),
    }


def _summary(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    out = {}
    for name in METRICS:
        values = torch.tensor([row[name] for row in rows], dtype=torch.float64)
        out[name] = {
            "mean": float(values.mean()),
            "std": float(values.std(unbiased=False)),
            "median": float(values.quantile(0.5)),  # the mean of the middle two for an even count
        }
    return out


def cross_validate(
    calibrator,
    logits,
    labels,
    *,
    folds: int = 2,
    repeats: int = 5,
    seed: int = 0,
    n_bins: int = 15,
    ignore_index: int | None = None,
    max_samples: int | None = None,
) -> dict[str, Any]:
    """Calibrated NLL, ECE, Brier and accuracy by repeated random k-fold splits of a test set.

    For each of ``repeats`` random permutations (seeded) the N examples are cut into ``folds``
    parts; for each part a fresh calibrator is fitted on the other parts and scored on it, so
    with the default ``folds=2`` every repeat fits on one half, scores the other, and swaps
    (Ashukha et al. 2020). Segmentation is split by image, never by pixel. The uncalibrated
    logits are scored on the same held-out parts. Scores use :mod:`netuq.metrics` on
    ``softmax(calibrated logits)``.

    For a sampling method (a :class:`netuq.Prediction` from MC dropout, an ensemble or TTA) pass
    ``pred.log_probs`` — the log of the mean probabilities — as ``logits``.

    Args:
        calibrator: a calibrator class (``TemperatureScaling``), a zero-argument factory
            (``lambda: MatrixScaling(odir="auto")``) or an unfitted instance (copied per split).
        logits: (N, C) or (N, C, H, W, ...) test logits.
        labels: (N,) or (N, H, W, ...) integer labels.
        folds: parts per repeat (>= 2).
        repeats: number of random splits R.
        seed: seed of the splits (see :func:`split_indices`).
        n_bins: ECE bins.
        ignore_index: label value left out of fits and scores.
        max_samples: fit each calibrator on at most this many valid examples (pixels) of its
            fitting part, a seeded uniform subsample (see the calibrators' ``fit``); scoring always
            uses every held-out pixel. Useful for segmentation-sized test sets.

    Returns:
        A dict with, for each of "nll" (the calibrated log-likelihood, as NLL), "ece", "brier" and
        "accuracy", ``{"mean", "std", "median"}`` over the folds × repeats held-out scores
        (population std, ddof = 0; the median of an even count is the mean of the middle two);
        "uncalibrated": the same for the raw logits; "catastrophic_splits": how many splits are
        catastrophic (calibrated held-out NLL > :data:`CATASTROPHIC_FACTOR` × uncalibrated);
        "splits": one dict per split with "repeat", "fold", "n_fit", "n_eval" (examples),
        "calibrated" and "uncalibrated" scores, "catastrophic" and, for temperature scaling,
        "temperature"; and "folds", "repeats", "seed".

    Example:
        >>> from netuq.calibration import TemperatureScaling
        >>> g = torch.Generator().manual_seed(0)
        >>> z = 3 * torch.randn(400, 4, generator=g)
        >>> y = torch.multinomial(z.softmax(1), 1, generator=g).squeeze(1)
        >>> cv = cross_validate(TemperatureScaling, 3 * z, y, repeats=2)
        >>> len(cv["splits"]), cv["nll"]["mean"] < cv["uncalibrated"]["nll"]["mean"]
        (4, True)
    """
    make = _factory(calibrator)
    check_n_bins(n_bins)
    for name, value, low in (("folds", folds, 2), ("repeats", repeats, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"`{name}` must be an integer >= {low}, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"`seed` must be an int, got {type(seed).__name__}")
    z = check_calibration_logits(logits)
    y = check_labels(labels, z.shape[1], z.shape[:1] + z.shape[2:], ignore_index=ignore_index, probs_name="logits")
    y = y.to(z.device)
    n = z.shape[0]
    if n < folds:
        raise ValueError(f"`logits` must hold at least folds={folds} examples (images) to split, got {n}")
    splits = []
    for r, k, held in split_indices(n, folds=folds, repeats=repeats, seed=seed):
        held = held.to(z.device)
        fit_mask = torch.ones(n, dtype=torch.bool, device=z.device)
        fit_mask[held] = False
        z_fit, y_fit, z_eval, y_eval = z[fit_mask], y[fit_mask], z[held], y[held]
        if ignore_index is not None and not bool((y_eval != ignore_index).any()):
            raise ValueError(
                f"cross_validate: repeat {r}, fold {k}: every held-out label equals ignore_index={ignore_index}"
            )
        cal = make()
        try:
            cal.fit(z_fit, y_fit, ignore_index=ignore_index, max_samples=max_samples, seed=seed + 1000 * r + k)
        except NotEnoughMemoryError:
            raise  # the size, not the split, is the problem: the calibrator's own one-line message
        except ValueError as err:
            raise ValueError(f"cross_validate: repeat {r}, fold {k}: {err}") from err
        calibrated = cal(z_eval)
        p_cal = torch.softmax(calibrated.to(float_dtype(calibrated)), dim=1)
        p_raw = torch.softmax(z_eval.to(float_dtype(z_eval)), dim=1)
        row = {
            "repeat": r,
            "fold": k,
            "n_fit": int(fit_mask.sum()),
            "n_eval": int(held.numel()),
            "calibrated": _scores(p_cal, y_eval, n_bins, ignore_index),
            "uncalibrated": _scores(p_raw, y_eval, n_bins, ignore_index),
        }
        row["catastrophic"] = row["calibrated"]["nll"] > CATASTROPHIC_FACTOR * row["uncalibrated"]["nll"]
        temperature = getattr(cal, "temperature_", None)
        if isinstance(temperature, float) and math.isfinite(temperature):
            row["temperature"] = temperature
        splits.append(row)
    out: dict[str, Any] = _summary([s["calibrated"] for s in splits])
    out["uncalibrated"] = _summary([s["uncalibrated"] for s in splits])
    out["catastrophic_splits"] = sum(s["catastrophic"] for s in splits)
    out["splits"] = splits
    out.update(folds=folds, repeats=repeats, seed=seed)
    return out
