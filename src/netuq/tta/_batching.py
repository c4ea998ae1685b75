"""How many TTA views one forward call runs (TTA's own heuristic; the chunking helpers are shared).

On CPU, batching views pays only while one view's input is small: per-call overheads are then a
large part of the forward. For larger inputs the gain is small and the activation memory grows
with the rows per call. Measured on one core (perf/bench_tta.py, a 2-core machine):
SmallUNet on 4 x 1 x 64 x 64 ran 2 views per call 7-15% faster than 1 in one session (loaded)
and 0.95-0.99x in another (idle, three processes), with twice the peak memory of ttach's one view
per call (18.6 vs 9.4 MiB); 4 views per call 25% slower, all 8 views 10% slower; SmallCNN on
64 x 1 x 28 x 28 gains nothing from 2 views and loses 35% with all 8. So on CPU views are stacked
only while the stacked input stays under :data:`CPU_INPUT_ELEMENTS` (2**13: all 8 views of one
28 x 28 image, one view of 4 x 64 x 64), at least one view: peak memory stays that of one view's
forward (ttach's) for all but tiny inputs. Other devices want big batches:
:func:`netuq._batching.default_chunk`. Rows are split further where one view's largest
activation would leave the caches (:meth:`netuq.TTA._forward`).
"""

from __future__ import annotations

import torch

from .._batching import balanced_chunk, default_chunk

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
