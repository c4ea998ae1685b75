"""The training data of an ensemble: one type for a Dataset, a DataLoader or an ``(x, y)`` tuple.

:class:`TrainData` checks the input at the boundary and hands each member its part: the fold
subsets as Datasets (batched by :func:`netuq.training.fit`, which slices in-memory tensors) or,
when a DataLoader was given, as DataLoaders built like it (batch size, ``collate_fn``,
``num_workers``, ``pin_memory``, worker settings) over the fold, so the folds are derived from the
loader's dataset and the loader's way of batching is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import (
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    Subset,
    TensorDataset,
)

from ..._modes import eval_mode
from ..._outputs import OutputRule, logits_of
from ..._random import generator
from ...training import as_dataset

__all__ = ["TrainData", "check_logits_output", "predict_probs"]

# DataLoader settings copied to each member's loaders (the sampler, shuffling and generator are per member)
_LOADER_SETTINGS = (
    "num_workers",
    "collate_fn",
    "pin_memory",
    "timeout",
    "worker_init_fn",
    "multiprocessing_context",
    "prefetch_factor",
    "persistent_workers",
    "pin_memory_device",
    "in_order",
)


class TrainData:
    """An ensemble's training data, checked once: ``dataset`` plus, for a DataLoader, its settings.

    Args:
        data: a map-style Dataset yielding ``(x, y, ...)``, a DataLoader over one (its sampler a
            plain random or sequential one), or an ``(x, y)`` tuple of equally long tensors.
        batch_size: the ``batch_size`` given to :func:`~netuq.train_ensemble`, if any.

    Raises:
        TypeError: anything else (an array, an iterable-style dataset).
        ValueError: an empty dataset; a DataLoader with a custom sampler or batch sampler (they
            cannot be restricted to a fold); a ``batch_size`` that contradicts the DataLoader's.
    """

    def __init__(self, data: Any, batch_size: int | None = None) -> None:
        self.loader: DataLoader | None = None
        loader = data if isinstance(data, DataLoader) else None
        if loader is not None:
            data = loader.dataset
        if isinstance(data, IterableDataset):
            raise TypeError(
                "`dataset` must be a map-style Dataset (indexable, with a length) to be split into folds, "
                f"got the iterable-style {type(data).__name__}"
            )
        if loader is not None:
            _check_loader(loader, batch_size)
            self.loader = loader
        self.dataset: Dataset = as_dataset(data, "dataset", accepted="DataLoader")
        try:
            self.n = len(self.dataset)  # type: ignore[arg-type]
        except TypeError as err:
            raise TypeError(f"`dataset` must have a length, got {type(self.dataset).__name__} without __len__") from err
        if self.n == 0:
            raise ValueError("`dataset` must not be empty, got 0 samples")
        self.batch_size = int(self.loader.batch_size if self.loader is not None else (batch_size or 64))  # type: ignore[arg-type]

    @property
    def tensors(self) -> tuple[torch.Tensor, ...] | None:
        """The tensors of an in-memory dataset (a TensorDataset), else None."""
        return self.dataset.tensors if isinstance(self.dataset, TensorDataset) else None

    def subset(self, indices: np.ndarray) -> Dataset:
        """The samples at ``indices`` (repeats allowed) as a Dataset; tensors are sliced, not wrapped."""
        if type(self.dataset) is TensorDataset:  # slicing tensors is much faster than a Subset
            idx = torch.from_numpy(indices)
            return TensorDataset(*(t[idx] for t in self.dataset.tensors))  # type: ignore[attr-defined]
        return Subset(self.dataset, indices.tolist())

    def for_member(self, indices: np.ndarray, *, train: bool, seed: int) -> Dataset | DataLoader:
        """What member training gets for ``indices``: a Dataset, or a DataLoader like the given one.

        A training loader shuffles if the given loader did, with a generator seeded by ``seed``;
        a validation loader never shuffles nor drops the last batch and, as the one
        :func:`~netuq.training.fit` makes for a Dataset, has no generator. Either way a member
        trained from a DataLoader gets the batches, in the order, it gets from the loader's dataset.
        """
        part = self.subset(indices)
        if self.loader is None:
            return part
        if train:
            return self.loader_for(part, shuffle=_shuffles(self.loader), seed=seed, drop_last=True)
        return self.loader_for(part, shuffle=False, seed=None)

    def loader_for(self, data: Dataset, *, shuffle: bool, seed: int | None = 0, drop_last: bool = False) -> DataLoader:
        """A DataLoader over ``data`` with the given loader's settings (or the defaults).

        ``seed`` seeds the loader's generator; ``None`` leaves it without one (its iterator then
        draws one number from the global RNG, as any such DataLoader does).
        """
        settings: dict[str, Any] = {}
        if self.loader is not None:
            settings = {k: getattr(self.loader, k) for k in _LOADER_SETTINGS if hasattr(self.loader, k)}
            if settings.get("num_workers", 0) == 0:  # only allowed with worker processes
                settings.pop("prefetch_factor", None)
                settings.pop("persistent_workers", None)
            drop_last = drop_last and self.loader.drop_last
        else:
            drop_last = False
        return DataLoader(
            data,
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            generator=None if seed is None else generator(seed),
            **settings,
        )


def _shuffles(loader: DataLoader) -> bool:
    return isinstance(loader.sampler, RandomSampler)


def _check_loader(loader: DataLoader, batch_size: int | None) -> None:
    sampler = loader.sampler
    if loader.batch_size is None:
        raise ValueError(
            "`dataset` given as a DataLoader must batch with `batch_size` (its folds get new samplers), got a "
            f"DataLoader with a custom batch_sampler ({type(loader.batch_sampler).__name__})"
        )
    plain_random = isinstance(sampler, RandomSampler) and not sampler.replacement and sampler._num_samples is None
    if not (plain_random or type(sampler) is SequentialSampler):
        raise ValueError(
            "`dataset` given as a DataLoader must use shuffle=True or shuffle=False (its folds get new samplers), "
            f"got a DataLoader with sampler {type(sampler).__name__}; pass its dataset and let train_ensemble split it"
        )
    if batch_size is not None and int(batch_size) != loader.batch_size:
        raise ValueError(
            f"`batch_size` must match the DataLoader's batch size when `dataset` is a DataLoader, got "
            f"batch_size={batch_size} and a DataLoader with batch_size={loader.batch_size}; drop one of them"
        )


def check_logits_output(out: Any, output: OutputRule = None, name: str = "ensemble member") -> torch.Tensor:
    """The logits in a member's output (:func:`netuq._outputs.logits_of`), checked to be (N, C, ...)."""
    out = logits_of(out, output, name=name)
    if out.ndim < 2:
        raise ValueError(f"ensemble members must return logits of shape (N, C, ...), got shape {tuple(out.shape)}")
    return out


def predict_probs(
    model: nn.Module, batches: Sequence | DataLoader, device: torch.device | None, output: OutputRule = None
) -> torch.Tensor:
    """(n, C, ...) softmax probabilities of ``model`` over ``batches`` (eval mode, no grad), on the CPU."""
    outs = []
    with eval_mode(model), torch.no_grad():
        for batch in batches:
            x = batch[0]
            if device is not None:
                x = x.to(device)
            out = check_logits_output(model(x), output)
            outs.append(torch.softmax(out.float(), dim=1).cpu())
    return torch.cat(outs)
