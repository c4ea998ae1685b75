"""Plain-data results, written atomically so an interrupted run resumes where it stopped.

A run directory holds ``config.json``, one ``parts/<method>.json`` per finished method (written
with a temporary file and ``os.replace``), and, once all parts exist, ``results.json`` (every
part merged), ``results.csv`` and the report.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_json", "read_json", "to_plain", "RunDir"]


def to_plain(obj: Any) -> Any:
    """Tensors/arrays to lists, numpy scalars to floats, NaN/Inf to None (JSON has no NaN)."""
    try:
        import torch

        if isinstance(obj, torch.Tensor):
            return to_plain(obj.detach().cpu().tolist())
    except ImportError:  # pragma: no cover
        pass
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return to_plain(obj.to_dict())
    if hasattr(obj, "tolist") and callable(obj.tolist):
        return to_plain(obj.tolist())
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (int, str, bool)) or obj is None:
        return obj
    if hasattr(obj, "item"):
        return to_plain(obj.item())
    return str(obj)


def atomic_write_json(path: Path, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(to_plain(data), fh, indent=1, allow_nan=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_json(path: Path) -> Any:
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError as err:
        raise ValueError(f"{path} does not exist") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from err


class RunDir:
    """The files of one benchmark run."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def parts(self) -> Path:
        return self.root / "parts"

    def part_path(self, name: str) -> Path:
        return self.parts / f"{name}.json"

    def has_part(self, name: str) -> bool:
        return self.part_path(name).exists()

    def read_part(self, name: str) -> dict[str, Any]:
        return read_json(self.part_path(name))

    def write_part(self, name: str, data: dict[str, Any]) -> None:
        atomic_write_json(self.part_path(name), data)

    def check_config(self, config: dict[str, Any]) -> None:
        """Store the config, or check it matches the one a previous (interrupted) run stored."""
        path = self.root / "config.json"
        if path.exists():
            old = read_json(path)
            keys = sorted(k for k in set(old) | set(config) if k not in ("device",) and old.get(k) != config.get(k))
            if keys:
                raise ValueError(
                    f"`--out` {self.root} holds a run with a different configuration (differs in {keys}); "
                    "use another --out folder or delete it"
                )
        else:
            atomic_write_json(path, config)
