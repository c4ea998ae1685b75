"""What the non-parametric (step-function) calibrators share: probabilities in, floored log-probabilities out.

Histogram binning and isotonic regression map softmax probabilities to calibrated probabilities,
which may be exactly 0 (a bin that never held the label). A :class:`Calibrator` returns logits, so
:class:`StepwiseCalibrator` returns ``log(max(q, min_prob))``: ``softmax`` of it is ``q`` floored
at ``min_prob`` and renormalised (each probability moves by at most C · ``min_prob``), and the NLL
of a held-out label stays finite. Work is in float64 (float32 on MPS, which has no float64) on the
class-last (M, C) view, so segmentation maps (N, C, H, W, ...) go through the same code.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from .base import Calibrator, check_positive_float, nll64


def compute_dtype(z: torch.Tensor) -> torch.dtype:
    """float64, or float32 on MPS (no float64 there)."""
    return torch.float32 if z.device.type == "mps" else torch.float64


def class_last(z: torch.Tensor) -> torch.Tensor:
    """(N, C, ...) → (M, C) with M = N · H · W · ... (a view where possible)."""
    return z.movedim(1, -1).reshape(-1, z.shape[1])


class StepwiseCalibrator(Calibrator):
    """Shared plumbing: ``_probs`` maps (M, C) softmax probabilities to calibrated ones (rows sum to 1).

    Args:
        min_prob: floor of the calibrated probabilities before their log (see the module), in
            (0, 1/(2C)) for C classes (checked at ``fit``).
    """

    _info_names: ClassVar[tuple[str, ...]] = ("n_samples_", "nll_before_", "nll_after_")

    def __init__(self, *, min_prob: float = 1e-6) -> None:
        self.min_prob = check_positive_float(min_prob, "min_prob")

    def _check_min_prob(self, num_classes: int) -> None:
        if self.min_prob * 2 * num_classes >= 1:
            raise ValueError(
                f"`min_prob` must be below 1/(2C) = {1 / (2 * num_classes):.3g} for C = {num_classes} classes, "
                f"got {self.min_prob!r}"
            )

    def _probs(self, p: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _fit_probs(self, p: torch.Tensor, y: torch.Tensor) -> None:  # pragma: no cover
        raise NotImplementedError

    def _fit(self, z, y, image, seed, owned) -> None:
        self._check_min_prob(z.shape[1])
        z64 = z.to(compute_dtype(z))
        self._fit_probs(torch.softmax(z64, 1), y)
        self.nll_before_ = nll64(z64, y)
        self.nll_after_ = nll64(self._masked_transform(z64), y)

    def _transform(self, z: torch.Tensor) -> torch.Tensor:
        dtype = compute_dtype(z)
        flat = class_last(z).to(dtype)
        q = self._probs(torch.softmax(flat, 1))
        out = torch.log(q.clamp_min(self.min_prob)).to(z.dtype)
        shape = (z.shape[0], *z.shape[2:], z.shape[1])
        return out.reshape(shape).movedim(-1, 1)

    def _check_fitted_values(self) -> str | None:
        problem = super()._check_fitted_values()
        if problem is None and self.min_prob * 2 * self.num_classes_ >= 1:
            return f"`min_prob` must be below 1/(2C) for C = {self.num_classes_}, got {self.min_prob!r}"
        return problem


def segment_ids(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Start offsets (C + 1,) of C consecutive segments of the given (integer-valued) lengths."""
    lengths = counts.to(torch.int64)
    offsets = torch.zeros(lengths.numel() + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(lengths, 0)
    return lengths, offsets


def check_counts(counts: torch.Tensor, total: int, what: str, name: str) -> str | None:
    """None if ``counts`` are integers >= 0 summing to ``total`` (the length of ``what``)."""
    if bool((counts < 0).any()) or not bool((counts == counts.round()).all()):
        return f"`{name}` must hold integers >= 0"
    if int(counts.sum()) != total:
        return f"`{name}` must sum to the length of `{what}` ({total}), got {int(counts.sum())}"
    return None
