"""The embedded classification data set: scikit-learn's 8x8 handwritten digits (offline).

Shapes: ``x`` is (N, 1, 8, 8) float32 in [0, 1], ``y`` is (N,) int64 in [0, 10).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

__all__ = ["Split", "ClassificationData", "load_digits", "split_indices"]


class Split(NamedTuple):
    """One split of a data set: inputs and labels. A tuple, so ``x, y = split`` works and
    ``netuq.training.fit(model, split)`` accepts it as is.

    Attributes:
        x: (N, ...) float32 inputs (images (N, C, H, W) in [0, 1]).
        y: (N, ...) int64 labels (N,) for classification, (N, H, W) for segmentation.
    """

    x: torch.Tensor
    y: torch.Tensor


@dataclass(frozen=True)
class ClassificationData:
    """Train/validation/test splits of a classification data set.

    Attributes:
        train, val, test: :class:`Split` of (x (N, C, H, W) float32 in [0, 1], y (N,) int64).
        class_names: one name per class.
        name: data set name (``"digits"``, ``"mnist"``, ...).
    """

    train: Split
    val: Split
    test: Split
    class_names: tuple[str, ...]
    name: str = "digits"

    @property
    def num_classes(self) -> int:
        """Number of classes C."""
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape (C, H, W) of one input."""
        return tuple(self.train.x.shape[1:])


def _check_size(value, name: str, n: int) -> int:
    """A fraction in (0, 1) of ``n`` or a count in [1, n): returns the count."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a float in (0, 1) or a positive int, got {type(value).__name__}")
    if isinstance(value, float):
        if not 0.0 < value < 1.0:
            raise ValueError(f"`{name}` must be in (0, 1) as a fraction, got {value}")
        count = max(1, int(round(value * n)))
    else:
        count = int(value)
    if not 1 <= count < n:
        raise ValueError(f"`{name}` must select between 1 and {n - 1} of {n} samples, got {count}")
    return count


def _can_stratify(strata: np.ndarray, count: int) -> bool:
    _, counts = np.unique(strata, return_counts=True)
    k = len(counts)
    return counts.min() >= 2 and k <= count <= len(strata) - k


def _split_off(index: np.ndarray, strata: np.ndarray | None, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    s = None if strata is None else strata[index]
    if s is not None and not _can_stratify(s, count):
        s = None  # too few samples of some stratum: a plain random split
    rest, held = train_test_split(index, test_size=count, stratify=s, random_state=seed)
    return np.asarray(rest), np.asarray(held)


def split_indices(
    n: int, *, strata=None, val_size: float | int = 0.15, test_size: float | int = 0.3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of a seeded train/validation/test split, stratified on ``strata`` when possible.

    The test part is drawn first, then the validation part from the rest (scikit-learn's
    ``train_test_split`` with ``stratify``). Where a stratum is too small to be split (fewer than
    two members, or fewer members in a part than strata) the split falls back to plain random.

    Args:
        n: number of samples.
        strata: optional (n,) integer labels to stratify on (class, or an image-level label).
        val_size: a fraction of ``n`` in (0, 1) or a count.
        test_size: a fraction of ``n`` in (0, 1) or a count.
        seed: random seed.

    Returns:
        ``(train, val, test)`` index arrays (int64), disjoint, covering ``range(n)``.

    Example:
        >>> tr, va, te = split_indices(10, val_size=0.2, test_size=0.3)
        >>> len(tr), len(va), len(te), sorted([*tr, *va, *te]) == list(range(10))
        (5, 2, 3, True)
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 3:
        raise ValueError(f"`n` must be an integer >= 3, got {n!r}")
    n_test = _check_size(test_size, "test_size", n)
    n_val = _check_size(val_size, "val_size", n)
    if n_test + n_val >= n:
        raise ValueError(f"`val_size` + `test_size` must leave training samples, got {n_val} + {n_test} of {n}")
    s = None
    if strata is not None:
        s = np.asarray(strata).reshape(-1)
        if s.shape != (n,):
            raise ValueError(f"`strata` must have shape ({n},), got {tuple(np.shape(strata))}")
    index = np.arange(n)
    rest, test = _split_off(index, s, n_test, seed)
    train, val = _split_off(rest, s, n_val, seed + 1)
    return train.astype(np.int64), val.astype(np.int64), test.astype(np.int64)


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits as _load

    bunch = _load()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8) in [0, 1]
    return x, bunch.target.astype(np.int64)


def load_digits(
    *, seed: int = 0, val_size: float | int = 0.15, test_size: float | int = 0.3
) -> ClassificationData:
    """scikit-learn's 1,797 handwritten 8x8 digits, split stratified by class (no download).

    Pixel values (0..16) are scaled to [0, 1]. The same ``seed`` gives the same split.

    Args:
        seed: seed of the stratified split.
        val_size: validation part, a fraction of all samples or a count.
        test_size: test part, a fraction of all samples or a count.

    Returns:
        :class:`ClassificationData` with x (N, 1, 8, 8) float32 in [0, 1] and y (N,) int64, and
        class names ``"0"`` .. ``"9"``.

    Example:
        >>> ds = load_digits(seed=0)
        >>> ds.train.x.shape[1:], ds.num_classes, len(ds.train.y) + len(ds.val.y) + len(ds.test.y)
        (torch.Size([1, 8, 8]), 10, 1797)
    """
    x, y = _digits_arrays()
    train, val, test = split_indices(len(y), strata=y, val_size=val_size, test_size=test_size, seed=seed)

    def part(idx: np.ndarray) -> Split:
        return Split(torch.from_numpy(x[idx].copy()), torch.from_numpy(y[idx].copy()))

    return ClassificationData(part(train), part(val), part(test), tuple(str(d) for d in range(10)), "digits")
