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

What it cannot see: dropout inside TorchScript code, inside C++ operators
(``scaled_dot_product_attention(dropout_p=...)``, fused RNN dropout), or written by hand with
``torch.bernoulli`` (stochastic depth / DropPath). Such a model with no dropout module and no visible
call is refused by :class:`netuq.MCDropout` (every sample would be identical).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn
from torch.nn.modules.dropout import _DropoutNd
from torch.overrides import TorchFunctionMode

from .._batching import couples_rows
from .._modes import restore_modes
from .._random import derive_seed as _derive
from .._random import seed_device as _seed_device
from ..nn import mc_sampling

__all__ = [
    "FUNCTIONAL_NAMES",
    "FunctionalDropout",
    "Regroup",
    "SeedState",
    "dropout_active",
    "masked_dropout",
    "per_sample",
    "sample_dim",
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
        self.n = 1  # rows of one sample at the model's input (the batch N)
        self.calls = 0  # dropout calls so far in this forward (modules and functional calls)


class Regroup(Exception):  # noqa: N818 - a signal to the sampler, not an error the user sees
    """Raised in a forward of k > 1 stacked samples that cannot be stacked: a seeded dropout
    input that does not show which elements belong to which sample (no single dimension of k·N),
    or a call that mixes the rows of the batch (:func:`netuq._batching.couples_rows`).
    :class:`netuq.MCDropout` then runs this input shape one sample per forward."""


def sample_dim(x: torch.Tensor, state: SeedState, feature: bool = False) -> int:
    """The dimension of a dropout input ``x`` that holds the k·N rows of this forward's samples,
    sample-major (rows s·N … s·N + N − 1 of sample s): the one dimension of that size, wherever
    the model moved it (e.g. a sequence-first (T, k·N, F) activation); 0 when k = 1 (nothing to
    split). A feature mask (``feature``) is per (dim 0, dim 1), so only those two can split.

    Raises:
        Regroup: k > 1 and no single dimension of size k·N (e.g. (k·N·T, F) after a flatten, or
            T = k·N): which elements are whose cannot be told, so the masks would depend on how
            samples are grouped into forwards.
    """
    if state.k == 1:
        return 0
    rows = state.k * state.n
    dims = [d for d in range(min(x.ndim, 2) if feature else x.ndim) if x.shape[d] == rows]
    others = [d for d in range(x.ndim) if x.shape[d] == rows and d not in dims]
    if len(dims) != 1 or others:
        raise Regroup
    return dims[0]


def masked_dropout(
    p: float, feature: bool, x: torch.Tensor, seeds: list[int], inplace: bool = False, dim: int = 0
) -> torch.Tensor:
    """Dropout of ``x`` (k·n rows along ``dim``, sample-major) with sample i's mask drawn from
    seed ``seeds[i]``, in the memory order of a contiguous tensor of one sample's shape (so the
    same whatever the layout of ``x`` and the dimension its samples lie along).

    Keep with probability 1 − p and scale by 1 / (1 − p), per element or (``feature``) per
    (dim 0, dim 1) pair. Out of place unless ``inplace`` (then ``x`` is multiplied and returned).
    """
    k = len(seeds)
    if p == 0.0 or x.numel() == 0:
        return x
    if p == 1.0:
        return x.mul_(0) if inplace else x * 0
    mask = torch.empty(x.shape[:2] + (1,) * (x.ndim - 2) if feature else x.shape, dtype=x.dtype, device=x.device)
    gen = torch.Generator(device=x.device)
    n = mask.shape[dim] // k
    for i, seed in enumerate(seeds):
        gen.manual_seed(seed)
        part = mask.narrow(dim, i * n, n)
        if part.is_contiguous():
            part.bernoulli_(1.0 - p, generator=gen)
        else:  # drawn as one contiguous sample, then placed
            part.copy_(torch.empty(part.shape, dtype=x.dtype, device=x.device).bernoulli_(1.0 - p, generator=gen))
    mask.div_(1.0 - p)
    return x.mul_(mask) if inplace else x * mask


def per_sample(
    run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, seeds: list[int], dim: int
) -> torch.Tensor:
    """``run`` (a dropout kernel drawing from the device's generator) on each sample's slice of
    ``x`` along ``dim`` (contiguous, so that its draws do not follow the layout), the generator
    seeded with that sample's seed; the outputs concatenated along ``dim``."""
    n = x.shape[dim] // len(seeds)
    outs = []
    for i, seed in enumerate(seeds):
        _seed_device(x.device, seed)
        outs.append(run(x.narrow(dim, i * n, n).contiguous()))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim)


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
        watch: called before each switched-on dropout call (e.g. :func:`refuse_checkpointed_dropout`).
        rows: the rows of the current forward, to look for calls that mix them
            (:func:`netuq._batching.couples_rows`; None: not looked for); ``coupled``
            records one, and ``stacked`` (several samples in the forward) raises :class:`Regroup`.
    """

    def __init__(self, state: SeedState | None = None) -> None:
        super().__init__()
        self.state = state
        self.calls = 0
        self.probe = False
        self.bypass = 0
        self.track = False
        self.largest = 0
        self.watch: Callable[[], Any] | None = None
        self.rows: int | None = None
        self.stacked = False
        self.coupled = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if self.rows is not None and couples_rows(func, args, kwargs or {}, self.rows):
            if self.stacked:  # the samples of this forward would see each other: one per forward
                raise Regroup
            self.coupled = True
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
        if self.watch is not None:
            self.watch()
        x, p, inplace = _bind(spec, args, kwargs)
        state = self.state
        if state is None or not isinstance(x, torch.Tensor):
            return _call(func, spec, x, p, inplace)
        j = state.calls
        state.calls += 1
        feature_ok = spec.kind == "feature" and (x.ndim == spec.rank if spec.rank else x.ndim >= 2)
        dim = sample_dim(x, state, feature_ok)
        if x.ndim == 0:  # one sample (k = 1, else sample_dim raised): its seed, torch's kernel
            _seed_device(x.device, _derive(state.seed, 0, state.offset, j))
            return _call(func, spec, x, p, inplace)
        seeds = [_derive(state.seed, 0, state.offset + i, j) for i in range(state.k)]
        if x.is_floating_point() and (spec.kind == "element" or feature_ok):
            return masked_dropout(p, spec.kind == "feature", x, seeds, inplace, dim)
        # torch's own kernel on each sample's slice, its generator seeded
        out = per_sample(lambda part: _call(func, spec, part, p, False), x, seeds, dim)
        return x.copy_(out) if inplace else out


_CHECKPOINT_FILE = torch.utils.checkpoint.__file__


def refuse_checkpointed_dropout(*_: Any) -> None:
    """Raise if the caller runs inside ``torch.utils.checkpoint`` (reentrant or not, and
    ``checkpoint_sequential``): called before each dropout call of an ``MCDropout(no_grad=False)``
    sample. Backward would recompute the checkpointed forward after sampling has ended — with
    dropout back in the model's own mode and without netuq's seeded masks — so its gradients
    would be those of another function (reentrant checkpointing) or torch would raise a
    ``CheckpointError`` (non-reentrant)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_filename == _CHECKPOINT_FILE:
            raise RuntimeError(
                "`MCDropout(no_grad=False)` cannot keep gradients through activation checkpointing "
                "(torch.utils.checkpoint) around dropout or a module that sampling switches to eval mode: backward "
                "recomputes the checkpointed forward after sampling has ended, with every module back in its own "
                "mode and without netuq's seeded masks, so the gradients would be wrong. Turn checkpointing "
                "off while sampling (e.g. model.gradient_checkpointing_disable() "
                "for Hugging Face models), keep dropout outside the checkpointed blocks, or use no_grad=True"
            )
        frame = frame.f_back


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
        "Dropout inside TorchScript code, inside C++ operators (attention dropout_p, RNN "
        "dropout) or hand-written torch.bernoulli masks cannot be switched on by netuq. Insert MC dropout "
        "with netuq.nn.add_dropout(model, p) (before the final classifier by default)"
    )


def _warn_opaque(modules: Sequence[nn.Module]) -> None:
    """Warn about TorchScript submodules: their dropout is compiled code, out of netuq's reach.

    ``torch.compile``-d modules are not reported: an ``OptimizedModule`` holds the Python modules
    (``_orig_mod``), whose flags netuq switches (dynamo recompiles for them) and whose forwards
    and functional calls it seeds, so they are sampled as the uncompiled model (bit-identically
    with a seed, measured with the eager, aot_eager and inductor backends; unseeded inductor draws
    its masks from its own generator: other masks, the same distribution).
    """
    scripted = (m for root in modules for m in root.modules() if isinstance(m, torch.jit.ScriptModule))
    opaque = sorted({type(m).__name__ for m in scripted})
    if opaque:
        warnings.warn(
            f"`model` contains TorchScript modules ({', '.join(opaque)}): dropout inside them cannot be switched "
            "on or seeded by netuq.MCDropout and stays as their own mode says; pass the Python modules instead "
            "(torch.compile-d modules need nothing: they are sampled through their Python modules)",
            UserWarning,
            stacklevel=3,
        )


@contextmanager
def _switched(roots: Sequence[nn.Module]) -> Iterator[list[nn.Module]]:
    """Dropout modules in train mode, every other module in eval mode, MC sampling marked; restored."""
    drops = stochastic_modules(*roots)
    with restore_modes(*roots) as saved:
        for m, _ in saved:
            m.training = isinstance(m, _DropoutNd)
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
