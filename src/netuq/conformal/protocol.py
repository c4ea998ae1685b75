"""Conformal protocols on stored predictions, shared by ``compare``'s section and ``netuq conformal``.

* :func:`fitted_rows`: sets fitted on calibration logits, scored on test logits;
* :func:`split_rows`: the repeated split protocol (random halves of one set, mean ± sd);
* :func:`risk_rows`: conformal risk control from per-image loss / set-size curves
  (:func:`netuq.conformal.risk.image_curves`), on calibration images or random halves.

Every row is plain data (str, float, int, bool): one (score, α) or one α.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from .._random import derive_seed, generator
from ..metrics.sets import SetStats, classwise_from_stats, coverage_from_stats, set_size_from_stats, set_stats
from .risk import threshold_index
from .split import SplitConformal

__all__ = ["FIELDS_CLASSIFICATION", "FIELDS_SEGMENTATION", "fitted_rows", "split_rows", "risk_rows", "set_row"]

FIELDS_CLASSIFICATION = ("coverage", "set_size", "worst_class_coverage")
FIELDS_SEGMENTATION = ("risk", "set_size", "threshold")
_FIELDS_CLS, _FIELDS_SEG = FIELDS_CLASSIFICATION, FIELDS_SEGMENTATION


def _estimator(score: str, alpha: float, randomized: bool, seed: int, class_conditional: bool = False):
    return SplitConformal(score=score, alpha=alpha, randomized=randomized and score != "lac", seed=seed,
                          class_conditional=class_conditional)


def set_row(stats: SetStats) -> dict[str, float]:
    cw = classwise_from_stats(stats)
    present = cw[~torch.isnan(cw)]
    return {"coverage": float(coverage_from_stats(stats)), "set_size": float(set_size_from_stats(stats)),
            "worst_class_coverage": float(present.min()) if present.numel() else math.nan}


def split_rows(lp: torch.Tensor, y: torch.Tensor, *, scores, alphas, randomized: bool, splits: int, seed: int,
               class_conditional: bool = False) -> list[dict[str, Any]]:
    """The repeated split protocol on (N, C) logits: ``splits`` random halves, calibrate on one, score the other.

    Returns one row per (score, α): mean and sd over the splits of coverage, mean set size and
    worst-class coverage (a split whose calibration half cannot serve, e.g. too few points per
    class for class-conditional sets, is skipped and counted in ``skipped``).
    """
    n = len(y)
    rows = []
    for score in scores:
        for alpha in alphas:
            values: dict[str, list[float]] = {k: [] for k in _FIELDS_CLS}
            skipped = 0
            for s in range(splits):
                perm = torch.randperm(n, generator=generator(derive_seed(seed, 41, s)))
                cal, test = perm[: n // 2], perm[n // 2:]
                cp = _estimator(score, alpha, randomized, derive_seed(seed, 42, s), class_conditional)
                try:
                    cp.fit(lp[cal], y[cal], input="logits")
                except ValueError:
                    skipped += 1
                    continue
                row = set_row(set_stats(cp.predict(lp[test], input="logits"), y[test]))
                for k in _FIELDS_CLS:
                    values[k].append(row[k])
            rows.append({"score": score, "alpha": alpha, "randomized": randomized and score != "lac",
                         "n_calibration": n // 2, "splits": splits - skipped, "skipped": skipped,
                         **_mean_sd(values)})
    return rows


def fitted_rows(z_cal: torch.Tensor, y_cal: torch.Tensor, z: torch.Tensor, y: torch.Tensor, *, scores, alphas,
                randomized: bool, seed: int, class_conditional: bool = False) -> list[dict[str, Any]]:
    """One row per (score, α): sets fitted on (z_cal, y_cal), scored on (z, y) (logits (N, C))."""
    rows = []
    for score in scores:
        for alpha in alphas:
            cp = _estimator(score, alpha, randomized, seed, class_conditional).fit(z_cal, y_cal, input="logits")
            rows.append({"score": score, "alpha": alpha, "randomized": cp.randomized,
                         "n_calibration": cp.n_calibration_,
                         **set_row(set_stats(cp.predict(z, input="logits"), y.long()))})
    return rows


def risk_rows(losses: torch.Tensor, sizes: torch.Tensor, grid: torch.Tensor, *, alphas, splits: int, seed: int,
              calibration_losses: torch.Tensor | None = None) -> list[dict[str, Any]]:
    """Risk control from per-image (N, G) loss and set-size curves: λ̂ from ``calibration_losses``
    (scored on all N images), or from random halves of the N images (mean ± sd over ``splits``)."""
    rows = []
    if calibration_losses is not None:
        cal = calibration_losses
        for alpha in alphas:
            index, certified = threshold_index(cal.sum(0), len(cal), alpha)
            rows.append({"alpha": alpha, "n_calibration": len(cal), "certified": certified,
                         "threshold": float(grid[index]), "risk": float(losses[:, index].mean()),
                         "set_size": float(sizes[:, index].mean())})
        return rows
    N = len(losses)
    for alpha in alphas:
        values: dict[str, list[float]] = {k: [] for k in _FIELDS_SEG}
        for s in range(splits):
            perm = torch.randperm(N, generator=generator(derive_seed(seed, 43, s)))
            cal, test = perm[: N // 2], perm[N // 2:]
            index, _ = threshold_index(losses[cal].sum(0), len(cal), alpha)
            values["risk"].append(float(losses[test, index].mean()))
            values["set_size"].append(float(sizes[test, index].mean()))
            values["threshold"].append(float(grid[index]))
        rows.append({"alpha": alpha, "n_calibration": N // 2, "splits": splits, **_mean_sd(values)})
    return rows


def _mean_sd(values: Mapping[str, list[float]]) -> dict[str, float]:
    out = {}
    for k, v in values.items():
        t = torch.tensor(v, dtype=torch.float64)
        out[k] = float(t.mean()) if len(v) else math.nan
        out[f"{k}_sd"] = float(t.std()) if len(v) > 1 else 0.0
    return out
