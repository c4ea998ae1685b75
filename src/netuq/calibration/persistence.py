"""The calibrator JSON file: :func:`save` and :func:`load` for every registered calibrator.

The format (``"format": "netuq-calibrator"``, ``"format_version": 1``) is one JSON object::

    {"format", "format_version", "class": "TemperatureScaling" | ..., "params": {constructor
     arguments}, "num_classes": C, "fitted": {parameter: number or nested list}, "fit_info": {...}}

``load`` looks the class up in :data:`~netuq.calibration.CALIBRATORS` and lets the class say which
parameters, shapes and fit information it has; every value is checked with the rules the fit
itself obeys (types, finiteness, shapes, bounds), and every problem is a ValueError that names
the file and the key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .base import FORMAT, FORMAT_VERSION, Calibrator
from .registry import CALIBRATORS

__all__ = ["save", "load"]

_TOP_KEYS = ("format", "format_version", "class", "params", "num_classes", "fitted", "fit_info")


def save(calibrator: Calibrator, path: str | Path) -> Path:
    """Write ``calibrator.to_dict()`` to ``path`` as JSON through a temporary file and a rename
    (:meth:`Calibrator.save`, which owns the writing)."""
    if not isinstance(calibrator, Calibrator):
        raise TypeError(f"`calibrator` must be a netuq Calibrator, got {type(calibrator).__name__}")
    return calibrator.save(path)


def _number_array(value: Any, shape: tuple[int | None, ...], key: str, num_classes: int) -> torch.Tensor:
    """``value`` as a float64 tensor of ``shape`` after checking it is nested lists of numbers.

    A ``None`` length (breakpoints whose number the fit chose) accepts a list of any length.
    """

    def walk(v, dims):
        if not dims:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"`{key}` must hold numbers, got {type(v).__name__} {_short(v)}")
            return float(v)
        if not isinstance(v, list) or (dims[0] is not None and len(v) != dims[0]):
            raise ValueError(f"`{key}` must have shape {shape} for num_classes={num_classes}, got {_short(value)}")
        return [walk(x, dims[1:]) for x in v]

    return torch.tensor(walk(value, shape), dtype=torch.float64)


def _short(value: Any) -> str:
    try:
        text = repr(value)
    except RecursionError:
        return "a deeply nested value"
    return text if len(text) <= 60 else text[:57] + "..."


def load(path: str | Path) -> Calibrator:
    """Read a calibrator written by :meth:`Calibrator.save`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not valid JSON, not a netuq calibrator, or one of its values is not
            one the calibrator's fit could have produced (the message names the file and the key).

    Example:
        >>> import tempfile, os
        >>> from netuq.calibration import VectorScaling
        >>> vs = VectorScaling().fit(torch.randn(50, 3, generator=torch.Generator().manual_seed(0)),
        ...                          torch.arange(50) % 3)
        >>> path = vs.save(os.path.join(tempfile.mkdtemp(), "vs.json"))
        >>> torch.equal(load(path).weight_, vs.weight_)
        True
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"no such calibrator file: {path}") from None
    except (UnicodeDecodeError, OSError) as err:
        raise ValueError(f"{path}: cannot read calibrator file ({err})") from err

    def bad(problem: str) -> ValueError:
        return ValueError(f"{path}: not a valid netuq calibrator file: {problem}")

    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise bad(f"invalid JSON ({err})") from err
    except RecursionError:
        raise bad("JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise bad(f"expected a JSON object, got {type(data).__name__}")
    if data.get("format") != FORMAT:
        raise bad(f'missing "format": "{FORMAT}"')
    if data.get("format_version") != FORMAT_VERSION:
        raise bad(f"unsupported format_version {data.get('format_version')!r} (this netuq reads {FORMAT_VERSION})")
    for key in _TOP_KEYS:
        if key not in data:
            raise bad(f"missing key {key!r}")
    extra = sorted(set(data) - set(_TOP_KEYS))
    if extra:
        raise bad(f"unknown key(s) {extra}")
    classes = {cls.__name__: cls for cls in CALIBRATORS.values()}
    name = data["class"]
    if not isinstance(name, str) or name not in classes:
        raise bad(f"unknown class {name!r} (expected one of {sorted(classes)})")
    cls = classes[name]
    C = data["num_classes"]
    if isinstance(C, bool) or not isinstance(C, int) or C < 2:
        raise bad(f"num_classes must be an integer >= 2, got {C!r}")
    params, fitted, info = data["params"], data["fitted"], data["fit_info"]
    for key, value in (("params", params), ("fitted", fitted), ("fit_info", info)):
        if not isinstance(value, dict):
            raise bad(f"`{key}` must be a JSON object, got {type(value).__name__}")
    unknown = set(params) - set(cls._param_names)
    if unknown:
        raise bad(f"unknown parameter(s) {sorted(unknown)} for {name}")
    missing = [k for k in cls._param_names if k not in params and k not in cls._params_added]
    if missing:
        raise bad(f"missing parameter(s) {missing} for {name}")
    kwargs = {k: cls._params_added[k] for k in cls._params_added if k not in params}
    try:
        kwargs.update({k: cls._param_from_json(k, v) for k, v in params.items()})
        obj = cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise bad(f"bad parameters for {name}: {err}") from err

    shapes = obj._fitted_shapes(C)
    expected = {attr.rstrip("_") for attr in shapes}
    for key in sorted(expected - set(fitted)):
        raise bad(f"missing fitted parameter {key!r}")
    for key in sorted(set(fitted) - expected):
        raise bad(f"unknown fitted parameter {key!r} for {name}")
    for attr, shape in shapes.items():
        key = attr.rstrip("_")
        try:
            tensor = _number_array(fitted[key], shape, key, C)
        except ValueError as err:
            raise bad(f"fitted.{key}: {err}") from None
        if not bool(torch.isfinite(tensor).all()):
            raise bad(f"fitted.{key}: `{key}` must be finite")
        setattr(obj, attr, float(tensor) if shape == () else tensor)

    allowed = {attr.rstrip("_"): attr for attr in cls._info_names}
    unknown = sorted(set(info) - set(allowed))
    if unknown:
        raise bad(f"unknown fit_info key(s) {unknown} for {name}")
    for key, value in info.items():
        try:
            setattr(obj, allowed[key], obj._info_from_json(allowed[key], value))
        except ValueError as err:
            raise bad(f"fit_info.{key} {err}") from None
    obj.num_classes_ = C
    problem = obj._check_fitted_values()
    if problem is not None:
        raise bad(f"fitted: {problem}")
    return obj
