"""Monte Carlo dropout (Gal & Ghahramani, "Dropout as a Bayesian Approximation", ICML 2016).

Keep dropout on at test time, average the softmax of S stochastic forward passes and read the
uncertainty off the spread (Gal 2016, §3.3.1; Depeweg et al. 2018): total ``H[p̄]``, aleatoric
``E_s H[p_s]``, epistemic = their difference (mutual information).

How netuq samples:

* **Only dropout becomes stochastic**: every ``torch.nn.modules.dropout._DropoutNd``
  (``Dropout``, ``Dropout1d/2d/3d``, ``AlphaDropout``, ``FeatureAlphaDropout``, and
  :class:`netuq.nn.MCDropout`) goes to train mode, every other module to eval mode (BatchNorm
  keeps its running statistics and never updates them), and every ``training`` flag is restored
  afterwards, even on error — see :func:`dropout_active`. ``model.train()`` is the classic bug.
  **Functional dropout** (``F.dropout(x, p, training=self.training)``, ``dropout1d/2d/3d``, the
  alpha dropouts, ``torch.dropout`` …) called from Python is switched on too, by a
  ``torch.overrides.TorchFunctionMode`` active only during the forwards (this thread only), with
  the same seeding; see :mod:`netuq.methods._dropout_calls`. Dropout netuq cannot reach —
  inside TorchScript code or C++ operators — is reported: a warning for TorchScript submodules,
  and a ValueError when a model has no dropout module and no dropout call was seen in its first
  forward (every sample would be identical). ``torch.compile``-d models are sampled through their
  Python modules, as the uncompiled model (bit-identically with a seed). Networks without
  dropout: :func:`netuq.nn.add_dropout`.
* **Batched**: the S samples are drawn by repeating the batch along dim 0 (sample-major rows:
  rows ``s·N … s·N + N − 1`` are sample ``s``) and running several samples per forward call, at
  most ``max_batch`` rows at a time. Dropout draws independent masks per row, so this is exact.
  By default the samples per forward keep the forward's largest activation under a device budget
  (measured by a dry run of one sample, once per model and input shape): on CPU batching pays
  only while activations stay near the caches.
* **Trunk caching**: the deterministic part before the first dropout runs once per batch, and
  only the rest (the *head*) runs on the repeated rows. For an ``nn.Sequential`` (whose forward
  is known to call its children in order) the split is found automatically at the first child
  that contains a dropout module, recursing into nested ``nn.Sequential`` children (a trunk seen
  calling functional dropout is given up: the whole model is sampled). For any other
  model, declare ``trunk=`` and ``head=`` (modules, callables, or names of the model's attributes,
  e.g. ``trunk="features", head="head"`` for :class:`netuq.models.SmallCNN`); the output is then
  ``head(trunk(x))`` and it is your promise that this equals ``model(x)``. netuq does not guess
  from attribute names, since ``forward`` may do more than chain them.
* **Seeds**: with ``seed=None`` masks come from the global RNG of the input's device, drawn by
  the dropout modules for all rows of a forward at once. With an integer ``seed`` the global RNG
  is forked (left untouched) and the mask of sample ``s`` in the ``j``-th dropout call of a
  forward comes from a ``torch.Generator`` seeded with a SplitMix64 hash of ``(seed, s, j)``:
  netuq draws the masks of ``Dropout``, ``Dropout1d/2d/3d`` and :class:`netuq.nn.MCDropout`
  itself (keep with probability 1 − p, scale by 1/(1 − p), per element or per channel, then one
  multiplication), and runs any other dropout module (alpha dropouts, subclasses) once per sample
  on its rows with the device's generator so seeded. The masks depend only on the sample index,
  not on how samples are grouped into forward calls: with a fixed seed the result is the same
  for every ``max_batch`` ≥ N and with or without trunk caching, whatever dimension the model
  moves the batch to: a dropout input's samples lie along its one dimension of k·N rows (a
  sequence-first (T, k·N, F) activation too), and each sample's mask is drawn as one contiguous
  tensor of its own shape; an input with no such single dimension (a (k·N·T, F) flatten, or
  T = k·N) makes that input shape run one sample per forward (:class:`._dropout_calls.Regroup`).
  (If ``max_batch`` < N the batch is split into blocks of rows, each sampled with its own
  derived seed.) Functional calls count as dropout calls ``j`` and follow the same rules.
  Seeded sampling patches the dropout modules' ``forward`` for the duration of the call
  (restored on exit): do not run one model from several threads while it samples.
* **In-place dropout** (``inplace=True``) gives the same result as out-of-place dropout: the
  head always runs on a fresh copy of the (cached) input, and seeded masks are applied out of
  place, so neither the caller's tensor nor the cached trunk output is ever written to.
"""

from __future__ import annotations

import math
import numbers
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from typing import Any

import torch
from torch import nn
from torch.nn.modules.dropout import _DropoutNd

from .._batching import activation_chunk as _activation_chunk
from .._batching import balanced_chunk as _balanced
from .._batching import default_chunk as _default_chunk
from .._checks import check_int as _check_int
from .._layout import as_layout, check_channels_last
from .._random import derive_seed as _derive
from .._random import forked_rng as _forked_rng
from .._random import seed_device as _seed_device
from ..nn import MCDropout as MCDropoutLayer
from ..prediction import Prediction
from ..traits import Traits
from ._dropout_calls import (
    FunctionalDropout,
    Regroup,
    SeedState,
    _builtin_without_dropout,
    _no_dropout_message,
    _switched,
    _warn_opaque,
    dropout_active,
    masked_dropout,
    per_sample,
    refuse_checkpointed_dropout,
    sample_dim,
    stochastic_modules,
)

__all__ = ["MCDropout", "dropout_active", "stochastic_modules"]

# ---------------------------------------------------------------------------- seeded sampling
# Dropout types whose masks netuq draws itself (same rule as torch: keep with probability 1 − p,
# scale by 1 / (1 − p); per element, or per channel for the feature dropouts on batched input of
# the given rank). Others (alpha dropouts, subclasses, other ranks) run their own forward per sample.
_MASKED: dict[type, int | None] = {
    nn.Dropout: None,
    MCDropoutLayer: None,
    nn.Dropout1d: 3,
    nn.Dropout2d: 4,
    nn.Dropout3d: 5,
}


@contextmanager
def _seeded_dropout(modules: Sequence[nn.Module], state: SeedState, mode: FunctionalDropout) -> Iterator[None]:
    """Patch each dropout module's forward to draw per-sample seeded masks (restored on exit).

    While a module runs torch's own kernel on a sample's rows, ``mode`` lets its inner call pass.
    """
    patched: list[tuple[nn.Module, bool, object]] = []

    def _own(orig: Callable, *args, **kwargs):
        mode.bypass += 1
        try:
            return orig(*args, **kwargs)
        finally:
            mode.bypass -= 1

    def make(m: nn.Module, orig: Callable) -> Callable:
        rank = _MASKED.get(type(m), 0)

        def forward(x, *args, **kwargs):
            j = state.calls
            state.calls += 1
            if not isinstance(x, torch.Tensor):
                return _own(orig, x, *args, **kwargs)
            feature = rank is not None and rank == x.ndim
            dim = sample_dim(x, state, feature)  # Regroup: one sample per forward instead
            seeds = [_derive(state.seed, 0, state.offset + i, j) for i in range(state.k)]
            if x.ndim == 0:
                _seed_device(x.device, seeds[0])
                return _own(orig, x, *args, **kwargs)
            if not args and not kwargs and (rank is None or rank == x.ndim) and x.is_floating_point():
                # never in place, even for inplace=True modules: the input may alias the caller's tensor
                return masked_dropout(float(m.p), rank is not None, x, seeds, dim=dim)
            return per_sample(lambda part: _own(orig, part, *args, **kwargs), x, seeds, dim)

        return forward

    try:
        for m in modules:
            patched.append((m, "forward" in m.__dict__, m.__dict__.get("forward")))
            m.forward = make(m, m.forward)
        yield
    finally:
        for m, had, prev in patched:
            if had:
                m.forward = prev
            else:
                del m.forward


# ---------------------------------------------------------------------------- trunk / head
def _is_plain_sequential(m: object) -> bool:
    return isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward


def _has_dropout(m: nn.Module) -> bool:
    return any(isinstance(sub, _DropoutNd) for sub in m.modules())


def _split_sequential(seq: nn.Sequential) -> tuple[list[nn.Module], list[nn.Module]]:
    """Children before the first one holding dropout (recursing into plain Sequentials), and the rest."""
    mods = list(seq)
    for i, m in enumerate(mods):
        if _has_dropout(m):
            if _is_plain_sequential(m):
                trunk, head = _split_sequential(m)
                return mods[:i] + trunk, head + mods[i + 1 :]
            return mods[:i], mods[i:]
    return mods, []


class _Chain:
    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self.modules = list(modules)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.modules:
            x = m(x)
        return x


def _resolve_part(model: nn.Module, part: object, name: str) -> Callable:
    if isinstance(part, str):
        if not hasattr(model, part):
            raise ValueError(f"`{name}` must name an attribute of the model, got {part!r} ({type(model).__name__})")
        part = getattr(model, part)
    if not callable(part):
        raise TypeError(f"`{name}` must be a module, a callable or an attribute name, got {type(part).__name__}")
    return part


class MCDropout:
    """Monte Carlo dropout around a trained model (Gal & Ghahramani 2016).

    Calling the wrapper on a batch runs ``samples`` stochastic forward passes (dropout modules
    on, everything else in eval mode, gradients off) and returns a :class:`netuq.Prediction`
    with the mean of the softmax over samples and the decomposition total = aleatoric +
    epistemic. The model's ``training`` flags are left as they were. See the module docstring
    for batching, trunk caching and seeding.

    Args:
        model: an ``nn.Module`` with dropout modules and/or functional dropout calls in its
            Python forward, (N, ...) -> logits (N, C) or (N, C, H, W) (any (N, C, ...)). A network
            without dropout (torchvision ResNets): :func:`netuq.nn.add_dropout` first.
        samples: number of stochastic passes S (Gal 2016 uses 50; gains level off around 40).
        keep_samples: keep all S probability maps (``pred.samples``); memory grows with S.
        max_batch: at most this many rows per forward call (several samples of the batch are
            stacked along dim 0). None: from what is fast on the device — a dry run of one sample
            (once per model and input shape) measures the largest activation, and as many samples
            run per forward as keep it under 2**20 elements on CPU (4 MiB: batching stops paying
            once activations leave the caches), 2**26 on accelerators; and the repeated input (the
            trunk output when cached) under 2**18 elements on CPU, 2**21 elsewhere (memory). The
            dry run also looks for functional dropout calls outside the dropout modules; where it
            sees none, the forwards of that shape skip the torch-function mode (a model that calls
            functional dropout only for some inputs of one shape: set ``max_batch``).
        seed: integer for reproducible masks that do not depend on ``max_batch`` (≥ N) or trunk
            caching; the global RNG is left untouched. None: the global RNG.
        trunk: deterministic first part (module, callable, or attribute name of ``model``) run
            once per batch; requires ``head``; must not use dropout (modules are checked at
            construction, dropout calls — also functional ones — during every call). Auto-detected
            for ``nn.Sequential`` models; an auto-detected trunk that turns out to call dropout is
            given up (the whole model is sampled, correct but slower).
        head: the rest, run on the repeated rows; ``head(trunk(x))`` must equal ``model(x)``.
        no_grad: run under ``torch.no_grad()`` (default). False keeps the graph (e.g. for input
            gradients); dropout (or a module sampling switches to eval mode) inside activation
            checkpointing (``torch.utils.checkpoint``) is then refused with a RuntimeError: its
            backward would recompute the block after sampling has switched dropout back.
        channels_last: opt-in speed on CPU (:mod:`netuq._layout`): True feeds 4-d inputs
            channels-last (the trunk's input when a trunk is cached, its output made contiguous
            again; else the repeated rows of the whole model), with no check. Probabilities then
            differ from the default's by float rounding (up to ~1e-4 on a plain CNN), and
            unseeded element-wise dropout on a 4-d activation draws its masks in memory order
            (other samples, same distribution). False or None (default): inputs as given.

    Raises:
        ValueError: no dropout module and (at the first call) no functional dropout call; bad
            ``samples``/``max_batch``; ``trunk`` without ``head``; a declared ``trunk`` containing
            dropout or calling it (it would be sampled once for all samples).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3)).eval()
        >>> mc = MCDropout(net, samples=20, seed=0)
        >>> mc.caches_trunk  # Linear + ReLU run once, Dropout + Linear on 20 x 5 rows
        True
        >>> x = torch.randn(5, 4)
        >>> pred = mc(x)
        >>> pred.probs.shape, pred.epistemic.shape, pred.num_samples
        (torch.Size([5, 3]), torch.Size([5]), 20)
        >>> torch.equal(pred.probs, mc(x).probs), net.training
        (True, False)
    """

    def __init__(
        self,
        model: nn.Module,
        samples: int = 50,
        *,
        keep_samples: bool = False,
        max_batch: int | None = None,
        seed: int | None = None,
        trunk: nn.Module | Callable | str | None = None,
        head: nn.Module | Callable | str | None = None,
        no_grad: bool = True,
        channels_last: bool | None = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
        _check_int(samples, "samples", 1)
        _check_int(max_batch, "max_batch", 1, allow_none=True)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
            raise TypeError(f"`seed` must be an integer or None, got {type(seed).__name__}")
        if (trunk is None) != (head is None):
            raise ValueError(
                f"`trunk` and `head` must be given together, got trunk={'set' if trunk is not None else None}, "
                f"head={'set' if head is not None else None}"
            )
        self.model = model
        self.samples = int(samples)
        self.keep_samples = bool(keep_samples)
        self.max_batch = None if max_batch is None else int(max_batch)
        self.seed = None if seed is None else int(seed)
        self.no_grad = bool(no_grad)

        roots: list[nn.Module] = [model]
        self._trunk: Callable | None = None
        self._head: Callable = model
        self._declared = trunk is not None
        if trunk is not None:
            t = _resolve_part(model, trunk, "trunk")
            h = _resolve_part(model, head, "head")
            if isinstance(t, nn.Module) and _has_dropout(t):
                raise ValueError(
                    f"`trunk` must not contain dropout modules (they would be sampled once for all samples), "
                    f"got {', '.join(type(m).__name__ for m in stochastic_modules(t))}"
                )
            if isinstance(h, nn.Module) and _builtin_without_dropout([h]):
                raise ValueError(_no_dropout_message([h], "head"))
            roots += [p for p in (t, h) if isinstance(p, nn.Module)]
            self._trunk, self._head = t, h
        elif _is_plain_sequential(model):
            t_mods, h_mods = _split_sequential(model)
            if t_mods and h_mods:
                self._trunk, self._head = _Chain(t_mods), _Chain(h_mods)
        self._roots = roots
        self.channels_last = check_channels_last(channels_last)
        if _builtin_without_dropout(roots):
            raise ValueError(_no_dropout_message(roots))
        _warn_opaque(roots)
        self._has_modules = bool(stochastic_modules(*roots))
        self._confirmed = self._has_modules  # dropout seen (modules, or a functional call at the first call)

    @property
    def caches_trunk(self) -> bool:
        """Whether a deterministic trunk runs once per batch (declared or found in a Sequential).

        False once an auto-detected trunk was seen calling (functional) dropout."""
        return self._trunk is not None

    def __repr__(self) -> str:
        return (
            f"MCDropout({type(self.model).__name__}, samples={self.samples}, max_batch={self.max_batch}, "
            f"seed={self.seed}, caches_trunk={self.caches_trunk})"
        )

    def netuq_traits(self) -> Traits:
        """MC dropout's traits (:mod:`netuq.traits`): epistemic samples, seeded when ``seed`` is set."""
        return Traits("mc_dropout", epistemic=True, seeded=self.seed is not None)

    def __call__(self, x: torch.Tensor) -> Prediction:
        """Sample the model on a batch.

        Args:
            x: (N, ...) model input.

        Returns:
            Prediction with ``probs`` (N, C, ...), ``entropy``/``aleatoric``/``epistemic``/
            ``variation_ratio`` (N, ...), and ``samples`` (S, N, C, ...) if ``keep_samples``.
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"`x` must be a tensor, got {type(x).__name__}")
        if x.ndim == 0 or x.shape[0] == 0:
            raise ValueError(f"`x` must have shape (N, ...) with N >= 1, got shape {tuple(x.shape)}")
        with ExitStack() as stack:
            if self.no_grad:
                stack.enter_context(torch.no_grad())
            # modules whose mode sampling switches (a checkpointed forward recomputed later would not be)
            switched = [m for r in self._roots for m in r.modules() if m.training != isinstance(m, _DropoutNd)]
            drops = stack.enter_context(_switched(self._roots))
            state = None
            if self.seed is not None:
                stack.enter_context(_forked_rng(x.device))
                _seed_device(x.device, _derive(self.seed, 2))
                state = SeedState(self.seed)
            mode = FunctionalDropout(state)
            if state is not None:
                stack.enter_context(_seeded_dropout(drops, state, mode))
            if not self.no_grad and torch.is_grad_enabled():  # a graph is kept: refuse checkpointed dropout
                mode.watch = refuse_checkpointed_dropout
                for m in {id(m): m for m in (*drops, *switched)}.values():
                    stack.callback(m.register_forward_pre_hook(refuse_checkpointed_dropout).remove)
            n = x.shape[0]
            if self.max_batch is not None and self.max_batch < n:
                preds = []
                for start in range(0, n, self.max_batch):
                    if state is not None:
                        state.seed = _derive(self.seed, 3, start)
                    preds.append(self._sample(x[start : start + self.max_batch], state, mode))
                return Prediction.cat(preds)
            return self._sample(x, state, mode)

    def _run_trunk(self, x: torch.Tensor, state: SeedState | None, mode: FunctionalDropout) -> torch.Tensor | None:
        """The trunk output, or None when the trunk called dropout (auto-detected trunk given up)."""
        calls, seeded = mode.calls, (state.calls if state is not None else 0)
        mode.probe = True
        try:
            with mode:
                feats = self._trunk_forward(x)
        finally:
            mode.probe = False
        if mode.calls == calls and (state is None or state.calls == seeded):
            return feats
        if self._declared:
            raise ValueError(
                "`trunk` must be deterministic, but it called dropout during its forward (a functional "
                "call such as F.dropout, or a dropout module): it would be sampled once for all samples. "
                "Move the dropout into `head`, or drop trunk=/head= to sample the whole model"
            )
        self._trunk, self._head = None, self.model  # the Sequential's child calls dropout itself
        return None

    def _trunk_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk on ``x`` (channels-last if opted in; a 4-d output then comes back contiguous,
        so that the head's dropout masks follow the memory order of the default)."""
        out = self._trunk(as_layout(x, self.channels_last))
        if self.channels_last and isinstance(out, torch.Tensor) and out.ndim == 4 and not out.is_contiguous():
            out = out.contiguous()
        return out

    def _sample(self, x: torch.Tensor, state: SeedState | None, mode: FunctionalDropout) -> Prediction:
        n = x.shape[0]
        feats = self._run_trunk(x, state, mode) if self._trunk is not None else None
        if feats is None:
            feats = x
        if not isinstance(feats, torch.Tensor) or feats.ndim == 0 or feats.shape[0] != n:
            shape = tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__
            raise ValueError(f"`trunk` must return a tensor with the batch (N={n}) first, got {shape}")
        plans = _PLANS.setdefault(self.model, {})
        key = (self._trunk is not None, str(feats.device), tuple(feats.shape), feats.dtype)
        if self.max_batch is not None:
            per_forward = max(1, self.max_batch // n)
        else:
            if key not in plans:
                plans[key] = self._dry_run(feats, state, mode)
            cap = _default_chunk(math.prod(feats.shape[1:]), n, feats.device)
            per_forward = min(cap, _activation_chunk(plans[key][0], feats.device))
        per_forward = _balanced(per_forward, self.samples)
        # the torch-function mode costs a little on every op: skip it where the dry run of this shape saw
        # dropout modules only (no functional dropout call outside them)
        plan = plans.get(key)
        intercept = mode if (plan is None or plan[1] or not self._confirmed) else nullcontext()
        if (plan is not None and plan[2]) or key in _ONE_PER_FORWARD.get(self.model, ()):
            per_forward = 1  # the rows mix, or seeded masks cannot be split between samples (see Regroup)
        try:
            return self._forwards(feats, n, per_forward, state, mode, intercept)
        except Regroup:  # rows that mix, or a seeded dropout input without one dimension of k·N: one per forward
            _ONE_PER_FORWARD.setdefault(self.model, set()).add(key)
            return self._forwards(feats, n, 1, state, mode, intercept)

    def _forwards(
        self, feats: torch.Tensor, n: int, per_forward: int, state: SeedState | None, mode: FunctionalDropout,
        intercept: Any,
    ) -> Prediction:  # fmt: skip
        """The S samples, ``per_forward`` of them stacked per head forward, into a Prediction."""
        pred = Prediction(keep_samples=self.keep_samples)
        reps = (1,) * (feats.ndim - 1)
        # the whole model sampled on a 4-d input: channels-last rows if opted in
        repeat_cl = self.channels_last and self._trunk is None and feats.ndim == 4 and feats.is_floating_point()
        for start in range(0, self.samples, per_forward):
            k = min(per_forward, self.samples - start)
            if state is not None:
                state.offset, state.k, state.calls, state.n = start, k, 0, n
            calls = mode.calls
            # the head gets a fresh tensor: in-place dropout (or any in-place op) must neither touch
            # the caller's input nor the cached trunk output reused by the next chunk
            mode.rows, mode.stacked = k * n, k > 1  # a call mixing the rows of k > 1 samples: Regroup
            try:
                with intercept:
                    if repeat_cl:
                        out = self._head(_repeated_channels_last(feats, k))
                    else:
                        out = self._head(feats.repeat(k, *reps) if k > 1 else feats.clone())
            finally:
                mode.rows = None
            if isinstance(out, torch.Tensor) and out.ndim == 4 and not out.is_contiguous():
                out = out.contiguous()  # channels-last logits: the sums stay (N, C, H, W)
            if not self._confirmed:
                if mode.calls == calls:
                    raise ValueError(_no_dropout_message(self._roots) + " (no functional dropout call was seen)")
                self._confirmed = True
            if not isinstance(out, torch.Tensor) or out.ndim < 2 or out.shape[0] != k * n:
                shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(f"`model` must return logits of shape (N, C, ...) with N = {k * n} rows, got {shape}")
            pred.add_logits(out.reshape(k, n, *out.shape[1:]), stacked=True)
        return pred

    def _dry_run(
        self, feats: torch.Tensor, state: SeedState | None, mode: FunctionalDropout
    ) -> tuple[int, bool, bool]:
        """One head forward of one sample (once per shape): the elements of its largest tensor,
        whether it called functional dropout outside the dropout modules, and whether it mixed the
        rows of the batch (:func:`netuq._batching.couples_rows`: then one sample per forward)."""
        if state is not None:
            state.offset, state.k, state.calls, state.n = 0, 1, 0, feats.shape[0]
        mode.probe = mode.track = True
        mode.largest, calls = 0, mode.calls
        mode.rows, mode.stacked, mode.coupled = feats.shape[0], False, False

        def enter(*_):
            mode.bypass += 1

        def leave(*_):
            mode.bypass -= 1

        hooks = []
        try:
            for m in stochastic_modules(*self._roots):  # calls made by the modules themselves do not count
                hooks += [m.register_forward_pre_hook(enter), m.register_forward_hook(leave)]
            with torch.no_grad(), mode:
                self._head(feats.detach().clone())
        finally:
            mode.probe = mode.track = False
            mode.bypass, mode.rows = 0, None
            for h in hooks:
                h.remove()
        return max(mode.largest, feats.numel()), mode.calls != calls, mode.coupled


def _repeated_channels_last(x: torch.Tensor, k: int) -> torch.Tensor:
    """``x.repeat(k, 1, 1, 1)`` (k copies of the (N, C, H, W) batch, sample-major) in channels-last
    layout, in one copy."""
    out = torch.empty((k * x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    out.unflatten(0, (k, x.shape[0])).copy_(x.unsqueeze(0).expand(k, *x.shape))
    return out


# per model (weakly held) and (cached trunk, device, shape, dtype): (largest activation of one sample's
# forward, whether it calls functional dropout outside the dropout modules, whether it mixes rows)
_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# per model (weakly held): the keys above that need one sample per forward (Regroup)
_ONE_PER_FORWARD: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
