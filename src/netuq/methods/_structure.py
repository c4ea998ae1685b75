"""What one traced forward of a model says about MC sampling: the stochastic tail, attention dropout.

:class:`netuq.MCDropout` runs this once, at its first call (on that batch, in the sampling
modes, before seeded masks are patched in; the global RNG forked) and learns two things from the model's own execution:

The same forward measures the largest activation and whether dropout is called outside dropout
modules (what :class:`netuq.MCDropout`'s dry run measures), so that it replaces the dry run.

* **The tail** (:attr:`Findings.tail`). The *first stochastic call* is the first dropout module
  with p > 0, switched-on stochastic-depth module, or functional dropout / attention dropout
  call with p > 0. The candidates are the calls open at that moment (the modules on the call
  stack, and the root's ``forward_head`` method — timm's split), innermost first. The first
  candidate ``H`` that passes every check is the head, and the trunk is everything the forward
  does before calling it:

  - ``H`` runs once per forward, on a single positional tensor ``A`` (no keyword arguments);
  - the model's output, read by :mod:`netuq._outputs`, **is** ``H``'s output (the same tensor,
    not modified in place afterwards): what the forward does after ``H`` returns cannot change
    the logits;
  - no module around ``H`` (nor the model) has forward hooks, and no global module hook is set
    (calling ``H`` directly would skip them);
  - every stochastic call happens inside ``H`` (by construction: the first one does).

  Then ``model(x) == H(A(x))`` with the same dropout calls in the same order, so sampling
  ``H`` on the repeated ``A`` gives the samples of the whole model (bit-identical with a seed,
  whenever the trunk computes ``A`` for one row as for many). Anything else: no tail, the
  whole model is sampled.
* **Attention dropout read from the module's training flag** (:attr:`Findings.attention`): a
  module that called ``F.scaled_dot_product_attention`` with ``dropout_p=0`` or functional
  dropout with ``p=0`` (timm ``Attention``: ``dropout_p=self.attn_drop.p if self.training``;
  Hugging Face attention: ``dropout=0.0 if not self.training``) is run again on its recorded
  input in eval and in train mode (its own flag only, dropout forced off): if the outputs are
  identical and the train-mode forward asks for more dropout, its training flag does nothing
  but switch dropout, and it is switched on while sampling. Otherwise it is listed as not
  sampled (:attr:`Findings.not_sampled`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.modules.dropout import _DropoutNd

from .._outputs import OutputRule, logits_of
from .._random import forked_rng
from ._dropout_calls import FunctionalDropout

__all__ = ["Findings", "Tail", "TailNotReached", "trace"]


class _Stop(BaseException):  # noqa: N818 - a BaseException: a model's `except Exception` does not swallow it
    """Raised from a hook to end a forward once the trunk output is captured."""


class TailNotReached(RuntimeError):
    """The forward did not reach the head this time (a data-dependent path)."""


@dataclass
class _Call:
    name: str
    target: Any  # the module, or the name of a root method
    args: tuple
    kwargs: dict
    out: Any = None
    version: int | None = None


@dataclass
class Tail:
    """The head of a proven split: a submodule of the model, or the root's ``forward_head``."""

    model: nn.Module | None
    target: nn.Module | str
    name: str

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """The input the head gets when the model runs on ``x`` (the forward stopped there)."""
        captured: list[torch.Tensor] = []

        def stop(value: torch.Tensor) -> None:
            captured.append(value)
            raise _Stop

        if isinstance(self.target, str):
            self.model.__dict__[self.target] = lambda value, *a, **k: stop(value)
            handle = None
        else:
            handle = self.target.register_forward_pre_hook(lambda m, args: stop(args[0]), prepend=True)
        try:
            self.model(x)
        except _Stop:
            pass
        finally:
            if handle is not None:
                handle.remove()
            else:
                del self.model.__dict__[self.target]
        if not captured:
            raise TailNotReached(f"the forward did not reach {self.name!r}")
        return captured[0]

    def head(self, a: torch.Tensor) -> Any:
        """The model's output for the trunk output ``a`` (what the forward returns after it)."""
        if isinstance(self.target, str):
            return getattr(self.model, self.target)(a)
        return self.target(a)


@dataclass
class Findings:
    tail: Tail | None = None
    attention: list[nn.Module] = field(default_factory=list)
    not_sampled: list[str] = field(default_factory=list)
    why_no_tail: str = ""
    largest: int = 0  # elements of the largest tensor a torch function returned in the forward
    outside_calls: bool = False  # dropout calls (p > 0) made outside dropout modules
    stochastic: bool = False  # any stochastic call at all
    coupled: bool = False  # a call mixed the rows of the batch (then one sample per forward)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a is b or a == b


def _has_hooks(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks)


def _global_hooks() -> bool:
    from torch.nn.modules import module as _m

    return bool(getattr(_m, "_global_forward_hooks", None) or getattr(_m, "_global_forward_pre_hooks", None))


def trace(
    model: nn.Module,
    x: torch.Tensor,
    *,
    live: Sequence[nn.Module],
    output: OutputRule = None,
    find_tail: bool = True,
) -> Findings:
    """One forward of ``model`` on ``x`` (in the caller's sampling modes; the global RNG forked):
    the tail and the attention modules to switch on (see the module docstring).

    Args:
        model: the network, its dropout modules already switched on.
        x: a small input (one row is enough).
        live: the modules whose call is stochastic (dropout with p > 0, stochastic depth on).
        output: how the logits are read from the output.
        find_tail: look for the tail (False: attention only).
    """
    live_ids = {id(m) for m in live}
    stack: list[_Call] = []
    counts: dict[str, int] = {}
    first: list[_Call] | None = None
    zero: dict[int, _Call] = {}  # modules that called dropout / attention with p = 0 (innermost)
    hooked = {name: _has_hooks(m) for name, m in model.named_modules()}
    mode = FunctionalDropout()
    mode.probe = mode.track = True  # count calls, leave them as the model asks; measure activations
    mode.rows = x.shape[0] if x.ndim else None  # ... and look for calls that mix the rows

    outside = [False]

    def on_call(p: float) -> None:
        nonlocal first
        if p > 0 and not (stack and isinstance(stack[-1].target, _DropoutNd)):
            outside[0] = True
        if p > 0 and first is None:
            first = list(stack)
        elif p == 0 and stack and isinstance(stack[-1].target, nn.Module):
            zero.setdefault(id(stack[-1].target), stack[-1])

    mode.on_call = on_call

    def enter(name: str, target: Any, args: tuple, kwargs: dict) -> _Call:
        nonlocal first
        call = _Call(name, target, args, kwargs)
        counts[name] = counts.get(name, 0) + 1
        if first is None and id(target) in live_ids:
            first = list(stack)
        stack.append(call)
        return call

    def leave(call: _Call, out: Any) -> None:
        call.out = out
        call.version = out._version if isinstance(out, torch.Tensor) else None
        if stack and stack[-1] is call:
            stack.pop()

    handles = []
    for name, m in model.named_modules():
        if not name or isinstance(m, torch.jit.ScriptModule):  # no hooks there (reported as opaque)
            continue

        def pre(mod, args, kwargs, name=name):
            enter(name, mod, args, kwargs)

        def post(mod, args, kwargs, out, name=name):
            if stack and stack[-1].name == name:
                leave(stack[-1], out)

        handles.append(m.register_forward_pre_hook(pre, prepend=True, with_kwargs=True))
        handles.append(m.register_forward_hook(post, with_kwargs=True, always_call=True))
    method = getattr(type(model), "forward_head", None)
    patched = callable(method) and "forward_head" not in model.__dict__
    if patched:
        bound = method.__get__(model)

        def forward_head(*args, **kwargs):
            call = enter("forward_head", "forward_head", args, kwargs)
            out = bound(*args, **kwargs)
            leave(call, out)
            return out

        model.__dict__["forward_head"] = forward_head
    try:
        with forked_rng(x.device), torch.no_grad(), mode:
            out = model(x)
    finally:
        for h in handles:
            h.remove()
        if patched:
            del model.__dict__["forward_head"]
    findings = Findings(
        largest=mode.largest, outside_calls=outside[0], stochastic=first is not None, coupled=mode.coupled
    )
    mode.track, mode.rows = False, None
    z = logits_of(out, output)
    if find_tail:
        findings.tail, findings.why_no_tail = _tail(model, first, counts, hooked, z)
    findings.attention, findings.not_sampled = _attention(model, zero.values(), mode)
    return findings


def _tail(model, first, counts, hooked, z) -> tuple[Tail | None, str]:
    if first is None:
        return None, "no stochastic call in the forward"
    if hooked.get("", False) or _global_hooks():
        return None, "the model (or every module, globally) has forward hooks"
    for i in range(len(first) - 1, -1, -1):
        call = first[i]
        if counts.get(call.name, 0) != 1 or len(call.args) != 1 or call.kwargs:
            continue
        if not isinstance(call.args[0], torch.Tensor) or call.out is not z or call.version != z._version:
            continue
        if isinstance(call.target, nn.Module) and isinstance(call.target, _DropoutNd):
            continue
        if any(hooked.get(outer.name, False) for outer in first[:i]):
            continue
        return Tail(None, call.target, call.name), ""  # no reference to the model: findings are cached per model
    return None, "no module around the first dropout returns the model's output unchanged"


def _attention(model: nn.Module, calls, mode: FunctionalDropout) -> tuple[list[nn.Module], list[str]]:
    """Modules whose training flag only switches their dropout (see the module docstring)."""
    on, off = [], []
    names = {id(m): n for n, m in model.named_modules()}
    for call in calls:
        m = call.target
        if isinstance(m, _DropoutNd) or m.training:
            continue
        asked: list[float] = []
        mode.on_call, mode.force_off, mode.probe = asked.append, True, False
        try:
            with forked_rng(), torch.no_grad(), mode:
                a = m(*call.args, **call.kwargs)
                eval_p = [p for p in asked if p > 0]
                asked.clear()
                m.training = True
                try:
                    b = m(*call.args, **call.kwargs)
                finally:
                    m.training = False
                train_p = [p for p in asked if p > 0]
        except Exception:  # noqa: BLE001 - a module that cannot be rerun alone is left as it is
            continue
        finally:
            mode.on_call, mode.force_off = None, False
        if len(train_p) <= len(eval_p):
            continue  # its training flag asks for no dropout (p = 0 configured): nothing to sample
        if _same(a, b):
            on.append(m)
        else:
            off.append(
                f"{names.get(id(m), type(m).__name__)} ({type(m).__name__}: attention dropout p={max(train_p)}; its "
                "training flag changes more than dropout)"
            )
    return on, off

