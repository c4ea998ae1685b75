"""The ``conformal`` result section: prediction sets for every method compared.

Registered with :mod:`netuq.results.sections` (``default=False``: it runs when asked,
``compare(..., conformal=...)`` or ``sections={"conformal": options}``). Per method:

* classification: for each score (LAC, APS, RAPS) and α, :class:`SplitConformal` fitted on
  the calibration loader's predictions and scored on the test set (coverage, mean set size,
  worst-class coverage), or, without a calibration loader, the repeated split protocol on the
  test set: ``splits`` random halves (calibrate on one, score the other), mean and sd;
* segmentation: :class:`ConformalRiskControl` (loss ``"miscoverage"``, or ``"fnr"`` with a
  ``target_class``) on per-image loss curves over a fixed grid of ``grid_size`` thresholds
  (memory O(images × grid), not pixels): λ̂ from the calibration loader's images, or from random
  halves of the test images; the achieved mean risk on the test images and the mean per-pixel
  set size.

Options: ``alpha`` (a float or a list, default (0.1,)), ``scores`` (default ("lac", "aps",
"raps")), ``randomized`` (False), ``splits`` (20), ``loss`` ("miscoverage"), ``target_class``,
``grid_size`` (500), ``calibration`` (a labelled loader; ``compare(conformal=...)`` passes its
own ``calibration``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from .._checks import check_choice, check_int
from ..metrics.sets import SetStats, set_stats
from ..results.sections import Section, register
from .protocol import FIELDS_CLASSIFICATION, _estimator, risk_rows, set_row, split_rows
from .quantile import check_alpha
from .risk import LOSSES, image_curves, threshold_grid
from .scores import SCORES
from .split import SplitConformal

__all__ = ["SECTION", "options_for"]

KEY = "conformal"


def options_for(value: Any) -> dict[str, Any]:
    """Validated section options from ``compare(conformal=...)`` (True: the defaults; a dict: options)."""
    if value is True:
        value = {}
    if not isinstance(value, Mapping):
        raise TypeError(f"`conformal` must be True, None or a dict of options, got {type(value).__name__}")
    known = {"alpha", "scores", "randomized", "splits", "loss", "target_class", "grid_size", "calibration"}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"`conformal` options must be among {sorted(known)}, got {unknown}")
    alphas = value.get("alpha", (0.1,))
    alphas = (alphas,) if isinstance(alphas, (int, float)) else tuple(alphas)
    out = dict(value)
    out["alpha"] = tuple(check_alpha(a) for a in alphas)
    out["scores"] = tuple(check_choice(s, "conformal['scores']", SCORES) for s in value.get("scores", SCORES))
    out["randomized"] = bool(value.get("randomized", False))
    out["splits"] = check_int(value.get("splits", 20), "conformal['splits']", 1)
    out["loss"] = check_choice(value.get("loss", "miscoverage"), "conformal['loss']", LOSSES)
    out["target_class"] = check_int(value.get("target_class"), "conformal['target_class']", 0, allow_none=True)
    if out["loss"] == "fnr" and out["target_class"] is None:
        raise ValueError("`conformal['target_class']` must be given with loss='fnr'")
    out["grid_size"] = check_int(value.get("grid_size", 500), "conformal['grid_size']", 8)
    return out


class _Pass:
    def __init__(self, ctx) -> None:
        self.opts = options_for(ctx.options)
        self.seed = int(ctx.config.get("seed", 0))
        self.ignore = ctx.config.get("ignore_index")
        self.ctx = ctx
        self.task = None
        self.fitted: dict[tuple[str, float], SplitConformal] = {}
        self.stats: dict[tuple[str, float], SetStats] = {}
        self.rows_lp: list[torch.Tensor] = []  # classification protocol: (N, C) log-probs
        self.rows_y: list[torch.Tensor] = []
        self.curves: list[tuple[torch.Tensor, torch.Tensor]] = []  # segmentation: per-image (losses, sizes)
        self.grid = threshold_grid(self.opts["grid_size"])

    # ---------------------------------------------------------------- per test batch
    def update(self, batch, pred, scores) -> None:
        lp = pred.log_probs.detach().cpu()
        y = batch.y.cpu()
        if self.task is None:
            self.task = "classification" if lp.ndim == 2 else "segmentation"
            if self.task == "classification" and self.ctx.calibration is not None:
                z, yc = self.ctx.calibration
                for score in self.opts["scores"]:
                    for alpha in self.opts["alpha"]:
                        cp = _estimator(score, alpha, self.opts["randomized"], self.seed).fit(z, yc, input="logits")
                        self.fitted[(score, alpha)] = cp
                        self.stats[(score, alpha)] = SetStats.zeros(lp.shape[1])
        if self.task == "segmentation":
            self.curves.append(self._curves(lp, y))
            return
        if not self.fitted:
            self.rows_lp.append(lp)
            self.rows_y.append(y)
            return
        keep = torch.ones_like(y, dtype=torch.bool) if self.ignore is None else y != self.ignore
        for key, cp in self.fitted.items():
            sets = cp.predict(lp[keep], input="logits")
            self.stats[key] = SetStats(*(a + b for a, b in zip(self.stats[key], set_stats(sets, y[keep].long()))))

    def _curves(self, lp, y):
        probs = torch.softmax(lp.to(torch.float64), 1)
        return image_curves(probs, y.long(), self.grid, loss=self.opts["loss"], target_class=self.opts["target_class"],
                            ignore_index=self.ignore)

    # ---------------------------------------------------------------- the end
    def finish(self, part) -> dict[str, Any] | None:
        if self.task == "classification":
            rows = self._classification()
        elif self.task == "segmentation":
            rows = self._segmentation()
        else:
            return None
        halves = f"{self.opts['splits']} random halves of the test set"
        protocol = "calibration loader" if self._calibrated() else halves
        out = {"task": self.task, "protocol": protocol, "rows": rows}
        if self.task == "segmentation":
            out["loss"] = self.opts["loss"]
            out["target_class"] = self.opts["target_class"]
        return out

    def _calibrated(self) -> bool:
        if self.task == "classification":
            return bool(self.fitted)
        return self.opts.get("calibration") is not None

    def _classification(self) -> list[dict[str, Any]]:
        if self.fitted:
            return [{"score": s, "alpha": a, "randomized": self.fitted[(s, a)].randomized,
                     "n_calibration": self.fitted[(s, a)].n_calibration_, **set_row(self.stats[(s, a)])}
                    for (s, a) in self.fitted]
        lp = torch.cat(self.rows_lp)
        y = torch.cat(self.rows_y)
        if self.ignore is not None:
            lp, y = lp[y != self.ignore], y[y != self.ignore]
        return split_rows(lp, y.long(), scores=self.opts["scores"], alphas=self.opts["alpha"],
                          randomized=self.opts["randomized"], splits=self.opts["splits"], seed=self.seed)

    def _segmentation(self) -> list[dict[str, Any]]:
        losses = torch.cat([c[0] for c in self.curves])
        sizes = torch.cat([c[1] for c in self.curves])
        calib = self.opts.get("calibration")
        cal = None
        if calib is not None:
            cal = torch.cat([self._curves(pred.log_probs.detach().cpu(), batch.y.cpu())[0]
                             for batch, pred in self.ctx.stream(calib, "calibration")])
        return risk_rows(losses, sizes, self.grid, alphas=self.opts["alpha"], splits=self.opts["splits"],
                         seed=self.seed, calibration_losses=cal)


def _start(ctx):
    return _Pass(ctx)


def _validate(value: Any, path: str) -> None:
    if not isinstance(value, Mapping) or value.get("task") not in ("classification", "segmentation") \
            or not isinstance(value.get("rows"), list):
        raise ValueError(f"`{path}` must be a dict with 'task' and a list of 'rows', got {value!r}")
    fields = FIELDS_CLASSIFICATION if value["task"] == "classification" else ("risk", "set_size")
    for i, row in enumerate(value["rows"]):
        if not isinstance(row, Mapping) or not all(isinstance(row.get(k), (int, float)) for k in ("alpha", *fields)):
            raise ValueError(f"`{path}['rows'][{i}]` must hold numbers {('alpha', *fields)}, got {row!r}")
        if not 0 < row["alpha"] < 1:
            raise ValueError(f"`{path}['rows'][{i}]['alpha']` must be in (0, 1), got {row['alpha']!r}")


def _aggregate(values: list) -> Any:
    """Seeds: the mean of every number of each row (rows are in the same order for every seed)."""
    first = values[0]
    rows = []
    for i, row in enumerate(first["rows"]):
        merged = dict(row)
        for k, v in row.items():
            if isinstance(v, float):
                merged[k] = sum(val["rows"][i][k] for val in values) / len(values)
        rows.append(merged)
    return {**first, "rows": rows, "seeds": len(values)}


def _fmt(row: Mapping[str, Any], key: str) -> str:
    v = row.get(key)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    sd = row.get(f"{key}_sd")
    return f"{v:.3f}" if sd is None else f"{v:.3f} ± {sd:.3f}"


def _on(protocol: str) -> str:
    """``"the calibration loader"``; ``"20 random halves of the test set"`` as recorded."""
    return f"the {protocol}" if protocol == "calibration loader" else protocol


def _render(results: Mapping[str, Any]) -> list:
    from ..report.model import Paragraph, Table

    methods = {n: m[KEY] for n, m in results.get("methods", {}).items() if KEY in m}
    if not methods:
        return []
    first = next(iter(methods.values()))
    if first["task"] == "classification":
        header = ("method", "score", "α", "coverage", "mean set size", "worst-class coverage")
        rows = [(n, str(r["score"]).upper() + (" (randomised)" if r.get("randomized") else ""), f"{r['alpha']:g}",
                 _fmt(r, "coverage"), _fmt(r, "set_size"), _fmt(r, "worst_class_coverage"))
                for n, v in methods.items() for r in v["rows"]]
        text = ("Split conformal prediction sets (Vovk et al. 2005; LAC: Sadinle et al. 2019; APS: Romano et al. "
                "2020; RAPS: Angelopoulos et al. 2021), calibrated on " + _on(first["protocol"]) + ". Coverage ≥ 1 − α "
                "is guaranteed on average over calibration draws; at equal coverage, smaller sets are better.")
    else:
        header = ("method", "α", "risk", "mean set size (per pixel)", "threshold 1 − λ̂")
        rows = [(n, f"{r['alpha']:g}", _fmt(r, "risk"), _fmt(r, "set_size"), _fmt(r, "threshold"))
                for n, v in methods.items() for r in v["rows"]]
        text = (f"Conformal risk control (Angelopoulos et al. 2022) of the per-image {first['loss']}, calibrated on "
                + _on(first["protocol"]) + ". The expected loss of a new image is ≤ α; the guarantee is over images, "
                "not pixels.")
    return [Paragraph(text), Table(header, rows, group_rows=True)]


SECTION = register(Section(KEY, "Prediction sets (conformal)", start=_start, validate=_validate,
                           aggregate=_aggregate, render=_render, default=False), replace=True)
