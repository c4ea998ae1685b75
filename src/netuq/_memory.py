"""How much memory this process may still use, and refusing a job that needs more before it starts.

:func:`available_memory` reads, on Linux, ``MemAvailable`` from ``/proc/meminfo`` and the cgroup
(v2, then v1) limit minus current usage, taking the smaller; elsewhere the free physical pages
(``os.sysconf``). No third-party package (psutil) is needed. :func:`check_fit_memory` compares a
calibrator's own estimate (``cls.memory_needed(n, C)``) with it and raises
:class:`~netuq.exceptions.NotEnoughMemoryError` — one line naming the size, the need and what is
available — before any work.
"""

from __future__ import annotations

import os
from pathlib import Path

from .exceptions import NotEnoughMemoryError

__all__ = ["available_memory", "check_fit_memory"]

_GiB = float(1 << 30)


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_available() -> int | None:
    v1 = "/sys/fs/cgroup/memory/memory."
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         (v1 + "limit_in_bytes", v1 + "usage_in_bytes")):
        top, used = _read_int(limit), _read_int(usage)
        if top is not None and used is not None and top < (1 << 60):
            return max(0, top - used)
    return None


def available_memory() -> int | None:
    """Bytes this process can still allocate without swapping or being killed, or None if unknown.

    Example:
        >>> m = available_memory()
        >>> m is None or m > 0
        True
    """
    found = [v for v in (_meminfo_available(), _cgroup_available()) if v is not None]
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return None
    return min(found)


def check_fit_memory(cls, n_samples: int, num_classes: int, *, available: int | None = None, **kwargs) -> int:
    """Raise NotEnoughMemoryError if ``cls.memory_needed(n_samples, num_classes)`` exceeds what is available.

    Args:
        cls: a calibrator class with ``memory_needed(n_samples, num_classes, **kwargs)`` (bytes).
        n_samples, num_classes: the fit's size (N rows or pixels, C classes).
        available: bytes available (default: :func:`available_memory`).

    Returns:
        The bytes needed.

    Example:
        >>> from netuq.calibration import MatrixScaling
        >>> check_fit_memory(MatrixScaling, 100, 10, available=10**9) > 0
        True
        >>> check_fit_memory(MatrixScaling, 50_000, 20_000, available=10**9)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        netuq.exceptions.NotEnoughMemoryError: MatrixScaling on 50000 x 20000 logits needs about 1...
    """
    need = int(cls.memory_needed(n_samples, num_classes, **kwargs))
    avail = available_memory() if available is None else available
    if avail is not None and need > avail:
        raise NotEnoughMemoryError(
            f"{cls.__name__} on {n_samples} x {num_classes} logits needs about {need / _GiB:.1f} GiB, but only "
            f"{avail / _GiB:.1f} GiB of memory is available: use fewer samples (max_samples) or a calibrator "
            "with fewer parameters (e.g. vector or temperature scaling)"
        )
    return need
