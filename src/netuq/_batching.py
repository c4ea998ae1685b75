"""How many samples (MC dropout) or views (TTA) one forward call runs: shared by both methods.

* :func:`default_chunk`: a memory cap — as many samples as keep the stacked input under an element
  budget.
* :func:`activation_chunk`: what is *fast* on the device: cap the samples per forward by the
  largest activation one forward produces (measured once per model and input shape by the caller),
  not by the input size. A budget on the input alone over-batched on CPU (0.6× a plain loop for
  "dropout in every block": 200 rows of 32-channel 28 × 28 activations leave the caches).
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

__all__ = [
    "ACTIVATION_ELEMENTS", "DEFAULT_ELEMENTS", "LargestTensor", "activation_chunk", "balanced_chunk", "default_chunk",
]  # fmt: skip

# Memory cap on the rows per forward: as many samples (or TTA views) as keep the stacked input (the
# trunk output when cached) under this many elements, and at least one sample (N rows).
DEFAULT_ELEMENTS = {"cpu": 2**18, "other": 2**21}

# What is fast: samples per forward such that the largest activation of one forward (measured once on
# a single sample) stays under this many elements. On CPU batching pays while activations stay near the
# caches and stops paying soon after: 2**20 float32 elements (4 MiB) — e.g. 40 rows of a 32-channel
# 28 x 28 convolution. Measured for "dropout in every block" (SmallCNN width 32, batch 8, S = 50):
# issue 14 (idle, 2 threads): 80 rows per forward 1.2x a loop of single forwards, 200 rows 0.55x;
# perf/bench_mc_dropout.py (loaded, 1 thread): 40 rows 1.10x, 80 rows 0.92x, 400 rows 0.62x.
# Accelerators keep gaining up to the memory cap.
ACTIVATION_ELEMENTS = {"cpu": 2**20, "other": 2**26}


def default_chunk(per_row: int, n: int, device: torch.device) -> int:
    """Samples (views) per forward under the memory cap: ≥ 1, stacked input ≤ the element budget."""
    budget = DEFAULT_ELEMENTS["cpu" if device.type == "cpu" else "other"]
    return max(1, budget // (max(1, per_row) * n))


def balanced_chunk(per_forward: int, total: int) -> int:
    """The smallest chunk size that needs as few chunks as ``per_forward`` does (50 by 41 -> 25 + 25).

    Example:
        >>> balanced_chunk(41, 50)
        25
    """
    per_forward = max(1, min(per_forward, total))
    return -(-total // -(-total // per_forward))


def activation_chunk(largest_per_sample: int, device: torch.device) -> int:
    """Samples per forward whose largest activation stays under :data:`ACTIVATION_ELEMENTS` (≥ 1).

    ``largest_per_sample``: elements of the largest tensor one forward of one sample (N rows)
    produces, e.g. 8 × 32 × 28 × 28 for a 32-channel convolution on 8 images of 28 × 28.

    Example:
        >>> activation_chunk(8 * 32 * 28 * 28, torch.device("cpu"))  # 40 rows of 28 x 28 x 32
        5
    """
    budget = ACTIVATION_ELEMENTS["cpu" if device.type == "cpu" else "other"]
    return max(1, budget // max(1, largest_per_sample))


class LargestTensor(TorchFunctionMode):
    """Torch-function mode recording ``largest``, the most elements of any tensor a torch function
    returned while it was active (the largest activation of a forward).

    Example:
        >>> with LargestTensor() as probe:
        ...     _ = torch.nn.Conv2d(1, 8, 3, padding=1)(torch.zeros(2, 1, 5, 5))
        >>> probe.largest                                   # 2 x 8 x 5 x 5
        400
    """

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out
