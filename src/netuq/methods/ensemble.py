"""Deep ensembles (Lakshminarayanan et al. 2017): the :class:`Ensemble` wrapper and
:func:`train_ensemble`, cross-validated member training that resumes after an interruption.

* :class:`Ensemble` averages its members' **probabilities** (never logits) and returns a
  :class:`~netuq.Prediction` with the decomposition total = aleatoric + epistemic (mutual
  information between the prediction and the member). Members of one architecture run as one
  vectorised call (``torch.func.vmap`` over stacked weights), others in a loop.
* :func:`train_ensemble` trains one member per fold of a stratified k-fold split (netuq's default;
  each member keeps the checkpoint with the lowest validation NLL on its held-out fold), or by
  bagging (``"bootstrap"``), or every member on all the data with its own seed (``"full"``, the
  paper's recipe). With ``checkpoint_dir`` each finished member is written atomically and a rerun
  trains only the missing ones.

Files in a checkpoint / save directory: ``manifest.json`` (format, member count, file names, the
training configuration) and ``member_<k>.pt`` (``{"state_dict": ..., "meta": {...}}``, loadable
with ``torch.load(weights_only=True)``). :meth:`Ensemble.load` reads both kinds.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from ..prediction import Prediction
from ..training import History, as_dataset, fit

__all__ = ["Ensemble", "train_ensemble", "make_splits", "SPLITS"]

logger = logging.getLogger(__name__)

SPLITS = ("kfold", "bootstrap", "full")
_FORMAT = "netuq-ensemble"
_FORMAT_VERSION = 1
_MANIFEST = "manifest.json"
# fit() arguments that do not change the trained weights' meaning, left out of the resume check
_UNCHECKED_FIT_ARGS = ("device", "progress")


def _member_file(k: int) -> str:
    return f"member_{k}.pt"


def _member_seed(seed: int, k: int) -> int:
    return seed * 1000 + k


# ---------------------------------------------------------------------------------------- files
def _atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through a temporary file in the same folder and ``os.replace``: a reader
    (or a rerun after a crash) sees either the old file, or no file, or the complete new one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_json(path: Path, obj: dict) -> None:
    _atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()))


def _read_manifest(directory: Path) -> dict:
    path = directory / _MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"`directory` must hold an ensemble written by Ensemble.save or train_ensemble, got no {_MANIFEST} in "
            f"{str(directory)!r}"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"`directory` {str(directory)!r} has an unreadable {_MANIFEST}: {err}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
        raise ValueError(f"`directory` {str(directory)!r} has a {_MANIFEST} that is not a netuq ensemble manifest")
    if manifest.get("version") != _FORMAT_VERSION:
        raise ValueError(
            f"`directory` {str(directory)!r} holds ensemble format version {manifest.get('version')!r}, "
            f"this netuq reads version {_FORMAT_VERSION}"
        )
    return manifest


def _qualname(model: nn.Module) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"


def _save_member(path: Path, model: nn.Module, meta: dict[str, Any]) -> None:
    payload = {
        "state_dict": {k: t.detach().to("cpu", copy=True) for k, t in model.state_dict().items()},
        "meta": {"class": _qualname(model), **meta},
    }
    _atomic_write(path, lambda f: torch.save(payload, f))


def _load_member(path: Path) -> dict:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which one
        raise ValueError(f"member file {str(path)!r} cannot be read ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or "state_dict" not in payload:
        raise ValueError(f"member file {str(path)!r} is not a netuq ensemble member (no 'state_dict')")
    payload.setdefault("meta", {})
    return payload


def _build(model_factory: Callable[[], nn.Module], seed: int | None) -> nn.Module:
    """Call ``model_factory()`` under a forked, seeded RNG (the global state is left as it was)."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        model = model_factory()
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model_factory` must return an nn.Module, got {type(model).__name__}")
    return model


def _restore(model: nn.Module, payload: dict, path: Path) -> None:
    cls = payload["meta"].get("class")
    if cls is not None and cls != _qualname(model):
        raise ValueError(f"member file {str(path)!r} holds a {cls}, but `model_factory` built a {_qualname(model)}")
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        raise ValueError(f"member file {str(path)!r} does not fit the model built by `model_factory`: {err}") from err


# ------------------------------------------------------------------------------------- Ensemble
def _signature(model: nn.Module) -> tuple:
    return (
        type(model),
        tuple((n, tuple(t.shape), t.dtype, t.device) for n, t in model.named_parameters()),
        tuple((n, tuple(t.shape), t.dtype, t.device) for n, t in model.named_buffers()),
    )


def _check_logits_output(out: Any) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise TypeError(
            f"ensemble members must return a logits tensor of shape (N, C, ...), got {type(out).__name__}; "
            "wrap models with several outputs in a module that returns the logits"
        )
    if out.ndim < 2:
        raise ValueError(f"ensemble members must return logits of shape (N, C, ...), got shape {tuple(out.shape)}")
    return out


class Ensemble:
    """A deep ensemble: the uniform mixture of its members' predictive distributions.

    ``ensemble(x)`` runs every member in eval mode without gradients (the members' training flags
    are restored afterwards) and returns a :class:`~netuq.Prediction` whose ``probs`` are the mean
    of the members' softmax probabilities, with ``entropy`` (total), ``aleatoric`` (mean member
    entropy) and ``epistemic`` (mutual information) uncertainty.

    When every member has the same type and the same parameter and buffer names, shapes, dtypes
    and devices, the members run as **one vectorised call** (``torch.func.functional_call`` over
    weights stacked along a new leading axis, under ``torch.func.vmap``); the stacked copy is
    cached and rebuilt only when a member's weights change. This costs one extra copy of the
    weights and holds all members' activations at once; ``vectorize=False`` runs the members one
    after the other (lowest memory, e.g. for large segmentation batches). With
    ``vectorize="auto"`` a model that ``vmap`` cannot run (e.g. functional dropout, data-dependent
    control flow) falls back to the loop, logged at DEBUG level.

    Reference: Lakshminarayanan, Pritzel & Blundell, "Simple and Scalable Predictive Uncertainty
    Estimation using Deep Ensembles", NeurIPS 2017.

    Args:
        models: the members; each maps (N, ...) inputs to (N, C) or (N, C, H, W) logits.
        keep_samples: keep every member's probabilities in the prediction (``pred.samples``,
            shape (S, N, C, ...)).
        vectorize: ``"auto"`` (vmap when possible, else loop), ``True`` (require vmap; raises if
            the members differ in architecture or vmap fails) or ``False`` (always loop).

    Attributes:
        members: the list of member models (``len(ensemble)`` of them).
        splits_: set by :func:`train_ensemble` / :meth:`load`: per member, ``(train_indices,
            val_indices)`` int64 arrays into the training data (``val_indices`` empty for
            ``split="full"``); ``None`` for an ensemble built directly.
        histories_: per member, the :class:`~netuq.training.History` of its training, or ``None``.
        val_nll_: per member, its best validation loss (the NLL by default) or ``None``.
        seeds_: per member, the seed of its initialisation and training, or ``None``.
        oof_probs_: (N, C, ...) **out-of-fold** probabilities (``split="kfold"`` only): sample i
            predicted by the single member that did not train on it. These are single-model
            predictions for diagnostics (e.g. choosing epochs, spotting label noise), *not*
            ensemble predictions: do not report or calibrate them as the ensemble.
        oof_member_: (N,) index of the member that produced each row of ``oof_probs_``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> ens = Ensemble([torch.nn.Linear(4, 3) for _ in range(5)])
        >>> pred = ens(torch.randn(8, 4))
        >>> len(ens), pred.probs.shape, pred.num_samples, ens.vectorized
        (5, torch.Size([8, 3]), 5, True)
        >>> bool((pred.entropy >= pred.aleatoric - 1e-6).all())
        True
    """

    def __init__(
        self,
        models: Iterable[nn.Module],
        *,
        keep_samples: bool = False,
        vectorize: bool | str = "auto",
    ) -> None:
        if isinstance(models, nn.Module) and not isinstance(models, nn.ModuleList):
            raise TypeError("`models` must be an iterable of nn.Module members, got a single nn.Module")
        models = list(models)
        if not models:
            raise ValueError("`models` must contain at least one nn.Module, got none")
        for i, m in enumerate(models):
            if not isinstance(m, nn.Module):
                raise TypeError(f"`models` must contain only nn.Module objects, got {type(m).__name__} at position {i}")
        if vectorize not in ("auto", True, False):
            raise ValueError(f"`vectorize` must be 'auto', True or False, got {vectorize!r}")
        self.members: list[nn.Module] = models
        self.keep_samples = bool(keep_samples)
        self.vectorize = vectorize
        self._cache_key: tuple | None = None
        self._stacked: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None
        self._vmap_failed = False
        if vectorize is True and not self._same_architecture():
            raise ValueError(
                "`vectorize=True` needs members of one architecture (same type and parameter/buffer names, "
                f"shapes, dtypes and devices), got {sorted({type(m).__name__ for m in models})}; use vectorize='auto'"
            )
        self.splits_: list[tuple[np.ndarray, np.ndarray]] | None = None
        self.histories_: list[History] | None = None
        self.val_nll_: list[float | None] | None = None
        self.seeds_: list[int] | None = None
        self.oof_probs_: torch.Tensor | None = None
        self.oof_member_: torch.Tensor | None = None

    # ------------------------------------------------------------------ introspection
    def __len__(self) -> int:
        return len(self.members)

    def __repr__(self) -> str:
        kinds = sorted({type(m).__name__ for m in self.members})
        return f"Ensemble(members={len(self)}, types={kinds}, vectorize={self.vectorize!r})"

    def _same_architecture(self) -> bool:
        first = _signature(self.members[0])
        if not first[1]:  # nothing to stack
            return False
        return all(_signature(m) == first for m in self.members[1:])

    @property
    def vectorized(self) -> bool:
        """Whether the next call runs the members as one vmap call (False: a loop)."""
        return self.vectorize is not False and not self._vmap_failed and self._same_architecture()

    def to(self, device: torch.device | str) -> Ensemble:
        """Move every member to ``device`` (returns self)."""
        for m in self.members:
            m.to(device)
        return self

    # ------------------------------------------------------------------ prediction
    def __call__(self, x: torch.Tensor) -> Prediction:
        """Predict a batch: (N, ...) inputs -> Prediction with (N, C, ...) mean probabilities.

        ``x`` is moved to the members' device (that of the first member's parameters).
        """
        modes = [(mod, mod.training) for m in self.members for mod in m.modules()]
        try:
            for m in self.members:
                m.eval()
            with torch.no_grad():
                x = self._to_member_device(x)
                pred = Prediction(keep_samples=self.keep_samples)
                vmap_failed = False
                if self.vectorized:
                    logits = self._vmap_logits(x)
                    if logits is not None:
                        pred.add_logits(_check_logits_output(logits), stacked=True)
                        return pred
                    vmap_failed = True
                target = None  # members may sit on different devices: gather on the first one's
                for m in self.members:
                    out = _check_logits_output(m(x))
                    target = out.device if target is None else target
                    pred.add_logits(out.to(target))
                if vmap_failed:  # the model, not the input, defeats vmap: loop from now on
                    self._vmap_failed = True
                    self._stacked, self._cache_key = None, None
                return pred
        finally:
            for mod, flag in modes:
                mod.training = flag

    def _to_member_device(self, x: Any) -> Any:
        for p in self.members[0].parameters():
            if isinstance(x, torch.Tensor) and x.device != p.device:
                return x.to(p.device)
            break
        return x

    def _stacked_state(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        tensors = [t for m in self.members for t in (*m.parameters(), *m.buffers())]
        key = tuple((id(t), t.data_ptr(), t._version) for t in tensors)
        if key != self._cache_key or self._stacked is None:
            named = [(dict(m.named_parameters()), dict(m.named_buffers())) for m in self.members]
            params = {n: torch.stack([p[n].detach() for p, _ in named]) for n in named[0][0]}
            buffers = {n: torch.stack([b[n].detach() for _, b in named]) for n in named[0][1]}
            self._stacked, self._cache_key = (params, buffers), key
        return self._stacked

    def _vmap_logits(self, x: Any) -> torch.Tensor | None:
        """(S, N, C, ...) logits from one vmap call, or None after a failure with vectorize='auto'."""
        from torch.func import functional_call, vmap

        params, buffers = self._stacked_state()
        base = self.members[0]

        def one(p: dict, b: dict, inp: Any) -> Any:
            return functional_call(base, (p, b), (inp,))

        try:
            return vmap(one, in_dims=(0, 0, None))(params, buffers, x)
        except Exception as err:
            if self.vectorize is True:
                raise
            logger.debug("vmap over ensemble members failed (%s: %s); falling back to a loop", type(err).__name__, err)
            return None

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike) -> Path:
        """Write every member's state_dict (``member_<k>.pt``) and a JSON manifest to ``directory``.

        Each file is written atomically. Returns the directory.

        Example:
            >>> import tempfile
            >>> ens = Ensemble([torch.nn.Linear(4, 3) for _ in range(2)])
            >>> with tempfile.TemporaryDirectory() as d:
            ...     _ = ens.save(d)
            ...     len(Ensemble.load(d, lambda: torch.nn.Linear(4, 3)))
            2
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        files = []
        for k, m in enumerate(self.members):
            meta: dict[str, Any] = {"index": k}
            if self.splits_ is not None:
                meta["train_indices"] = torch.from_numpy(self.splits_[k][0])
                meta["val_indices"] = torch.from_numpy(self.splits_[k][1])
            if self.histories_ is not None:
                meta["history"] = self.histories_[k].to_dict()
            if self.seeds_ is not None:
                meta["seed"] = self.seeds_[k]
            if self.oof_probs_ is not None and self.oof_member_ is not None:
                meta["oof_probs"] = self.oof_probs_[self.oof_member_ == k].detach().cpu()
            _save_member(d / _member_file(k), m, meta)
            files.append(_member_file(k))
        # the saved members, with their state as of now: the training config (if any) is kept for reference
        old = None
        with contextlib.suppress(OSError, ValueError):
            old = _read_manifest(d).get("config")
        _write_json(
            d / _MANIFEST,
            {"format": _FORMAT, "version": _FORMAT_VERSION, "members": len(self), "files": files, "config": old},
        )
        return d

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike,
        model_factory: Callable[[], nn.Module],
        **kwargs: Any,
    ) -> Ensemble:
        """Rebuild an ensemble written by :meth:`save` or by :func:`train_ensemble` (``checkpoint_dir``).

        Args:
            directory: the folder with ``manifest.json`` and ``member_<k>.pt``.
            model_factory: builds one (untrained) member; its weights are replaced by the saved ones.
            **kwargs: passed to :class:`Ensemble` (``keep_samples``, ``vectorize``).

        Raises:
            FileNotFoundError: no manifest, or a member file is missing (e.g. an interrupted
                training run: call :func:`train_ensemble` again to finish it).
            ValueError: a file is unreadable or does not match ``model_factory()``.
        """
        d = Path(directory)
        manifest = _read_manifest(d)
        files = manifest.get("files") or [_member_file(k) for k in range(int(manifest["members"]))]
        missing = [f for f in files if not (d / f).is_file()]
        if missing:
            raise FileNotFoundError(
                f"`directory` {str(d)!r} is missing member file(s) {missing} of {len(files)}; if training was "
                "interrupted, call train_ensemble again with the same checkpoint_dir to finish it"
            )
        models, metas = [], []
        for k, name in enumerate(files):
            payload = _load_member(d / name)
            model = _build(model_factory, _member_seed(0, k))
            _restore(model, payload, d / name)
            models.append(model)
            metas.append(payload["meta"])
        ens = cls(models, **kwargs)
        ens._set_fitted(metas)
        return ens

    def _set_fitted(self, metas: Sequence[dict]) -> None:
        """Fill the fitted attributes from members' metadata (where every member has them)."""
        if all("train_indices" in m and "val_indices" in m for m in metas):
            self.splits_ = [
                (torch.as_tensor(m["train_indices"]).numpy(), torch.as_tensor(m["val_indices"]).numpy()) for m in metas
            ]
        if all("history" in m for m in metas):
            self.histories_ = [History(**m["history"]) for m in metas]
            self.val_nll_ = [h.best_val_loss for h in self.histories_]
        if all("seed" in m for m in metas):
            self.seeds_ = [int(m["seed"]) for m in metas]
        if self.splits_ is not None and all(m.get("oof_probs") is not None for m in metas):
            n = sum(len(v) for _, v in self.splits_)
            first = metas[0]["oof_probs"]
            oof = torch.zeros((n, *first.shape[1:]), dtype=first.dtype)
            member = torch.full((n,), -1, dtype=torch.long)
            for k, ((_, val), m) in enumerate(zip(self.splits_, metas)):
                idx = torch.from_numpy(val)
                oof[idx] = m["oof_probs"]
                member[idx] = k
            if bool((member >= 0).all()):
                self.oof_probs_, self.oof_member_ = oof, member


# ----------------------------------------------------------------------------------- splitting
def _as_array(values: Any, name: str, n: int) -> np.ndarray:
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
    y = None if labels is None else _as_array(labels, "labels", n)
    g = None if groups is None else _as_array(groups, "groups", n)
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
        rng = np.random.default_rng(_member_seed(int(seed), k))
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


def _hash_arrays(arrays: Iterable[Any]) -> str:
    h = hashlib.sha256()
    for a in arrays:
        if isinstance(a, torch.Tensor):
            a = a.detach().cpu()
            a = a.float().numpy() if a.dtype in (torch.bfloat16, torch.float16) else a.numpy()
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _fingerprint(splits: Sequence[tuple[np.ndarray, np.ndarray]]) -> str:
    h = hashlib.sha256()
    for train, val in splits:
        h.update(np.ascontiguousarray(train, dtype=np.int64).tobytes())
        h.update(b"|")
        h.update(np.ascontiguousarray(val, dtype=np.int64).tobytes())
        h.update(b"#")
    return h.hexdigest()


def _derive_labels(dataset: Dataset) -> np.ndarray:
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


def _subset(dataset: Dataset, indices: np.ndarray) -> Dataset:
    if isinstance(dataset, TensorDataset):  # slicing tensors is much faster than a Subset
        idx = torch.from_numpy(indices)
        return TensorDataset(*(t[idx] for t in dataset.tensors))
    return Subset(dataset, indices.tolist())


def _predict_probs(model: nn.Module, data: Dataset, batch_size: int, device: torch.device | None) -> torch.Tensor:
    """(n, C, ...) softmax probabilities of ``model`` on ``data`` (eval mode, no grad), on the CPU."""
    was = [(mod, mod.training) for mod in model.modules()]
    model.eval()
    outs = []
    try:
        with torch.no_grad():
            # a generator of its own: iterating a DataLoader otherwise draws from the global RNG
            for batch in DataLoader(data, batch_size=batch_size, shuffle=False, generator=torch.Generator()):
                x = batch[0]
                if device is not None:
                    x = x.to(device)
                out = _check_logits_output(model(x))
                outs.append(torch.softmax(out.float(), dim=1).cpu())
    finally:
        for mod, flag in was:
            mod.training = flag
    return torch.cat(outs)


def _jsonable(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


# ------------------------------------------------------------------------------------- training
def train_ensemble(
    model_factory: Callable[[], nn.Module],
    dataset: Dataset | Sequence[torch.Tensor],
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

    Args:
        model_factory: ``() -> nn.Module`` building one untrained member that returns logits.
        dataset: a Dataset yielding ``(x, y)`` or an ``(x, y)`` tuple of tensors, x (N, ...),
            y (N,) class labels or (N, H, W) masks.
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
        progress: show progress bars (members and epochs).
        **fit_kwargs: passed to :func:`netuq.training.fit` (``loss``, ``val_loss``, ``lr``,
            ``batch_size``, ``optimizer``, ``device``, ``patience``, ``callbacks``, ...). The
            same callback objects are used for every member.

    Returns:
        The trained :class:`Ensemble`, with ``splits_``, ``histories_``, ``val_nll_``, ``seeds_``
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
    if isinstance(model_factory, nn.Module) or not callable(model_factory):
        raise TypeError(
            "`model_factory` must be callable with no arguments, returning a new member, "
            f"got {type(model_factory).__name__} (pass the class or a lambda, not a model instance)"
        )
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"`epochs` must be a positive integer, got {epochs!r}")
    allowed = set(inspect.signature(fit).parameters) - {"model", "train_data", "epochs", "seed", "progress"}
    unknown = sorted(set(fit_kwargs) - allowed)
    if unknown:
        raise TypeError(f"train_ensemble() got unexpected keyword argument(s) {unknown} (not arguments of fit)")
    if split in ("kfold", "bootstrap") and "val_data" in fit_kwargs:
        raise ValueError(
            f"`val_data` must not be given for split={split!r}: each member validates on its held-out part"
        )
    if isinstance(dataset, DataLoader):
        raise TypeError("`dataset` must be a Dataset or an (x, y) tuple of tensors, got DataLoader")
    dataset = as_dataset(dataset, "dataset")
    n = len(dataset)  # type: ignore[arg-type]
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {list(SPLITS)}, got {split!r}")
    if n == 0:
        raise ValueError("`dataset` must not be empty, got 0 samples")

    needs_labels = stratify and split != "full" and not (split == "bootstrap" and groups is not None)
    if labels is None and needs_labels:
        labels = _derive_labels(dataset)
    splits = make_splits(n, members=members, split=split, labels=labels, groups=groups, stratify=stratify, seed=seed)

    if ignore_index is not None and "loss" not in fit_kwargs:
        fit_kwargs["loss"] = _CrossEntropy(ignore_index)
    batch_size = int(fit_kwargs.get("batch_size", 64))
    device = fit_kwargs.get("device")
    device = torch.device(device) if device is not None else None

    config = {
        "members": int(members),
        "split": split,
        "seed": int(seed),
        "n_samples": int(n),
        "stratify": bool(stratify) and split != "full",
        "grouped": groups is not None,
        "epochs": int(epochs),
        "ignore_index": ignore_index,
        "folds_sha256": _fingerprint(splits),
        # cheap content checks: the labels when there are any, the tensors of an in-memory dataset
        "labels_sha256": None if labels is None else _hash_arrays([_as_array(labels, "labels", n)]),
        "data_sha256": _hash_arrays(dataset.tensors) if isinstance(dataset, TensorDataset) else None,
        "fit": {k: v for k, v in sorted(fit_kwargs.items()) if k not in _UNCHECKED_FIT_ARGS and _jsonable(v)},
    }
    ckdir = None if checkpoint_dir is None else Path(checkpoint_dir)
    if ckdir is not None:
        _prepare_checkpoint_dir(ckdir, config)

    models: list[nn.Module] = []
    metas: list[dict] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=members, desc="ensemble members")
    try:
        for k, (train_idx, val_idx) in enumerate(splits):
            member_seed = _member_seed(int(seed), k)
            path = None if ckdir is None else ckdir / _member_file(k)
            model = _build(model_factory, member_seed)
            if path is not None and path.is_file():
                payload = _load_member(path)
                _restore(model, payload, path)
                if device is not None:
                    model.to(device)
                meta = payload["meta"]
            else:
                val_data = _subset(dataset, val_idx) if len(val_idx) else fit_kwargs.get("val_data")
                kwargs = {k2: v for k2, v in fit_kwargs.items() if k2 != "val_data"}
                history = fit(
                    model,
                    _subset(dataset, train_idx),
                    val_data=val_data,
                    epochs=epochs,
                    seed=member_seed,
                    progress=progress,
                    **kwargs,
                )
                meta = {
                    "index": k,
                    "seed": member_seed,
                    "split": split,
                    "train_indices": torch.from_numpy(train_idx),
                    "val_indices": torch.from_numpy(val_idx),
                    "history": history.to_dict(),
                    "best_val_nll": history.best_val_loss,
                    "oof_probs": None,
                }
                if split == "kfold" and oof:
                    meta["oof_probs"] = _predict_probs(model, _subset(dataset, val_idx), batch_size, device)
                if path is not None:
                    _save_member(path, model, meta)
            models.append(model)
            metas.append(meta)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()

    ens = Ensemble(models, keep_samples=keep_samples, vectorize=vectorize)
    ens._set_fitted(metas)
    if not (split == "kfold" and oof):
        ens.oof_probs_, ens.oof_member_ = None, None
    return ens


class _CrossEntropy:
    """Picklable cross-entropy with an ignore_index (the default loss when ``ignore_index`` is set)."""

    def __init__(self, ignore_index: int) -> None:
        self.ignore_index = int(ignore_index)

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(output, target, ignore_index=self.ignore_index)

    def __repr__(self) -> str:
        return f"cross_entropy(ignore_index={self.ignore_index})"


def _prepare_checkpoint_dir(ckdir: Path, config: dict) -> None:
    """Create the folder and its manifest, or check that an existing manifest has this config."""
    ckdir.mkdir(parents=True, exist_ok=True)
    for stale in ckdir.glob(".member_*.pt.*.tmp"):  # left by a run killed mid-write
        with contextlib.suppress(OSError):
            stale.unlink()
    manifest_path = ckdir / _MANIFEST
    if manifest_path.exists():
        old = _read_manifest(ckdir).get("config")
        if old != config:
            old = old or {}
            diffs = []
            for key in sorted(set(old) | set(config)):
                if old.get(key) != config.get(key):
                    if key.endswith("_sha256"):
                        diffs.append(f"{key[: -len('_sha256')]} (the content differs)")
                    else:
                        diffs.append(f"{key}: {old.get(key)!r} there, {config.get(key)!r} now")
            raise ValueError(
                f"`checkpoint_dir` {str(ckdir)!r} holds an ensemble trained with a different configuration "
                f"({'; '.join(diffs)}); use a new directory or delete this one"
            )
        return
    manifest = {
        "format": _FORMAT,
        "version": _FORMAT_VERSION,
        "members": config["members"],
        "files": [_member_file(k) for k in range(config["members"])],
        "config": config,
    }
    _write_json(manifest_path, manifest)
