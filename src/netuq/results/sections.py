"""Result sections: how a family of numbers (conformal sets, an OOD detector, ...) joins the results.

A :class:`Section` declares, in one module, everything the results contract needs about one key
of ``MethodResults`` (``results["methods"][METHOD][key]``):

* ``start(ctx) -> Pass | None``: ``netuq.compare`` calls it once per method with a
  :class:`Context` (the method, its traits and predictor, the options, the calibration
  sample, a way to stream other loaders); the returned :class:`Pass` sees every test batch
  (``update(batch, pred, scores)``) and gives the section's plain-data value at the end
  (``finish(part)``, reading the method's other numbers in ``part``; None leaves the key out).
  None from ``start``: the section does not apply to this method.
* ``validate(value, path)``: raise ValueError naming ``path`` when ``value`` breaks the
  section's layout (``validate_results`` calls it for every method holding the key);
* ``aggregate(values) -> value``: combine the per-seed values (default: seed 0's);
* ``render(results) -> list`` of :mod:`netuq.report.model` blocks (the report adds a section
  titled ``title`` when the list is not empty).

:data:`SECTIONS` is read when it is needed (a section registered in a user's script after
``import netuq`` is used by ``compare``, the validation and the report). ``compare(...,
sections={name: options})`` picks sections and passes ``options`` to ``start`` via ``ctx.options``.

Example:
    >>> import torch, netuq
    >>> from netuq.results.sections import Section, register, unregister
    >>> class Count:
    ...     def __init__(self): self.n = 0
    ...     def update(self, batch, pred, scores): self.n += len(pred)
    ...     def finish(self, part): return {"n": self.n}
    >>> _ = register(Section("my_count", "Examples seen", start=lambda ctx: Count()))
    >>> net = torch.nn.Linear(4, 2)
    >>> x = torch.randn(32, 4); y = (x[:, 0] > 0).long()
    >>> res = netuq.compare({"plain": net}, [(x[:16], y[:16]), (x[16:], y[16:])], repeats=1)
    >>> res["methods"]["plain"]["my_count"]
    {'n': 32}
    >>> _ = unregister("my_count")
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["Section", "Pass", "Context", "SECTIONS", "register", "unregister"]

_RESERVED = frozenset({
    "label", "traits", "metrics", "in_distribution", "temperature", "reliability", "risk_coverage",
    "misclassification", "shift", "ood", "ood_hist", "roc", "segmentation_examples", "runtime_s", "ood_kinds",
    "counts", "seed_values", "warnings", "members", "method", "per_class", "ood_kinds_hist", "ood_kinds_roc",
    # ids of the report's own sections
    "summary", "how_to_read", "findings", "calibration", "selective", "segmentation", "run", "per-class",
})


class Pass(Protocol):
    """One method's pass over the test batches."""

    def update(self, batch: Any, pred: Any, scores: Mapping[str, Any]) -> None: ...

    def finish(self, part: Mapping[str, Any]) -> Any: ...


@dataclass
class Context:
    """What a section's ``start`` may read about the method being scored.

    Attributes:
        name: the method's key in ``results["methods"]``.
        method: the method itself; ``traits``: its :class:`netuq.traits.Traits`.
        predictor: ``x -> Prediction`` (seeded as compare runs it).
        options: this section's options (``compare(sections={key: options})``).
        config: compare's options (ignore_index, n_bins, seed, max_pixels, ...), read-only.
        calibration: ``(logits (M, C), labels (M,))`` sampled from the calibration loader, or None.
        stream: ``stream(loader, name) -> iterator of (batch, pred)``: run the method on another
            loader the way compare does (device, keys, seed, distributed).
    """

    name: str
    method: Any
    traits: Any
    predictor: Callable[[Any], Any]
    options: Mapping[str, Any]
    config: Mapping[str, Any]
    calibration: tuple[Any, Any] | None = None
    stream: Callable[[Any, str], Iterator[tuple[Any, Any]]] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Section:
    """One section of the results (see the module docstring).

    Attributes:
        key: the ``MethodResults`` key it writes.
        title: heading in the report.
        start: ``Context -> Pass | None`` (None: compare does not compute it; results from elsewhere
            may still hold it).
        validate: ``(value, path) -> None``, raising ValueError naming ``path``.
        aggregate: ``list of per-seed values -> value`` (None: seed 0's value).
        render: ``results -> list of report blocks`` (None: the report shows nothing for it).
        default: whether ``compare`` runs it when ``sections`` is not given.
    """

    key: str
    title: str
    start: Callable[[Context], Pass | None] | None = None
    validate: Callable[[Any, str], None] | None = None
    aggregate: Callable[[list], Any] | None = None
    render: Callable[[Mapping[str, Any]], list] | None = None
    default: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key.isidentifier():
            raise ValueError(f"`key` must be an identifier, got {self.key!r}")
        if self.key in _RESERVED:
            raise ValueError(f"`key` {self.key!r} is a built-in MethodResults key; choose another")
        for attr in ("start", "validate", "aggregate", "render"):
            value = getattr(self, attr)
            if value is not None and not callable(value):
                raise TypeError(f"`{attr}` must be callable or None, got {type(value).__name__}")


#: key → Section, in display order.
SECTIONS: dict[str, Section] = {}


def register(section: Section, *, replace: bool = False) -> Section:
    """Add ``section`` to :data:`SECTIONS`; returns it."""
    if not isinstance(section, Section):
        raise TypeError(f"`section` must be a netuq.results.sections.Section, got {type(section).__name__}")
    if section.key in SECTIONS and not replace:
        raise ValueError(f"section {section.key!r} is already registered; pass replace=True")
    SECTIONS[section.key] = section
    return section


def unregister(key: str) -> Section:
    """Remove a section by key (returns it)."""
    if key not in SECTIONS:
        raise ValueError(f"`key` must be a registered section, one of {list(SECTIONS)}, got {key!r}")
    return SECTIONS.pop(key)


def selected(choice: Any) -> dict[str, Mapping[str, Any]]:
    """``compare``'s ``sections`` argument as ``{key: options}`` (None: every default section)."""
    if choice is None:
        return {k: {} for k, s in list(SECTIONS.items()) if s.default}
    if isinstance(choice, str):
        raise TypeError(f"`sections` must be a list of section keys or a dict key -> options, got {choice!r}")
    items = choice.items() if isinstance(choice, Mapping) else ((k, {}) for k in choice)
    out: dict[str, Mapping[str, Any]] = {}
    for key, options in items:
        if key not in SECTIONS:
            raise ValueError(f"`sections` must name registered sections, one of {list(SECTIONS)}, got {key!r}")
        if not isinstance(options, Mapping):
            raise TypeError(f"`sections[{key!r}]` must be a dict of options, got {type(options).__name__}")
        out[key] = options
    return out
