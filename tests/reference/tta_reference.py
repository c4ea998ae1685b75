"""The plain TTA path, independent of netuq.TTA's fast pass: every view de-augmented and added to a
Prediction one at a time, in float64."""

from __future__ import annotations

import torch

import netuq


def tta_reference(model, transforms, x, task="segmentation"):
    """Prediction.add_log_probs over each view's de-augmented log-probabilities: the plain path."""
    ref = netuq.Prediction()
    with torch.no_grad():
        for v in transforms:
            log_p = model(v.augment(x)).double().log_softmax(1)
            ref.add_log_probs(v.deaugment(log_p, x.shape[-2:]) if task == "segmentation" else log_p)
    return ref
