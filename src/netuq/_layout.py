"""Opt-in channels-last inputs (``channels_last=True`` on TTA, MCDropout, Ensemble and ``fit``).

On CPU, PyTorch's oneDNN convolutions run faster on channels-last inputs (the values of one
pixel's channels next to each other, strides (H·W·C, 1, W·C, C)) than on contiguous (N, C, H, W)
ones, and a convolution's output keeps its input's layout, so the whole network runs channels-last
without touching the model or its weights (``perf/bench_tta.py``, ``perf/bench_ensemble.py`` and
``perf/bench_mc_dropout.py`` show the gain as their ``channels_last=True`` rows).

It is **opt-in** because it can change what a model computes: a convolution sums in another
order (float rounding: outputs differ by up to about ``sqrt(eps)`` relative to their scale, 3.5e-4
in float32, on a plain CNN), and code that assumes contiguous activations computes something
else or raises (``.view(N, -1)`` on a convolution's output, a custom op reading ``data_ptr()``,
element-wise dropout masks drawn in memory order). No check is made: the default (False, or None)
feeds every input exactly as given, bit-for-bit what the user's own loop computes.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["as_layout", "check_channels_last", "to_channels_last"]


def check_channels_last(value: Any) -> bool:
    """Validate a ``channels_last`` argument: True (opt in), False or None (as given).

    Example:
        >>> check_channels_last(None), check_channels_last(True)
        (False, True)
    """
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"`channels_last` must be True, False or None (as given), got {value!r}")
    return bool(value)


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """A channels-last copy of a 4-d tensor (N, C, H, W), with strides (H·W·C, 1, W·C, C) even for
    C = 1, where ``x.contiguous(memory_format=torch.channels_last)`` keeps the contiguous strides
    (both describe the same memory, and PyTorch then picks the contiguous kernels).

    Example:
        >>> to_channels_last(torch.zeros(2, 1, 4, 3)).stride()
        (12, 1, 3, 1)
    """
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last).copy_(x)


def as_layout(x: Any, channels_last: bool) -> Any:
    """``x`` as the model gets it: a channels-last copy of a 4-d floating-point tensor when
    ``channels_last``, else ``x`` itself (anything else passes unchanged).

    Example:
        >>> x = torch.zeros(2, 3, 4, 4)
        >>> as_layout(x, False) is x, as_layout(x, True).stride()
        (True, (48, 1, 12, 3))
    """
    if channels_last and isinstance(x, torch.Tensor) and x.ndim == 4 and x.is_floating_point():
        return to_channels_last(x)
    return x
