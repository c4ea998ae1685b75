"""Turn a results dict into report.html (self-contained), report.md, results.csv and PNG figures.

Everything shown is read from the results (see :mod:`netuq.report.schema`); the only arithmetic
here is presentation: picking the best entry of a column, and averaging the shift rows of a
method over kinds and severities for one summary number.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import plots
from .plots import CALIBRATION_LABELS, METHOD_LABELS, METRIC_LABELS, SCORE_LABELS, method_colors
from .schema import CALIBRATION_ORDER, HIGHER_IS_BETTER, validate_results

__all__ = ["render_report", "write_csv", "summary_lines", "to_markdown", "main_table"]

MAIN_METRICS = ("nll", "ece", "brier", "accuracy")
OOD_METRICS = ("auroc", "aupr", "fpr95")
SHIFT_METRICS = ("accuracy", "ece", "nll", "ece_temperature")

HOW_TO_READ = (
    "Each method is evaluated on the held-out test set, before and after post-hoc calibration. "
    "<b>NLL</b> (negative log-likelihood) and the <b>Brier score</b> rate the whole predicted distribution "
    "(lower is better); <b>ECE</b> (expected calibration error, 15 equal-width bins) is the average gap "
    "between confidence and accuracy (lower is better; 0 = a predicted 80% is right 80% of the time). "
    "Calibrated numbers follow Ashukha et al. (2020): the test set is split in two halves at random, the "
    "calibrator is fitted on one half and scored on the other, both ways, repeated; the table shows mean ± "
    "standard deviation over these folds, with the best value of each column in bold. A method is only "
    "clearly better when the gap exceeds the standard deviations. <b>OOD detection</b> asks whether an "
    "uncertainty score ranks unfamiliar inputs above familiar ones: AUROC 1 is perfect, 0.5 is chance; "
    "FPR95 is the share of unfamiliar inputs still accepted when 95% of familiar ones are (lower is better). "
    "Under <b>shift</b>, good uncertainty keeps ECE low as corruption grows, even while accuracy falls. "
    "In a <b>reliability diagram</b>, bars below the diagonal mean over-confidence."
)


# ----------------------------------------------------------------------------- helpers


def _method_label(results: Mapping, name: str) -> str:
    m = results["methods"].get(name) or {}
    return str(m.get("label") or METHOD_LABELS.get(name, name.replace("_", " ")))


def _cal_label(cal: str) -> str:
    return CALIBRATION_LABELS.get(cal, cal.replace("_", " "))


def _score_label(score: str) -> str:
    return SCORE_LABELS.get(score, score.replace("_", " "))


def _metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric.replace("_", " "))


def _fmt(value: Any, digits: int = 3, *, sci: bool = True) -> str:
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


def _fmt_stat(stat: Mapping | None) -> str:
    if not stat or stat.get("mean") is None:
        return "—"
    std = stat.get("std")
    return _fmt(stat["mean"]) + ("" if std is None else f" ± {_fmt(std)}")


def _calibrations(results: Mapping) -> list[str]:
    seen: list[str] = []
    for m in results["methods"].values():
        for cal in m.get("in_distribution") or {}:
            if cal not in seen:
                seen.append(cal)
    order = {c: i for i, c in enumerate(CALIBRATION_ORDER)}
    return sorted(seen, key=lambda c: (order.get(c, len(order)), seen.index(c)))


def _best(values: list[float | None], metric: str) -> set[int]:
    """Indices of the best value(s) of a column (ties included)."""
    present = [(i, v) for i, v in enumerate(values) if v is not None]
    if len(present) < 2:
        return set()
    pick = max if metric in HIGHER_IS_BETTER else min
    best = pick(v for _, v in present)
    return {i for i, v in present if abs(v - best) <= 1e-12 * max(1.0, abs(best))}


def main_table(results: Mapping) -> list[dict[str, Any]]:
    """Rows of the main table: one per method x calibration, in display order.

    Each row: ``{"method", "calibration", METRIC: {"mean", "std"} or None}`` for NLL, ECE, Brier
    and accuracy.

    Example:
        >>> from netuq.report.schema import example_results
        >>> rows = main_table(example_results(methods=("ensemble",)))
        >>> [(r["method"], r["calibration"]) for r in rows]
        [('ensemble', 'none'), ('ensemble', 'temperature')]
    """
    rows = []
    for name, m in results["methods"].items():
        stats = m.get("in_distribution") or {}
        for cal in _calibrations(results):
            if cal in stats:
                rows.append({"method": name, "calibration": cal, **{k: stats[cal].get(k) for k in MAIN_METRICS}})
    return rows


def _ood_rows(results: Mapping, key: str = "ood") -> list[dict[str, Any]]:
    rows = []
    for name, m in results["methods"].items():
        for score, vals in (m.get(key) or {}).items():
            rows.append({"method": name, "score": score, **vals})
    return rows


def _shift_means(results: Mapping) -> dict[str, dict[str, float]]:
    """Per method: each shift metric averaged over all kinds and severities >= 1."""
    out = {}
    for name, m in results["methods"].items():
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


def _pick(rows: list[dict], metric: str, value=None) -> list[dict]:
    """The rows with the best value of ``metric`` (all of them when tied)."""
    value = value or (lambda r, k: r.get(k))
    vals = [value(r, metric) for r in rows]
    present = [v for v in vals if v is not None]
    if not present:
        return []
    best = (max if metric in HIGHER_IS_BETTER else min)(present)
    return [r for r, v in zip(rows, vals) if v is not None and v == best]


def _who(results: Mapping, row: Mapping) -> str:
    """``"deep ensemble + temperature scaling"``, or ``"MC dropout, uncalibrated"``."""
    cal = row["calibration"]
    if cal in ("none", "uncalibrated"):
        return f"{_method_label(results, row['method'])}, uncalibrated"
    return f"{_method_label(results, row['method'])} + {_cal_label(cal)}"


def summary_lines(results: Mapping) -> list[str]:
    """Plain-language sentences naming the best methods, computed from the results.

    Example:
        >>> from netuq.report.schema import example_results
        >>> summary_lines(example_results())[0].startswith("Lowest NLL: ")
        True
    """
    return _summary_lines(validate_results(results))


def _summary_lines(results: Mapping) -> list[str]:
    lines = []
    rows = main_table(results)

    def mean(r, k):
        return (r.get(k) or {}).get("mean")

    for metric, phrase in (("nll", "Lowest NLL"), ("ece", "Lowest ECE"), ("accuracy", "Highest accuracy")):
        best = _pick(rows, metric, mean)
        if not best:
            continue
        r = best[0]
        text = f"{phrase}: {_who(results, r)} ({_fmt_stat(r[metric])})"
        std = (r.get(metric) or {}).get("std")
        # The best entry of any *other* method: is it statistically tied with the winner?
        others = [o for o in rows if o["method"] != r["method"] and mean(o, metric) is not None]
        if std is not None and others:
            close = _pick(others, metric, mean)[0]
            gap = abs(mean(close, metric) - mean(r, metric))
            close_std = (close.get(metric) or {}).get("std") or 0.0
            if gap <= max(std, close_std):
                text += f"; {_who(results, close)} ({_fmt_stat(close[metric])}) is within one standard deviation"
        lines.append(text + ".")
    ood = _ood_rows(results)
    best = _pick(ood, "auroc")
    if best:
        r = best[0]
        extra = f", FPR95 {_fmt(r.get('fpr95'))}" if r.get("fpr95") is not None else ""
        lines.append(f"Best out-of-distribution detection: {_method_label(results, r['method'])} scored by "
                     f"{_score_label(r['score'])} (AUROC {_fmt(r['auroc'])}{extra}).")
    # Under shift, rank by NLL (a proper scoring rule: a uniform, useless prediction cannot win it,
    # whereas it can have a low ECE); fall back to ECE when NLL is missing.
    shift = _shift_means(results)
    srows = [{"method": m, **v} for m, v in shift.items()]
    key = "nll" if any(r.get("nll") is not None for r in srows) else "ece"
    best = _pick(srows, key)
    if best:
        r = best[0]
        keys = [key] + [k for k in ("ece", "accuracy") if k != key and r.get(k) is not None]
        shown = ", ".join(f"{_metric_label(k)} {_fmt(r[k])}" for k in keys)
        lines.append(f"Best under distribution shift (lowest {_metric_label(key)}): "
                     f"{_method_label(results, r['method'])} ({shown}, averaged over all shifts and severities).")
    mis = _ood_rows(results, "misclassification")
    best = _pick(mis, "auroc")
    if best:
        r = best[0]
        lines.append(f"Best at flagging its own mistakes: {_method_label(results, r['method'])} scored by "
                     f"{_score_label(r['score'])} (AUROC {_fmt(r['auroc'])}).")
    return lines


# ----------------------------------------------------------------------------- CSV


def write_csv(results: Mapping, path: str | Path) -> Path:
    """Write results.csv: one row per method x calibration x setting.

    Settings: ``in_distribution`` (one row per calibration; columns ``<metric>`` = mean and
    ``<metric>_std``), ``test`` (the uncalibrated whole-test-set metrics), ``shift`` (one row per
    kind x severity), ``ood`` and ``misclassification`` (one row per score, in column ``kind``).
    Empty cells mean "not measured".

    Example:
        >>> import tempfile, os
        >>> from netuq.report.schema import example_results
        >>> p = write_csv(example_results(methods=("ensemble",)), os.path.join(tempfile.mkdtemp(), "r.csv"))
        >>> open(p).readline().split(",")[:5]
        ['method', 'calibration', 'setting', 'kind', 'severity']
    """
    return _write_csv(validate_results(results), Path(path))


def _write_csv(results: Mapping, path: Path) -> Path:
    rows: list[dict[str, Any]] = []
    for name, m in results["methods"].items():
        for cal in _calibrations(results):
            stats = (m.get("in_distribution") or {}).get(cal)
            if stats is None:
                continue
            row: dict[str, Any] = {"method": name, "calibration": cal, "setting": "in_distribution"}
            for metric, stat in stats.items():
                row[metric] = stat.get("mean")
                row[f"{metric}_std"] = stat.get("std")
            rows.append(row)
        if m.get("metrics"):
            rows.append({"method": name, "calibration": "none", "setting": "test", **m["metrics"]})
        for kind, srows in (m.get("shift") or {}).items():
            for r in srows:
                rows.append({"method": name, "calibration": "none", "setting": "shift", "kind": kind, **r})
        for key in ("ood", "misclassification"):
            for score, vals in (m.get(key) or {}).items():
                rows.append({"method": name, "calibration": "none", "setting": key, "kind": score, **vals})
    columns = ["method", "calibration", "setting", "kind", "severity"]
    for r in rows:
        for k in r:
            if k not in columns:
                columns.append(k)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, restval="", lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return path


# ----------------------------------------------------------------------------- figures


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "x"


def _best_score(m: Mapping) -> str | None:
    ood = m.get("ood") or {}
    scored = [(s, v.get("auroc")) for s, v in ood.items() if v.get("auroc") is not None]
    if scored:
        return max(scored, key=lambda t: t[1])[0]
    return next(iter(m.get("roc") or m.get("ood_hist") or {}), None)


def _figures(results: Mapping) -> list[tuple[str, str, Any, str]]:
    """(section, file name, Figure, caption) for every figure the results allow."""
    methods = results["methods"]
    names = list(methods)
    colors = method_colors(names)
    out = []

    # Reliability diagrams: one figure per method, one panel per calibration.
    for name, m in methods.items():
        rel = m.get("reliability") or {}
        if not rel:
            continue
        fig, axes = plots.grid_figure(1, len(rel), gap=(1.45, 0.75))
        axes = axes[0]
        for ax, (cal, bins) in zip(axes, rel.items()):
            ece = bins.get("ece")
            if ece is None and cal in ("uncalibrated", "none"):
                ece = (m.get("metrics") or {}).get("ece")
            title = f"{_method_label(results, name)}: {_cal_label(cal)}"
            if ece is not None:
                title += f" (ECE {_fmt(ece)})"
            plots.reliability_diagram(bins, ax=ax, title=title, color=colors[name])
        out.append(("reliability", f"reliability_{_slug(name)}.png", fig,
                    f"{_method_label(results, name)}: accuracy per confidence bin on the test set"))

    # Shift: accuracy, ECE and NLL against severity.
    shift_metrics = [k for k in ("accuracy", "ece", "nll", "ece_temperature")
                     if any(r.get(k) is not None for m in methods.values()
                            for rs in (m.get("shift") or {}).values() for r in rs)]
    if shift_metrics:
        fig, axes = plots.grid_figure(1, len(shift_metrics), margins=(0.7, 0.2, 0.55, 0.3), gap=(0.8, 0.7))
        axes = axes[0]
        for i, (ax, metric) in enumerate(zip(axes, shift_metrics)):
            plots.shift_plot(results, metric, ax=ax, per_kind=True, colors=colors, legend=i == 0)
        kinds = sorted({k for m in methods.values() for k in (m.get("shift") or {})})
        out.append(("shift", "shift.png", fig, "Mean over the shifts (" + ", ".join(k.replace("_", " ") for k in kinds)
                    + "); faint lines: each shift alone; severity 0 is the clean test set"))

    # OOD: ROC of each method's best score, and score histograms.
    roc_curves, roc_auc, roc_labels, hist = {}, {}, {}, []
    for name, m in methods.items():
        s = _best_score(m)
        if s is None:
            continue
        if s in (m.get("roc") or {}):
            roc_curves[name] = m["roc"][s]
            roc_auc[name] = (m.get("ood") or {}).get(s, {}).get("auroc")
            roc_labels[name] = f"{_method_label(results, name)}, {_score_label(s)}"
        if s in (m.get("ood_hist") or {}):
            hist.append((name, s))
    if roc_curves:
        fig = plots.roc_plot(roc_curves, colors=colors, auroc=roc_auc, labels=roc_labels)
        out.append(("ood", "roc.png", fig, "ROC of OOD detection, each method with its best score"))
    if hist:
        cols = min(3, len(hist))
        rows = math.ceil(len(hist) / cols)
        fig, axes = plots.grid_figure(rows, cols, panel=(3.8, 2.9), margins=(0.7, 0.2, 0.55, 0.35), gap=(0.8, 0.8))
        axes = axes.ravel()
        for ax, (name, s) in zip(axes, hist):
            auc = (methods[name].get("ood") or {}).get(s, {}).get("auroc")
            title = f"{_method_label(results, name)}" + (f" (AUROC {_fmt(auc)})" if auc is not None else "")
            plots.ood_histogram(methods[name]["ood_hist"][s], ax=ax, title=title, xlabel=_score_label(s))
        for ax in axes[len(hist):]:
            ax.set_visible(False)
        out.append(("ood", "ood_hist.png", fig, "Uncertainty on in-distribution and OOD inputs"))

    # Risk-coverage.
    rc = {n: m["risk_coverage"] for n, m in methods.items() if m.get("risk_coverage")}
    if rc:
        aurc = {n: (methods[n].get("metrics") or {}).get("aurc") for n in rc}
        fig = plots.risk_coverage_plot(rc, colors=colors, aurc=aurc)
        out.append(("selective", "risk_coverage.png", fig,
                    "Error rate of the predictions kept when abstaining on the least confident ones"))

    # Segmentation examples.
    for name, m in methods.items():
        ex = m.get("segmentation_examples")
        if not ex:
            continue
        fig = plots.segmentation_grid(ex["image"], ex["label"], ex["prediction"], ex["entropy"],
                                      ex.get("epistemic"), ex.get("anomaly"),
                                      num_classes=(results.get("data") or {}).get("num_classes"),
                                      title=_method_label(results, name))
        out.append(("segmentation", f"segmentation_{_slug(name)}.png", fig,
                    f"{_method_label(results, name)}: test scenes (unknown objects outlined in red)"))
    return out


def _png(fig, dpi: int) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


# ----------------------------------------------------------------------------- HTML


def _table(header: list[str], body: list[list[str]], best: list[set[int]] | None = None,
           group_rows: bool = False) -> str:
    """An HTML table; ``best[j]`` holds the row indices to highlight in column j."""
    e = html.escape
    out = ["<table>", "<thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr></thead>", "<tbody>"]
    for i, row in enumerate(body):
        cells = []
        for j, cell in enumerate(row):
            if group_rows and j == 0 and i > 0 and body[i - 1][0] == cell:
                cell_html = ""
            else:
                cell_html = e(cell)
            if best and j < len(best) and i in best[j]:
                cells.append(f'<td class="best"><strong>{cell_html}</strong></td>')
            else:
                cells.append(f"<td>{cell_html}</td>")
        cls = ' class="group"' if group_rows and (i == 0 or body[i - 1][0] != row[0]) else ""
        out.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _main_table_parts(results: Mapping):
    rows = main_table(results)
    header = ["method", "calibration"] + [_metric_label(k) + (" ↑" if k in HIGHER_IS_BETTER else " ↓")
                                          for k in MAIN_METRICS]
    body = [[_method_label(results, r["method"]), _cal_label(r["calibration"])]
            + [_fmt_stat(r[k]) for k in MAIN_METRICS] for r in rows]
    best = [set(), set()] + [_best([(r[k] or {}).get("mean") for r in rows], k) for k in MAIN_METRICS]
    return header, body, best


def _ood_table_parts(results: Mapping, key: str, metrics=OOD_METRICS):
    rows = _ood_rows(results, key)
    metrics = [k for k in metrics if any(r.get(k) is not None for r in rows)]
    header = ["method", "score"] + [_metric_label(k) + (" ↑" if k in HIGHER_IS_BETTER else " ↓") for k in metrics]
    body = [[_method_label(results, r["method"]), _score_label(r["score"])] + [_fmt(r.get(k)) for k in metrics]
            for r in rows]
    best = [set(), set()] + [_best([r.get(k) for r in rows], k) for k in metrics]
    return header, body, best


def _flat(d: Mapping, prefix: str = "") -> list[tuple[str, str]]:
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out += _flat(v, key + ".")
        elif isinstance(v, (list, tuple)):
            out.append((key, ", ".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v)))
        else:
            out.append((key, f"{v:g}" if isinstance(v, float) else str(v)))
    return out


def _runtime_parts(results: Mapping):
    rt = results.get("runtime_s") or {}
    per = dict(rt.get("methods") or {})
    for name, m in results["methods"].items():
        if name not in per and m.get("runtime_s"):
            per[name] = m["runtime_s"]
    phases: list[str] = []
    for v in per.values():
        phases += [p for p in v if p not in phases]
    body = [[_method_label(results, n)] + [_fmt(v.get(p), 1, sci=False) for p in phases] for n, v in per.items()]
    totals = [(k, v) for k, v in rt.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return ["method"] + [f"{p} (s)" for p in phases], body, totals


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd;
padding-bottom:.2em}.meta{color:#666;font-size:.9em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}th,td{padding:.25em .7em;text-align:right;
border-bottom:1px solid #eee}th{background:#f4f4f4;text-align:center}td:first-child,td:nth-child(2){text-align:left}
tr.group td{border-top:1px solid #bbb}td.best{background:#e3f4e1}
.summary{background:#f6f8fa;border-left:4px solid #2f81f7;padding:.6em 1em}.summary li{margin:.2em 0}
figure{display:inline-block;margin:.6em 1em .6em 0;vertical-align:top}figure img{max-width:100%;height:auto}
figcaption{font-size:.85em;color:#555;max-width:60em}.howto{font-size:.92em;color:#333}
.kv td{text-align:left}
"""


def _render_html(results: Mapping, figures: list[tuple[str, str, bytes, str]], lines: list[str]) -> str:
    e = html.escape
    task = results.get("task", "")
    data = results.get("data") or {}
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>netuq benchmark report: {e(task)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>netuq benchmark report: {e(task)}</h1>",
    ]
    meta = [f"{len(results['methods'])} methods"]
    if data:
        meta.append(", ".join(f"{e(str(k))} {e(_fmt(v))}" for k, v in data.items()))
    total = (results.get("runtime_s") or {}).get("total_this_run")
    if isinstance(total, (int, float)):
        meta.append(f"run time {_fmt(float(total), 1)} s")
    parts.append(f'<p class="meta">{" · ".join(meta)}</p>')

    parts.append('<h2 id="summary">Summary</h2><div class="summary"><ul>')
    parts += [f"<li>{e(line)}</li>" for line in lines] or ["<li>No comparable numbers in these results.</li>"]
    parts.append("</ul></div>")
    parts.append(f'<h2 id="how-to-read">How to read this report</h2><p class="howto">{HOW_TO_READ}</p>')

    def figs(section: str) -> None:
        for _, file, png, caption in (f for f in figures if f[0] == section):
            data_uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
            parts.append(f'<figure><img src="{data_uri}" alt="{e(file)}"><figcaption>{e(caption)}</figcaption>'
                         "</figure>")

    header, body, best = _main_table_parts(results)
    if body:
        parts.append('<h2 id="calibration">In-distribution calibration</h2>')
        parts.append("<p>Test set, mean ± standard deviation over the folds of repeated 2-fold cross-validation "
                     "(Ashukha et al. 2020); best per column in bold.</p>")
        parts.append(_table(header, body, best, group_rows=True))
    temps = [(n, m["temperature"]) for n, m in results["methods"].items() if m.get("temperature") is not None]
    if temps:
        parts.append("<p>Temperature fitted on the validation set: "
                     + ", ".join(f"{e(_method_label(results, n))} T = {_fmt(t)}" for n, t in temps) + ".</p>")
    figs("reliability")

    header, body, best = _ood_table_parts(results, "ood")
    if body or any(f[0] == "ood" for f in figures):
        parts.append('<h2 id="ood">Out-of-distribution detection</h2>')
        what = "unknown-object pixels against in-distribution pixels" if task == "segmentation" else \
            "OOD images (photo patches, noise) against the test set"
        parts.append(f"<p>Scores rank {what}; higher score = less sure. Best per column in bold.</p>")
        if body:
            parts.append(_table(header, body, best, group_rows=True))
        figs("ood")

    shift = _shift_means(results)
    if shift or any(f[0] == "shift" for f in figures):
        parts.append('<h2 id="shift">Under distribution shift</h2>')
        metrics = [k for k in SHIFT_METRICS if any(k in v for v in shift.values())]
        rows = [{"method": n, **v} for n, v in shift.items()]
        if rows:
            sev = (results.get("config") or {}).get("severities") or [1, 2, 3, 4, 5]
            parts.append(f"<p>Averaged over all kinds of shift and severities {e(', '.join(map(str, sev)))}.</p>")
            parts.append(_table(["method"] + [_metric_label(k) + (" ↑" if k in HIGHER_IS_BETTER else " ↓")
                                              for k in metrics],
                                [[_method_label(results, r["method"])] + [_fmt(r.get(k)) for k in metrics]
                                 for r in rows],
                                [set()] + [_best([r.get(k) for r in rows], k) for k in metrics]))
        figs("shift")

    header, body, best = _ood_table_parts(results, "misclassification", ("auroc", "aupr"))
    metric_rows = [(n, m["metrics"]) for n, m in results["methods"].items() if m.get("metrics")]
    if body or metric_rows or any(f[0] == "selective" for f in figures):
        parts.append('<h2 id="selective">Misclassification detection and selective prediction</h2>')
        if body:
            parts.append("<p>How well each score ranks wrong predictions above right ones.</p>")
            parts.append(_table(header, body, best, group_rows=True))
        figs("selective")
        if metric_rows:
            keys: list[str] = []
            for _, mt in metric_rows:
                keys += [k for k in mt if k not in keys]
            parts.append("<p>All metrics, uncalibrated, whole test set.</p>")
            body = [[_method_label(results, n)] + [_fmt(mt.get(k)) for k in keys] for n, mt in metric_rows]
            best = [set()] + [_best([mt.get(k) for _, mt in metric_rows], k) for k in keys]
            parts.append(_table(["method"] + [_metric_label(k) for k in keys], body, best))

    if any(f[0] == "segmentation" for f in figures):
        parts.append('<h2 id="segmentation">Segmentation examples</h2>')
        figs("segmentation")

    parts.append('<h2 id="run">Run</h2>')
    header, body, totals = _runtime_parts(results)
    if body:
        parts.append(_table(header, body))
    if totals:
        parts.append("<p>" + ", ".join(f"{e(k.replace('_', ' '))}: {_fmt(float(v), 1)} s" for k, v in totals) + "</p>")
    notes = [(name, w) for name, m in (results.get("methods") or {}).items() for w in (m.get("warnings") or [])]
    if notes:
        parts.append("<p>Warnings raised during the run (a nearly separable half of the 2-fold protocol, for "
                     "example, makes the calibrators' parameters run to their bounds):</p><ul>")
        parts += [f"<li>{e(_method_label(results, name))}: {e(str(w.get('message', '')))} "
                  f"(× {e(str(w.get('count', 1)))})</li>" for name, w in notes]
        parts.append("</ul>")
    cfg = _flat(results.get("config") or {})
    if cfg:
        parts.append("<p>Configuration:</p>" + _table(["setting", "value"], [list(kv) for kv in cfg]).replace(
            "<table>", '<table class="kv">', 1))
    parts.append(f'<p class="meta">results schema {e(str(results.get("schema", "")))}; '
                 "numbers from results.json, also in results.csv.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


# ----------------------------------------------------------------------------- Markdown


def _md_table(header: list[str], body: list[list[str]], best: list[set[int]] | None = None) -> str:
    def cell(i, j, v):
        v = v.replace("|", "\\|")
        return f"**{v}**" if best and j < len(best) and i in best[j] else v

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(i, j, v) for j, v in enumerate(row)) + " |" for i, row in enumerate(body)]
    return "\n".join(lines)


def to_markdown(results: Mapping, figures: list[str] | None = None) -> str:
    """report.md: summary, main table (best per column in bold), OOD table, figure links, run times.

    Example:
        >>> from netuq.report.schema import example_results
        >>> print(to_markdown(example_results(methods=("ensemble",))).splitlines()[0])
        # netuq benchmark report: classification
    """
    return _markdown(validate_results(results), figures)


def _markdown(results: Mapping, figures: list[str] | None, lines: list[str] | None = None) -> str:
    out = [f"# netuq benchmark report: {results.get('task', '')}", "", "## Summary", ""]
    out += [f"- {line}" for line in (lines if lines is not None else _summary_lines(results))]
    header, body, best = _main_table_parts(results)
    if body:
        out += ["", "## In-distribution calibration", "",
                "Test set, mean ± std over repeated 2-fold cross-validation; best per column in bold.", "",
                _md_table(header, body, best)]
    header, body, best = _ood_table_parts(results, "ood")
    if body:
        out += ["", "## Out-of-distribution detection", "", _md_table(header, body, best)]
    if figures:
        out += ["", "## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures]
    header, body, totals = _runtime_parts(results)
    if body:
        out += ["", "## Run times", "", _md_table(header, body)]
    if totals:
        out += [""] + [f"- {k.replace('_', ' ')}: {_fmt(float(v), 1)} s" for k, v in totals]
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- entry point


def render_report(results: Mapping, out_dir: str | Path, *, dpi: int = 100, csv: bool = True) -> Path:
    """Write the report of a benchmark run into ``out_dir`` and return the path of report.html.

    Files: ``report.html`` (self-contained: figures embedded as base64 PNG data URIs, tables,
    summary, how to read it, run configuration and times), ``report.md`` (the tables in
    Markdown, linking the PNGs), ``figures/*.png`` and, with ``csv``, ``results.csv``.

    Args:
        results: a results dict following :mod:`netuq.report.schema` (validated first).
        out_dir: output folder (created if needed).
        dpi: resolution of the PNG figures.
        csv: also write results.csv (:func:`write_csv`).

    Raises:
        ValueError: ``results`` does not follow the schema.

    Example:
        >>> import tempfile
        >>> stat = {"mean": 0.42, "std": 0.01}
        >>> results = {"task": "classification", "methods": {"ensemble": {"in_distribution": {"none": {"nll": stat}}}}}
        >>> path = render_report(results, tempfile.mkdtemp())
        >>> path.name, "0.420 ± 0.010" in path.read_text()
        ('report.html', True)
    """
    validate_results(results)
    out = Path(out_dir)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    rendered = []
    for section, name, fig, caption in _figures(results):
        png = _png(fig, dpi)
        (fig_dir / name).write_bytes(png)
        rendered.append((section, name, png, caption))
    lines = _summary_lines(results)
    html_path = out / "report.html"
    html_path.write_text(_render_html(results, rendered, lines), encoding="utf-8")
    md = _markdown(results, [f"figures/{f[1]}" for f in rendered], lines)
    (out / "report.md").write_text(md, encoding="utf-8")
    if csv:
        _write_csv(results, out / "results.csv")
    return html_path
