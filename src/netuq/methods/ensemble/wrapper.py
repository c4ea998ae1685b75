"""The :class:`Ensemble` wrapper: the uniform mixture of its members' predictive distributions,
run as one vectorised call (``torch.func.vmap``) where that is faster, else member by member.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..._layout import as_layout, check_channels_last
from ..._modes import eval_mode
from ...prediction import Prediction
from ...training import History
from ...traits import Traits
from .data import check_logits_output
from .files import build, load_member, member_file, member_payload, read_manifest, restore, save_member, write_manifest
from .splits import member_seed

__all__ = ["Ensemble", "prefers_vmap"]

logger = logging.getLogger(__name__)


def prefers_vmap(device: torch.device) -> bool:
    """The ``vectorize="auto"`` rule: whether one vmap call beats a loop over the members on ``device``.

    * CPU: no. vmap turns each convolution into a grouped convolution over the stacked weights,
      slower on the CPU than K ordinary ones (5 SmallCNN, batch 256: vmap 15.4 ms, loop 12.9 ms;
      ``perf/bench_ensemble.py`` prints the ratio; on one thread the loop wins by 1.5x). Pass
      ``vectorize=True`` where a measurement shows vmap winning: many tiny members on small
      batches, where the loop's Python overhead dominates, or a heavily loaded machine with
      several threads, where K times more parallel regions cost more than grouped convolutions.
    * CUDA (and other accelerators): yes. One launch per layer instead of K keeps the device busy.

    Example:
        >>> prefers_vmap(torch.device("cpu")), prefers_vmap(torch.device("cuda", 0))
        (False, True)
    """
    return device.type != "cpu"


def _signature(model: nn.Module) -> tuple:
    return (
        type(model),
        tuple((n, tuple(t.shape), t.dtype, t.device) for n, t in model.named_parameters()),
        tuple((n, tuple(t.shape), t.dtype, t.device) for n, t in model.named_buffers()),
    )


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
    after the other (lowest memory, e.g. for large segmentation batches).

    ``vectorize="auto"`` (the default) picks what is faster where the members are
    (:func:`prefers_vmap`): the loop on the CPU, where vmap's grouped convolutions lose
    (``perf/bench_ensemble.py``), vmap on CUDA. There, a model that ``vmap`` cannot run (e.g.
    data-dependent control flow) falls back to the loop, logged at DEBUG level.

    Reference: Lakshminarayanan, Pritzel & Blundell, "Simple and Scalable Predictive Uncertainty
    Estimation using Deep Ensembles", NeurIPS 2017.

    Args:
        models: the members; each maps (N, ...) inputs to (N, C) or (N, C, H, W) logits.
        keep_samples: keep every member's probabilities in the prediction (``pred.samples``,
            shape (S, N, C, ...)).
        vectorize: ``"auto"`` (vmap where it is faster and possible, else the loop), ``True``
            (require vmap; raises if the members differ in architecture or vmap fails) or
            ``False`` (always loop).
        channels_last: opt-in speed on CPU (:mod:`netuq._layout`): True feeds 4-d inputs to the
            members of the loop channels-last, with no check (1.3-1.6x faster convolutions
            here; probabilities differ from the default's by float rounding, up to ~1e-4 on a
            plain CNN). False or None (default): inputs as given.
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
        >>> len(ens), pred.probs.shape, pred.num_samples, ens.vectorized  # a loop on the CPU
        (5, torch.Size([8, 3]), 5, False)
        >>> torch.allclose(Ensemble(ens.members, vectorize=True)(torch.ones(2, 4)).probs, ens(torch.ones(2, 4)).probs)
        True
        >>> bool((pred.entropy >= pred.aleatoric - 1e-6).all())
        True
    """

    def __init__(
        self,
        models: Iterable[nn.Module],
        *,
        keep_samples: bool = False,
        vectorize: bool | str = "auto",
        channels_last: bool | None = False,
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
        self.channels_last = check_channels_last(channels_last)
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
        if self.vectorize is False or self._vmap_failed:
            return False
        # the device rule first: the architecture check walks every member (~1 ms a call)
        return (self.vectorize is True or prefers_vmap(self._device())) and self._same_architecture()

    def _device(self) -> torch.device:
        for p in self.members[0].parameters():
            return p.device
        return torch.device("cpu")

    def to(self, device: torch.device | str) -> Ensemble:
        """Move every member to ``device`` (returns self)."""
        for m in self.members:
            m.to(device)
        return self

    # ------------------------------------------------------------------ prediction
    def netuq_traits(self) -> Traits:
        """An ensemble's traits (:mod:`netuq.traits`): epistemic, ``len(members)`` members."""
        return Traits("ensemble", epistemic=True, members=len(self.members))

    def netuq_members(self) -> list[nn.Module]:
        """The members, each scored alone by ``netuq.compare``."""
        return list(self.members)

    def __call__(self, x: torch.Tensor) -> Prediction:
        """Predict a batch: (N, ...) inputs -> Prediction with (N, C, ...) mean probabilities.

        ``x`` is moved to the members' device (that of the first member's parameters). Members
        run in eval mode without gradients; every module's ``training`` flag is restored after.

        Raises:
            TypeError: ``x`` is not a tensor.
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"`x` must be a tensor of inputs of shape (N, ...), got {type(x).__name__}")
        if x.ndim == 0:
            raise ValueError("`x` must be a batch of inputs of shape (N, ...), got a 0-dim tensor")
        with eval_mode(*self.members), torch.no_grad():
            x = self._to_member_device(x)
            pred = Prediction(keep_samples=self.keep_samples)
            vmap_failed = False
            if self.vectorized:
                logits = self._vmap_logits(x)
                if logits is not None:
                    pred.add_logits(check_logits_output(logits), stacked=True)
                    return pred
                vmap_failed = True
            target = None  # members may sit on different devices: gather on the first one's
            inp = as_layout(x, self.channels_last)  # converted once for every member
            for m in self.members:
                out = m(inp)
                out = check_logits_output(out)
                if out.ndim == 4 and not out.is_contiguous():
                    out = out.contiguous()  # channels-last segmentation logits: the sums stay (N, C, H, W)
                target = out.device if target is None else target
                pred.add_logits(out.to(target))
            if vmap_failed:  # the model, not the input, defeats vmap: loop from now on
                self._vmap_failed = True
                self._stacked, self._cache_key = None, None
            return pred

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
            save_member(d / member_file(k), member_payload(m, meta))
        # the saved members, with their state as of now: the training config (if any) is kept for reference
        old = None
        with contextlib.suppress(OSError, ValueError):
            old = read_manifest(d).get("config")
        write_manifest(d, len(self), old)
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

        Returns:
            The ensemble, its members in eval mode.

        Raises:
            FileNotFoundError: no manifest, or a member file is missing (e.g. an interrupted
                training run: call :func:`train_ensemble` again to finish it).
            ValueError: a file is unreadable or does not match ``model_factory()``.
        """
        d = Path(directory)
        manifest = read_manifest(d)
        files = manifest.get("files") or [member_file(k) for k in range(int(manifest["members"]))]
        missing = [f for f in files if not (d / f).is_file()]
        if missing:
            raise FileNotFoundError(
                f"`directory` {str(d)!r} is missing member file(s) {missing} of {len(files)}; if training was "
                "interrupted, call train_ensemble again with the same checkpoint_dir to finish it"
            )
        models, metas = [], []
        for k, name in enumerate(files):
            payload = load_member(d / name)
            model = build(model_factory, member_seed(0, k))
            restore(model, payload, str(d / name))
            models.append(model.eval())
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
