"""Layers for Monte Carlo dropout (Gal & Ghahramani, "Dropout as a Bayesian Approximation", ICML 2016).

Functional dropout written as ``F.dropout(x, p, training=self.training)`` is invisible to
:class:`netuq.MCDropout`, which can only switch dropout *modules*; and ``training=True`` keeps it
stochastic even in plain evaluation. :class:`MCDropout` is the drop-in module for both cases: it is
stochastic in train mode and whenever Monte Carlo sampling is active (inside
:func:`netuq.methods.mc_dropout.dropout_active`, which every :class:`netuq.MCDropout` call uses),
and the identity in plain ``eval()`` mode. :func:`add_dropout` inserts such layers into a pretrained
network that has no dropout, keeping its ``state_dict``.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.dropout import _DropoutNd

__all__ = ["MCDropout", "add_dropout", "mc_active", "mc_sampling"]

_ATTR = "mc_dropout"  # name of the MCDropout child add_dropout gives a layer

_state = threading.local()


def mc_active() -> bool:
    """Whether Monte Carlo sampling is active in this thread.

    Example:
        >>> mc_active()
        False
        >>> with mc_sampling():
        ...     mc_active()
        True
    """
    return getattr(_state, "depth", 0) > 0


@contextmanager
def mc_sampling() -> Iterator[None]:
    """Mark Monte Carlo sampling as active in this thread (re-entrant); :class:`MCDropout` layers
    then drop units whatever their module's mode.

    Example:
        >>> layer = MCDropout(0.5).eval()
        >>> x = torch.ones(1, 1000)
        >>> bool((layer(x) == x).all())
        True
        >>> with mc_sampling():
        ...     bool((layer(x) == 0).any())
        True
    """
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        yield
    finally:
        _state.depth -= 1


class MCDropout(_DropoutNd):
    """Element-wise dropout that stays stochastic for Monte Carlo sampling.

    Replaces ``F.dropout(x, p, training=True)`` in a model's ``forward``: it drops each element
    with probability ``p`` and scales the rest by ``1 / (1 - p)`` (like ``torch.nn.Dropout``)
    when the module is in train mode **or** when MC sampling is active (:func:`mc_active`), and it
    is the identity in plain ``eval()`` mode, so a deterministic evaluation stays possible.
    It is a ``torch.nn.modules.dropout._DropoutNd``, so every tool that switches dropout modules
    (``netuq.MCDropout``, TorchUncertainty) finds it.

    Args:
        p: probability of dropping an element, in [0, 1].
        inplace: do the operation in place.

    Shapes:
        any shape, (N, ...) -> (N, ...).

    Example:
        >>> layer = MCDropout(0.5).eval()
        >>> layer(torch.ones(2, 3))
        tensor([[1., 1., 1.],
                [1., 1., 1.]])
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.p, self.training or mc_active(), self.inplace)


def _dropout_pre_hook(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: the layer's input goes through its ``mc_dropout`` child first."""
    _state.inserting = getattr(_state, "inserting", 0) + 1
    try:
        x = getattr(module, _ATTR)(args[0])
    finally:
        _state.inserting -= 1
    return (x, *args[1:])


def _guard(layer: nn.Module, args: tuple) -> None:
    """Forward pre-hook of an inserted layer: it runs only through its parent's pre-hook.

    A parent whose own forward calls its children (a container) would run it a second time, on
    its output; refuse that instead of dropping the logits."""
    if not getattr(_state, "inserting", 0):
        raise RuntimeError(
            "a dropout layer inserted by netuq.nn.add_dropout ran from its parent's own forward (the parent "
            "calls its children, like a container): pass before= a layer that does not, e.g. the parent's first step"
        )


def _first_step(layer: nn.Module, name: str) -> tuple[nn.Module, str]:
    """A plain ``nn.Sequential`` hands its input to its first step: put dropout there (recursively),
    never as a child of the Sequential, whose forward would run it last, on its output."""
    while isinstance(layer, nn.Sequential) and type(layer).forward is nn.Sequential.forward:
        if len(layer) == 0:
            raise ValueError(f"`before` layer {name!r} is an empty nn.Sequential: there is no input to drop")
        key = next(iter(layer._modules))
        layer, name = layer[0], f"{name}.{key}" if name else key
    return layer, name


def _default_target(model: nn.Module, example: object, output: object) -> tuple[str, nn.Module]:
    """The module whose output is the model's output, found by running the model (``example``, or
    probe inputs from :func:`netuq._trace.probe_inputs`)."""
    from ._trace import output_module, probe_inputs

    if example is not None:
        return output_module(model, example, output)
    ref = next(iter(model.parameters()), None)
    tried, last = [], None
    for shape in probe_inputs(model):
        kw = {"dtype": ref.dtype, "device": ref.device} if ref is not None and ref.is_floating_point() else {}
        x = torch.zeros(shape, **kw).uniform_(-1, 1, generator=torch.Generator(kw.get("device", "cpu")).manual_seed(0))
        try:
            return output_module(model, x, output)
        except (RuntimeError, IndexError, AssertionError) as err:  # the model refused this input shape
            tried.append(shape)
            last = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}" if str(err) else type(err).__name__
    raise ValueError(
        f"`example` is needed to find where dropout goes in {type(model).__name__}: it did not run on "
        f"{', '.join(map(str, tried)) or 'any input netuq could guess'}{f' ({last})' if last else ''}; "
        "pass example=<an input batch> (or before=<a layer name>)"
    )


def add_dropout(
    model: nn.Module,
    p: float,
    *,
    before: str | nn.Module | Sequence[str | nn.Module] | None = None,
    example: torch.Tensor | None = None,
    output: object = None,
) -> nn.Module:
    """Insert MC dropout before chosen layers of a network that has none (e.g. a torchvision ResNet).

    Each chosen layer gets a :class:`MCDropout` child named ``mc_dropout`` and a forward pre-hook
    that passes the layer's input through it. No weight is touched and no parameter or buffer is
    added, so ``state_dict()`` keeps its keys: the original weights load (``strict=True``) into the
    modified model and back. The layers are identities in plain ``eval()`` mode (outputs unchanged)
    and sample under :class:`netuq.MCDropout` (or in train mode, like ``nn.Dropout``, so
    fine-tuning with them is ordinary dropout training). The model is modified **in place** and
    returned (for chaining); ``copy.deepcopy`` it first to keep the original. Shapes are not
    changed: the layer's input (N, F) or (N, F, H, W) is dropped element-wise.

    A plain ``nn.Sequential`` passes its input to its first step, so dropout "before" it goes
    before that step (recursively), never after its last step, on the logits.

    Args:
        model: the network.
        p: drop probability in [0, 1).
        before: the layers to put dropout in front of: a name from ``model.named_modules()``
            (``"fc"``, ``"layer4.1.conv2"``), a submodule, or a sequence of those. None: the module
            whose output is the model's output, found by running the model once (eval mode,
            autograd on; modes and RNG restored) and walking back from its logits through
            parameter-free steps (``F.interpolate``, ``nn.Identity``, reshapes) to the first module
            with parameters: ``fc`` of a ResNet, the head's convolution of a U-Net
            (:func:`netuq._trace.output_module`). A warning says where it went. Refused when the
            output combines several branches or that module runs more than once per forward.
        example: an input batch for that run (None: the model's configured input size where it has
            one — timm, Hugging Face — else images sized from its first convolution).
        output: how to read the logits from the model's output for that run (:mod:`netuq._outputs`).

    Returns:
        ``model`` itself.

    Raises:
        ValueError: ``p`` outside [0, 1); a name or module not in ``model``; no single output
            module (the message says what was found); a layer that already has MC dropout.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
        >>> state = {k: v.clone() for k, v in net.state_dict().items()}
        >>> x = torch.randn(2, 4)
        >>> y = net(x)
        >>> add_dropout(net, 0.2, before="2") is net, type(net[2].mc_dropout).__name__
        (True, 'MCDropout')
        >>> torch.equal(net(x), y), net.load_state_dict(state, strict=True)
        (True, <All keys matched successfully>)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise ValueError(f"`p` must be a probability in [0, 1), got {p!r}")
    names = {id(m): name for name, m in model.named_modules()}
    if before is None:
        name, layer = _default_target(model, example, output)
        targets = [(layer, name)]
    else:
        items = [before] if isinstance(before, (str, nn.Module)) else list(before)
        if not items:
            raise ValueError("`before` must name at least one layer, got an empty sequence")
        by_name = dict(model.named_modules())
        targets = []
        for item in items:
            if isinstance(item, str):
                if item not in by_name or item == "":
                    some = ", ".join(repr(n) for n in list(by_name)[1:8])
                    raise ValueError(f"`before` must name submodules of the model (e.g. {some}), got {item!r}")
                targets.append((by_name[item], item))
            elif isinstance(item, nn.Module):
                if id(item) not in names or item is model:
                    raise ValueError(
                        f"`before` must be submodules of the model, got a {type(item).__name__} that is not in it"
                    )
                targets.append((item, names[id(item)]))
            else:
                raise TypeError(f"`before` must be layer names or modules, got {type(item).__name__}")
    targets = [_first_step(layer, name) for layer, name in targets]
    for layer, name in targets:
        if isinstance(getattr(layer, _ATTR, None), MCDropout):
            raise ValueError(f"`before` layer {name!r} already has MC dropout (add_dropout ran twice)")
    for layer, _ in targets:
        drop = MCDropout(float(p)).train(layer.training)  # the layer's mode
        drop.register_forward_pre_hook(_guard)
        layer.add_module(_ATTR, drop)
        layer.register_forward_pre_hook(_dropout_pre_hook)
    if before is None:
        layer, name = targets[0]
        warnings.warn(
            f"add_dropout: MC dropout (p={float(p)}) inserted before {name!r} ({type(layer).__name__}), "
            "the module whose output is the model's output; pass before= to choose another place",
            UserWarning,
            stacklevel=2,
        )
    return model
