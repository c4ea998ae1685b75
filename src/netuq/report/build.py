"""Build the format-neutral report (:mod:`netuq.report.model`) from a results dict, once.

Every section, table, paragraph and figure of report.html and report.md is decided here; the
renderers only turn the model into markup.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..results import sections as result_sections
from ._text import (
    QUICK_NOTE,
    best_indices,
    cal_label,
    changes_prediction,
    column_label,
    fmt,
    fmt_stat,
    is_aleatoric,
    is_quick,
    method_label,
    metric_label,
    n_seeds,
    score_label,
)
from .figures import figure_blocks
from .findings import findings
from .model import Bullets, Paragraph, Report, Section, Strong, Table
from .summary import _summary_lines
from .tables import (
    MAIN_METRICS,
    OOD_METRICS,
    SHIFT_METRICS,
    calibrations,
    kind_rows,
    main_table,
    score_rows,
    shift_stats,
)

__all__ = ["build_report"]

_S = Strong
HOW_TO_READ = (
    "Each method is evaluated on the held-out test set, before and after post-hoc calibration. ", _S("NLL"),
    " (negative log-likelihood) and the ", _S("Brier score"), " rate the whole predicted distribution (lower is "
    "better); ", _S("ECE"), " (expected calibration error, 15 equal-width bins) is the average gap between "
    "confidence and accuracy (lower is better; 0 = a predicted 80% is right 80% of the time). Calibrated numbers "
    "follow Ashukha et al. (2020): the test set is split in two halves at random, the calibrator is fitted on one "
    "half and scored on the other, both ways, repeated. With one seed the tables show mean ± standard deviation "
    "over these folds; with several seeds, mean ± standard deviation over the seeds. The best value of each "
    "column is in bold. A method is only clearly better when the gap exceeds the standard deviations: the summary "
    "names a winner only then, and otherwise says which methods are tied. ", _S("OOD detection"), " asks whether "
    "an uncertainty score ranks unfamiliar inputs above familiar ones: AUROC 1 is perfect, 0.5 is chance, below "
    "0.5 the score is ", _S("inverted"), " (it finds OOD inputs more familiar); FPR95 is the share of unfamiliar "
    "inputs still accepted when 95% of familiar ones are (lower is better). The heteroscedastic σ measures noise "
    "in the data (aleatoric), not the model's ignorance, so it is shown but not ranked as an OOD detector. Under ",
    _S("shift"), ", good uncertainty keeps ECE low as corruption grows, even while accuracy falls. In a ",
    _S("reliability diagram"), ", bars below the diagonal mean over-confidence.",
)


def _spread_cell(stat: Mapping | None) -> str:
    return fmt_stat(stat) if stat else "—"


def _auroc_cell(stat: Mapping | None) -> str:
    text = _spread_cell(stat)
    if stat and stat.get("mean") is not None and stat["mean"] < 0.5:
        text += " (inverted)"
    return text


def _means(rows: list[dict], key: str) -> list[float | None]:
    return [(r.get(key) or {}).get("mean") for r in rows]


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


def _spread_words(results: Mapping) -> str:
    n = n_seeds(results)
    if n >= 2:
        return f"mean ± standard deviation over {n} seeds"
    return "mean ± standard deviation over the folds of repeated 2-fold cross-validation (Ashukha et al. 2020)"


def _header(results: Mapping) -> list:
    data = results.get("data") or {}
    meta = [f"{len(results['methods'])} methods"]
    if data:
        meta.append(", ".join(f"{k} {fmt(v)}" for k, v in data.items()))
    if results.get("seeds"):
        meta.append(f"{n_seeds(results)} seeds ({', '.join(results['seeds'])})")
    total = (results.get("runtime_s") or {}).get("total_this_run")
    if isinstance(total, (int, float)) and not isinstance(total, bool):
        meta.append(f"run time {fmt(float(total), 1)} s")
    blocks: list = [Paragraph(" · ".join(meta), style="meta")]
    if is_quick(results):
        blocks.append(Paragraph(_S(QUICK_NOTE[0].upper() + QUICK_NOTE[1:] + "."), style="note"))
    notes = [str(n) for n in (results.get("notes") or []) if isinstance(n, str)]
    if notes:  # how the run configured its methods (netuq benchmark writes them)
        blocks.append(Bullets(notes))
    return blocks


def _findings_section(results: Mapping) -> Section | None:
    rows = findings(results)
    if all(f.verdict == "not measured" for f in rows):
        return None
    n = n_seeds(results)
    sec = Section("findings", "Findings from the literature")
    sec.blocks.append(Paragraph(
        "Each claim is checked in every seed by the rule shown; it holds only if it holds in every seed, does not "
        "hold if it fails in every seed, and is inconclusive otherwise"
        + (" (with one seed every verdict is inconclusive)." if n < 2 else ".")))
    sec.blocks.append(Table(["claim", "source", "rule", "evidence", "verdict"],
                            [[f.claim, f.source, f.rule, f.evidence, f.verdict] for f in rows]))
    return sec


def _prediction_words(results: Mapping, cals: list[str]) -> str:
    """Which calibrators keep the predicted class and which can change it (and so the accuracy)."""
    keep = [cal_label(c, results) for c in cals if changes_prediction(c, results) is False]
    change = [cal_label(c, results) for c in cals if changes_prediction(c, results)]
    parts = []
    if keep:
        parts.append(f"{_join(keep)} keep{'s' if len(keep) == 1 else ''} every predicted class (accuracy unchanged)")
    if change:
        parts.append(f"{_join(change)} can change the predicted class (accuracy may differ from uncalibrated)")
    text = "; ".join(parts) + "."
    return text[0].upper() + text[1:] if parts else ""


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _calibration_section(results: Mapping, figs) -> Section | None:
    rows = main_table(results)
    sec = Section("calibration", "In-distribution calibration")
    if rows:
        sec.blocks.append(Paragraph(f"Test set, {_spread_words(results)}; best per column in bold."))
        body = [[method_label(results, r["method"]), cal_label(r["calibration"], results)]
                + [fmt_stat(r[k]) for k in MAIN_METRICS] for r in rows]
        best = [set(), set()] + [best_indices(_means(rows, k), k) for k in MAIN_METRICS]
        sec.blocks.append(Table(["method", "calibration"] + [column_label(k) for k in MAIN_METRICS], body, best,
                                group_rows=True))
        words = _prediction_words(results, [c for c in calibrations(results) if c not in ("none", "uncalibrated")])
        if words:
            sec.blocks.append(Paragraph(words))
    temps = [(n, m["temperature"]) for n, m in results["methods"].items() if m.get("temperature") is not None]
    if temps:
        over = f" (mean over {n_seeds(results)} seeds)" if results.get("seeds") else ""
        sec.blocks.append(Paragraph(f"Temperature fitted on the validation set{over}: "
                                    + ", ".join(f"{method_label(results, n)} T = {fmt(t)}" for n, t in temps) + "."))
    sec.blocks += figs.get("reliability", [])
    return sec if sec.blocks else None


def _score_table(results: Mapping, rows: list[dict], metrics, *, rank_aleatoric: bool) -> Table:
    metrics = [k for k in metrics if any((r.get(k) or {}).get("mean") is not None for r in rows)]
    ranked = [i for i, r in enumerate(rows) if rank_aleatoric or not is_aleatoric(r["score"], results)]
    body = []
    for r in rows:
        label = score_label(r["score"], results)
        if not rank_aleatoric and is_aleatoric(r["score"], results):
            label += " (aleatoric, not ranked)"
        body.append([method_label(results, r["method"]), label]
                    + [(_auroc_cell if k == "auroc" else _spread_cell)(r.get(k)) for k in metrics])
    best = [set(), set()]
    for k in metrics:
        vals = [(rows[i].get(k) or {}).get("mean") for i in ranked]
        best.append({ranked[j] for j in best_indices(vals, k)})
    return Table(["method", "score"] + [column_label(k) for k in metrics], body, best, group_rows=True)


def _ood_section(results: Mapping, figs) -> Section | None:
    rows = score_rows(results, "ood")
    sec = Section("ood", "Out-of-distribution detection")
    if rows:
        what = "unknown-object pixels against in-distribution pixels" if results.get("task") == "segmentation" \
            else "OOD inputs against the test set"
        sec.blocks.append(Paragraph(
            f"Scores rank {what}, all kinds of OOD input pooled; higher score = less sure; "
            f"{_spread_words(results) if results.get('seeds') else 'one seed'}. Best per column in bold; "
            "AUROC below 0.5 is marked inverted; the aleatoric σ is shown but not ranked."))
        sec.blocks.append(_score_table(results, rows, OOD_METRICS, rank_aleatoric=False))
    kinds, krows = kind_rows(results)
    if krows:
        sec.blocks.append(Paragraph("AUROC per kind of OOD input."))
        body = [[method_label(results, r["method"]), score_label(r["score"], results)
                 + (" (aleatoric, not ranked)" if is_aleatoric(r["score"], results) else "")]
                + [_auroc_cell(r.get(k)) for k in kinds] for r in krows]
        ranked = [i for i, r in enumerate(krows) if not is_aleatoric(r["score"], results)]
        best = [set(), set()] + [{ranked[j] for j in best_indices([(krows[i].get(k) or {}).get("mean")
                                                                   for i in ranked], "auroc")} for k in kinds]
        sec.blocks.append(Table(["method", "score"] + [f"{k.replace('_', ' ')}: AUROC ↑" for k in kinds], body, best,
                                group_rows=True))
    sec.blocks += figs.get("ood", [])
    return sec if sec.blocks else None


def _shift_section(results: Mapping, figs) -> Section | None:
    stats = shift_stats(results)
    sec = Section("shift", "Under distribution shift")
    if stats:
        metrics = [k for k in SHIFT_METRICS if any(k in v for v in stats.values())]
        rows = [{"method": n, **v} for n, v in stats.items()]
        sev = (results.get("config") or {}).get("severities") or [1, 2, 3, 4, 5]
        sev_text = ", ".join(map(str, sev)) if isinstance(sev, (list, tuple)) else str(sev)
        over = f"; {_spread_words(results)}" if results.get("seeds") else ""
        sec.blocks.append(Paragraph(f"Averaged over all kinds of shift and severities {sev_text}{over}."))
        sec.blocks.append(Table(["method"] + [column_label(k) for k in metrics],
                                [[method_label(results, r["method"])] + [_spread_cell(r.get(k)) for k in metrics]
                                 for r in rows],
                                [set()] + [best_indices(_means(rows, k), k) for k in metrics]))
    sec.blocks += figs.get("shift", [])
    return sec if sec.blocks else None


def _selective_section(results: Mapping, figs) -> Section | None:
    sec = Section("selective", "Misclassification detection and selective prediction")
    rows = score_rows(results, "misclassification")
    if rows:
        sec.blocks.append(Paragraph("How well each score ranks wrong predictions above right ones."))
        sec.blocks.append(_score_table(results, rows, ("auroc", "aupr"), rank_aleatoric=True))
    sec.blocks += figs.get("selective", [])
    metric_rows = [(n, m["metrics"]) for n, m in results["methods"].items() if m.get("metrics")]
    if metric_rows:
        keys: list[str] = []
        for _, mt in metric_rows:
            keys += [k for k in mt if k not in keys]
        over = f" (mean over {n_seeds(results)} seeds)" if results.get("seeds") else ""
        sec.blocks.append(Paragraph(f"All metrics, uncalibrated, whole test set{over}."))
        body = [[method_label(results, n)] + [fmt(mt.get(k)) for k in keys] for n, mt in metric_rows]
        best = [set()] + [best_indices([mt.get(k) for _, mt in metric_rows], k) for k in keys]
        sec.blocks.append(Table(["method"] + [metric_label(k) for k in keys], body, best))
    return sec if sec.blocks else None


def _run_section(results: Mapping) -> Section:
    sec = Section("run", "Run")
    rt = results.get("runtime_s") or {}
    per = dict(rt.get("methods") or {})
    for name, m in results["methods"].items():
        if name not in per and m.get("runtime_s"):
            per[name] = m["runtime_s"]
    phases: list[str] = []
    for v in per.values():
        phases += [p for p in v if p not in phases]
    if per:
        if results.get("seeds"):
            sec.blocks.append(Paragraph(f"Run times summed over the {n_seeds(results)} seeds."))
        sec.blocks.append(Table(["method"] + [f"{p} (s)" for p in phases],
                                [[method_label(results, n) if n in results["methods"] else str(n)]
                                 + [fmt(v.get(p), 1, sci=False) for p in phases] for n, v in per.items()]))
    totals = [(k, v) for k, v in rt.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if totals:
        sec.blocks.append(Paragraph(", ".join(f"{k.replace('_', ' ')}: {fmt(float(v), 1)} s" for k, v in totals)))
    notes = [(name, w) for name, m in results["methods"].items() for w in (m.get("warnings") or [])]
    if notes:
        sec.blocks.append(Paragraph("Warnings raised during the run (a nearly separable half of the 2-fold "
                                    "protocol, for example, makes the calibrators' parameters run to their bounds):"))
        sec.blocks.append(Bullets([f"{method_label(results, name)}: {w.get('message', '')} (× {w.get('count', 1)})"
                                   for name, w in notes]))
    cfg = _flat(results.get("config") or {})
    if cfg:
        sec.blocks.append(Paragraph("Configuration:"))
        sec.blocks.append(Table(["setting", "value"], [list(kv) for kv in cfg], style="kv"))
    sec.blocks.append(Paragraph(f"results schema {results.get('schema', '')}; numbers from results.json, also in "
                                "results.csv.", style="meta"))
    return sec


def build_report(results: Mapping[str, Any]) -> Report:
    """The report of a (validated) results dict as a :class:`~netuq.report.model.Report`.

    Example:
        >>> from netuq.report import example_results
        >>> [s.title for s in build_report(example_results(methods=("ensemble",))).sections][:3]
        ['Summary', 'How to read this report', 'Findings from the literature']
    """
    figs = figure_blocks(results)
    report = Report(f"netuq benchmark report: {results.get('task', '')}", _header(results))
    lines = _summary_lines(results)
    summary = Section("summary", "Summary")
    summary.blocks.append(Bullets(lines, style="summary") if lines else
                          Paragraph("No comparable numbers in these results."))
    report.sections.append(summary)
    report.sections.append(Section("how-to-read", "How to read this report", [Paragraph(HOW_TO_READ, "howto")]))
    found = _findings_section(results)
    if found is not None:
        report.sections.append(found)
    for make in (_calibration_section, _ood_section, _shift_section, _selective_section):
        sec = make(results, figs)
        if sec is not None:
            report.sections.append(sec)
    if figs.get("segmentation"):
        report.sections.append(Section("segmentation", "Segmentation examples", list(figs["segmentation"])))
    for key, section in list(result_sections.SECTIONS.items()):  # registered result sections, read now
        if section.render is not None and any(key in m for m in results["methods"].values()):
            blocks = list(section.render(results) or [])
            if blocks:
                report.sections.append(Section(key, section.title, blocks))
    report.sections.append(_run_section(results))
    return report
