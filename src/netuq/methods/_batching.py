"""How many samples (MC dropout) or views (TTA) one forward call runs: shared by both methods."""

from __future__ import annotations

import torch

__all__ = ["DEFAULT_ELEMENTS", "balanced_chunk", "default_chunk"]

# Rows per forward when ``max_batch`` is None: as many samples (or TTA views) as keep the stacked
# input (the trunk output when cached) under this many elements, and at least one sample (N rows).
# CPU kernels slow down once activations leave the caches, accelerators want big batches:
# 2**18 elements on CPU (e.g. 330 rows of 28 x 28, 64 of 64 x 64), 2**21 elsewhere.
DEFAULT_ELEMENTS = {"cpu": 2**18, "other": 2**21}


def default_chunk(per_row: int, n: int, device: torch.device) -> int:
    """Samples (views) per forward when ``max_batch`` is None: ≥ 1, stacked input ≤ the budget."""
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
