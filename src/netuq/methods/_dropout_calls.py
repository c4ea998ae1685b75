"""Dropout *calls* under Monte Carlo sampling: seeded masks, and functional dropout switched on.

:class:`FunctionalDropout` is a ``torch.overrides.TorchFunctionMode``: while it is active every call
of ``torch.nn.functional.dropout``, ``dropout1d/2d/3d``, ``alpha_dropout``,
``feature_alpha_dropout`` and of ``torch.dropout``, ``torch.feature_dropout``,
``torch.alpha_dropout``, ``torch.feature_alpha_dropout`` (and their in-place ``_`` forms) made from
Python runs with ``training=True`` — whatever ``training=self.training`` said — and, when a seed
state is given, with per-sample seeded masks (the same rule as the dropout modules, see
:mod:`netuq.methods.mc_dropout`). Other torch functions pass through unchanged; modes are
thread-local, so other threads are not affected.

What it cannot see: dropout inside TorchScript or ``torch.compile``-d code, inside C++ operators
(``scaled_dot_product_attention(dropout_p=...)``, fused RNN dropout), or written by hand with
``torch.bernoulli`` (stochastic depth / DropPath). Such a model with no dropout module and no visible
call is refused by :class:`netuq.MCDropout` (every sample would be identical).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .._random import derive_seed as _derive
from .._random import seed_device as _seed_device

__all__ = ["FUNCTIONAL_NAMES", "FunctionalDropout", "SeedState", "masked_dropout"]

FUNCTIONAL_NAMES = (
    "F.dropout, F.dropout1d/2d/3d, F.alpha_dropout, F.feature_alpha_dropout, "
    "torch.dropout, torch.feature_dropout, torch.alpha_dropout, torch.feature_alpha_dropout"
)


class SeedState:
    """Which samples the current forward holds; read by the seeded dropout calls."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.offset = 0  # index of the first sample in this forward
        self.k = 1  # samples in this forward
        self.calls = 0  # dropout calls so far in this forward (modules and functional calls)


def masked_dropout(p: float, feature: bool, x: torch.Tensor, seeds: list[int], inplace: bool = False) -> torch.Tensor:
    """Dropout of ``x`` (k·n rows, sample-major) with sample i's mask drawn from seed ``seeds[i]``.

    Keep with probability 1 − p and scale by 1 / (1 − p), per element or (``feature``) per
    (row, channel). Out of place unless ``inplace`` (then ``x`` is multiplied and returned).
    """
    k = len(seeds)
    if p == 0.0 or x.numel() == 0:
        return x
    if p == 1.0:
        return x.mul_(0) if inplace else x * 0
    mask = torch.empty(x.shape[:2] + (1,) * (x.ndim - 2) if feature else x.shape, dtype=x.dtype, device=x.device)
    gen = torch.Generator(device=x.device)
    n = x.shape[0] // k
    for i, seed in enumerate(seeds):
        gen.manual_seed(seed)
        mask[i * n : (i + 1) * n].bernoulli_(1.0 - p, generator=gen)
    mask.div_(1.0 - p)
    return x.mul_(mask) if inplace else x * mask


class _Spec(NamedTuple):
    train: str  # name of the training flag argument
    kind: str  # "element", "feature" or "alpha" (torch's own kernel, run per sample)
    rank: int | None  # batched input rank for which a feature mask is drawn (None: any rank >= 2)
    inplace: bool | None  # None: read the ``inplace`` argument; True for torch.*_ in-place forms
    functional: bool  # F.* signature (input, p, training, inplace) vs torch.* (input, p, train)


def _specs() -> dict[Callable, _Spec]:
    table: dict[Callable, _Spec] = {
        F.dropout: _Spec("training", "element", None, None, True),
        F.dropout1d: _Spec("training", "feature", 3, None, True),
        F.dropout2d: _Spec("training", "feature", 4, None, True),
        F.dropout3d: _Spec("training", "feature", 5, None, True),
        F.alpha_dropout: _Spec("training", "alpha", None, None, True),
        F.feature_alpha_dropout: _Spec("training", "alpha", None, None, True),
    }
    for name, kind in (("dropout", "element"), ("feature_dropout", "feature")):
        table[getattr(torch, name)] = _Spec("train", kind, None, False, False)
        table[getattr(torch, name + "_")] = _Spec("train", kind, None, True, False)
    for name in ("alpha_dropout", "feature_alpha_dropout"):
        table[getattr(torch, name)] = _Spec("train", "alpha", None, False, False)
        table[getattr(torch, name + "_")] = _Spec("train", "alpha", None, True, False)
    return table


_SPECS = _specs()


def _bind(spec: _Spec, args: tuple, kwargs: dict) -> tuple[Any, float, bool]:
    names = ("input", "p", spec.train, "inplace") if spec.functional else ("input", "p", spec.train)
    values = dict(zip(names, args))
    values.update(kwargs)
    inplace = bool(values.get("inplace", False)) if spec.inplace is None else spec.inplace
    return values.get("input"), float(values.get("p", 0.5)), inplace


def _call(func: Callable, spec: _Spec, x: Any, p: float, inplace: bool) -> Any:
    """``func`` with training switched on."""
    if spec.functional:
        return func(x, p=p, training=True, inplace=inplace)
    return func(x, p, True)


class FunctionalDropout(TorchFunctionMode):
    """Torch-function mode: functional dropout calls run with ``training=True`` (seeded if ``state``).

    Attributes:
        calls: dropout calls seen (functional calls, and the modules' own calls when unseeded).
        probe: count calls but leave them as they are (used while running a trunk).
        bypass: > 0 while a seeded dropout module draws its own masks (its inner calls pass).
        track: record ``largest``, the most elements of any tensor a torch function returned.
    """

    def __init__(self, state: SeedState | None = None) -> None:
        super().__init__()
        self.state = state
        self.calls = 0
        self.probe = False
        self.bypass = 0
        self.track = False
        self.largest = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = self._dispatch(func, args, kwargs or {})
        if self.track:
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    self.largest = max(self.largest, t.numel())
        return out

    def _dispatch(self, func, args, kwargs):
        spec = _SPECS.get(func)
        if spec is None or self.bypass:
            return func(*args, **kwargs)
        self.calls += 1
        if self.probe:
            return func(*args, **kwargs)
        x, p, inplace = _bind(spec, args, kwargs)
        state = self.state
        if state is None or not isinstance(x, torch.Tensor):
            return _call(func, spec, x, p, inplace)
        j = state.calls
        state.calls += 1
        k = state.k
        if x.ndim == 0 or x.shape[0] % k:
            # rows do not split into the k samples (e.g. a sequence-first layout): one seeded call
            _seed_device(x.device, _derive(state.seed, 1, state.offset, k, j))
            return _call(func, spec, x, p, inplace)
        seeds = [_derive(state.seed, 0, state.offset + i, j) for i in range(k)]
        feature_ok = spec.kind == "feature" and (x.ndim == spec.rank if spec.rank else x.ndim >= 2)
        if x.is_floating_point() and (spec.kind == "element" or feature_ok):
            return masked_dropout(p, spec.kind == "feature", x, seeds, inplace)
        n = x.shape[0] // k
        outs = []
        for i, seed in enumerate(seeds):  # torch's own kernel on each sample's rows, its generator seeded
            _seed_device(x.device, seed)
            outs.append(_call(func, spec, x[i * n : (i + 1) * n], p, False))
        out = outs[0] if k == 1 else torch.cat(outs)
        return x.copy_(out) if inplace else out
