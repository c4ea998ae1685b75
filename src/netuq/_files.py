"""Writing files safely: the one atomic writer every part of netuq uses.

A reader (or a rerun after a crash) sees either the old file, no file, or the complete new one:
data go to a temporary file in the target's folder, are flushed and ``fsync``-ed, and the
temporary file is renamed over the target with ``os.replace``. ``os.replace`` replaces a symlink
itself, never the file it points to, so writing ``RUN_DIR/report.md`` can never overwrite a file
outside the run folder. :func:`inside` checks that a path built from parts stays in its root.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "inside"]


def inside(root: str | Path, *parts: str | Path) -> Path:
    """``root / parts`` after checking it does not leave ``root`` (``..``, absolute parts, symlinked folders).

    Raises:
        ValueError: naming the path, when it resolves outside ``root``.
    """
    root = Path(root)
    path = root.joinpath(*parts)
    real_root = root.resolve()
    real_parent = path.parent.resolve()
    if real_parent != real_root and real_root not in real_parent.parents:
        raise ValueError(f"{path} is outside the folder {root}")
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(fh)`` on a temporary binary file next to ``path``, then rename it to ``path``.

    The folder is created if needed. On any error (also KeyboardInterrupt) the temporary file is
    removed and ``path`` is left as it was. If ``path`` is a symlink, the link is replaced by a
    regular file; its target is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a written file gets the usual mode
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any, *, indent: int | None = 1) -> None:
    """Write ``data`` as strict JSON (no NaN / inf) to ``path`` atomically."""
    atomic_write_text(path, json.dumps(data, indent=indent, allow_nan=False))
