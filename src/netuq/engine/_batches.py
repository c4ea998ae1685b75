"""What the engine needs from any loader and any method: batches split into parts, and a predictor.

A *batch* is a tensor ``x``, a tuple/list ``(x, y, anomaly, ...)`` or a mapping whose keys are
named by ``keys`` (input, labels, anomaly mask). A *method* is a netuq method, a callable that
returns a :class:`~netuq.Prediction`, or a plain ``nn.Module`` (its logits as one sample, read from
its output by :mod:`netuq._outputs`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._modes import eval_mode
from .._outputs import OutputRule, logits_of
from ..prediction import Prediction

__all__ = ["Batch", "DEFAULT_KEYS", "as_predictor", "iter_batches", "method_device", "offers_epistemic"]

DEFAULT_KEYS = ("image", "label", "anomaly")


@dataclass
class Batch:
    """One batch, split: ``x`` (N, ...) input, ``y`` labels or None, ``anomaly`` (N, ...) bool mask or None."""

    index: int
    x: torch.Tensor
    y: torch.Tensor | None
    anomaly: torch.Tensor | None


def _check_keys(keys: Any) -> tuple[str, ...]:
    if isinstance(keys, str) or not isinstance(keys, Sequence) or not 1 <= len(keys) <= 3:
        raise TypeError(f"`keys` must be a sequence of 1 to 3 names (input, labels, anomaly), got {keys!r}")
    return tuple(keys)


def _split(batch: Any, index: int, keys: tuple[str, ...], name: str) -> Batch:
    if isinstance(batch, torch.Tensor):
        parts: list[Any] = [batch]
    elif isinstance(batch, Mapping):
        if keys[0] not in batch:
            raise ValueError(
                f"`{name}` batch {index} is a mapping without the input key {keys[0]!r} (keys={keys}), "
                f"got keys {sorted(map(str, batch))}; pass keys=(input, labels[, anomaly])"
            )
        parts = [batch.get(k) for k in keys]
    elif isinstance(batch, (tuple, list)):
        if not batch:
            raise ValueError(
                f"`{name}` batch {index} must hold at least an input tensor, got an empty {type(batch).__name__}"
            )
        parts = list(batch[:3])
    else:
        raise TypeError(
            f"`{name}` batch {index} must be a tensor, a tuple/list (x, y, ...) or a mapping, "
            f"got {type(batch).__name__}"
        )
    parts += [None] * (3 - len(parts))
    x, y, anomaly = parts
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"`{name}` batch {index}: the input must be a tensor, got {type(x).__name__}")
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError(f"`{name}` batch {index}: the input must have a non-empty batch dimension, got shape "
                         f"{tuple(x.shape)}")
    for what, t in (("labels", y), ("anomaly mask", anomaly)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"`{name}` batch {index}: the {what} must be a tensor or absent, got {type(t).__name__}")
        if t is not None and (t.ndim == 0 or t.shape[0] != x.shape[0]):
            raise ValueError(
                f"`{name}` batch {index}: the {what} must have the input's batch size {x.shape[0]} in dim 0, "
                f"got shape {tuple(t.shape)}"
            )
    if y is not None and (y.is_floating_point() or y.is_complex() or y.dtype == torch.bool):
        raise ValueError(f"`{name}` batch {index}: the labels must be integers, got dtype {y.dtype}")
    return Batch(index, x, y, None if anomaly is None else anomaly.bool())


def iter_batches(loader: Iterable, keys: Sequence[str] = DEFAULT_KEYS, *, name: str = "loader",
                 allow_empty: bool = False) -> Iterator[Batch]:
    """Split every batch of ``loader``; errors name the batch index. Raises on an empty loader (unless allowed)."""
    keys = _check_keys(keys)
    if isinstance(loader, (torch.Tensor, Mapping, str, bytes)) or not isinstance(loader, Iterable):
        raise TypeError(
            f"`{name}` must be an iterable of batches (a DataLoader, a list of tensors or tuples), "
            f"got {type(loader).__name__}"
        )
    labelled = None
    count = 0
    for i, raw in enumerate(loader):
        batch = _split(raw, i, keys, name)
        has = batch.y is not None
        if labelled is not None and has != labelled:
            raise ValueError(
                f"`{name}` batch {i} {'has' if has else 'has no'} labels but the batches before it "
                f"{'had none' if has else 'had labels'}"
            )
        labelled = has
        count += 1
        yield batch
    if count == 0 and not allow_empty:
        raise ValueError(f"`{name}` yielded no batches; it must yield at least one")


def method_device(method: Any) -> torch.device:
    """The device of the method's first parameter (model, members, backbone), else the CPU."""
    candidates: list[Any] = [method]
    for attr in ("model", "members", "backbone"):
        value = getattr(method, attr, None)
        if value is not None:
            candidates.extend(value if isinstance(value, (list, tuple, nn.ModuleList)) else [value])
    for obj in candidates:
        if isinstance(obj, nn.Module):
            for p in obj.parameters():
                return p.device
            for b in obj.buffers():
                return b.device
    return torch.device("cpu")


def offers_epistemic(method: Any) -> bool:
    """Whether the method's samples carry an epistemic part (mutual information is meaningful).

    Heteroscedastic samples spread by logit noise: their disagreement is aleatoric by
    construction (Kendall & Gal 2017). A callable may say so with ``fn.epistemic = False``.
    """
    from ..methods.heteroscedastic import HeteroscedasticClassifier

    if isinstance(method, HeteroscedasticClassifier):
        return False
    return bool(getattr(method, "epistemic", True))


def as_predictor(
    method: Any, *, seed: int = 0, name: str = "method", output: OutputRule = None
) -> Callable[[torch.Tensor], Prediction]:
    """A function ``x -> Prediction`` for any supported method kind (called under ``no_grad``).

    A plain ``nn.Module``'s output is read by :func:`netuq._outputs.logits_of` (``output``
    overrides the default rule: a tensor, ``.logits``, or a mapping's ``"logits"`` / ``"out"``)."""
    from ..methods.confidence import ConfidenceClassifier
    from ..methods.heteroscedastic import HeteroscedasticClassifier

    if isinstance(method, HeteroscedasticClassifier):
        generators: dict[torch.device, torch.Generator] = {}

        def het(x: torch.Tensor) -> Prediction:
            if x.device not in generators:  # seeded once per device: fresh noise per batch, reproducible per call
                generators[x.device] = torch.Generator(device=x.device).manual_seed(seed)
            return method.predict(x, generator=generators[x.device])

        return het
    if isinstance(method, ConfidenceClassifier):
        return lambda x: method.predict(x)
    if isinstance(method, nn.Module):
        def plain(x: torch.Tensor) -> Prediction:
            with eval_mode(method):
                out = logits_of(method(x), output, name=name)  # the input as given: the user's own loop
            if out.ndim == 4 and not out.is_contiguous():
                out = out.contiguous()  # channels-last logits: the metrics read (N, C, H, W) rows
            return Prediction.from_logits(out)

        return plain
    if callable(method):

        def call(x: torch.Tensor) -> Prediction:
            out = method(x)
            if not isinstance(out, Prediction):
                raise TypeError(f"`{name}` must return a netuq.Prediction, got {type(out).__name__}")
            return out

        return call
    raise TypeError(
        f"`{name}` must be a netuq method (MCDropout, TTA, Ensemble, HeteroscedasticClassifier, "
        f"ConfidenceClassifier), a callable returning a Prediction or an nn.Module, got {type(method).__name__}"
    )


def check_labels_shape(pred: Prediction, batch: Batch, name: str = "loader") -> None:
    """Labels must be the prediction's shape without the class dimension."""
    shape = tuple(pred.log_probs.shape)
    want = shape[:1] + shape[2:]
    for what, t in (("labels", batch.y), ("anomaly mask", batch.anomaly)):
        if t is not None and tuple(t.shape) != want:
            raise ValueError(
                f"`{name}` batch {batch.index}: the {what} must have shape {want} (the prediction {shape} "
                f"without its class dimension), got {tuple(t.shape)}"
            )
