"""Dropout under Monte Carlo sampling: which modules switch, functional calls switched on, seeded masks.

:func:`dropout_active` (re-exported by :mod:`netuq.methods.mc_dropout`) switches the dropout
modules on and everything else off, and functional dropout on through :class:`FunctionalDropout`.

:class:`FunctionalDropout` is a ``torch.overrides.TorchFunctionMode``: while it is active every call
of ``torch.nn.functional.dropout``, ``dropout1d/2d/3d``, ``alpha_dropout``,
``feature_alpha_dropout`` and of ``torch.dropout``, ``torch.feature_dropout``,
``torch.alpha_dropout``, ``torch.feature_alpha_dropout`` (and their in-place ``_`` forms) made from
Python runs with ``training=True`` — whatever ``training=self.training`` said — and, when a seed
state is given, with per-sample seeded masks (the same rule as the dropout modules, see
:mod:`netuq.methods.mc_dropout`). Other torch functions pass through unchanged; modes are
thread-local, so other threads are not affected.

``F.scaled_dot_product_attention`` with ``dropout_p > 0`` counts as a dropout call too (seeded per
sample). Calls with p = 0 drop nothing and are not counted (a trunk may contain them).
Stochastic depth (timm / Hugging Face ``DropPath``, torchvision ``StochasticDepth(mode="row")``) is
found by :func:`stochastic_depth` and switched on as a module.

What it cannot see: dropout inside TorchScript or ``torch.compile``-d code, inside other C++
operators (fused RNN dropout), or written by hand with ``torch.bernoulli`` in a module of a kind
not listed above. Such a model with no dropout module and no visible call is refused by
:class:`netuq.MCDropout` (every sample would be identical).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.dropout import _DropoutNd
from torch.overrides import TorchFunctionMode

from .._modes import restore_modes
from .._random import derive_seed as _derive
from .._random import seed_device as _seed_device
from ..nn import mc_sampling

__all__ = [
    "FUNCTIONAL_NAMES",
    "stochastic_depth",
    "FunctionalDropout",
    "SeedState",
    "dropout_active",
    "masked_dropout",
    "stochastic_modules",
]

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
        self.on_call: Callable[[float], None] | None = None  # told every dropout call's p (also p = 0)
        self.force_off = False  # run every dropout call deterministically (p recorded, nothing dropped)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = self._dispatch(func, args, kwargs or {})
        if self.track:
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    self.largest = max(self.largest, t.numel())
        return out

    def _dispatch(self, func, args, kwargs):
        if func is F.scaled_dot_product_attention and not self.bypass:
            return self._attention(func, args, kwargs)
        spec = _SPECS.get(func)
        if spec is None or self.bypass:
            return func(*args, **kwargs)
        x, p, inplace = _bind(spec, args, kwargs)
        if self.on_call is not None:
            self.on_call(p)
        if self.force_off:
            return _call_off(func, spec, x, p, inplace)
        if p == 0.0:  # drops nothing, whatever the training flag: not a stochastic call
            return func(*args, **kwargs)
        self.calls += 1
        if self.probe:
            return func(*args, **kwargs)
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


    def _attention(self, func, args, kwargs):
        """``F.scaled_dot_product_attention``: its ``dropout_p`` (read by the calling module from its
        own training flag) is a dropout call when > 0; seeded per sample like the others."""
        names = ("query", "key", "value", "attn_mask", "dropout_p")
        values = dict(zip(names, args))
        values.update(kwargs)
        p = float(values.get("dropout_p", 0.0) or 0.0)
        if self.on_call is not None:
            self.on_call(p)
        if self.force_off and p > 0:
            values["dropout_p"] = 0.0
            return func(**values)
        if p == 0.0:
            return func(*args, **kwargs)
        self.calls += 1
        state = self.state
        q = values.get("query")
        if self.probe or state is None or not isinstance(q, torch.Tensor):
            return func(*args, **kwargs)
        j = state.calls
        state.calls += 1
        k = state.k
        rows = q.shape[0] if q.ndim else 0
        if rows == 0 or rows % k:
            _seed_device(q.device, _derive(state.seed, 1, state.offset, k, j))
            return func(*args, **kwargs)
        n = rows // k
        outs = []
        for i in range(k):  # the sample's rows with its own seeded generator
            _seed_device(q.device, _derive(state.seed, 0, state.offset + i, j))
            part = {
                key: (v[i * n : (i + 1) * n] if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == rows else v)
                for key, v in values.items()
            }
            outs.append(func(**part))
        return outs[0] if k == 1 else torch.cat(outs)


def _call_off(func: Callable, spec: _Spec, x: Any, p: float, inplace: bool) -> Any:
    """``func`` with training switched off: deterministic (the identity, or a copy)."""
    if spec.functional:
        return func(x, p=p, training=False, inplace=inplace)
    return func(x, p, False)


# ---------------------------------------------------------------------------- stochastic depth
def _depth_rate(m: nn.Module) -> tuple[float, bool] | None:
    """(drop rate, samplable) of a stochastic-depth module, None for other modules.

    Known kinds: timm's ``DropPath`` and Hugging Face's ``*DropPath`` (``drop_prob``, one draw
    per row), torchvision's ``StochasticDepth`` (``p``; ``mode="row"`` draws per row and is
    sampled, ``mode="batch"`` draws once per forward for every row, so stacked samples would
    share it: not sampled)."""
    name = type(m).__name__
    if name.endswith("DropPath") and isinstance(getattr(m, "drop_prob", None), (int, float)):
        return float(m.drop_prob), True
    if name == "StochasticDepth" and isinstance(getattr(m, "p", None), (int, float)):
        return float(m.p), getattr(m, "mode", "row") == "row"
    return None


def stochastic_depth(*roots: nn.Module) -> tuple[list[nn.Module], list[str]]:
    """The stochastic-depth modules with a rate > 0 that MC sampling switches on, and a description
    of those it cannot sample (torchvision ``StochasticDepth(mode="batch")``).

    Example:
        >>> import torchvision.ops
        >>> on, off = stochastic_depth(nn.Sequential(torchvision.ops.StochasticDepth(0.1, "row")))
        >>> len(on), off
        (1, [])
    """
    on, off, seen = [], [], set()
    for root in roots:
        for name, m in root.named_modules():
            rate = _depth_rate(m)
            if rate is None or rate[0] <= 0 or id(m) in seen:
                continue
            seen.add(id(m))
            if rate[1]:
                on.append(m)
            else:
                off.append(f"{name or type(m).__name__} ({type(m).__name__}, p={rate[0]}, one draw per batch)")
    return on, off


# ---------------------------------------------------------------------------- modules and modes
_DROPOUT_NAMES = "torch.nn.Dropout, Dropout1d/2d/3d, AlphaDropout, FeatureAlphaDropout or netuq.nn.MCDropout"


def stochastic_modules(*modules: nn.Module) -> list[nn.Module]:
    """The dropout modules (``_DropoutNd`` instances) inside ``modules``, each once, in order.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout2d(0.1), nn.AlphaDropout(0.2))
        >>> [type(m).__name__ for m in stochastic_modules(net)]
        ['Dropout2d', 'AlphaDropout']
    """
    seen: set[int] = set()
    out = []
    for root in modules:
        for m in root.modules():
            if isinstance(m, _DropoutNd) and id(m) not in seen:
                seen.add(id(m))
                out.append(m)
    return out


def _builtin_without_dropout(modules: Sequence[nn.Module]) -> bool:
    """True when every submodule is a torch.nn built-in other than dropout: provably no dropout call."""
    return all(
        type(m).__module__.startswith("torch.nn.") and not isinstance(m, _DropoutNd)
        for root in modules
        for m in root.modules()
    )


def _no_dropout_message(modules: Sequence[nn.Module], name: str = "model") -> str:
    kinds = ", ".join(type(m).__name__ for m in modules)
    return (
        f"`{name}` must contain a dropout module ({_DROPOUT_NAMES}) or call functional dropout "
        f"({FUNCTIONAL_NAMES}) from Python, got none in {kinds}: every MC sample would be identical. "
        "Dropout inside TorchScript or torch.compile code, inside C++ operators (attention dropout_p, RNN "
        "dropout) or hand-written torch.bernoulli masks cannot be switched on by netuq. Insert MC dropout "
        "with netuq.nn.add_dropout(model, p) (before the final classifier by default)"
    )


def _warn_opaque(modules: Sequence[nn.Module]) -> None:
    opaque = sorted(
        {
            type(m).__name__
            for root in modules
            for m in root.modules()
            if isinstance(m, torch.jit.ScriptModule) or type(m).__name__ == "OptimizedModule"
        }
    )
    if opaque:
        warnings.warn(
            f"`model` contains TorchScript or compiled modules ({', '.join(opaque)}): dropout inside them "
            "cannot be switched on or seeded by netuq.MCDropout and stays as their own mode says; "
            "pass the Python modules instead (for torch.compile: model._orig_mod)",
            UserWarning,
            stacklevel=3,
        )


@contextmanager
def _switched(roots: Sequence[nn.Module], extra: Sequence[nn.Module] = ()) -> Iterator[list[nn.Module]]:
    """Dropout modules (and ``extra``: stochastic depth, attention modules whose training flag only
    sets their dropout) in train mode, every other module in eval mode, MC sampling marked;
    restored. Yields the modules whose forward draws masks (dropout, then ``extra`` that are not
    attention modules are included by the caller)."""
    drops = stochastic_modules(*roots)
    on = {id(m) for m in extra}
    with restore_modes(*roots) as saved:
        for m, _ in saved:
            m.training = isinstance(m, _DropoutNd) or id(m) in on
        with mc_sampling():
            yield drops


@contextmanager
def dropout_active(model: nn.Module, *more: nn.Module) -> Iterator[list[nn.Module]]:
    """Context manager: dropout modules and functional dropout on, everything else in eval mode.

    Inside the block every ``_DropoutNd`` of ``model`` (and of ``more``) is stochastic, every
    other module (BatchNorm, …) is in eval mode so no running statistic changes,
    :func:`netuq.nn.mc_active` is true so :class:`netuq.nn.MCDropout` layers sample, and functional
    dropout calls (``F.dropout(x, p, training=self.training)`` …) run with ``training=True``
    (a ``torch.overrides.TorchFunctionMode``, this thread only). On exit, even on error, every
    module's ``training`` flag is restored and nothing stays switched on.

    Args:
        model: the network.
        *more: further modules to switch (e.g. a separate head).

    Yields:
        the list of dropout modules that were switched on (empty for functional dropout only).

    Raises:
        ValueError: on entry, a model made only of torch.nn built-ins without dropout; on exit, no
            dropout module and no functional dropout call during the block.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5)).train()
        >>> with dropout_active(net):
        ...     [m.training for m in net]
        [False, False, True]
        >>> [m.training for m in net]
        [True, True, True]
    """
    roots = (model, *more)
    if _builtin_without_dropout(roots):
        raise ValueError(_no_dropout_message(roots))
    mode = FunctionalDropout()
    with _switched(roots) as drops:
        with mode:
            yield drops
    if not drops and not mode.calls:
        raise ValueError(_no_dropout_message(roots) + " (no functional dropout call was seen in the block)")
