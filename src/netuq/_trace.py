"""What a model's own execution says about its structure: which module computes its output.

Used by :func:`netuq.nn.add_dropout` to put dropout in front of the module that computes the
model's output (found by running the model once, not from registration order or names).

The rule (:func:`output_module`): run the model once in eval mode with autograd on, unwrap its
output by :mod:`netuq._outputs`, and walk the autograd graph back from the logits through
operations with a single non-parameter input (reshapes, ``F.interpolate``, a functional
activation, parameter-free modules such as ``nn.Identity`` or ``nn.Flatten``) to the first
tensor that a module **with parameters** returned. Where the walk meets an operation with several
inputs (a residual sum, a concatenation of heads) before such a module, or that module runs more
than once per forward, there is no single output module: an error names what was found.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ._modes import eval_mode
from ._outputs import OutputRule, logits_of
from ._random import forked_rng

__all__ = ["output_module", "probe_inputs"]


def _first_param(model: nn.Module) -> torch.Tensor | None:
    for t in model.parameters():
        return t
    for t in model.buffers():
        return t
    return None


def probe_inputs(model: nn.Module) -> list[tuple[int, ...]]:
    """Input shapes worth trying to run ``model`` on when the user gave no example (one image each).

    From the model's own configuration where it has one (timm ``pretrained_cfg["input_size"]``,
    Hugging Face ``config.num_channels`` / ``config.image_size``), else from the first
    convolution or linear layer in registration order (64 x 64, then 224 x 224, then 32 x 32
    images for a 2-d convolution).

    Example:
        >>> probe_inputs(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten()))[:2]
        [(1, 1, 64, 64), (1, 1, 224, 224)]
    """
    shapes: list[tuple[int, ...]] = []
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    if isinstance(cfg, Mapping) and isinstance(cfg.get("input_size"), (tuple, list)):
        shapes.append((1, *map(int, cfg["input_size"])))
    config = getattr(model, "config", None)
    channels, size = getattr(config, "num_channels", None), getattr(config, "image_size", None)
    if isinstance(channels, int) and size is not None:
        hw = (size, size) if isinstance(size, int) else tuple(size)
        shapes.insert(0, (1, channels, *map(int, hw)))
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            shapes += [(1, m.in_channels, s, s) for s in (64, 224, 32)]
            break
        if isinstance(m, (nn.Conv1d, nn.Conv3d)):
            shapes += [(1, m.in_channels, *(32,) * (m.weight.ndim - 2))]
            break
        if isinstance(m, nn.Linear):
            shapes.append((1, m.in_features))
            break
    return list(dict.fromkeys(shapes))


def _run(model: nn.Module, example: Any, output: OutputRule) -> tuple[torch.Tensor, dict, dict, set]:
    """One eval-mode forward with autograd on: (logits, grad_fn -> [(order, name, module)],
    name -> calls, ids of the model's parameters)."""
    produced: dict[Any, list[tuple[int, str, nn.Module]]] = {}
    calls: dict[str, int] = {}
    order = [0]

    def hook(name: str):
        def record(module: nn.Module, args: tuple, out: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            if isinstance(out, torch.Tensor) and out.grad_fn is not None:
                order[0] += 1
                produced.setdefault(out.grad_fn, []).append((order[0], name, module))

        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in model.named_modules() if name]
    params = {id(p) for p in model.parameters()}
    device = example.device if isinstance(example, torch.Tensor) else None
    try:
        with eval_mode(model), torch.enable_grad(), forked_rng(device):
            out = model(example)
    finally:
        for h in handles:
            h.remove()
    return logits_of(out, output), produced, calls, params


def _inputs(node: Any, params: set) -> list[Any]:
    """The graph inputs of ``node`` that are not the model's parameters."""
    found = []
    for fn, _ in node.next_functions:
        if fn is None:
            continue
        var = getattr(fn, "variable", None)
        if var is not None and id(var) in params:
            continue
        found.append(fn)
    return found


def _nearest_modules(nodes: list, produced: dict, params: set, limit: int = 200) -> list[str]:
    """For each branch, the name of the first module output met walking back (or the op's name)."""
    names = []
    for start in nodes:
        frontier, seen, name = [start], set(), None
        while frontier and len(seen) < limit and name is None:
            node = frontier.pop(0)
            if node in seen:
                continue
            seen.add(node)
            if node in produced:
                name = produced[node][0][1]
                break
            frontier += _inputs(node, params)
        names.append(repr(name) if name is not None else type(start).__name__)
    return names


def output_module(model: nn.Module, example: Any, output: OutputRule = None) -> tuple[str, nn.Module]:
    """The module (with parameters) whose output is the model's output, up to parameter-free steps.

    Args:
        model: the network (run once in eval mode; its modes and the global RNG are restored).
        example: an input batch the model accepts (N, ...).
        output: how to read the logits from the model's output (see :mod:`netuq._outputs`).

    Returns:
        ``(name, module)`` with ``name`` as in ``model.named_modules()``.

    Raises:
        ValueError: the output combines several branches, comes from no module with parameters,
            or its module runs more than once per forward; the message names what was found.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3), nn.Softmax(-1))
        >>> output_module(net, torch.randn(2, 4))[0]
        '2'
    """
    if isinstance(example, torch.Tensor) and example.is_floating_point():
        example = example.detach().requires_grad_(True)
    z, produced, calls, params = _run(model, example, output)
    node = z.grad_fn
    if node is None:
        raise ValueError(
            f"`model` output could not be traced to a module ({type(model).__name__}: no autograd graph; "
            "parameters frozen and an integer input?); pass before= to say where dropout goes"
        )
    seen = 0
    while True:
        seen += 1
        for _, name, module in sorted(produced.get(node, []), key=lambda r: r[0]):
            if _first_param(module) is not None:
                if calls.get(name, 0) > 1:
                    raise ValueError(
                        f"`model` output comes from {name!r} ({type(module).__name__}), which runs "
                        f"{calls[name]} times per forward: dropout before it would act on every call; pass before="
                    )
                return name, module
        inputs = _inputs(node, params)
        if len(inputs) != 1 or seen > 10_000:
            if not inputs:
                raise ValueError(
                    f"`model` output ({type(model).__name__}) is computed by no module with parameters "
                    f"(the graph ends at {type(node).__name__}); pass before= to say where dropout goes"
                )
            branches = ", ".join(_nearest_modules(inputs, produced, params))
            raise ValueError(
                f"`model` output ({type(model).__name__}) combines several branches in {type(node).__name__} "
                f"(from {branches}) before any single module computes it: where dropout belongs is ambiguous; "
                "pass before= to choose"
            )
        node = inputs[0]
