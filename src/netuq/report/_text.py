"""Display names and number formatting shared by every part of the report (no layout here)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from .. import scores as vocabulary
from ..calibration import registry
from ..traits import family_label
from .plots import METRIC_LABELS
from .schema import HIGHER_IS_BETTER

__all__ = [
    "method_label", "cal_label", "score_label", "is_aleatoric", "changes_prediction", "metric_label", "column_label",
    "fmt", "fmt_stat", "sd",
    "best_indices", "n_seeds", "seed_results", "is_quick", "QUICK_NOTE",
]

QUICK_NOTE = "quick run: numbers are not meaningful (smoke test)"


def method_label(results: Mapping, name: str) -> str:
    """The display name of a method: its ``label`` in the results, else its family's label (its
    ``traits``, else its key read as a family: results written before traits)."""
    m = results["methods"].get(name) or {}
    if m.get("label"):
        return str(m["label"])
    return family_label(str((m.get("traits") or {}).get("family") or name))


def _vocab(results: Mapping | None, kind: str, name: str) -> Mapping:
    """What the results say about a score or calibrator (``results["vocabulary"]``), else {}."""
    return (((results or {}).get("vocabulary") or {}).get(kind) or {}).get(name) or {}


def cal_label(cal: str, results: Mapping | None = None) -> str:
    """A calibration's display name: from the results' vocabulary, else the registry (read now)."""
    return str(_vocab(results, "calibrators", cal).get("label") or registry.label(cal))


def changes_prediction(cal: str, results: Mapping | None = None) -> bool | None:
    """Whether a calibration can change the predicted class (None: unknown)."""
    said = _vocab(results, "calibrators", cal).get("changes_prediction")
    return bool(said) if said is not None else registry.changes_prediction(cal)


def score_label(score: str, results: Mapping | None = None) -> str:
    """A score's display name: from the results' vocabulary, else :mod:`netuq.scores` (read now)."""
    return str(_vocab(results, "scores", score).get("label") or vocabulary.score_label(score))


def is_aleatoric(score: str, results: Mapping | None = None) -> bool:
    """Whether a score measures noise in the data (shown, never ranked as an OOD detector)."""
    kind = _vocab(results, "scores", score).get("kind")
    if kind is None:
        known = vocabulary.SCORES.get(score)
        kind = known.kind if known is not None else "total"
    return kind == "aleatoric"


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, str(metric).replace("_", " "))


def column_label(metric: str) -> str:
    """``"NLL ↓"``, ``"AUROC ↑"``: a metric name with the direction that is better."""
    return metric_label(metric) + (" ↑" if metric in HIGHER_IS_BETTER else " ↓")


def fmt(value: Any, digits: int = 3, *, sci: bool = True) -> str:
    """A number for a table: ``digits`` decimals (tiny values in scientific notation when ``sci``)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, (bool, int)):
        return str(value)
    if isinstance(value, float):
        if sci and value != 0 and abs(value) < 10**-digits:
            return f"{value:.1e}"
        return f"{value:.{digits}f}"
    return str(value)


def fmt_stat(mean: Any, std: Any = None) -> str:
    """``"0.420 ± 0.010"`` (or ``"0.420"`` without a spread, ``"—"`` without a mean)."""
    if isinstance(mean, Mapping):
        mean, std = mean.get("mean"), mean.get("std")
    if mean is None:
        return "—"
    return fmt(mean) + ("" if std is None else f" ± {fmt(std)}")


def sd(values: Sequence[float | None] | None) -> float | None:
    """Sample standard deviation (n − 1) of the non-null values; ``None`` for fewer than two."""
    vals = [float(v) for v in (values or []) if v is not None]
    return statistics.stdev(vals) if len(vals) >= 2 else None


def best_indices(values: Sequence[float | None], metric: str) -> set[int]:
    """Indices of the best value(s) of a column (ties included); none when fewer than two values."""
    present = [(i, v) for i, v in enumerate(values) if v is not None]
    if len(present) < 2:
        return set()
    pick = max if metric in HIGHER_IS_BETTER else min
    best = pick(v for _, v in present)
    return {i for i, v in present if abs(v - best) <= 1e-12 * max(1.0, abs(best))}


def seed_results(results: Mapping) -> list[Mapping]:
    """Every seed's own results (``results["seeds"]`` values in order), or ``[results]`` for one seed."""
    seeds = results.get("seeds")
    if isinstance(seeds, Mapping) and seeds:
        return list(seeds.values())
    return [results]


def n_seeds(results: Mapping) -> int:
    seeds = results.get("seeds")
    return len(seeds) if isinstance(seeds, Mapping) and seeds else 1


def is_quick(results: Mapping) -> bool:
    return bool((results.get("config") or {}).get("quick") is True)
