"""Plain-data results, written atomically and read back validated, so a run resumes safely.

A run directory holds ``config.json``, one ``parts/<method>.json`` per finished method (written
with a temporary file and ``os.replace``), the cached networks in ``models/`` and, once all parts
exist, ``results.json`` (every part merged), ``results.csv`` and the report.

Everything netuq reads back from a run folder is checked before it is used: :func:`read_json`
(valid strict JSON of the expected type), :func:`load_checkpoint` (a ``weights_only`` checkpoint
holding a state dict), :meth:`RunDir.has_part` (a part counts as finished only when its content
is a valid method result). Every failure is a ``ValueError`` whose message starts with the file.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from .._files import atomic_write_json as _atomic_write_json
from ..results.plain import to_plain
from ..results.schema import validate_results

__all__ = ["atomic_write_json", "read_json", "load_checkpoint", "to_plain", "validate_part", "RunDir"]

_PART_KEYS = ("metrics", "in_distribution")  # every finished method result has both (evaluate_method writes them)


def atomic_write_json(path: Path, data: Any) -> None:
    """Write ``data`` (made plain by :func:`to_plain`) as JSON to ``path`` atomically (:mod:`netuq._files`)."""
    _atomic_write_json(path, to_plain(data))


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _reject_constant(name: str):
    raise ValueError(f"{name} is not allowed (netuq writes strict JSON)")


_TYPE_NAMES = {dict: "a JSON object", list: "a JSON array", str: "a JSON string", bool: "a JSON boolean",
               type(None): "null"}


def read_json(path: str | Path, expect: type | None = dict) -> Any:
    """Read a JSON file netuq wrote, checking it is strict JSON holding an ``expect`` (None: anything).

    Raises:
        ValueError: starting with the file: missing, unreadable, not UTF-8, not valid JSON (also
            NaN / Infinity, or nested too deeply), or not of type ``expect``.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "x.json")
        >>> _ = open(path, "w").write("[1, 2]")
        >>> read_json(path, expect=None)
        [1, 2]
        >>> read_json(path)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: ...x.json must hold a JSON object, got a JSON array
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not valid JSON (not UTF-8 text: {err.reason})") from None
    except OSError as err:
        raise ValueError(f"{path} cannot be read ({err.strerror or _first_line(err)})") from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    except ValueError as err:  # NaN / Infinity
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    except RecursionError:
        raise ValueError(f"{path} is not valid JSON (nested too deeply)") from None
    if expect is not None and not isinstance(data, expect):
        want = _TYPE_NAMES.get(expect, f"a JSON {expect.__name__}")
        found = _TYPE_NAMES.get(type(data), f"a JSON number ({data!r})")
        raise ValueError(f"{path} must hold {want}, got {found}")
    return data


def load_checkpoint(path: str | Path, *, into=None) -> dict:
    """Read a state dict saved with ``torch.save(model.state_dict(), path)``, safely and validated.

    The file is read with ``torch.load(weights_only=True)`` on the CPU (no arbitrary unpickling; see
    :func:`netuq.io.torch_load`), and must hold a
    mapping of parameter names to tensors. With ``into`` (an ``nn.Module``), the state dict is also
    loaded into it (strict: same keys and shapes).

    Args:
        path: the checkpoint file.
        into: optional module to load the weights into.

    Returns:
        The state dict.

    Raises:
        ValueError: starting with the file, for every failure: missing, truncated, foreign or
            malicious pickle, not a state dict, or not matching ``into``.

    Example:
        >>> import tempfile, os, torch
        >>> path = os.path.join(tempfile.mkdtemp(), "m.pt")
        >>> torch.save(torch.nn.Linear(2, 1).state_dict(), path)
        >>> sorted(load_checkpoint(path, into=torch.nn.Linear(2, 1)))
        ['bias', 'weight']
    """
    import torch

    from ..io import torch_load

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    state = torch_load(path)  # on the CPU; load_state_dict copies to the module's device
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise ValueError(f"{path} is not a state dict (expected names mapped to tensors, got {type(state).__name__})")
    if into is not None:
        try:
            into.load_state_dict(state)
        except (RuntimeError, ValueError, KeyError) as err:
            lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
            why = lines[1] if len(lines) > 1 and lines[0].startswith("Error(s) in loading") else _first_line(err)
            raise ValueError(f"{path} does not fit {type(into).__name__} ({why})") from None
    return state


def validate_part(data: Any, name: str = "method") -> dict:
    """Check that ``data`` is a finished method result (``MethodResults`` of :mod:`netuq.results.schema`).

    Beyond the schema's rules, a finished part has non-empty ``metrics`` and ``in_distribution``.

    Raises:
        ValueError: naming the first problem.
    """
    if not isinstance(data, dict):
        raise ValueError(f"a method result must be a JSON object, got {type(data).__name__}")
    missing = [k for k in _PART_KEYS if not isinstance(data.get(k), dict) or not data[k]]
    if missing:
        raise ValueError(f"a finished method result needs non-empty {' and '.join(map(repr, missing))}")
    validate_results({"task": "classification", "methods": {name: data}})
    return data


class RunDir:
    """The files of one benchmark run."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._warned: set[Path] = set()

    @property
    def parts(self) -> Path:
        return self.root / "parts"

    @property
    def models(self) -> Path:
        return self.root / "models"

    def part_path(self, name: str) -> Path:
        return self.parts / f"{name}.json"

    def _part_problem(self, name: str) -> str | None:
        try:
            validate_part(read_json(self.part_path(name)), name)
        except ValueError as err:
            return _first_line(err)
        return None

    def has_part(self, name: str) -> bool:
        """Whether ``parts/<name>.json`` holds a finished, valid result.

        A part that exists but is unreadable or invalid (e.g. ``{}``) is not finished: a warning
        names it (once), and the method is recomputed and the file replaced.
        """
        path = self.part_path(name)
        if not path.exists():
            return False
        problem = self._part_problem(name)
        if problem is None:
            return True
        if path not in self._warned:
            self._warned.add(path)
            warnings.warn(f"{path} is not a finished result ({problem}); recomputing {name}", RuntimeWarning,
                          stacklevel=2)
        return False

    def read_part(self, name: str) -> dict[str, Any]:
        """The validated content of ``parts/<name>.json`` (ValueError naming the file otherwise)."""
        path = self.part_path(name)
        data = read_json(path)
        try:
            return validate_part(data, name)
        except ValueError as err:
            raise ValueError(f"{path} is not a finished result ({_first_line(err)})") from None

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

    def check_files(self) -> None:
        """Validate what a rerun would read back: ``config.json`` and the cached ``models/*.pt``.

        Parts are checked by :meth:`has_part` (an invalid part is recomputed). The ensemble's own
        folder (``models/ensemble/``) is checked by :meth:`netuq.Ensemble.load` when it is read.

        Raises:
            ValueError: starting with the offending file.
        """
        config = self.root / "config.json"
        if config.exists():
            read_json(config)
        if self.models.is_dir():
            for path in sorted(self.models.glob("*.pt")):
                try:
                    load_checkpoint(path)
                except ValueError as err:
                    raise ValueError(f"{_first_line(err)}; delete it to retrain that network") from None
