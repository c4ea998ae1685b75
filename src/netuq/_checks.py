"""Shared validators: one place for the checks and the one error format.

Messages follow ``"`name` must be <expected>, got <found>"`` so users see at once which
argument is wrong and why. Validation happens at the public boundary; inner code trusts it.
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = [
    "as_tensor",
    "check_probs",
    "check_log_values",
    "check_logits",
    "check_labels",
    "check_scores",
    "flatten_valid",
    "move_class_last",
    "float_dtype",
    "check_ignore_index",
    "check_bool",
    "looks_like_probs",
    "check_n_bins",
    "sum_tolerance",
]

PROB_SUM_TOL = 1e-3


def sum_tolerance(dtype: torch.dtype, num_classes: int, *, log: bool = False) -> float:
    """Largest accepted |Σ_c p_c − 1| for C probabilities (or log-probabilities) stored in ``dtype``.

    Rounding C valid probabilities to ``dtype`` moves their sum by at most u·Σ p = u (u = eps/2)
    plus C half-spacings of the subnormal numbers; rounding log-probabilities moves each p_c by
    the factor exp(±u·|log p_c|), so the sum by at most u·Σ p_c |log p_c| ≤ u·log C (+ its own
    rounding). The tolerance is twice that bound, and never below ``PROB_SUM_TOL`` (1e-3, for
    probabilities rounded by hand): 1e-3 in float32/float64 and float16 (C ≲ 1000 for
    log-probabilities), 2⁻⁷ for bfloat16 probabilities.

    Args:
        dtype: the dtype the values were stored in (before any upcast).
        num_classes: C, the size of the summed dimension.
        log: the values are log-probabilities.

    Example:
        >>> sum_tolerance(torch.float32, 10), sum_tolerance(torch.bfloat16, 10)
        (0.001, 0.0078125)
        >>> round(sum_tolerance(torch.float16, 64, log=True), 5)  # float16 log(1/64) is off by 0.3 ulp
        0.00504
    """
    if not dtype.is_floating_point:
        return PROB_SUM_TOL
    info = torch.finfo(dtype)
    u = info.eps / 2
    subnormal = info.smallest_normal * info.eps  # the spacing of the subnormal numbers
    c = max(int(num_classes), 1)
    bound = u * (math.log(c) + 1.0) if log else u + c * subnormal / 2
    return max(PROB_SUM_TOL, 2.0 * bound)


def as_tensor(x: Any, name: str) -> torch.Tensor:
    """Return ``x`` as a tensor (numpy arrays and sequences are converted, tensors kept)."""
    if isinstance(x, torch.Tensor):
        return x
    try:
        import numpy as np

        if isinstance(x, np.ndarray):
            return torch.from_numpy(x)
        return torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"`{name}` must be a tensor or array, got {type(x).__name__}") from err


def float_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype to compute in: float64 stays float64, everything else (half, bf16) is float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_float(x: torch.Tensor, name: str) -> None:
    if not x.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor, got dtype {x.dtype}")


def _check_finite(x: torch.Tensor, name: str) -> None:
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        kinds = []
        if bool(torch.isnan(x).any()):
            kinds.append("NaN")
        if bool(torch.isinf(x).any()):
            kinds.append("Inf")
        raise ValueError(f"`{name}` must be finite, got {bad} {'/'.join(kinds)} value(s)")


def _check_rank(x: torch.Tensor, name: str, min_ndim: int, what: str) -> None:
    if x.ndim < min_ndim:
        raise ValueError(f"`{name}` must have shape {what}, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"`{name}` must not be empty, got shape {tuple(x.shape)}")


def check_logits(logits: Any, name: str = "logits", *, min_ndim: int = 2) -> torch.Tensor:
    """Validate logits of shape (N, C, ...): floating point, finite, non-empty."""
    logits = as_tensor(logits, name)
    _check_float(logits, name)
    _check_rank(logits, name, min_ndim, "(N, C) or (N, C, ...)" if min_ndim == 2 else f"with >= {min_ndim} dims")
    _check_finite(logits, name)
    return logits


def check_log_values(x: Any, name: str = "logits", *, class_dim: int = 1, min_ndim: int = 2,
                     what: str = "(N, C) or (N, C, ...)") -> torch.Tensor:
    """Validate logits or log-probabilities: float, non-empty, no NaN or +Inf — the one rule of every entry point.

    -Inf (a masked class, or log 0) is allowed as long as every row has a finite entry over
    ``class_dim``. ``Prediction.from_logits``, ``predict``, MCDropout, Ensemble, TTA, the
    calibrators and the CLI's file reading all apply this rule.

    Example:
        >>> check_log_values(torch.tensor([[0.0, float("-inf")]])).shape
        torch.Size([1, 2])
    """
    x = as_tensor(x, name)
    _check_float(x, name)
    _check_rank(x, name, min_ndim, what)
    lo, hi = torch.aminmax(x)  # min/max propagate NaN: one allocation-free pass when all is finite
    if bool(torch.isfinite(lo)) and bool(torch.isfinite(hi)):
        return x
    nan = int(torch.isnan(x).sum())
    if nan:
        raise ValueError(f"`{name}` must not contain NaN, got {nan} NaN value(s)")
    pos = int(torch.isposinf(x).sum())
    if pos:
        raise ValueError(f"`{name}` must be finite or -inf (a masked class), got {pos} +Inf value(s)")
    empty = int((~torch.isfinite(x).any(class_dim)).sum())
    if empty:
        raise ValueError(
            f"`{name}` must have a finite entry in every row over the class dimension (dim {class_dim}), "
            f"got {empty} row(s) that are all -inf"
        )
    return x


def check_probs(probs: Any, name: str = "probs", *, dim: int = 1, min_ndim: int = 2) -> torch.Tensor:
    """Validate probabilities of shape (N, C, ...): floats in [0, 1] summing to 1 over ``dim``.

    The tolerance on the sum follows the dtype (:func:`sum_tolerance`): 1e-3, or more where the
    dtype's own rounding of valid probabilities moves the sum further (bfloat16: 2⁻⁷).
    """
    probs = as_tensor(probs, name)
    _check_float(probs, name)
    _check_rank(probs, name, min_ndim, "(N, C) or (N, C, ...)" if min_ndim == 2 else "(S, N, C, ...)")
    _check_finite(probs, name)
    tol = sum_tolerance(probs.dtype, probs.shape[dim])
    lo, hi = (float(v) for v in torch.aminmax(probs))
    if lo < 0.0 or hi > 1.0 + tol:
        raise ValueError(f"`{name}` must be probabilities in [0, 1], got values in [{lo:.4g}, {hi:.4g}]")
    sums = probs.sum(dim=dim, dtype=float_dtype(probs))  # float32 rounding (~1e-6) is far below the tolerance
    err = float((sums - 1.0).abs().max())
    if err > tol:
        raise ValueError(
            f"`{name}` must sum to 1 over the class dimension (dim {dim}, tolerance {tol:.4g}), "
            f"got sums off by up to {err:.4g}; pass softmax(logits), not logits"
        )
    return probs


def check_scores(scores: Any, name: str) -> torch.Tensor:
    """Validate a 1-D (or flattenable) finite real score vector and return it flattened.

    Floating-point and integer scores are kept; bool scores (a hard 0/1 decision) become float32;
    complex scores are a TypeError (they have no order).
    """
    scores = as_tensor(scores, name)
    if scores.is_complex():
        raise TypeError(f"`{name}` must be real numbers (floating point, integer or bool), got dtype {scores.dtype}")
    if scores.dtype == torch.bool:
        scores = scores.to(torch.float32)
    if scores.numel() == 0:
        raise ValueError(f"`{name}` must not be empty, got shape {tuple(scores.shape)}")
    if scores.is_floating_point():
        _check_finite(scores, name)
    return scores.reshape(-1)


def check_labels(
    labels: Any,
    num_classes: int,
    expected_shape: tuple[int, ...] | torch.Size,
    *,
    ignore_index: int | None = None,
    name: str = "labels",
    probs_name: str = "probs",
) -> torch.Tensor:
    """Validate integer labels of shape ``expected_shape`` with values in [0, C) or ``ignore_index``."""
    labels = as_tensor(labels, name)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"`{name}` must be an integer tensor, got dtype {labels.dtype}")
    if tuple(labels.shape) != tuple(expected_shape):
        raise ValueError(
            f"`{name}` must have shape {tuple(expected_shape)} to match `{probs_name}` "
            f"(the class dimension removed), got shape {tuple(labels.shape)}"
        )
    if labels.numel() == 0:
        raise ValueError(f"`{name}` must not be empty, got shape {tuple(labels.shape)}")
    ignore_index = check_ignore_index(ignore_index, labels.dtype, labels_name=name)
    valid = labels if ignore_index is None else labels[labels != ignore_index]
    if valid.numel() == 0:
        raise ValueError(f"`{name}` must contain at least one value other than ignore_index={ignore_index}")
    lo, hi = int(valid.min()), int(valid.max())
    if lo < 0 or hi >= num_classes:
        extra = "" if ignore_index is None else f" (or ignore_index={ignore_index})"
        raise ValueError(f"`{name}` must be integers in [0, {num_classes}){extra}, got values in [{lo}, {hi}]")
    return labels


def check_ignore_index(
    ignore_index: Any, labels_dtype: torch.dtype | None = None, *, labels_name: str = "labels"
) -> int | None:
    """``ignore_index`` as an ``int`` (or None) after checking it is an integer the labels can hold.

    A comparison ``labels != ignore_index`` runs in the labels' dtype, so a value that dtype
    cannot represent would wrap (255 is -1 in int8, -1 is 255 in uint8) and drop real labels:
    such a value is refused instead. With ``labels_dtype=None`` only the type is checked.

    Raises:
        TypeError: ``ignore_index`` is not an integer (bools and floats included).
        ValueError: ``labels_dtype`` cannot represent ``ignore_index``.

    Example:
        >>> check_ignore_index(255, torch.uint8)
        255
    """
    import numbers

    if ignore_index is None:
        return None
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        found = f"{type(ignore_index).__name__} {ignore_index!r}"
        raise TypeError(f"`ignore_index` must be an integer or None, got {found}")
    value = int(ignore_index)
    if labels_dtype is not None and not labels_dtype.is_floating_point and not labels_dtype.is_complex \
            and labels_dtype != torch.bool:
        info = torch.iinfo(labels_dtype)
        if not info.min <= value <= info.max:
            raise ValueError(
                f"`ignore_index` must be representable in the dtype of `{labels_name}` ({labels_dtype}, values in "
                f"[{info.min}, {info.max}]), got {value}; it would wrap and drop other labels: cast `{labels_name}` "
                "to a wider integer dtype (e.g. .long())"
            )
    return value


def check_bool(value: object, name: str) -> bool:
    """``value`` after checking it is ``True`` or ``False`` (not 0/1 or another truthy object).

    Example:
        >>> check_bool(True, "classwise")
        True
    """
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be True or False, got {type(value).__name__} {value!r}")
    return value


def move_class_last(x: torch.Tensor) -> torch.Tensor:
    """(N, C, ...) -> (M, C) with M = N * prod(...)."""
    if x.ndim == 2:
        return x
    return x.movedim(1, -1).reshape(-1, x.shape[1])


def flatten_valid(
    values: torch.Tensor, labels: torch.Tensor, ignore_index: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flatten (N, C, ...) values and (N, ...) labels to (M, C) and (M,), dropping ``ignore_index``."""
    flat = move_class_last(values)
    flat_labels = labels.reshape(-1)
    ignore_index = check_ignore_index(ignore_index, flat_labels.dtype)
    if ignore_index is not None:
        keep = flat_labels != ignore_index
        if not bool(keep.all()):
            flat, flat_labels = flat[keep], flat_labels[keep]
    return flat, flat_labels.long()


def validate_probs_labels(
    probs: Any, labels: Any, ignore_index: int | None, *, validate_args: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a (probs, labels) pair and return them flattened to (M, C), (M,) without ignored pixels."""
    if validate_args:
        probs = check_probs(probs)
        labels = check_labels(labels, probs.shape[1], probs.shape[:1] + probs.shape[2:], ignore_index=ignore_index)
    else:
        probs, labels = as_tensor(probs, "probs"), as_tensor(labels, "labels")
    return flatten_valid(probs, labels.to(probs.device), ignore_index)


def check_int(value: object, name: str, low: int = 1, *, allow_none: bool = False) -> int | None:
    """``value`` as an ``int`` after checking it is an integer (not a bool) ``>= low`` (or None if allowed).

    Example:
        >>> check_int(3, "samples")
        3
    """
    import numbers

    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"`{name}` must be an integer >= {low}{' or None' if allow_none else ''}, got {value!r}")
    return int(value)


def check_positive_int(value: object, name: str) -> int:
    """``value`` as an ``int`` after checking it is an integer ``>= 1`` (bools refused)."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
    return int(value)


def check_choice(value: object, name: str, choices: Any) -> Any:
    """``value`` after checking it is one of ``choices`` (an iterable, e.g. a registry's keys).

    Example:
        >>> check_choice("l1", "norm", ("l1", "l2"))
        'l1'
    """
    options = tuple(choices)
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"`{name}` must be one of {', '.join(map(repr, options))}, got {value!r}")
    return value


def looks_like_probs(values: torch.Tensor) -> bool:
    """True when every value of (N, C, ...) ``values`` is in [0, 1] and every row sums to 1 over dim 1.

    The one rule for "is this array probabilities" (the CLI's files, the conformal estimators);
    the sum tolerance is :func:`sum_tolerance` for the dtype and number of classes.

    Example:
        >>> looks_like_probs(torch.tensor([[0.25, 0.75]])), looks_like_probs(torch.tensor([[2.0, -1.0]]))
        (True, False)
    """
    if not values.is_floating_point() or values.ndim < 2 or values.numel() == 0:
        return False
    lo, hi = torch.aminmax(values)
    if not (float(lo) >= 0.0 and float(hi) <= 1.0):
        return False
    tol = sum_tolerance(values.dtype, values.shape[1])
    return float((values.sum(dim=1, dtype=torch.float64) - 1.0).abs().max()) <= tol


MAX_N_BINS = 100_000  # far beyond any useful reliability diagram; refuses 1e10 before the allocator sees it


def check_n_bins(n_bins: int, name: str = "n_bins", high: int = MAX_N_BINS) -> int:
    """``n_bins`` as an int after checking 1 <= n_bins <= ``high`` (before anything is allocated)."""
    import numbers

    if isinstance(n_bins, bool) or not isinstance(n_bins, numbers.Integral) or n_bins < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {n_bins!r}")
    if n_bins > high:
        raise ValueError(f"`{name}` must be at most {high}, got {n_bins!r}")
    return int(n_bins)
