"""Save and restore every module's ``training`` flag exactly.

``was = model.training; model.eval(); ...; model.train(was)`` is wrong for a model whose modules
are in mixed modes: ``train(True)`` sets every submodule to training, so a BatchNorm the user froze
(``bn.eval()`` inside a model in train mode) comes back updating its running statistics. These
helpers record each module's own flag and put it back, even on error.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = ["Modes", "save_modes", "load_modes", "restore_modes", "eval_mode"]

Modes = list[tuple[nn.Module, bool]]


def save_modes(*modules: nn.Module) -> Modes:
    """Every (sub)module of ``modules`` with its ``training`` flag, each module once.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
        >>> [flag for _, flag in save_modes(net)]
        [True, True, True]
    """
    seen: set[int] = set()
    saved: Modes = []
    for root in modules:
        for m in root.modules():
            if id(m) not in seen:
                seen.add(id(m))
                saved.append((m, m.training))
    return saved


def load_modes(saved: Modes) -> None:
    """Set each module's ``training`` flag back to the value :func:`save_modes` recorded.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
        >>> saved = save_modes(net)
        >>> _ = net.eval()
        >>> load_modes(saved)
        >>> net.training, net[1].training
        (True, True)
    """
    for m, flag in saved:
        if m.training != flag:  # nn.Module.__setattr__ is slow: ~10 µs a module, per call
            m.training = flag


@contextmanager
def restore_modes(*modules: nn.Module) -> Iterator[Modes]:
    """Context manager: whatever the block does to the modes, every flag is restored on exit.

    Yields:
        the saved (module, flag) pairs.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2).eval())
        >>> with restore_modes(net):
        ...     _ = net.train()
        >>> net.training, net[1].training
        (True, False)
    """
    saved = save_modes(*modules)
    try:
        yield saved
    finally:
        load_modes(saved)


@contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[Modes]:
    """Context manager: ``modules`` in eval mode inside the block, each module's own flag restored on exit.

    Unlike ``model.train(was_training)``, a submodule whose flag differed from its parent's (a
    frozen BatchNorm in a model in train mode) gets exactly its flag back, even on error.

    Yields:
        the saved (module, flag) pairs.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2).eval())
        >>> with eval_mode(net):
        ...     net.training
        False
        >>> net.training, net[1].training
        (True, False)
    """
    with restore_modes(*modules) as saved:
        if any(flag for _, flag in saved):  # a model already in eval mode is left alone (no flag set anew)
            for m in modules:
                m.eval()
        yield saved
