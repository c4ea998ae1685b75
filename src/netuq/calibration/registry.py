"""The calibrator vocabulary: :data:`CALIBRATORS` (name → class) and what is read from it at call time.

A :class:`~netuq.calibration.Calibrator` subclass with a ``name`` registers itself when its class
statement runs — in netuq or in a user's script after ``import netuq``. Everything that lists
calibrators (``netuq.compare``'s choices, the benchmark's configuration, ``netuq calibrate
--method``, the report's order and labels, ``calibration.load``) calls the functions below when
it needs them; nothing copies the registry at import.

Each class declares its display ``label``, its display ``order`` and ``changes_prediction``
(whether it can change the predicted class — temperature scaling cannot, vector and matrix
scaling can; the report says so).

Example:
    >>> from netuq.calibration import registry
    >>> registry.names()
    ('none', 'temperature', 'vector', 'matrix', 'histogram', 'isotonic')
    >>> registry.label("temperature"), registry.changes_prediction("vector")
    ('temperature scaling', True)
"""

from __future__ import annotations

from typing import Any

__all__ = ["CALIBRATORS", "NONE", "unregister", "names", "label", "changes_prediction", "make", "describe"]

#: name → calibrator class, filled by the classes themselves (``Calibrator.__init_subclass__``).
CALIBRATORS: dict[str, type] = {}

#: the name of "no calibration" (``"uncalibrated"`` is accepted in results written before it).
NONE = "none"
_NONE_NAMES = (NONE, "uncalibrated")


def _ordered() -> list[type]:
    classes = list(CALIBRATORS.values())
    return sorted(classes, key=lambda c: (getattr(c, "order", 100), classes.index(c)))


def unregister(name: str) -> type:
    """Remove a calibrator class by name (returns it): for tests and scripts that define temporary ones."""
    if name not in CALIBRATORS:
        raise ValueError(f"`name` must be a registered calibrator, one of {list(CALIBRATORS)}, got {name!r}")
    return CALIBRATORS.pop(name)


def names(*, none: bool = True) -> tuple[str, ...]:
    """Every registered calibrator name in display order, after ``"none"`` unless ``none=False``."""
    return ((NONE,) if none else ()) + tuple(c.name for c in _ordered())


def label(name: str) -> str:
    """Display label: the class's ``label``; ``"uncalibrated"`` for none; else the name with spaces."""
    if name in _NONE_NAMES:
        return "uncalibrated"
    cls = CALIBRATORS.get(name)
    text = getattr(cls, "label", None) if cls is not None else None
    return text or str(name).replace("_", " ")


def changes_prediction(name: str) -> bool | None:
    """Whether the calibrator can change the predicted class (None: unknown name)."""
    if name in _NONE_NAMES:
        return False
    cls = CALIBRATORS.get(name)
    return None if cls is None else bool(getattr(cls, "changes_prediction", True))


def make(name: str) -> Any:
    """A fresh calibrator of ``name`` in its recommended configuration (``CALIBRATORS[name]()``)."""
    if name not in CALIBRATORS:
        raise ValueError(f"`calibrator` must be one of {list(names(none=False))}, got {name!r}")
    return CALIBRATORS[name]()


def describe(selected=None) -> dict[str, dict[str, Any]]:
    """Plain data for the results: ``{name: {"label", "changes_prediction"}}`` (``"none"`` included)."""
    chosen = names() if selected is None else tuple(selected)
    return {n: {"label": label(n), "changes_prediction": changes_prediction(n)} for n in chosen}


def order_key(name: str) -> tuple[int, int]:
    """Sort key of a calibration name in display order (none first, unknown names last)."""
    if name in _NONE_NAMES:
        return (0, 0)
    ordered = names(none=False)
    return (1, ordered.index(name)) if name in ordered else (2, 0)
