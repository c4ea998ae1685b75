"""Seeds and random generators: the one place netuq derives seeds and forks global RNG state.

* :func:`derive_seed` hashes a seed and integer keys into an independent 63-bit seed
  (SplitMix64 chaining), so sample ``s`` of call ``j`` gets the same stream however the work is
  grouped.
* :func:`forked_rng` leaves the global RNG of a device (and the CPU's) as it was on exit.
* :func:`seed_device` seeds a device's default generator (the one dropout kernels draw from).
* :func:`generator` makes a seeded ``torch.Generator`` on a device.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["derive_seed", "forked_rng", "generator", "seed_device"]

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed hashed from ``seed`` and integer keys (SplitMix64 chaining).

    Example:
        >>> derive_seed(0, 1) == derive_seed(0, 1) != derive_seed(0, 2)
        True
    """
    h = _splitmix64(int(seed) & _MASK64)
    for k in keys:
        h = _splitmix64(h ^ (int(k) & _MASK64))
    return h >> 1


def _as_device(device: torch.device | str | None) -> torch.device:
    return torch.device("cpu") if device is None else torch.device(device)


def seed_device(device: torch.device | str | None, seed: int) -> None:
    """Seed the default generator of ``device`` (the one dropout kernels draw from)."""
    device = _as_device(device)
    if device.type == "cpu":
        torch.default_generator.manual_seed(seed)
        return
    mod = getattr(torch, device.type)
    gens = getattr(mod, "default_generators", None)
    if gens:
        gens[device.index if device.index is not None else mod.current_device()].manual_seed(seed)
    else:  # pragma: no cover - e.g. mps: one global generator
        mod.manual_seed(seed)


@contextmanager
def forked_rng(device: torch.device | str | None = None, *, enabled: bool = True) -> Iterator[None]:
    """Run the block with the global RNG state of the CPU (and ``device``) restored on exit."""
    device = _as_device(device)
    if not enabled or device.type == "cpu":
        with torch.random.fork_rng(devices=[], enabled=enabled):
            yield
        return
    mod = getattr(torch, device.type)  # pragma: no cover - needs an accelerator
    index = device.index if device.index is not None else mod.current_device()  # pragma: no cover
    with torch.random.fork_rng(devices=[index], device_type=device.type):  # pragma: no cover
        yield


def generator(seed: int, device: torch.device | str | None = None) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``."""
    return torch.Generator(device=_as_device(device)).manual_seed(int(seed))
