"""The rows behind the report's tables, read from a results dict (no formatting, no layout).

One place decides which entries exist (method x calibration, method x score, shift averages), so
the summary, the findings, the HTML and Markdown tables and results.csv agree on them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..calibration import registry
from ._text import sd

__all__ = [
    "MAIN_METRICS", "OOD_METRICS", "SHIFT_METRICS", "calibrations", "main_table",
    "score_rows", "kind_rows", "shift_means", "shift_stats", "class_names", "per_class_rows", "best_method",
]

MAIN_METRICS = ("nll", "ece", "brier", "accuracy")
OOD_METRICS = ("auroc", "aupr", "fpr95")
SHIFT_METRICS = ("accuracy", "ece", "nll", "ece_temperature")


def calibrations(results: Mapping) -> list[str]:
    """The calibrations present in any method, in display order."""
    seen: list[str] = []
    for m in results["methods"].values():
        for cal in m.get("in_distribution") or {}:
            if cal not in seen:
                seen.append(cal)
    return sorted(seen, key=lambda c: (registry.order_key(c), seen.index(c)))  # the registry's order, read now


def main_table(results: Mapping) -> list[dict[str, Any]]:
    """Rows of the main table: one per method x calibration, in display order.

    Each row: ``{"method", "calibration", METRIC: Stat or None}`` for NLL, ECE, Brier and
    accuracy (``Stat`` as in the schema: ``mean``, ``std`` and, for several seeds, ``values``).

    Example:
        >>> from netuq.report.schema import example_results
        >>> rows = main_table(example_results(methods=("ensemble",)))
        >>> [(r["method"], r["calibration"]) for r in rows]
        [('ensemble', 'none'), ('ensemble', 'temperature')]
    """
    rows = []
    cals = calibrations(results)
    for name, m in results["methods"].items():
        stats = m.get("in_distribution") or {}
        for cal in cals:
            if cal in stats:
                rows.append({"method": name, "calibration": cal, **{k: stats[cal].get(k) for k in MAIN_METRICS}})
    return rows


def _with_spread(mean: Any, values: Any) -> dict[str, Any]:
    vals = list(values) if isinstance(values, (list, tuple)) else None
    return {"mean": mean, "std": sd(vals), "values": vals}


def score_rows(results: Mapping, key: str = "ood") -> list[dict[str, Any]]:
    """One row per method x score of ``key`` (``"ood"`` or ``"misclassification"``).

    Each row: ``{"method", "score", METRIC: {"mean", "std", "values"}}``; ``std`` is the sd over
    seeds (``None`` for one seed) and ``values`` the per-seed numbers (``None`` for one seed).
    """
    rows = []
    for name, m in results["methods"].items():
        per_seed = ((m.get("seed_values") or {}).get(key)) or {}
        for score, vals in (m.get(key) or {}).items():
            row: dict[str, Any] = {"method": name, "score": score}
            for metric, v in vals.items():
                row[metric] = _with_spread(v, (per_seed.get(score) or {}).get(metric))
            rows.append(row)
    return rows


def kind_rows(results: Mapping) -> tuple[list[str], list[dict[str, Any]]]:
    """OOD per kind: (kinds, rows ``{"method", "score", KIND: {"mean", "std", "values"} of AUROC}``)."""
    kinds: list[str] = []
    for m in results["methods"].values():
        kinds += [k for k in (m.get("ood_kinds") or {}) if k not in kinds]
    rows = []
    for name, m in results["methods"].items():
        per_kind = m.get("ood_kinds") or {}
        per_seed = (m.get("seed_values") or {}).get("ood_kinds") or {}
        scores: list[str] = []
        for k in kinds:
            scores += [s for s in per_kind.get(k) or {} if s not in scores]
        for score in scores:
            row: dict[str, Any] = {"method": name, "score": score}
            for k in kinds:
                mean = ((per_kind.get(k) or {}).get(score) or {}).get("auroc")
                vals = ((per_seed.get(k) or {}).get(score) or {}).get("auroc")
                row[k] = _with_spread(mean, vals)
            rows.append(row)
    return kinds, rows


def _shift_means_one(methods: Mapping) -> dict[str, dict[str, float]]:
    out = {}
    for name, m in methods.items():
        rows = [r for rs in (m.get("shift") or {}).values() for r in rs if r.get("severity", 1) >= 1]
        if not rows:
            continue
        means = {}
        for metric in SHIFT_METRICS:
            vals = [r[metric] for r in rows if r.get(metric) is not None]
            if vals:
                means[metric] = sum(vals) / len(vals)
        out[name] = means
    return out


def shift_means(results: Mapping) -> dict[str, dict[str, float]]:
    """Per method: each shift metric averaged over all kinds and severities >= 1."""
    return _shift_means_one(results["methods"])


def shift_stats(results: Mapping) -> dict[str, dict[str, dict[str, Any]]]:
    """Per method and shift metric: ``{"mean", "std", "values"}`` with the spread over seeds.

    The mean is :func:`shift_means` of the aggregate; ``values`` are each seed's own average
    over kinds and severities (``None`` for a single run).
    """
    means = shift_means(results)
    seeds = results.get("seeds")
    per_seed = [_shift_means_one(s.get("methods") or {}) for s in seeds.values()] if seeds else None
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, vals in means.items():
        out[name] = {}
        for metric, mean in vals.items():
            values = [p.get(name, {}).get(metric) for p in per_seed] if per_seed else None
            out[name][metric] = _with_spread(mean, values)
    return out


def class_names(results: Mapping, names: Sequence[str] | None = None, num_classes: int | None = None) -> list[str]:
    """Display names of the classes: ``names`` if given, else ``data["class_names"]``, else indices.

    Raises:
        ValueError: ``names`` does not have one name per class.
    """
    recorded = (results.get("data") or {}).get("class_names")
    c = num_classes if num_classes is not None else (results.get("data") or {}).get("num_classes")
    if names is not None:
        if isinstance(names, str) or not isinstance(names, Sequence):
            raise TypeError(f"`class_names` must be a sequence of names, got {type(names).__name__}")
        if c is not None and len(names) != c:
            raise ValueError(f"`class_names` must have one name per class ({c}), got {len(names)}")
        return [str(n) for n in names]
    if recorded and (c is None or len(recorded) == c):
        return [str(n) for n in recorded]
    return [str(i) for i in range(int(c or 0))]


def best_method(results: Mapping, *, need: str | None = None) -> str | None:
    """The method with the lowest mean NLL in the main table (any calibration); with ``need``,
    only methods whose results have that key (e.g. ``"per_class"``)."""
    best = None
    for r in main_table(results):
        if need and not (results["methods"][r["method"]].get(need)):
            continue
        v = (r.get("nll") or {}).get("mean")
        if v is not None and (best is None or v < best[0]):
            best = (v, r["method"])
    return best[1] if best else None


def per_class_rows(results: Mapping, names: Sequence[str] | None = None):
    """The per-class table: ``(names, methods, rows, best)``.

    ``rows`` hold ``{"class", "support", "METHOD:accuracy", "METHOD:ece"}`` per class;
    ``best`` is :func:`best_method` among the methods with a confusion matrix (or ``None``).
    """
    methods = [n for n, m in results["methods"].items() if m.get("per_class")]
    if not methods:
        return [], [], [], None
    first = results["methods"][methods[0]]["per_class"]
    c = len(first["support"])
    labels = class_names(results, names, c)
    rows = []
    for i in range(c):
        row: dict[str, Any] = {"class": labels[i], "support": first["support"][i]}
        for m in methods:
            pc = results["methods"][m]["per_class"]
            row[f"{m}:accuracy"] = (pc.get("accuracy") or [None] * c)[i]
            row[f"{m}:ece"] = (pc.get("ece") or [None] * c)[i]
        rows.append(row)
    with_conf = [m for m in methods if results["methods"][m]["per_class"].get("confusion")]
    best = best_method({**results, "methods": {m: results["methods"][m] for m in with_conf}}) if with_conf else None
    if best is None and with_conf:
        best = with_conf[0]
    return labels, methods, rows, best
