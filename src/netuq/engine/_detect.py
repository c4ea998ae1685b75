"""The detect pass of ``compare``: OOD detection per kind and pooled, for every sampled score.

OOD inputs are whole images of an OOD loader (every row or pixel is OOD) or the anomaly pixels
of the test loader; in-distribution rows are the test sample's (anomaly pixels left out).
"""

from __future__ import annotations

from typing import Any

import torch

from .. import metrics as M
from .. import scores as vocabulary
from ._run import MethodRun
from ._sample import Reservoir, flat_rows, per_row, sampled_scores, take_rows
from ._scoring import detection, downsample, histogram, uncertainty_scores
from ._test_pass import TestPass
from ._views import kind_curves

__all__ = ["detect"]


def _score_loader(run: MethodRun, loader, name: str, cap: int | None, fitted_scores) -> tuple[dict, int]:
    """A bounded sample of every score over all rows (pixels) of an OOD loader, and its image count."""
    o = run.options
    sample = Reservoir(cap, o.seed)
    images = 0
    for _batch, pred, _ in run.stream(loader, name, labels="unused"):
        scores = uncertainty_scores(pred, run.traits.epistemic, o.scores, fitted_scores)
        positions, flat, L = flat_rows(pred, None)
        sample.offer(positions.numel(), take_rows(flat, L, positions, per_row(scores, positions.numel()),
                                                  logits=False))
        images += len(pred)
    return sampled_scores(sample, vocabulary.SCORES), images


def detect(run: MethodRun, test: TestPass, ood: dict[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
    """``(part entries "ood", "ood_hist", "roc", "ood_kinds", "ood_kinds_hist", "ood_kinds_roc", OOD images
    per kind)``; empty without OOD data."""
    in_scores = test.scores()
    fitted_scores = None if test.fitted is None else test.fitted.scores
    out_by_kind: dict[str, dict[str, torch.Tensor]] = {}
    seen: dict[str, int] = {}
    for kind, loader in ood.items():
        out_by_kind[kind], seen[kind] = _score_loader(run, loader, f"ood[{kind!r}]", run.options.cap(test.task),
                                                      fitted_scores)
    if test.anomaly is not None and len(test.anomaly):
        out_by_kind["anomaly"] = {k: test.anomaly.get(f"s:{k}") for k in in_scores}
        seen["anomaly"] = test.anomaly.seen
    part: dict[str, Any] = {}
    if not out_by_kind:
        return part, seen
    a = test.sample.get("anomaly")
    in_ood = in_scores if a is None else {k: u[~a] for k, u in in_scores.items()}
    part["ood"], part["ood_hist"], part["roc"], part["ood_kinds"] = {}, {}, {}, {}
    for kind, outs in out_by_kind.items():
        part["ood_kinds"][kind] = {k: detection(in_ood[k], outs[k]) for k in in_ood if outs.get(k) is not None}
    for k, u_in in in_ood.items():
        pooled = [outs[k] for outs in out_by_kind.values() if outs.get(k) is not None and outs[k].numel()]
        if not pooled or not u_in.numel():
            continue
        u_out = torch.cat(pooled)
        part["ood"][k] = detection(u_in, u_out)
        part["ood_hist"][k] = histogram(u_in, u_out)
        fpr, tpr = M.roc_curve(u_out, u_in)
        f, t = downsample(fpr, tpr)
        part["roc"][k] = {"fpr": f, "tpr": t}
    part["ood_kinds_hist"], part["ood_kinds_roc"] = kind_curves(in_ood, out_by_kind)
    return part, seen
