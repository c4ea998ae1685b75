"""How an ensemble's training data is divided among its members: :func:`make_splits`, the
per-member seed, and the fingerprints :func:`~netuq.train_ensemble` records to detect a changed
configuration when it resumes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

__all__ = ["SPLITS", "make_splits", "member_seed"]

SPLITS = ("kfold", "bootstrap", "full")


def member_seed(seed: int, k: int) -> int:
    """The seed of member ``k``: its initialisation, its training and (bootstrap) its draws.

    ``seed * 1000 + k``, as since the first release, so an ensemble trained before is rebuilt
    with the same weights.

    Example:
        >>> member_seed(2, 3)
        2003
    """
    return int(seed) * 1000 + int(k)


def as_array(values: Any, name: str, n: int) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.ndim != 1 or len(arr) != n:
        raise ValueError(f"`{name}` must have shape ({n},) (one value per sample), got shape {arr.shape}")
    return arr


def _group_kfold(groups: np.ndarray, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled group k-fold: groups in random order, each to the currently smallest fold."""
    uniq, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    order = rng.permutation(len(uniq))
    order = order[np.argsort(-counts[order], kind="stable")]  # largest first, ties in random order
    sizes = np.zeros(k, dtype=np.int64)
    fold_of_group = np.empty(len(uniq), dtype=np.int64)
    for g in order:
        f = int(np.argmin(sizes))
        fold_of_group[g] = f
        sizes[f] += counts[g]
    fold = fold_of_group[inverse]
    return [np.flatnonzero(fold == f) for f in range(k)]


def make_splits(
    n: int,
    *,
    members: int,
    split: str = "kfold",
    labels: Any = None,
    groups: Any = None,
    stratify: bool = True,
    seed: int = 0,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The ``(train_indices, val_indices)`` of each member, as used by :func:`train_ensemble`.

    * ``"kfold"``: ``StratifiedKFold(members, shuffle=True, random_state=seed)`` on ``labels``
      (``StratifiedGroupKFold`` with ``groups``; ``KFold`` or a shuffled group k-fold without
      stratification). Member k validates on fold k and trains on the others.
    * ``"bootstrap"``: ``n`` draws with replacement (per class when stratified, whole groups when
      ``groups`` is given); the out-of-bag samples validate. Train indices repeat.
    * ``"full"``: every member trains on everything, no validation.

    Args:
        n: number of samples.
        members: number of members K (folds for ``"kfold"``).
        split: ``"kfold"``, ``"bootstrap"`` or ``"full"``.
        labels: (n,) class per sample, needed when ``stratify`` (kfold, bootstrap).
        groups: (n,) group per sample (patient, scene): a group never spans train and validation.
        stratify: keep class proportions per fold / per bootstrap sample.
        seed: the random state of the split.

    Returns:
        K pairs of sorted int64 arrays.

    Example:
        >>> folds = make_splits(6, members=3, labels=[0, 0, 0, 1, 1, 1], seed=0)
        >>> [len(v) for _, v in folds], sorted(np.concatenate([v for _, v in folds]).tolist())
        ([2, 2, 2], [0, 1, 2, 3, 4, 5])
    """
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {list(SPLITS)}, got {split!r}")
    if isinstance(members, bool) or not isinstance(members, (int, np.integer)):
        raise TypeError(f"`members` must be an integer, got {type(members).__name__}")
    min_members = 2 if split == "kfold" else 1
    if members < min_members:
        raise ValueError(f"`members` must be >= {min_members} for split={split!r}, got {members}")
    if n < 1:
        raise ValueError(f"`dataset` must not be empty, got {n} samples")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative integer, got {seed!r}")
    y = None if labels is None else as_array(labels, "labels", n)
    g = None if groups is None else as_array(groups, "groups", n)
    if stratify and split != "full" and not (split == "bootstrap" and g is not None) and y is None:
        raise ValueError(f"`labels` are needed to stratify split={split!r}; pass labels= or stratify=False")
    everything = np.arange(n, dtype=np.int64)
    if split == "full":
        return [(everything.copy(), np.empty(0, dtype=np.int64)) for _ in range(members)]
    if split == "kfold":
        from sklearn.model_selection import KFold, StratifiedGroupKFold, StratifiedKFold

        units = n if g is None else len(np.unique(g))
        if units < members:
            what = "samples" if g is None else "groups"
            raise ValueError(f"`members` must be <= the number of {what} ({units}) for split='kfold', got {members}")
        dummy = np.zeros(n)
        if stratify and g is not None:
            it = StratifiedGroupKFold(members, shuffle=True, random_state=int(seed)).split(dummy, y, g)
            vals = [v for _, v in it]
        elif stratify:
            vals = [v for _, v in StratifiedKFold(members, shuffle=True, random_state=int(seed)).split(dummy, y)]
        elif g is not None:
            vals = _group_kfold(g, members, np.random.default_rng(int(seed)))
        else:
            vals = [v for _, v in KFold(members, shuffle=True, random_state=int(seed)).split(dummy)]
        out = []
        for v in vals:
            v = np.sort(v).astype(np.int64)
            out.append((np.setdiff1d(everything, v).astype(np.int64), v))
        return out
    # bootstrap
    out = []
    for k in range(members):
        rng = np.random.default_rng(member_seed(int(seed), k))
        if g is not None:
            uniq, inverse = np.unique(g, return_inverse=True)
            drawn = rng.integers(0, len(uniq), len(uniq))
            members_of = [np.flatnonzero(inverse == i) for i in range(len(uniq))]
            train = np.concatenate([members_of[i] for i in drawn])
        elif stratify:
            parts = []
            for c in np.unique(y):
                idx = np.flatnonzero(y == c)
                parts.append(idx[rng.integers(0, len(idx), len(idx))])
            train = np.concatenate(parts)
        else:
            train = rng.integers(0, n, n)
        train = np.sort(train).astype(np.int64)
        out.append((train, np.setdiff1d(everything, train).astype(np.int64)))
    return out


def hash_arrays(arrays: Iterable[Any]) -> str:
    h = hashlib.sha256()
    for a in arrays:
        if isinstance(a, torch.Tensor):
            a = a.detach().cpu()
            a = a.float().numpy() if a.dtype in (torch.bfloat16, torch.float16) else a.numpy()
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def fingerprint(splits: Sequence[tuple[np.ndarray, np.ndarray]]) -> str:
    h = hashlib.sha256()
    for train, val in splits:
        h.update(np.ascontiguousarray(train, dtype=np.int64).tobytes())
        h.update(b"|")
        h.update(np.ascontiguousarray(val, dtype=np.int64).tobytes())
        h.update(b"#")
    return h.hexdigest()


def derive_labels(dataset: Dataset) -> np.ndarray:
    """One class per sample from the dataset's targets; segmentation masks cannot stratify."""
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        y = dataset.tensors[1]
    elif hasattr(dataset, "targets"):
        y = torch.as_tensor(np.asarray(dataset.targets))
    else:
        y = torch.stack([torch.as_tensor(dataset[i][1]) for i in range(len(dataset))])  # type: ignore[arg-type]
    if y.ndim != 1 or y.is_floating_point():
        raise ValueError(
            "`labels` must be given to stratify a dataset whose targets are not one class per sample "
            f"(targets of shape {tuple(y.shape)}, dtype {y.dtype}); pass labels= (e.g. each image's dominant "
            "class) or stratify=False"
        )
    return y.cpu().numpy()
