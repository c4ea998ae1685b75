"""The shift pass of ``compare``: accuracy, ECE, NLL, Brier and mean entropy on each shifted set,
and the ECE after the reference calibrator fitted on clean data (``ece_temperature``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ._calibrate import Fitted
from ._run import MethodRun
from ._scoring import metric_values, streaming

__all__ = ["shift"]


def _row(run: MethodRun, loader, severity, fitted: Fitted, name: str) -> dict[str, float]:
    o = run.options
    um = um_ref = None
    ent_sum, count = 0.0, 0
    for pred, y in run.labelled(loader, name, "shifted data needs labels"):
        if um is None:
            c = pred.log_probs.shape[1]
            um, um_ref = streaming(c, o.n_bins, o.ignore_index), streaming(c, o.n_bins, o.ignore_index)
        um.update(pred.probs, y)
        um_ref.update(torch.softmax(fitted.reference(pred.log_probs), 1), y)
        valid = torch.ones_like(y, dtype=torch.bool) if o.ignore_index is None else y != o.ignore_index
        ent_sum += float(pred.entropy[valid].double().sum())
        count += int(valid.sum())
    v, vr = metric_values(um), metric_values(um_ref)
    return {"severity": int(severity), "accuracy": v["accuracy"], "ece": v["ece"], "nll": v["nll"],
            "brier": v["brier"], f"ece_{fitted.reference_name}": vr["ece"], "entropy_mean": ent_sum / max(count, 1)}


def shift(run: MethodRun, shifts: Mapping[str, Mapping[int, Any]], fitted: Fitted) -> dict[str, list[dict]]:
    """``{kind: [row per severity]}`` (empty without shifted data)."""
    return {kind: [_row(run, loader, sev, fitted, f"shifts[{kind!r}][{sev!r}]") for sev, loader in by_sev.items()]
            for kind, by_sev in shifts.items()}
