"""The features of a named layer, captured by a forward hook for one eval-mode forward.

Shapes: the layer's output (N, D) is taken as it is; (N, D, H, W, ...) is averaged over its
spatial dimensions to (N, D) (global average pooling, as Lee et al. 2018 summarise a feature map).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._modes import eval_mode

__all__ = ["LayerFeatures", "FeatureTap", "find_module", "pool"]


def pool(f: torch.Tensor) -> torch.Tensor:
    """(N, D) as it is, (N, D, H, W, ...) averaged over the spatial dims, in float64 (float32 on MPS)."""
    dtype = torch.float32 if f.device.type == "mps" else torch.float64
    if f.ndim > 2:
        return f.flatten(2).mean(2, dtype=dtype)
    return f.to(dtype)


def find_module(method: Any, layer: str) -> nn.Module | None:
    """The network that holds ``layer``: ``method`` itself if it is an nn.Module with that
    submodule, else its ``model`` attribute (e.g. :class:`netuq.MCDropout`'s); None if neither."""
    for candidate in (method, getattr(method, "model", None)):
        if isinstance(candidate, nn.Module):
            try:
                candidate.get_submodule(layer)
            except AttributeError:
                continue
            return candidate
    return None


class LayerFeatures:
    """``features(x)``: the (N, D) output of ``model``'s submodule ``layer`` for input ``x``.

    The model runs once in eval mode under ``no_grad`` (each module's train flag restored after)
    with a forward hook on the layer, removed again after the call; the model's own output is
    discarded. Features come back as float64 on the model's device.

    Args:
        model: the network.
        layer: the submodule's name, as in ``model.named_modules()`` (e.g. ``"layer4"``, ``"fc"``,
            ``"features.7"``).

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> LayerFeatures(net, "1")(torch.ones(5, 3)).shape
        torch.Size([5, 4])
    """

    def __init__(self, model: nn.Module, layer: str) -> None:
        if not isinstance(layer, str):
            raise TypeError(f"`layer` must be a module name (str), got {type(layer).__name__}")
        try:
            self.module = model.get_submodule(layer)
        except AttributeError:
            names = [n for n, _ in model.named_modules() if n][:12]
            raise ValueError(
                f"`layer` must name a submodule of {type(model).__name__}, got {layer!r} "
                f"(its modules include {names})"
            ) from None
        self.model, self.layer = model, layer

    def __call__(self, x: Any) -> torch.Tensor:
        captured: list[torch.Tensor] = []

        def hook(_module, _inputs, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"layer {self.layer!r} must output a tensor, got {type(out).__name__}")
            captured.append(out.detach())

        handle = self.module.register_forward_hook(hook)
        try:
            with torch.no_grad(), eval_mode(self.model):
                self.model(x)
        finally:
            handle.remove()
        if len(captured) != 1:
            raise ValueError(
                f"layer {self.layer!r} ran {len(captured)} times in one forward; name a layer that runs once"
            )
        f = captured[0]
        if f.ndim < 2:
            raise ValueError(f"layer {self.layer!r} must output (N, D) or (N, D, ...) features, got {tuple(f.shape)}")
        return pool(f)


class FeatureTap:
    """Wrap a predictor ``x -> Prediction`` so that each Prediction carries ``features`` (N, D):
    ``model``'s ``layer`` output for the batch, from one extra eval-mode forward of the network.

    The features are the network's own (eval mode, no dropout, no augmentation), whatever the
    method samples: a feature detector (Lee et al. 2018) describes the trained network, and one
    definition serves every method built on it. Hooking the method's own forwards instead would
    also see its internal runs (MC dropout's dry run and layout check), and the rows of sampled
    runs; the price of the clean definition is one forward per batch, paid only when asked.

    Args:
        model: the network holding ``layer`` (see :func:`find_module`).
        layer: the submodule's name.

    Example:
        >>> from netuq import Prediction
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> run = FeatureTap(net, "1").wrap(lambda x: Prediction.from_logits(net(x)))
        >>> run(torch.ones(5, 3)).features.shape
        torch.Size([5, 4])
    """

    def __init__(self, model: nn.Module, layer: str) -> None:
        self.features = LayerFeatures(model, layer)

    def wrap(self, predictor):
        def run(x):
            pred = predictor(x)
            pred.features = self.features(x)
            return pred

        return run
