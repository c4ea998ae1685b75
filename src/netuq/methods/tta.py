"""Test-time augmentation: predict on transformed copies of the input and merge the probabilities.

Transforms and their semantics live in :mod:`netuq.tta` (ttach-compatible: Cartesian product of
parameters, identity included, de-augmentation in reverse order). The wrapper

* runs several views per forward call (concatenated along dim 0, at most ``max_batch`` rows;
  views are grouped by their augmented size, since e.g. a 90° rotation of a non-square image or
  a :class:`netuq.tta.Scale` changes it),
* takes the softmax of every view in its own frame, then brings segmentation outputs back to the
  input frame before merging (:meth:`netuq.tta.View.deaugment_log_probs`: flips, rotations and
  shifts move log-probabilities exactly; ``Scale`` resizes the **probabilities** bilinearly to the
  exact original H × W, so every pixel stays a normalised distribution),
* merges **probabilities**, never raw logits, in log space,
* never changes the model's mode: it runs the model as it is (normally ``eval()``).

Merges (over V views with probabilities p_v):

* ``"mean"``: p̄ = (1/V) Σ_v p_v. The returned Prediction holds the views as samples, so
  ``aleatoric`` = E_v H[p_v] and ``epistemic`` = H[p̄] − E_v H[p_v] measure the disagreement
  between views (Ayhan & Berens 2018; Shanmugam et al. 2021 for when TTA helps).
* ``"gmean"``: exp(mean_v log p_v), renormalised over classes (computed in log space; the
  product of probabilities underflows).
* ``"max"``: max_v p_v per class, renormalised.
* ``"tsharpen"``: mean_v p_v^t with t = 0.5, renormalised (temperature sharpening, Shanmugam
  et al., "When and Why Test-Time Augmentation Works", 2020 preprint; ttach's ``tsharpen``).

For the merges other than ``"mean"`` the returned Prediction is the merged distribution itself
(one sample: ``entropy`` = ``aleatoric`` = H[merged], ``epistemic`` = 0), and the decomposition
across views is attached as ``scores``: ``"view_aleatoric"``, ``"view_epistemic"`` and
``"view_variation_ratio"`` (each (N, ...); use ``pred.uncertainty("view_epistemic")``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import torch

from .._checks import check_int as _check_int
from .._checks import check_logits, float_dtype
from ..prediction import Prediction
from ..tta import Compose, View, as_compose
from ._batching import balanced_chunk as _balanced
from ._batching import default_chunk as _default_chunk

__all__ = ["TTA", "MERGES", "TSHARPEN_T"]

MERGES = ("mean", "gmean", "max", "tsharpen")
TASKS = ("classification", "segmentation")
TSHARPEN_T = 0.5


class TTA:
    """Test-time augmentation around a model; returns a :class:`netuq.Prediction`.

    Args:
        model: callable (usually an ``nn.Module`` in eval mode), (N, C_in, H, W) -> logits
            (N, C) for classification or (N, C, H, W) for segmentation.
        transforms: a :class:`netuq.tta.Compose` (e.g. ``netuq.tta.d4()``), a transform, a list
            of transforms, or a ``ttach.Compose``.
        merge: "mean", "gmean", "max" or "tsharpen" (see the module docstring).
        task: "classification" (outputs merged as they are) or "segmentation" (outputs
            de-augmented to the input frame first).
        keep_samples: keep every view's probabilities (``pred.samples``, (V, N, C, ...), in the
            order of ``transforms``); only with ``merge="mean"``.
        max_batch: at most this many rows per forward call. None: as many views as keep the
            stacked input under 2**18 elements on CPU, 2**21 on other devices, at least one. Batched views
            cost memory: ``max_batch=N`` runs one view per call like ttach.
        no_grad: run under ``torch.no_grad()`` (default).

    Example:
        >>> import netuq
        >>> net = torch.nn.Conv2d(3, 4, 1).eval()   # per-pixel: equivariant to flips/rotations
        >>> tta = TTA(net, netuq.tta.d4(), task="segmentation")
        >>> x = torch.randn(2, 3, 8, 6)
        >>> pred = tta(x)
        >>> pred.probs.shape, pred.num_samples
        (torch.Size([2, 4, 8, 6]), 8)
        >>> torch.allclose(pred.probs, net(x).softmax(1), atol=1e-6)
        True
    """

    def __init__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        transforms: Any,
        *,
        merge: str = "mean",
        task: str = "classification",
        keep_samples: bool = False,
        max_batch: int | None = None,
        no_grad: bool = True,
    ) -> None:
        if not callable(model):
            raise TypeError(f"`model` must be callable (an nn.Module), got {type(model).__name__}")
        if merge not in MERGES:
            raise ValueError(f"`merge` must be one of {list(MERGES)}, got {merge!r}")
        if task not in TASKS:
            raise ValueError(f"`task` must be one of {list(TASKS)}, got {task!r}")
        _check_int(max_batch, "max_batch", 1, allow_none=True)
        if keep_samples and merge != "mean":
            raise ValueError(f"`keep_samples=True` needs merge='mean' (the views are the samples), got merge={merge!r}")
        self.model = model
        self.transforms: Compose = as_compose(transforms)
        self.merge = merge
        self.task = task
        self.keep_samples = bool(keep_samples)
        self.max_batch = None if max_batch is None else int(max_batch)
        self.no_grad = bool(no_grad)

    def __repr__(self) -> str:
        return (
            f"TTA({type(self.model).__name__}, {len(self.transforms)} views, merge={self.merge!r}, "
            f"task={self.task!r}, max_batch={self.max_batch})"
        )

    def __call__(self, x: torch.Tensor) -> Prediction:
        """Predict on every view of a batch and merge.

        Args:
            x: (N, C_in, H, W) images.

        Returns:
            Prediction: ``probs`` (N, C) or (N, C, H, W); see the class docstring for merges.
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"`x` must be a tensor, got {type(x).__name__}")
        if x.ndim != 4 or x.shape[0] == 0:
            raise ValueError(f"`x` must have shape (N, C, H, W) with N >= 1, got shape {tuple(x.shape)}")
        with ExitStack() as stack:
            if self.no_grad:
                stack.enter_context(torch.no_grad())
            n = x.shape[0]
            if self.max_batch is not None and self.max_batch < n:
                return Prediction.cat([self._predict(x[s : s + self.max_batch]) for s in range(0, n, self.max_batch)])
            return self._predict(x)

    def _predict(self, x: torch.Tensor) -> Prediction:
        n = x.shape[0]
        size = tuple(x.shape[-2:])
        views = self.transforms.views
        groups: dict[tuple[int, int], list[int]] = {}
        for i, v in enumerate(views):
            groups.setdefault(v.output_size(size), []).append(i)

        pred = Prediction(keep_samples=self.keep_samples)
        kept: dict[int, torch.Tensor] = {}
        acc: torch.Tensor | None = None
        ref_shape: tuple[int, ...] | None = None
        for aug_size, idx in groups.items():
            if self.max_batch is not None:
                per_forward = max(1, self.max_batch // n)
            else:
                per_forward = _default_chunk(x.shape[1] * aug_size[0] * aug_size[1], n, x.device)
            per_forward = _balanced(per_forward, len(idx))
            for start in range(0, len(idx), per_forward):
                chunk = [views[i] for i in idx[start : start + per_forward]]
                log_p = self._run(chunk, x, size)  # (k, N, C, ...)
                if ref_shape is None:
                    ref_shape = tuple(log_p.shape[1:])
                elif tuple(log_p.shape[1:]) != ref_shape:
                    raise ValueError(
                        f"`model` outputs must have the same shape for every view once de-augmented, got "
                        f"{tuple(log_p.shape[1:])} for {chunk[0]} and {ref_shape} for the first view"
                    )
                if self.keep_samples:
                    kept.update(zip(idx[start : start + per_forward], log_p))
                else:
                    pred.add_log_probs(log_p, stacked=True)
                if self.merge != "mean":
                    acc = self._accumulate(acc, log_p)
        if self.keep_samples:
            pred.add_log_probs(torch.stack([kept[i] for i in range(len(views))]), stacked=True)
        if self.merge == "mean":
            return pred
        merged = self._finish(acc, len(views))
        out = Prediction(
            scores={
                "view_aleatoric": pred.aleatoric,
                "view_epistemic": pred.epistemic,
                "view_variation_ratio": pred.variation_ratio,
            }
        )
        out.add_log_probs(merged)
        return out

    def _run(self, chunk: list[View], x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Forward a chunk of views in one call; return their log-probabilities (k, N, C, ...)."""
        n, k = x.shape[0], len(chunk)
        inp = torch.cat([v.augment(x) for v in chunk]) if k > 1 else chunk[0].augment(x)
        out = self.model(inp)
        if not isinstance(out, torch.Tensor) or out.ndim < 2 or out.shape[0] != k * n:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"`model` must return logits of shape (N, C, ...) with N = {k * n} rows, got {shape}")
        if self.task == "segmentation" and out.ndim != 4:
            raise ValueError(
                f"`model` must return (N, C, H, W) logits for task='segmentation', got shape {tuple(out.shape)}"
            )
        out = check_logits(out, "logits")
        log_p = torch.log_softmax(out.to(float_dtype(out)), dim=1)  # softmax in each view's own frame
        if self.task == "segmentation":
            return torch.stack([v.deaugment_log_probs(lp, size) for v, lp in zip(chunk, log_p.split(n))])
        return log_p.reshape(k, n, *log_p.shape[1:])

    def _accumulate(self, acc: torch.Tensor | None, log_p: torch.Tensor) -> torch.Tensor:
        if self.merge == "gmean":
            part = log_p.sum(0)
            return part if acc is None else acc + part
        if self.merge == "max":
            part = log_p.amax(0)
            return part if acc is None else torch.maximum(acc, part)
        part = torch.logsumexp(TSHARPEN_T * log_p, dim=0)  # tsharpen: log Σ_v p_v^t
        return part if acc is None else torch.logaddexp(acc, part)

    def _finish(self, acc: torch.Tensor, count: int) -> torch.Tensor:
        if self.merge == "gmean":
            acc = acc / count
        elif self.merge == "tsharpen":
            acc = acc - math.log(count)
        return acc - torch.logsumexp(acc, dim=1, keepdim=True)
