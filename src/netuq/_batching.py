"""How many samples (MC dropout) or views (TTA) one forward call runs: shared by both methods.

* :func:`default_chunk`: a memory cap — as many samples as keep the stacked input under an element
  budget.
* :func:`activation_chunk`: what is *fast* on the device: cap the samples per forward by the
  largest activation one forward produces (measured once per model and input shape by the caller),
  not by the input size. A budget on the input alone over-batched on CPU (0.6× a plain loop for
  "dropout in every block": 200 rows of 32-channel 28 × 28 activations leave the caches).
* :func:`couples_rows` / :func:`batch_statistics`: whether stacking is allowed at all. Stacking
  samples (views) along dim 0 is exact only when each row's output depends on that row alone. A
  model whose rows interact — BatchNorm on the batch's statistics (training mode, or
  ``track_running_stats=False`` in eval mode), ``F.batch_norm(..., training=True)`` in a custom
  layer, a reduction or reordering over the batch dimension (``x - x.mean(0)``, ``x / x.max()``,
  ``x.flip(0)``) — gives other numbers on a stacked batch than on the user's. Decided by what
  the model does: the probe forward of each input shape (one sample / view, the user's N rows)
  runs under a torch-function mode that looks at every call; such a model then runs one sample
  (view) per forward, as the user's own loop would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = [
    "ACTIVATION_ELEMENTS", "DEFAULT_ELEMENTS", "LargestTensor", "activation_chunk", "balanced_chunk",
    "batch_statistics", "couples_rows", "default_chunk",
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


def _row_ops() -> dict[Callable, tuple[int, bool, Any]]:
    """func -> (position of its ``dim`` argument, whether an absent dim means every dimension, the
    default dim otherwise): the reductions and reorderings that mix rows when dim 0 is among theirs."""
    table: dict[Callable, tuple[int, bool, Any]] = {}
    every = (
        "sum", "mean", "std", "var", "std_mean", "var_mean", "amax", "amin", "max", "min", "aminmax", "prod",
        "nansum", "nanmean", "median", "nanmedian", "argmax", "argmin", "count_nonzero", "all", "any", "norm",
        "argsort", "sort", "roll", "flip",
    )  # fmt: skip
    along = ("cumsum", "cumprod", "cummax", "cummin", "logcumsumexp", "logsumexp", "softmax", "log_softmax")
    for name in every + along:
        for owner in (torch, torch.Tensor):
            func = getattr(owner, name, None)
            if func is not None:
                at = 2 if name in ("norm", "roll") else 1
                default = -1 if name in ("sort", "argsort") else None
                table[func] = (at, name in every and default is None, default)
    table[F.softmax] = table[F.log_softmax] = (1, False, None)
    table[F.normalize] = (2, False, 1)
    table[torch.linalg.vector_norm] = (2, True, None)
    for owner in (torch, torch.Tensor):
        table[owner.topk] = (2, False, -1)
    return table


_ROW_OPS = _row_ops()
_BATCH_NORMS = {F.batch_norm: 1, torch.batch_norm: 3}  # func -> position of running_mean (training: 5)


def couples_rows(func: Callable, args: tuple, kwargs: dict, rows: int) -> bool:
    """Whether a torch function call mixes the rows of a forward of ``rows`` rows (dim 0):
    batch normalisation on the batch's statistics, or a reduction / reordering over dim 0 (or
    over every dimension) of a tensor with ``rows`` rows.

    Example:
        >>> x = torch.ones(4, 3)
        >>> couples_rows(torch.Tensor.mean, (x, 0), {}, 4), couples_rows(torch.Tensor.mean, (x, 1), {}, 4)
        (True, False)
        >>> couples_rows(F.batch_norm, (x, None, None), {"training": True}, 4)
        True
    """
    at = _BATCH_NORMS.get(func)
    spec = _ROW_OPS.get(func) if at is None else None
    if at is None and spec is None:
        return False
    x = args[0] if args else kwargs.get("input")
    if not isinstance(x, torch.Tensor) or x.ndim == 0 or x.shape[0] != rows:
        return False
    if at is not None:
        training = args[5] if len(args) > 5 else kwargs.get("training", False)
        running = args[at] if len(args) > at else kwargs.get("running_mean")
        return bool(training) or running is None
    at, every, default = spec
    dim = args[at] if len(args) > at else kwargs.get("dim", kwargs.get("dims", kwargs.get("axis", default)))
    if isinstance(dim, bool):  # torch.std(x, True): the unbiased flag, no dim
        dim = default
    if dim is None:
        return every
    dims = dim if isinstance(dim, (tuple, list)) else (dim,)
    return any(isinstance(d, int) and not isinstance(d, bool) and d % x.ndim == 0 for d in dims)


def batch_statistics(model: Any) -> bool:
    """Whether a BatchNorm layer of ``model`` normalises with the batch's statistics as it is now
    (training mode, or no running statistics): its outputs depend on the other rows.

    Example:
        >>> batch_statistics(nn.BatchNorm2d(3).eval()), batch_statistics(nn.BatchNorm2d(3, track_running_stats=False))
        (False, True)
    """
    if not isinstance(model, nn.Module):
        return False
    return any(
        m.training or m.running_mean is None
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    )


class LargestTensor(TorchFunctionMode):
    """Torch-function mode recording ``largest``, the most elements of any tensor a torch function
    returned while it was active (the largest activation of a forward), and (``rows`` given)
    ``coupled``: whether a call mixed the rows (:func:`couples_rows`).

    Example:
        >>> with LargestTensor() as probe:
        ...     _ = torch.nn.Conv2d(1, 8, 3, padding=1)(torch.zeros(2, 1, 5, 5))
        >>> probe.largest, probe.coupled                    # 2 x 8 x 5 x 5
        (400, False)
    """

    def __init__(self, rows: int | None = None) -> None:
        super().__init__()
        self.largest = 0
        self.rows = rows
        self.coupled = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if self.rows is not None and not self.coupled and couples_rows(func, args, kwargs or {}, self.rows):
            self.coupled = True
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out
