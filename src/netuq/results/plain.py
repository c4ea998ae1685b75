"""Plain data for the results: what ``netuq.compare`` returns and the benchmark writes as JSON."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["to_plain"]


def to_plain(obj: Any) -> Any:
    """Tensors/arrays to lists, numpy scalars to floats, NaN/Inf to None (JSON has no NaN).

    Example:
        >>> import torch
        >>> to_plain({"a": torch.tensor([1.5, float("nan")]), 2: (1, "x")})
        {'a': [1.5, None], '2': [1, 'x']}
    """
    try:
        import torch

        if isinstance(obj, torch.Tensor):
            return to_plain(obj.detach().cpu().tolist())
    except ImportError:  # pragma: no cover
        pass
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return to_plain(obj.to_dict())
    if hasattr(obj, "tolist") and callable(obj.tolist):
        return to_plain(obj.tolist())
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (int, str, bool)) or obj is None:
        return obj
    if hasattr(obj, "item"):
        return to_plain(obj.item())
    return str(obj)
