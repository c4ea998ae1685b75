"""Several seeds into one results dict: mean over seeds, sd over seeds, every seed kept.

The layout is the one of :mod:`netuq.results.schema` ("Several seeds"), so every table and figure
of the report works on an aggregate as on a single run.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from . import sections as result_sections
from .schema import validate_results

__all__ = ["aggregate_seeds"]

_SCALAR_GROUPS = (("metrics", 1), ("ood", 2), ("misclassification", 2), ("ood_kinds", 3))
# Per-seed things that are not averaged: seed 0's are shown (captions say so).
_FROM_FIRST = ("reliability", "risk_coverage", "ood_hist", "roc", "segmentation_examples", "per_class",
               "ood_kinds_hist", "ood_kinds_roc")


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _sd(values: Sequence[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return statistics.stdev(vals) if len(vals) >= 2 else None


def _seed_key(result: Mapping, index: int, taken: set[str]) -> str:
    seed = (result.get("config") or {}).get("seed")
    key = str(seed) if isinstance(seed, int) and not isinstance(seed, bool) else str(index)
    if key in taken:
        raise ValueError(f"`results_list` must hold distinct seeds, got seed {key} twice")
    taken.add(key)
    return key


def _keys(dicts: Sequence[Mapping | None]) -> list[str]:
    out: list[str] = []
    for d in dicts:
        out += [k for k in (d or {}) if k not in out]
    return out


def _nested(parts: Sequence[Mapping | None], depth: int) -> tuple[dict, dict]:
    """(means, per-seed lists) of nested ``{k: {k: number}}`` mappings, ``depth`` levels deep."""
    means, lists = {}, {}
    for k in _keys(parts):
        sub = [(p or {}).get(k) for p in parts]
        if depth == 1:
            vals = [v if isinstance(v, (int, float)) and not isinstance(v, bool) else None for v in sub]
            means[k], lists[k] = _mean(vals), vals
        else:
            means[k], lists[k] = _nested([s if isinstance(s, Mapping) else None for s in sub], depth - 1)
    return means, lists


def _stats(parts: Sequence[Mapping | None]) -> dict:
    """in_distribution: ``{CAL: {METRIC: Stat}}`` over seeds."""
    out: dict[str, dict] = {}
    for cal in _keys(parts):
        per_cal = [(p or {}).get(cal) for p in parts]
        out[cal] = {}
        for metric in _keys(per_cal):
            stats = [(c or {}).get(metric) or {} for c in per_cal]
            means = [s.get("mean") for s in stats]
            out[cal][metric] = {"mean": _mean(means), "std": _sd(means), "values": means,
                                "fold_std": _mean([s.get("std") for s in stats])}
    return out


def _shift(parts: Sequence[Mapping | None]) -> dict:
    out = {}
    for kind in _keys(parts):
        rows = [r for p in parts for r in ((p or {}).get(kind) or [])]
        severities = sorted({r["severity"] for r in rows})
        out[kind] = []
        for sev in severities:
            same = [r for r in rows if r["severity"] == sev]
            row: dict[str, Any] = {"severity": sev}
            for metric in _keys(same):
                if metric != "severity":
                    row[metric] = _mean([r.get(metric) for r in same])
            out[kind].append(row)
    return out


def _warnings(parts: Sequence[Sequence | None]) -> list[dict]:
    counts: dict[str, int] = {}
    for ws in parts:
        for w in ws or []:
            msg = str(w.get("message", ""))
            counts[msg] = counts.get(msg, 0) + int(w.get("count", 1))
    return [{"message": k, "count": v} for k, v in counts.items()]


def _sum_runtimes(parts: Sequence[Mapping | None]) -> dict:
    out: dict[str, Any] = {}
    for k in _keys(parts):
        vals = [(p or {}).get(k) for p in parts]
        if all(isinstance(v, Mapping) or v is None for v in vals):
            out[k] = _sum_runtimes(vals)
        else:
            nums = [v for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)]
            out[k] = float(sum(nums))
    return out


def _method(parts: list[Mapping | None], seeds: list[str]) -> dict:
    first = next(p for p in parts if p is not None)
    out: dict[str, Any] = {k: copy.deepcopy(v) for k, v in first.items() if k not in ("seed_values",)}
    values: dict[str, Any] = {"seeds": list(seeds)}
    for key, depth in _SCALAR_GROUPS:
        got = [(p or {}).get(key) for p in parts]
        if any(g for g in got):
            out[key], values[key] = _nested(got, depth)
    if any("in_distribution" in (p or {}) for p in parts):
        out["in_distribution"] = _stats([(p or {}).get("in_distribution") for p in parts])
    if any("shift" in (p or {}) for p in parts):
        out["shift"] = _shift([(p or {}).get("shift") for p in parts])
    temps = [(p or {}).get("temperature") for p in parts]
    if any(t is not None for t in temps):
        out["temperature"], values["temperature"] = _mean(temps), temps
    counts = [(p or {}).get("counts") for p in parts]
    if any(counts):
        keys = _keys(counts)
        values["counts"] = {k: [(c or {}).get(k) for c in counts] for k in keys}
        out["counts"] = {k: int(sum(v for v in values["counts"][k] if v is not None)) for k in keys}
    if any((p or {}).get("warnings") for p in parts):
        out["warnings"] = _warnings([(p or {}).get("warnings") for p in parts])
    if any((p or {}).get("runtime_s") for p in parts):
        out["runtime_s"] = _sum_runtimes([(p or {}).get("runtime_s") for p in parts])
    for key in _FROM_FIRST:
        if key in first:
            out[key] = copy.deepcopy(first[key])
    for key, section in list(result_sections.SECTIONS.items()):  # registered sections: their own rule
        if section.aggregate is not None and any(key in (p or {}) for p in parts):
            out[key] = section.aggregate([(p or {}).get(key) for p in parts])
    out["seed_values"] = values
    return out


def aggregate_seeds(results_list: Sequence[Mapping]) -> dict:
    """One results dict from the results of several seeds (each following :mod:`netuq.results.schema`).

    Top-level ``"methods"`` hold the mean over seeds: every in-distribution ``Stat`` gets
    ``mean`` = mean of the seeds' means, ``std`` = their sample standard deviation (n − 1),
    ``values`` = the per-seed means and ``fold_std`` = the mean within-seed fold sd; scalar
    metrics, OOD and misclassification numbers, per-kind OOD numbers, temperatures and shift rows
    become means over the seeds that have them, with per-seed values under
    ``MethodResults["seed_values"]``; ``counts`` and run times are summed; curves, histograms,
    reliability bins and segmentation examples are the first seed's. ``"seeds"`` holds every
    seed's full results, keyed by ``str(config["seed"])`` (or the position). One seed is returned
    unchanged (a deep copy).

    Args:
        results_list: per-seed results dicts, first seed first (same task).

    Returns:
        The aggregate results dict (valid for :func:`netuq.report.validate_results`).

    Raises:
        ValueError: empty list, an invalid result, different tasks or repeated seeds.

    Example:
        >>> from netuq.results.example import example_results
        >>> runs = [example_results(methods=("ensemble",), seed=s) for s in (0, 1)]
        >>> agg = aggregate_seeds(runs)
        >>> stat = agg["methods"]["ensemble"]["in_distribution"]["none"]["nll"]
        >>> len(stat["values"]), sorted(agg["seeds"])
        (2, ['0', '1'])
    """
    if isinstance(results_list, Mapping) or not isinstance(results_list, Sequence):
        raise TypeError(f"`results_list` must be a list of results dicts, got {type(results_list).__name__}")
    if not results_list:
        raise ValueError("`results_list` must hold at least one results dict, got 0")
    for i, r in enumerate(results_list):
        try:
            validate_results(r)
        except ValueError as err:
            raise ValueError(f"`results_list[{i}]` is not a valid results dict: {err}") from None
        if "seeds" in r:
            raise ValueError(f"`results_list[{i}]` is already an aggregate of several seeds (has 'seeds')")
    if len(results_list) == 1:
        return copy.deepcopy(dict(results_list[0]))
    tasks = {r["task"] for r in results_list}
    if len(tasks) > 1:
        raise ValueError(f"`results_list` must hold results of one task, got {sorted(tasks)}")
    taken: set[str] = set()
    keys = [_seed_key(r, i, taken) for i, r in enumerate(results_list)]
    first = results_list[0]
    out: dict[str, Any] = {k: copy.deepcopy(v) for k, v in first.items() if k not in ("methods", "runtime_s")}
    names = _keys([r["methods"] for r in results_list])
    out["methods"] = {n: _method([r["methods"].get(n) for r in results_list], keys) for n in names}
    if any("runtime_s" in r for r in results_list):
        out["runtime_s"] = _sum_runtimes([r.get("runtime_s") for r in results_list])
    out["seeds"] = {
        k: {key: copy.deepcopy(r[key]) for key in ("methods", "config", "data", "runtime_s") if key in r}
        for k, r in zip(keys, results_list)
    }
    return validate_results(out)
