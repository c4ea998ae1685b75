"""Layers for Monte Carlo dropout (Gal & Ghahramani, "Dropout as a Bayesian Approximation", ICML 2016).

Functional dropout written as ``F.dropout(x, p, training=self.training)`` is invisible to
:class:`netuq.MCDropout`, which can only switch dropout *modules*; and ``training=True`` keeps it
stochastic even in plain evaluation. :class:`MCDropout` is the drop-in module for both cases: it is
stochastic in train mode and whenever Monte Carlo sampling is active (inside
:func:`netuq.methods.mc_dropout.dropout_active`, which every :class:`netuq.MCDropout` call uses),
and the identity in plain ``eval()`` mode.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.nn.modules.dropout import _DropoutNd

__all__ = ["MCDropout", "mc_active", "mc_sampling"]

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
