"""The summary: plain-language sentences naming the best methods, or saying they are tied.

Rule for naming a winner (one rule for every line): each method enters with its best entry
(its best calibration, or its best uncertainty score). The method with the best mean wins only
when

1. its lead over every other method is larger than the spread of both:
   ``|mean_best − mean_other| > max(sd_best, sd_other)`` (sd over seeds for several seeds, over
   the folds of the 2-fold protocol for one seed; a missing sd counts as 0), and
2. with several seeds, it is the best in a strict majority of the seeds, and
3. its mean differs from every other's in the digits shown (so one fit without any spread
   still names no winner by a lead of 0.0004).

Otherwise the line says ``"tied: A; B; C"``: the best method, every method within one of the
spreads, and (when 2 fails) every method that is best in at least one seed.

The same rule then picks the calibration of each method named: a calibrator is named only when
it wins over that method's other calibrations beyond the spread; otherwise the line says
``"deep ensemble (matrix and temperature scaling tied)"``. Without any spread (one fit on a
calibration set, one seed) the line says that its differences are not tested.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ._text import (
    QUICK_NOTE,
    cal_label,
    fmt,
    fmt_stat,
    is_aleatoric,
    is_quick,
    method_label,
    metric_label,
    n_seeds,
    score_label,
)
from .schema import HIGHER_IS_BETTER, validate_results
from .sentences import shift_scope
from .tables import calibrations, main_table, score_rows, shift_stats

__all__ = ["Entry", "rank", "summary_lines", "error_counts"]


@dataclass(frozen=True)
class Entry:
    """One candidate of a ranking: a method with its best mean, spread and per-seed values."""

    method: str
    who: str
    mean: float
    std: float | None = None
    values: tuple[float | None, ...] | None = None


def _better(a: float, b: float, higher: bool) -> bool:
    return a > b if higher else a < b


def rank(entries: Sequence[Entry], higher: bool) -> tuple[list[Entry], str]:
    """Apply the module's rule: ``([winner], "")`` or ``([tied, ...], reason)``.

    Example:
        >>> a, b = Entry("a", "A", 0.30, 0.01), Entry("b", "B", 0.35, 0.02)
        >>> [e.who for e in rank([a, b], higher=False)[0]]
        ['A']
        >>> [e.who for e in rank([a, Entry("b", "B", 0.31, 0.02)], higher=False)[0]]
        ['A', 'B']
    """
    if not entries:
        return [], ""
    order = sorted(entries, key=lambda e: -e.mean if higher else e.mean)
    best = order[0]
    tied = [e for e in order[1:] if abs(best.mean - e.mean) <= max(best.std or 0.0, e.std or 0.0)
            and max(best.std or 0.0, e.std or 0.0) > 0]
    reason = "the lead is within one standard deviation" if tied else ""
    # A lead too small for the digits shown is no lead, spread or not (one fit has no spread).
    same = [e for e in order[1:] if e not in tied and (e.mean == best.mean or fmt(e.mean) == fmt(best.mean))]
    if same:
        tied += same
        reason = reason or "equal to the digits shown"
    n = max((len(e.values) for e in entries if e.values), default=0)
    if n >= 2:
        wins = _count_wins(list(entries), higher)
        if 2 * wins[best.method] <= n:
            extra = [e for e in order[1:] if wins[e.method] > 0 and e not in tied]
            tied += extra
            reason = "no method is the best in a majority of the seeds"
    return [best, *tied], reason


def _who(results: Mapping, method: str, cal: str) -> str:
    if cal in ("none", "uncalibrated"):
        return f"{method_label(results, method)}, uncalibrated"
    return f"{method_label(results, method)} + {cal_label(cal, results)}"


def _best_per_method(rows: list[dict], metric: str, higher: bool, who) -> list[Entry]:
    """Each method's best row for ``metric`` (rows hold Stat-like ``{"mean", "std", "values"}``)."""
    best: dict[str, tuple[dict, dict]] = {}
    for r in rows:
        stat = r.get(metric) or {}
        if stat.get("mean") is None:
            continue
        cur = best.get(r["method"])
        if cur is None or _better(stat["mean"], cur[1]["mean"], higher):
            best[r["method"]] = (r, stat)
    out = []
    for method, (r, stat) in best.items():
        values = tuple(stat["values"]) if stat.get("values") else None
        out.append(Entry(method, who(r), float(stat["mean"]), stat.get("std"), values))
    return out


def _count_wins(entries: list[Entry], higher: bool) -> dict[str, int]:
    n = max((len(e.values) for e in entries if e.values), default=0)
    wins = {e.method: 0 for e in entries}
    for i in range(n):
        present = [e for e in entries if e.values and i < len(e.values) and e.values[i] is not None]
        if present:
            top = present[0]
            for e in present[1:]:
                if _better(e.values[i], top.values[i], higher):
                    top = e
            wins[top.method] += 1
    return wins


def _scored_by(results: Mapping):
    return lambda r: f"{method_label(results, r['method'])} scored by {score_label(r['score'], results)}"


def _ranked_line(phrase: str, entries: list[Entry], metric: str, show, n: int, who=None) -> str | None:
    higher = metric in HIGHER_IS_BETTER
    ranked, reason = rank(entries, higher)
    if not ranked:
        return None
    who = who or (lambda e: e.who)
    if len(ranked) == 1:
        e = ranked[0]
        wins = ""
        if n >= 2 and e.values:
            wins = f", best in {_count_wins(entries, higher)[e.method]} of {n} seeds"
        return f"{phrase}: {who(e)} ({show(e)}{wins})."
    return f"{phrase}: tied: " + "; ".join(f"{who(e)} ({show(e)})" for e in ranked) + f" ({reason})."


def _cal_names(cals: list[str], results: Mapping) -> str:
    """``"matrix and temperature scaling"``, ``"uncalibrated and temperature scaling"``."""
    from .sentences import words

    labels = [cal_label(c, results) for c in cals]
    if len(labels) > 1 and all(lab.endswith(" scaling") for lab in labels):
        return words([lab[: -len(" scaling")] for lab in labels]) + " scaling"
    return words(labels)


def _calibrated_who(results: Mapping, rows: list[dict], metric: str, entry: Entry) -> str:
    """The method with its calibration when that calibration wins beyond the spread, else the tied ones."""
    own = [Entry(r["calibration"], r["calibration"], float(r[metric]["mean"]), r[metric].get("std"),
                 tuple(r[metric]["values"]) if r[metric].get("values") else None)
           for r in rows if r["method"] == entry.method and (r.get(metric) or {}).get("mean") is not None]
    ranked, _ = rank(own, metric in HIGHER_IS_BETTER)
    if len(ranked) <= 1:
        return entry.who
    order = calibrations(results)
    tied = sorted((e.method for e in ranked), key=lambda c: order.index(c) if c in order else len(order))
    return f"{method_label(results, entry.method)} ({_cal_names(tied, results)} tied)"


def error_counts(results: Mapping) -> str | None:
    """``"Errors on the test set: deterministic: 7 errors in 539 images; ..."`` from ``counts``."""
    unit = "pixels" if results.get("task") == "segmentation" else "images"
    parts, smallest = [], None
    for name, m in results["methods"].items():
        per_seed = (m.get("seed_values") or {}).get("counts") or {}
        errors = [e for e in per_seed.get("errors") or [] if e is not None]
        tests = [t for t in per_seed.get("test") or [] if t is not None]
        if not errors and (m.get("counts") or {}).get("errors") is not None:
            errors, tests = [m["counts"]["errors"]], [m["counts"].get("test")]
        if not errors:
            continue
        lo, hi = min(errors), max(errors)
        smallest = lo if smallest is None else min(smallest, lo)
        count = str(lo) if lo == hi else f"{lo}–{hi}"
        test = [t for t in tests if t is not None]
        size = "" if not test else (f" in {test[0]} {unit}" if min(test) == max(test) else
                                    f" in {min(test)}–{max(test)} {unit}")
        per = " per seed" if len(errors) > 1 else ""
        parts.append(f"{method_label(results, name)}: {count} error{'s' if hi != 1 else ''}{size}{per}")
    if not parts:
        return None
    line = "Errors on the test set: " + "; ".join(parts) + "."
    if smallest is not None and smallest < 50:
        line += " Few errors: ECE and misclassification detection rest on a handful of points."
    return line


def summary_lines(results: Mapping) -> list[str]:
    """Plain-language sentences naming the best methods (or the tied ones), computed from the results.

    The rule for naming a winner is in this module's docstring.

    Example:
        >>> from netuq.report.schema import example_results
        >>> summary_lines(example_results())[0].startswith("Lowest NLL: ")
        True
    """
    return _summary_lines(validate_results(results))


def _summary_lines(results: Mapping) -> list[str]:
    lines: list[str] = []
    n = n_seeds(results)
    if is_quick(results):
        lines.append(QUICK_NOTE[0].upper() + QUICK_NOTE[1:] + ".")
    if n >= 2:
        lines.append(f"{n} seeds ({', '.join(results['seeds'])}): numbers are mean ± sd over the seeds; a method is "
                     "named best only when its lead exceeds both spreads and it is the best in a majority of seeds.")
    rows = main_table(results)
    if n == 1 and rows and all((r.get(k) or {}).get("std") is None for r in rows for k in ("nll", "ece")):
        lines.append("No spread was recorded (one calibration fit, one seed): the best numbers below are named, "
                     "but their differences are not tested.")
    for metric, phrase in (("nll", "Lowest NLL"), ("ece", "Lowest ECE"), ("accuracy", "Highest accuracy")):
        entries = _best_per_method(rows, metric, metric in HIGHER_IS_BETTER,
                                   lambda r: _who(results, r["method"], r["calibration"]))
        line = _ranked_line(phrase, entries, metric, lambda e: fmt_stat(e.mean, e.std), n,
                            who=lambda e, metric=metric: _calibrated_who(results, rows, metric, e))
        if line:
            lines.append(line)
    errors = error_counts(results)
    if errors:
        lines.append(errors)

    ood = score_rows(results, "ood")
    fpr = {(r["method"], r["score"]): (r.get("fpr95") or {}) for r in ood}
    rankable = [r for r in ood if not is_aleatoric(r["score"], results)]
    entries = _best_per_method(rankable, "auroc", True,
                               _scored_by(results))
    score_of = {}
    for r in rankable:
        cur = score_of.get(r["method"])
        if (r.get("auroc") or {}).get("mean") is not None and (
                cur is None or r["auroc"]["mean"] > (cur.get("auroc") or {}).get("mean", -1)):
            score_of[r["method"]] = r

    def show_ood(e: Entry) -> str:
        f = fpr.get((e.method, score_of[e.method]["score"])) or {}
        extra = f", FPR95 {fmt_stat(f.get('mean'), f.get('std'))}" if f.get("mean") is not None else ""
        return f"AUROC {fmt_stat(e.mean, e.std)}{extra}"

    if entries and max(e.mean for e in entries) <= 0.5:
        lines.append("Out-of-distribution detection: no score ranks OOD inputs above in-distribution ones better "
                     "than chance (every AUROC ≤ 0.5).")
    else:
        line = _ranked_line("Best out-of-distribution detection", entries, "auroc", show_ood, n)
        if line:
            lines.append(line)
    aleatoric = [r for r in ood if is_aleatoric(r["score"], results) and (r.get("auroc") or {}).get("mean") is not None]
    if aleatoric:
        shown = ", ".join(f"{method_label(results, r['method'])} scored by {score_label(r['score'], results)}: AUROC "
                          f"{fmt(r['auroc']['mean'])}{' (inverted)' if r['auroc']['mean'] < 0.5 else ''}"
                          for r in aleatoric)
        lines.append(f"Not ranked as OOD detectors (aleatoric: they measure noise in the data, not the model's "
                     f"ignorance): {shown}.")
    inverted = [r for r in rankable if (r.get("auroc") or {}).get("mean") is not None and r["auroc"]["mean"] < 0.5]
    if inverted:
        lines.append("Inverted OOD scores (AUROC < 0.5: OOD inputs look more familiar than test inputs): "
                     + ", ".join(f"{method_label(results, r['method'])} scored by {score_label(r['score'], results)} "
                                 f"({fmt(r['auroc']['mean'])})" for r in inverted) + ".")

    # Under shift, rank by NLL (a proper scoring rule: a uniform, useless prediction cannot win it,
    # whereas it can have a low ECE); fall back to ECE when NLL is missing.
    shift = shift_stats(results)
    key = "nll" if any("nll" in v for v in shift.values()) else "ece"
    srows = [{"method": name, **v} for name, v in shift.items()]
    entries = _best_per_method(srows, key, key in HIGHER_IS_BETTER, lambda r: method_label(results, r["method"]))

    def show_shift(e: Entry) -> str:
        v = shift[e.method]
        keys = [key] + [k for k in ("ece", "accuracy") if k != key and k in v]
        return ", ".join(f"{metric_label(k)} {fmt_stat(v[k]['mean'], v[k]['std'])}" for k in keys)

    over = shift_scope(results)

    line = _ranked_line(f"Best under distribution shift (lowest {metric_label(key)}, averaged over {over})", entries,
                        key, show_shift, n)
    if line:
        lines.append(line)
    mis = score_rows(results, "misclassification")
    entries = _best_per_method(mis, "auroc", True,
                               _scored_by(results))
    line = _ranked_line("Best at flagging its own mistakes", entries, "auroc",
                        lambda e: f"AUROC {fmt_stat(e.mean, e.std)}", n)
    if line:
        lines.append(line)
    if n == 1 and lines:
        lines.append("One seed: the differences above are not tested against seed-to-seed variation; run several "
                     "seeds before drawing conclusions.")
    return lines
