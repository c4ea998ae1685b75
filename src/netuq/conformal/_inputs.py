"""Inputs of the conformal estimators: logits, probabilities or a Prediction -> float64 probabilities.

Every conformal score is a function of the predictive probabilities, so the estimators turn
whatever they are given into (N, C, ...) float64 probabilities once, with the one rule netuq's
other entry points follow (``input="auto"``): a :class:`~netuq.Prediction` gives its mean
probabilities p̄ (softmax of ``log_probs`` in float64); a tensor whose every value is in [0, 1]
and whose rows sum to 1 over dim 1 is probabilities; anything else is logits (softmax over
dim 1 in float64). ``input="logits"`` or ``"probs"`` overrides the detection.
"""

from __future__ import annotations

from typing import Any

import torch

from .._checks import as_tensor, check_labels, check_log_values, check_probs, looks_like_probs

__all__ = ["INPUT_KINDS", "as_probs64", "labels_for"]

INPUT_KINDS = ("auto", "logits", "probs")


def _check_input(kind: object) -> str:
    if not isinstance(kind, str) or kind not in INPUT_KINDS:
        raise ValueError(f"`input` must be one of {', '.join(map(repr, INPUT_KINDS))}, got {kind!r}")
    return kind


def as_probs64(x: Any, *, input: str = "auto", name: str = "x") -> torch.Tensor:
    """(N, C, ...) float64 probabilities from logits, probabilities or a Prediction.

    Example:
        >>> as_probs64(torch.tensor([[0.0, 0.0]])).tolist()
        [[0.5, 0.5]]
        >>> as_probs64(torch.tensor([[0.25, 0.75]])).tolist()
        [[0.25, 0.75]]
    """
    from ..prediction import Prediction

    kind = _check_input(input)
    if isinstance(x, Prediction):
        if kind != "auto":
            raise ValueError(f"`input` must be 'auto' for a Prediction (it holds probabilities), got {kind!r}")
        return torch.softmax(x.log_probs.to(torch.float64), dim=1)
    t = as_tensor(x, name)
    if kind == "auto":
        kind = "probs" if looks_like_probs(t) else "logits"
    if kind == "probs":
        # Used as given (cast to float64, not renormalised): calibration and prediction score the
        # same numbers, which is all the guarantee needs.
        return check_probs(t, name).to(torch.float64)
    z = check_log_values(t, name)  # the rule of every entry point: -inf for a masked class
    return torch.softmax(z.to(torch.float64), dim=1)


def labels_for(probs: torch.Tensor, labels: Any, ignore_index: int | None, name: str = "x") -> torch.Tensor:
    """Labels of shape (N, ...) checked against (N, C, ...) ``probs`` (values in [0, C) or ``ignore_index``)."""
    y = check_labels(labels, probs.shape[1], probs.shape[:1] + probs.shape[2:], ignore_index=ignore_index,
                     probs_name=name)
    return y.to(probs.device).long()
