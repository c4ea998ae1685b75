"""One batch of a loader, split into its parts: shared by the engine and netuq.distributed."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Batch"]


@dataclass
class Batch:
    """One batch, split: ``x`` (N, ...) input, ``y`` labels or None, ``anomaly`` (N, ...) bool mask or None."""

    index: int
    x: torch.Tensor
    y: torch.Tensor | None
    anomaly: torch.Tensor | None
