"""What the engine needs from any loader and any method: batches split into parts, and a predictor.

A *batch* is a tensor ``x``, a tuple/list ``(x, y, ...)`` or a mapping whose keys are named by
``keys`` (input, labels, anomaly mask). An anomaly mask is only ever taken when it is
recognisable: a tuple's third element that is a **bool** tensor, or the value under the mapping's
anomaly key; any other extra element (a dataset index, a file name, a second target) is ignored.
Each consumer reads only the parts it uses (``predict``: no anomaly mask; an OOD loader: no
labels), so an element it never uses is never checked. Labels that are used for scores pass
one check, the same for every loader (:func:`check_batch`): integers of the prediction's shape
without C, values in [0, C) or ``ignore_index``, and a dtype that can hold ``ignore_index``.

A *method* is a netuq method, a callable that returns a :class:`~netuq.Prediction`, an
``nn.Module`` whose forward returns a Prediction (a method too), or a plain ``nn.Module`` (its
logits as one sample).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .._batch import Batch
from .._checks import check_ignore_index
from .._modes import eval_mode
from ..prediction import Prediction

__all__ = [
    "Batch",
    "DEFAULT_KEYS",
    "as_predictor",
    "check_batch",
    "check_reiterable",
    "iter_batches",
    "method_device",
]

DEFAULT_KEYS = ("image", "label", "anomaly")


def _check_keys(keys: Any) -> tuple[str, ...]:
    if isinstance(keys, str) or not isinstance(keys, Sequence) or not 1 <= len(keys) <= 3:
        raise TypeError(f"`keys` must be a sequence of 1 to 3 names (input, labels, anomaly), got {keys!r}")
    return tuple(keys)


def _anomaly_mask(value: Any, where: str) -> torch.Tensor:
    """An anomaly mask named explicitly (a mapping's anomaly key): bool, or integers that are all 0 or 1."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{where} must be a bool tensor (an anomaly mask) or absent, got {type(value).__name__}")
    if value.dtype == torch.bool:
        return value
    if value.is_floating_point() or value.is_complex() or (
        value.numel() and not bool(((value == 0) | (value == 1)).all())
    ):
        found = f"dtype {value.dtype}" if value.is_floating_point() or value.is_complex() else (
            f"values in [{int(value.min())}, {int(value.max())}]")
        raise ValueError(f"{where} must be an anomaly mask: a bool tensor (or integers 0/1), got {found}")
    return value.bool()


def _split(batch: Any, index: int, keys: tuple[str, ...], name: str, *, labels: bool, anomaly: bool) -> Batch:
    """Split a raw batch into the parts its consumer uses (``labels``, ``anomaly``); other parts are not read."""
    where = f"`{name}` batch {index}"
    mask: Any = None
    if isinstance(batch, torch.Tensor):
        x, y = batch, None
    elif isinstance(batch, Mapping):
        if keys[0] not in batch:
            raise ValueError(
                f"{where} is a mapping without the input key {keys[0]!r} (keys={keys}), "
                f"got keys {sorted(map(str, batch))}; pass keys=(input, labels[, anomaly])"
            )
        x = batch[keys[0]]
        y = batch.get(keys[1]) if len(keys) > 1 else None
        if anomaly and len(keys) > 2 and batch.get(keys[2]) is not None:  # named: it must be a mask
            mask = _anomaly_mask(batch[keys[2]], f"{where}: the value of {keys[2]!r}")
    elif isinstance(batch, (tuple, list)):
        if not batch:
            raise ValueError(f"{where} must hold at least an input tensor, got an empty {type(batch).__name__}")
        x = batch[0]
        y = batch[1] if len(batch) > 1 else None
        # Only a bool tensor is an anomaly mask: (x, y, index) or (x, y, path) batches are common.
        third = batch[2] if len(batch) > 2 else None
        if anomaly and isinstance(third, torch.Tensor) and third.dtype == torch.bool:
            mask = third
    else:
        raise TypeError(f"{where} must be a tensor, a tuple/list (x, y, ...) or a mapping, got {type(batch).__name__}")
    if not labels:
        y = None
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{where}: the input must be a tensor, got {type(x).__name__}")
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError(f"{where}: the input must have a non-empty batch dimension, got shape {tuple(x.shape)}")
    for what, t in (("labels", y), ("anomaly mask", mask)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"{where}: the {what} must be a tensor or absent, got {type(t).__name__}")
        if t is not None and (t.ndim == 0 or t.shape[0] != x.shape[0]):
            raise ValueError(
                f"{where}: the {what} must have the input's batch size {x.shape[0]} in dim 0, "
                f"got shape {tuple(t.shape)}"
            )
    if y is not None and (y.is_floating_point() or y.is_complex() or y.dtype == torch.bool):
        raise ValueError(f"{where}: the labels must be integers, got dtype {y.dtype}")
    return Batch(index, x, y, mask)


def one_shot(loader: Any) -> bool:
    """Whether ``loader`` is an iterator (a generator, ``iter(list)``, ``map``): iterating it consumes it.

    Decided by the iterator protocol (``__next__``), without calling ``iter()`` (which starts a
    DataLoader's workers).
    """
    return isinstance(loader, Iterator)


def check_reiterable(loader: Any, name: str, passes: int, why: str) -> None:
    """Refuse a one-shot iterator that will be iterated ``passes`` > 1 times (it would be empty after the first).

    Example:
        >>> check_reiterable([1, 2], "test_loader", 2, "2 methods")
        >>> check_reiterable(iter([1, 2]), "test_loader", 2, "2 methods")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        TypeError: `test_loader` is a one-shot iterator (list_iterator) but is iterated 2 times (2 methods)...
    """
    if passes > 1 and one_shot(loader):
        raise TypeError(
            f"`{name}` is a one-shot iterator ({type(loader).__name__}) but is iterated {passes} times ({why}): "
            "every pass after the first would see no batches; pass a DataLoader or a list of batches"
        )


def iter_batches(loader: Iterable, keys: Sequence[str] = DEFAULT_KEYS, *, name: str = "loader",
                 allow_empty: bool = False, labels: bool = True, anomaly: bool = False) -> Iterator[Batch]:
    """Split every batch of ``loader``; errors name the batch index. Raises on an empty loader (unless allowed).

    ``labels`` / ``anomaly``: whether the consumer uses the labels / an anomaly mask (parts it does
    not use are neither read nor checked).
    """
    keys = _check_keys(keys)
    if isinstance(loader, (torch.Tensor, Mapping, str, bytes)) or not isinstance(loader, Iterable):
        raise TypeError(
            f"`{name}` must be an iterable of batches (a DataLoader, a list of tensors or tuples), "
            f"got {type(loader).__name__}"
        )
    labelled = None
    count = 0
    for i, raw in enumerate(loader):
        batch = _split(raw, i, keys, name, labels=labels, anomaly=anomaly)
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
        hint = (f" ({type(loader).__name__} is a one-shot iterator: was it consumed before? pass a DataLoader or a "
                "list of batches)") if one_shot(loader) else ""
        raise ValueError(f"`{name}` yielded no batches; it must yield at least one{hint}")


def _modules_of(method: Any) -> list[nn.Module]:
    """The nn.Modules a method computes with: itself, or its ``model`` / ``members`` / ``backbone``."""
    candidates: list[Any] = [method]
    for attr in ("model", "members", "backbone"):
        value = getattr(method, attr, None)
        if value is not None:
            candidates.extend(value if isinstance(value, (list, tuple, nn.ModuleList)) else [value])
    return [obj for obj in candidates if isinstance(obj, nn.Module)]


def method_device(method: Any) -> torch.device:
    """The device of the method's first parameter (model, members, backbone), else the CPU."""
    for obj in _modules_of(method):
        for p in obj.parameters():
            return p.device
        for b in obj.buffers():
            return b.device
    return torch.device("cpu")


def check_not_meta(method: Any, name: str = "method") -> None:
    """Refuse a method whose parameters or buffers are on the ``meta`` device (shapes without values).

    Example:
        >>> check_not_meta(nn.Linear(2, 2, device="meta"), "methods['plain']")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: `methods['plain']` has parameters on the meta device (weight): shapes without values...
    """
    for module in _modules_of(method):
        for pname, t in (*module.named_parameters(), *module.named_buffers()):
            if t.is_meta:
                raise ValueError(
                    f"`{name}` has parameters on the meta device ({pname}): shapes without values, so it cannot "
                    'predict; materialise it first (model.to_empty(device="cpu"), then load_state_dict), or load '
                    'it without device="meta" / init_empty_weights'
                )


def _rng_states(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_states(states: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(states[0])
    if states[1] is not None:
        torch.cuda.set_rng_state(states[1], device)


def _module_predictor(method: nn.Module, name: str) -> Callable[[torch.Tensor], Prediction]:
    """A plain module (logits -> a one-sample Prediction, run in eval mode), or a module whose forward
    returns a Prediction: a method, called as given (its modes are its own business)."""
    kind: dict[str, bool] = {}  # "method": decided by the first output

    def as_method(out: Any) -> Prediction:
        if not isinstance(out, Prediction):
            raise TypeError(f"`{name}` is an nn.Module that returned a netuq.Prediction on its first batch, "
                            f"then {type(out).__name__}")
        return out

    def plain(x: torch.Tensor) -> Prediction:
        if kind.get("method"):
            return as_method(method(x))
        # The first batch tells a method from a model. Eval mode changes nothing for a module already in
        # eval mode; otherwise a method is run again as given, from the random state this call started from.
        rerun = "method" not in kind and any(m.training for m in method.modules())
        device = x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
        states = _rng_states(device) if rerun else None
        with eval_mode(method):
            out = method(x)  # the input as given: bit-for-bit the user's own loop
        if isinstance(out, Prediction) and "method" not in kind:  # a module whose forward returns a Prediction
            kind["method"] = True
            if states is not None:
                _set_rng_states(states, device)
                out = as_method(method(x))
            return out
        kind["method"] = False
        if isinstance(out, torch.Tensor) and out.ndim == 4 and not out.is_contiguous():
            out = out.contiguous()  # channels-last logits: the metrics read (N, C, H, W) rows
        if not isinstance(out, torch.Tensor):
            raise TypeError(
                f"`{name}` is an nn.Module whose output must be a logits tensor (N, C, ...) or a netuq.Prediction "
                f"(for every batch), got {type(out).__name__}"
            )
        return Prediction.from_logits(out)

    return plain


def as_predictor(method: Any, *, seed: int = 0, name: str = "method") -> Callable[[torch.Tensor], Prediction]:
    """A function ``x -> Prediction`` for any supported method kind (called under ``no_grad``).

    A method that implements ``netuq_predictor(seed)`` (:mod:`netuq.traits`) says how it runs;
    a plain ``nn.Module`` gives its logits as one sample; any other callable must return a
    Prediction.
    """
    check_not_meta(method, name)
    own = getattr(method, "netuq_predictor", None)
    if callable(own):
        return own(seed)
    if isinstance(method, nn.Module):
        return _module_predictor(method, name)
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


def check_batch(pred: Prediction, batch: Batch, name: str = "loader", *, classes: bool = False,
                ignore_index: int | None = None) -> None:
    """The one check of a batch's labels (and anomaly mask) against its prediction (N, C, ...).

    Always: labels and mask of the prediction's shape without C. With ``classes`` (the labels are
    scored): ``ignore_index`` representable in the labels' dtype (else ``labels != ignore_index``
    would wrap, e.g. -100 is 156 in uint8, and silently drop a class) and every other label in
    [0, C). The same rule as :func:`netuq._checks.check_labels`, for every loader that is scored.
    """
    shape = tuple(pred.log_probs.shape)
    want = shape[:1] + shape[2:]
    where = f"`{name}` batch {batch.index}"
    for what, t in (("labels", batch.y), ("anomaly mask", batch.anomaly)):
        if t is not None and tuple(t.shape) != want:
            raise ValueError(
                f"{where}: the {what} must have shape {want} (the prediction {shape} without its class dimension), "
                f"got {tuple(t.shape)}"
            )
    y = batch.y
    if not classes or y is None:
        return
    try:
        check_ignore_index(ignore_index, y.dtype)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    valid = y if ignore_index is None else y[y != ignore_index]
    if valid.numel():
        lo, hi = (int(v) for v in torch.aminmax(valid))
        if lo < 0 or hi >= shape[1]:
            extra = "" if ignore_index is None else f" (or ignore_index={ignore_index})"
            raise ValueError(f"{where}: the labels must be integers in [0, {shape[1]}){extra} for the prediction's "
                             f"{shape[1]} classes, got values in [{lo}, {hi}]")
