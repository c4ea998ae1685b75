"""Training a deep ensemble: :func:`train_ensemble` (one member per fold, resumable, optionally
spread over ``torchrun`` processes).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..._checks import check_positive_int
from ...training import fit
from .data import TrainData, predict_probs
from .distributed import World, world
from .files import build, load_member, member_file, member_payload, prepare_checkpoint_dir, restore, save_member
from .splits import SPLITS, as_array, derive_labels, fingerprint, hash_arrays, make_splits, member_seed
from .wrapper import Ensemble

__all__ = ["train_ensemble"]

# fit() arguments that do not change the trained weights' meaning, left out of the resume check
_UNCHECKED_FIT_ARGS = ("device", "progress")


def train_ensemble(
    model_factory: Callable[[], nn.Module],
    dataset: Dataset | DataLoader | Sequence[torch.Tensor],
    *,
    members: int = 5,
    split: str = "kfold",
    stratify: bool = True,
    labels: Any = None,
    groups: Any = None,
    checkpoint_dir: str | os.PathLike | None = None,
    seed: int = 0,
    epochs: int = 10,
    ignore_index: int | None = None,
    oof: bool = True,
    keep_samples: bool = False,
    vectorize: bool | str = "auto",
    progress: bool = False,
    distributed: bool | None = None,
    **fit_kwargs: Any,
) -> Ensemble:
    """Train a deep ensemble, one member per fold, and return it as an :class:`Ensemble`.

    Member k is built by ``model_factory()`` under ``torch.manual_seed(seed * 1000 + k)`` (so
    members start from different weights; the global RNG state is left untouched) and trained by
    :func:`netuq.training.fit` with the same seed:

    * ``split="kfold"`` (default, netuq's recipe): ``StratifiedKFold(members, shuffle=True,
      random_state=seed)``; member k trains on the other folds and keeps the weights of the epoch
      with the lowest validation loss on fold k (``fit(val_data=fold k, restore_best=True)``).
      The validation loss is ``val_loss`` if given, else ``loss`` (default cross-entropy, i.e.
      the NLL): pass ``val_loss`` when the training loss is not the NLL (label smoothing, extra
      outputs).
    * ``split="bootstrap"``: bagging; each member trains on n draws with replacement and
      validates on its out-of-bag samples.
    * ``split="full"``: each member on all the data with its own seed, no validation
      (Lakshminarayanan et al. 2017).

    Under ``torchrun`` (a process group initialised, any backend), rank r trains the members
    k with ``k % world_size == r`` and every rank ends with the whole ensemble::

        torch.distributed.init_process_group("gloo")  # in a script run by torchrun --nproc_per_node=2
        ens = netuq.train_ensemble(make_model, train_loader, members=5, checkpoint_dir="ens/")

    Segmentation: the model returns (N, C, H, W) logits and the targets are (N, H, W) masks; pass
    ``ignore_index`` (or a ``loss`` that ignores it) and, to stratify, one ``labels`` value per
    image (e.g. its dominant class); ``groups`` (patient, scene) keeps a group within one fold
    (``StratifiedGroupKFold``). Splits are always by image.

    With ``checkpoint_dir``, a ``manifest.json`` records the configuration (members, split, seed,
    number of samples, SHA-256 fingerprints of the folds, of the labels and, for tensor data, of
    the tensors; epochs and the scalar fit arguments) and each
    finished member is written atomically as ``member_<k>.pt`` with its weights, fold indices,
    history and out-of-fold predictions. Calling again with the same directory loads the finished
    members and trains only the missing ones: a killed run loses at most the member in progress.
    A different configuration in the same directory raises ``ValueError`` instead of mixing.

    Reference: Lakshminarayanan, Pritzel & Blundell, "Simple and Scalable Predictive Uncertainty
    Estimation using Deep Ensembles", NeurIPS 2017.

    Raises:
        TypeError: a ``model_factory`` that is not callable or returns no module; ``dataset`` of
            another type; fit arguments that :func:`~netuq.training.fit` does not take.
        ValueError: empty data, a bad ``split`` / ``members`` / ``epochs`` / ``seed``, labels of
            the wrong length, a DataLoader with a custom sampler, a ``checkpoint_dir`` holding
            another configuration.
        RuntimeError: (distributed) training failed on another rank.

    Args:
        model_factory: ``() -> nn.Module`` building one untrained member that returns logits.
        dataset: the training data, x (N, ...) with y (N,) class labels or (N, H, W) masks: a
            map-style Dataset yielding ``(x, y)``, an ``(x, y)`` tuple of tensors, or a
            DataLoader over such a Dataset (created with ``shuffle=True`` or ``False``). For a
            DataLoader the folds are drawn from its ``dataset`` and each member's loaders keep
            its batch size, ``collate_fn``, ``num_workers``, ``pin_memory`` and worker settings.
        members: number of members K (the number of folds for ``"kfold"``, at least 2 there).
        split: ``"kfold"``, ``"bootstrap"`` or ``"full"``.
        stratify: keep class proportions in every fold (kfold) or bootstrap sample.
        labels: (N,) per-sample stratification labels; default: ``y`` for classification data.
        groups: (N,) group ids; a group is never split between training and validation.
        checkpoint_dir: folder to write (and resume from) the members.
        seed: seeds the split, every member's initialisation and its training.
        epochs: epochs per member.
        ignore_index: target value ignored by the default cross-entropy loss (segmentation).
        oof: collect out-of-fold predictions (kfold only).
        keep_samples, vectorize: passed to :class:`Ensemble`.
        progress: show progress bars (members and epochs; rank 0 only when distributed).
        distributed: train the members in several processes: ``None`` (default) does so when
            a ``torch.distributed`` process group is initialised (a script run by ``torchrun``
            that called ``init_process_group``), ``True`` requires one, ``False`` never. Member k
            is trained by rank ``k % world_size``; every rank returns the whole ensemble, equal
            to a one-process run with the same seed, and a ``checkpoint_dir`` (on a file system
            all ranks share) holds the same files.
        **fit_kwargs: passed to :func:`netuq.training.fit` (``loss``, ``val_loss``, ``lr``,
            ``batch_size``, ``optimizer``, ``device``, ``patience``, ``callbacks``, ``output``
            (where the logits are in a member's output; also used by the returned
            :class:`Ensemble` and the out-of-fold predictions), ...). The same callback objects
            are used for every member.

    Returns:
        The trained :class:`Ensemble`, its members in eval mode (calling one directly does not
        update its BatchNorm statistics), with ``splits_``, ``histories_``, ``val_nll_``, ``seeds_``
        and (kfold) ``oof_probs_`` / ``oof_member_``: out-of-fold **single-member** predictions,
        each sample predicted by the one member that did not see it. They are not ensemble
        predictions.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.randn(60, 4, generator=g), torch.arange(60) % 3
        >>> ens = train_ensemble(lambda: torch.nn.Linear(4, 3), (x, y), members=3, epochs=2)
        >>> len(ens), ens.oof_probs_.shape, ens(x[:5]).probs.shape
        (3, torch.Size([60, 3]), torch.Size([5, 3]))
    """
    _check_arguments(model_factory, epochs, split, fit_kwargs)
    data = TrainData(dataset, fit_kwargs.get("batch_size"))
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {list(SPLITS)}, got {split!r}")
    needs_labels = stratify and split != "full" and not (split == "bootstrap" and groups is not None)
    if labels is None and needs_labels:
        labels = derive_labels(data.dataset)
    splits = make_splits(
        data.n, members=members, split=split, labels=labels, groups=groups, stratify=stratify, seed=seed
    )
    if ignore_index is not None and "loss" not in fit_kwargs:
        fit_kwargs["loss"] = _CrossEntropy(ignore_index)
    device = fit_kwargs.get("device")
    job = _Job(
        model_factory=model_factory,
        data=data,
        splits=splits,
        split=split,
        seed=int(seed),
        epochs=int(epochs),
        oof=bool(oof) and split == "kfold",
        progress=progress,
        device=None if device is None else torch.device(device),
        fit_kwargs=fit_kwargs,
        team=world(distributed),
    )
    config = {
        "members": int(members),
        "split": split,
        "seed": int(seed),
        "n_samples": int(data.n),
        "stratify": bool(stratify) and split != "full",
        "grouped": groups is not None,
        "epochs": int(epochs),
        "ignore_index": ignore_index,
        "folds_sha256": fingerprint(splits),
        # cheap content checks: the labels when there are any, the tensors of an in-memory dataset
        "labels_sha256": None if labels is None else hash_arrays([as_array(labels, "labels", data.n)]),
        "data_sha256": None if data.tensors is None else hash_arrays(data.tensors),
        "fit": _fit_config(fit_kwargs, data),
    }
    return job.run(None if checkpoint_dir is None else Path(checkpoint_dir), config, keep_samples, vectorize)


def _check_arguments(model_factory: Any, epochs: Any, split: str, fit_kwargs: dict) -> None:
    if isinstance(model_factory, nn.Module) or not callable(model_factory):
        raise TypeError(
            "`model_factory` must be callable with no arguments, returning a new member, "
            f"got {type(model_factory).__name__} (pass the class or a lambda, not a model instance)"
        )
    check_positive_int(epochs, "epochs")
    allowed = set(inspect.signature(fit).parameters) - {"model", "train_data", "epochs", "seed", "progress"}
    unknown = sorted(set(fit_kwargs) - allowed)
    if unknown:
        raise TypeError(f"train_ensemble() got unexpected keyword argument(s) {unknown} (not arguments of fit)")
    if split in ("kfold", "bootstrap") and "val_data" in fit_kwargs:
        raise ValueError(
            f"`val_data` must not be given for split={split!r}: each member validates on its held-out part"
        )


def _jsonable(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _fit_config(fit_kwargs: dict, data: TrainData) -> dict:
    config = {k: v for k, v in fit_kwargs.items() if k not in _UNCHECKED_FIT_ARGS and _jsonable(v)}
    if data.loader is not None:  # the loader's batch size trains the members
        config["batch_size"] = data.batch_size
    return dict(sorted(config.items()))


class _Job:
    """One call of :func:`train_ensemble` once its arguments are checked: load or train each member."""

    def __init__(self, *, model_factory, data, splits, split, seed, epochs, oof, progress, device, fit_kwargs, team):
        self.model_factory: Callable[[], nn.Module] = model_factory
        self.data: TrainData = data
        self.splits: list[tuple[np.ndarray, np.ndarray]] = splits
        self.split: str = split
        self.seed: int = seed
        self.epochs: int = epochs
        self.oof: bool = oof
        self.progress: bool = progress
        self.device: torch.device | None = device
        self.fit_kwargs: dict = fit_kwargs
        self.team: World = team

    def run(self, ckdir: Path | None, config: dict, keep_samples: bool, vectorize: bool | str) -> Ensemble:
        team = self.team
        if ckdir is not None:  # rank 0 creates or checks the folder; every rank learns how that went
            team.together(
                lambda: prepare_checkpoint_dir(ckdir, config) if team.rank == 0 else None, "checking the checkpoint_dir"
            )
        mine: dict[int, tuple[nn.Module, dict]] = {}
        team.together(lambda: self._run_mine(ckdir, mine), "training its members")
        models, metas = [], []
        for k in range(len(self.splits)):
            if team.owns(k):
                model, payload = mine[k]
                team.share(payload if team.distributed else None, k)
            else:  # trained by another rank: rebuild it here from its weights
                payload = team.share(None, k)
                model = build(self.model_factory, member_seed(self.seed, k))
                restore(model, payload, f"member {k} from rank {team.owner(k)}")
                if self.device is not None:
                    model.to(self.device)
            models.append(model.eval())
            metas.append(payload["meta"])
        ens = Ensemble(models, keep_samples=keep_samples, vectorize=vectorize, output=self.fit_kwargs.get("output"))
        ens._set_fitted(metas)
        if not self.oof:
            ens.oof_probs_, ens.oof_member_ = None, None
        return ens

    def _run_mine(self, ckdir: Path | None, out: dict[int, tuple[nn.Module, dict]]) -> None:
        """Load or train the members this rank owns, into ``out``: k -> (model, payload)."""
        owned = [k for k in range(len(self.splits)) if self.team.owns(k)]
        bar = None
        if self.progress and self.team.rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(owned), desc="ensemble members")
        try:
            for k in owned:
                out[k] = self._member(k, None if ckdir is None else ckdir / member_file(k))
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()

    def _member(self, k: int, path: Path | None) -> tuple[nn.Module, dict]:
        """Member ``k``: loaded from ``path`` when it is there, else trained (and written to ``path``)."""
        seed = member_seed(self.seed, k)
        model = build(self.model_factory, seed)
        if path is not None and path.is_file():
            payload = load_member(path)
            restore(model, payload, str(path))
            if self.device is not None:
                model.to(self.device)
            return model, payload
        train_idx, val_idx = self.splits[k]
        data = self.data
        val_data = data.for_member(val_idx, train=False, seed=seed) if len(val_idx) else self.fit_kwargs.get("val_data")
        kwargs = {key: v for key, v in self.fit_kwargs.items() if key != "val_data"}
        history = fit(
            model,
            data.for_member(train_idx, train=True, seed=seed),
            val_data=val_data,
            epochs=self.epochs,
            seed=seed,
            progress=self.progress and self.team.rank == 0,
            **kwargs,
        )
        meta = {
            "index": k,
            "seed": seed,
            "split": self.split,
            "train_indices": torch.from_numpy(train_idx),
            "val_indices": torch.from_numpy(val_idx),
            "history": history.to_dict(),
            "best_val_nll": history.best_val_loss,
            "oof_probs": None,
        }
        if self.oof:
            batches = data.loader_for(data.subset(val_idx), shuffle=False, seed=0)
            meta["oof_probs"] = predict_probs(model, batches, self.device, self.fit_kwargs.get("output"))
        if path is None and not self.team.distributed:
            return model, {"meta": meta}  # nothing to write or send: no copy of the weights
        payload = member_payload(model, meta)
        if path is not None:
            save_member(path, payload)
        return model, payload


class _CrossEntropy:
    """Picklable cross-entropy with an ignore_index (the default loss when ``ignore_index`` is set)."""

    def __init__(self, ignore_index: int) -> None:
        self.ignore_index = int(ignore_index)

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(output, target, ignore_index=self.ignore_index)

    def __repr__(self) -> str:
        return f"cross_entropy(ignore_index={self.ignore_index})"
