"""The calibrate pass of ``compare``: calibrators fitted on a calibration loader, or the repeated
2-fold protocol on the test sample (Ashukha et al. 2020); and the fitted scores.

Every calibrator comes from the registry by name (:mod:`netuq.calibration.registry`); the one the
results report in detail (parameter, reliability bins, ECE under shift) is
:data:`netuq.results.schema.REFERENCE_CALIBRATOR`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import metrics as M
from .. import scores as vocabulary
from ..calibration import registry
from ..results.schema import REFERENCE_CALIBRATOR
from ._run import MethodRun
from ._sample import Reservoir, flat_rows, take_rows
from ._scoring import held_out_scores

__all__ = ["Fitted", "calibrate", "fit_on", "protocol", "PROTOCOL_KEYS"]

PROTOCOL_KEYS = ("nll", "ece", "brier", "accuracy")


@dataclass
class Fitted:
    """The calibrators fitted for one method, by name; ``reference`` is the reference calibrator's
    fit (also when it was not asked for: the results always report it). ``scores``: the compute
    functions of the fitted scores; ``rows``: calibration examples (images) seen."""

    by_name: dict[str, Any] = field(default_factory=dict)
    reference: Any = None
    scores: dict[str, Any] = field(default_factory=dict)
    sample: tuple[torch.Tensor, torch.Tensor] | None = None
    rows: int = 0

    @property
    def reference_name(self) -> str:
        return REFERENCE_CALIBRATOR


def fit_on(z: torch.Tensor, y: torch.Tensor, names: Sequence[str], samples: int | None, seed: int) -> Fitted:
    """Every calibrator of ``names`` (``"none"`` skipped) fitted on logits ``z`` (M, C), labels ``y``."""
    fitted = Fitted()
    for name in names:
        if name != registry.NONE:
            fitted.by_name[name] = registry.make(name).fit(z, y, max_samples=samples, seed=seed)
    ref = fitted.by_name.get(REFERENCE_CALIBRATOR)
    fitted.reference = ref if ref is not None else registry.make(REFERENCE_CALIBRATOR).fit(
        z, y, max_samples=samples, seed=seed)
    return fitted


def calibrate(run: MethodRun, loader) -> Fitted:
    """Stream the calibration loader once: a bounded sample of (log-probs, label) over its valid
    rows, on which every calibrator is fitted, and every fitted score that the method offers."""
    o = run.options
    sample: Reservoir | None = None
    fitters: dict[str, Any] | None = None
    n = 0
    for pred, y in run.labelled(loader, "calibration", "calibration needs labels"):
        if sample is None:
            sample = Reservoir(None if pred.log_probs.ndim == 2 else o.max_pixels, o.seed)
            fitters = {s.name: s.fit() for s in vocabulary.compared_scores(o.scores)
                       if s.fitted and vocabulary.available(s, pred, run.traits.epistemic)}
        for fitter in fitters.values():
            fitter.update(pred, y)
        valid = None if o.ignore_index is None else y != o.ignore_index
        positions, flat, L = flat_rows(pred, valid)
        sample.offer(positions.numel(), take_rows(flat, L, positions, {}, y=y, offset=n))
        n += len(y)
    if sample is None or len(sample) == 0:
        raise ValueError("`calibration` has no valid label to fit a calibrator on")
    z, y = sample.get("logits"), sample.get("y")
    fitted = fit_on(z, y, o.calibrators, o.calibration_samples, o.seed)
    fitted.scores = {name: f.finish() for name, f in fitters.items()}
    fitted.sample, fitted.rows = (z, y), n
    return fitted


def bins_with_ece(p: torch.Tensor, y: torch.Tensor, n_bins: int) -> dict[str, Any]:
    """Reliability bins of (p, y) with their ECE (shown in the diagram's title)."""
    bins = M.reliability_bins(p, y, n_bins=n_bins, validate_args=False).to_dict()
    bins["ece"] = M.ece(p, y, n_bins=n_bins, validate_args=False)
    return bins


def protocol(sample: Reservoir, groups: int, options) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The repeated 2-fold protocol on the test sample, split by image (Ashukha et al. 2020).

    Same splits, fit seeds and scores as :func:`netuq.calibration.cross_validate`; for
    classification (the sample is every example, in order) its numbers are identical.
    Returns ``in_distribution`` (in the registry's display order) and, per calibrator, the
    reliability bins (with their ECE) of repeat 0's cross-fitted predictions.
    """
    from ..calibration.crossval import split_indices

    names, seed, n_bins = options.calibrators, options.seed, options.n_bins
    z, y, g = sample.get("logits"), sample.get("y"), sample.get("group")
    if groups < 2:
        raise ValueError(f"`test_loader` must hold at least 2 examples (images) for the 2-fold protocol, got {groups}")
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    rows[registry.NONE] = []
    cross: dict[str, list[torch.Tensor]] = {}
    cross_y: list[torch.Tensor] = []
    for r, k, held in split_indices(groups, folds=2, repeats=options.repeats, seed=seed):
        in_held = torch.isin(g, held)
        z_fit, y_fit, z_eval, y_eval = z[~in_held], y[~in_held], z[in_held], y[in_held]
        if y_eval.numel() == 0 or y_fit.numel() == 0:
            raise ValueError(f"the 2-fold protocol: repeat {r}, fold {k} has no valid pixel on one side")
        rows[registry.NONE].append(held_out_scores(torch.softmax(z_eval, 1), y_eval, n_bins))
        for name in names:
            if name == registry.NONE:
                continue
            cal = registry.make(name)
            try:
                cal.fit(z_fit, y_fit, max_samples=options.calibration_samples, seed=seed + 1000 * r + k)
            except ValueError as err:
                raise ValueError(f"the 2-fold protocol: repeat {r}, fold {k}: {err}") from err
            p = torch.softmax(cal(z_eval), 1)
            rows[name].append(held_out_scores(p, y_eval, n_bins))
            if r == 0:
                cross.setdefault(name, []).append(p)
        if r == 0:
            cross_y.append(y_eval)
    summary = {}
    for name, values in rows.items():
        if name == registry.NONE or name in names:
            summary[name] = {}
            for key in PROTOCOL_KEYS:
                v = torch.tensor([row[key] for row in values], dtype=torch.float64)
                summary[name][key] = {"mean": float(v.mean()), "std": float(v.std(unbiased=False))}
    rel = {name: bins_with_ece(torch.cat(ps), torch.cat(cross_y), n_bins) for name, ps in cross.items()}
    return {n: summary[n] for n in sorted(summary, key=registry.order_key)}, rel
