"""How many TTA views one forward call runs (TTA's own heuristic; the chunking helpers are shared).

On CPU, batching views pays only while one view's input is small: per-call overheads are then
a large part of the forward, while large batches leave the caches and cost memory in proportion.
Measured on one core (perf/bench_tta.py): SmallUNet on 4 × 64 × 64 inputs runs 2 views per call
about 15% faster than 1, all 8 views about 10% slower than 1; SmallCNN on 64 × 28 × 28 gains
nothing from 2 views and loses 35% with all 8. So on CPU views are stacked while the stacked
input stays under :data:`CPU_INPUT_ELEMENTS` (2**15: two views of 4 × 64 × 64, all eight views of
one 28 × 28 image), at least one view; peak memory then stays within about 1.5 forwards of one
view. Other devices want big batches: :func:`netuq.methods._batching.default_chunk`.
"""

from __future__ import annotations

import torch

from ..methods._batching import balanced_chunk, default_chunk

__all__ = ["CPU_INPUT_ELEMENTS", "views_per_forward"]

CPU_INPUT_ELEMENTS = 2**13


def views_per_forward(n: int, per_row: int, views: int, device: torch.device, max_batch: int | None = None) -> int:
    """Views per forward call, balanced over the calls (8 views by 3 -> 3 calls of 3, 3, 2).

    Args:
        n: images in the batch (rows per view).
        per_row: elements of one augmented image (C_in · h · w).
        views: views of this size to run.
        device: where the model runs.
        max_batch: the user's cap on rows per forward (wins when given).

    Example:
        >>> views_per_forward(1, 28 * 28, 8, torch.device("cpu"))    # tiny: all views in one call
        8
        >>> views_per_forward(4, 64 * 64, 8, torch.device("cpu"))    # one view per call
        1
        >>> views_per_forward(4, 64 * 64, 8, torch.device("cpu"), max_batch=12)
        3
    """
    if max_batch is not None:
        per_forward = max(1, max_batch // n)
    elif device.type == "cpu":
        per_forward = max(1, CPU_INPUT_ELEMENTS // (max(1, per_row) * n))
    else:
        per_forward = default_chunk(per_row, n, device)
    return balanced_chunk(per_forward, views)
