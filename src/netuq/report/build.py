"""Build the format-neutral report (:mod:`netuq.report.model`) from a results dict, once.

Every section, table, paragraph and figure of report.html and report.md is decided here; the
renderers only turn the model into markup.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
from .sentences import (
    calibration_howto,
    calibration_sentence,
    data_sentence,
    idle_settings,
    ood_kinds,
    ood_sentence,
    protocol,
    run_meta,
    shift_sentence,
    temperature_sentence,
)
from .sentences import title as _title
from .summary import _summary_lines
from .tables import (
    MAIN_METRICS,
    OOD_METRICS,
    SHIFT_METRICS,
    calibrations,
    kind_rows,
    main_table,
    per_class_rows,
    score_rows,
    shift_stats,
)

__all__ = ["build_report"]

_S = Strong


def _how_to_read(results: Mapping) -> tuple:
    """The "How to read" paragraph; its protocol sentence follows what the results record."""
    return (
        "Each method is evaluated on the held-out test set, before and after post-hoc calibration. ", _S("NLL"),
        " (negative log-likelihood) and the ", _S("Brier score"), " rate the whole predicted distribution (lower is "
        "better); ", _S("ECE"), " (expected calibration error, 15 equal-width bins) is the average gap between "
        "confidence and accuracy (lower is better; 0 = a predicted 80% is right 80% of the time). ",
        calibration_howto(results), " The best value of each column is in bold; click a column's header to sort "
        "the table by it. A method is only clearly better when the gap exceeds the standard deviations: the summary "
        "names a winner only then, and otherwise says which methods are tied. ", _S("OOD detection"), " asks whether "
        "an uncertainty score ranks unfamiliar inputs above familiar ones: AUROC 1 is perfect, 0.5 is chance, below "
        "0.5 the score is ", _S("inverted"), " (it finds OOD inputs more familiar); FPR95 is the share of unfamiliar "
        "inputs still accepted when 95% of familiar ones are (lower is better). A score that measures noise in the "
        "data (aleatoric, like the heteroscedastic σ), not the model's ignorance, is shown but not ranked as an OOD "
        "detector. Under ", _S("shift"), ", good uncertainty keeps ECE low as corruption grows, even while accuracy "
        "falls. In a ", _S("reliability diagram"), ", bars below the diagonal mean over-confidence.",
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


def _header(results: Mapping) -> list:
    blocks: list = [Paragraph(run_meta(results), style="meta")]
    data = data_sentence(results)
    if data:
        blocks.append(Paragraph(data, style="meta"))
    if is_quick(results):
        blocks.append(Paragraph(_S(QUICK_NOTE[0].upper() + QUICK_NOTE[1:] + "."), style="note"))
    notes = [str(n) for n in (results.get("notes") or []) if isinstance(n, str)]
    if notes:  # how the run configured its methods (netuq benchmark writes them)
        blocks.append(Bullets(notes))
    return blocks


def _findings_section(results: Mapping) -> Section | None:
    rows = findings(results)
    measured = [f for f in rows if f.verdict != "not measured"]
    if not measured:
        return None
    n = n_seeds(results)
    sec = Section("findings", "Findings from the literature")
    sec.blocks.append(Paragraph(
        "Each claim is checked in every seed by the rule shown; it holds only if it holds in every seed, does not "
        "hold if it fails in every seed, and is inconclusive otherwise"
        + (" (with one seed every verdict is inconclusive)." if n < 2 else ".")))
    sec.blocks.append(Table(["claim", "source", "rule", "evidence", "verdict"],
                            [[f.claim, f.source, f.rule, f.evidence, f.verdict] for f in measured]))
    missing = [f.claim for f in rows if f.verdict == "not measured"]
    if missing:
        sec.blocks.append(Paragraph("Not checked (these results lack the methods or numbers they need): "
                                    + "; ".join(missing) + "."))
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
        sec.blocks.append(Paragraph(calibration_sentence(results)))
        body = [[method_label(results, r["method"]), cal_label(r["calibration"], results)]
                + [fmt_stat(r[k]) for k in MAIN_METRICS] for r in rows]
        best = [set(), set()] + [best_indices(_means(rows, k), k) for k in MAIN_METRICS]
        sec.blocks.append(Table(["method", "calibration"] + [column_label(k) for k in MAIN_METRICS], body, best,
                                group_rows=True))
        words = _prediction_words(results, [c for c in calibrations(results) if c not in ("none", "uncalibrated")])
        if words:
            sec.blocks.append(Paragraph(words))
    temps = temperature_sentence(results)
    if temps:
        sec.blocks.append(Paragraph(temps))
    sec.blocks += figs.get("reliability", [])
    return sec if sec.blocks else None


def _per_class_section(results: Mapping, figs, class_names) -> Section | None:
    names, methods, rows, best = per_class_rows(results, class_names)
    if not rows:
        return None
    sec = Section("per-class", "Per class")
    seeds = results.get("seeds")
    first = f" Seed {next(iter(seeds))} of {n_seeds(results)}." if seeds else ""
    unit = "pixels" if results.get("task") == "segmentation" else "images"
    where = ("the class_names argument" if class_names is not None else
             ("the class_names given to compare" if protocol(results).get("source") == "compare" else "the data set")
             if (results.get("data") or {}).get("class_names") else "their indices (no names recorded)")
    sec.blocks.append(Paragraph(
        f"Each class (named from {where}): how many test {unit} it has, the share of them each method predicts "
        "right (accuracy, i.e. recall) and the class-wise ECE of the class's own probability (Kull et al. 2019; "
        "the mean over classes is the class-wise ECE of the metrics table), uncalibrated." + first))
    worst = []
    for m in methods:
        accs = [(r[f"{m}:accuracy"], r["class"]) for r in rows if r.get(f"{m}:accuracy") is not None]
        if accs:
            a, c = min(accs)
            worst.append(f"{method_label(results, m)}: class {c} ({fmt(a)})")
    if worst:
        sec.blocks.append(Paragraph("Least accurate class: " + "; ".join(worst) + "."))
    header = ["class", f"test {unit}"]
    for m in methods:
        header += [f"{method_label(results, m)}: accuracy ↑", f"{method_label(results, m)}: ECE ↓"]
    body = [[r["class"], str(r["support"])] + [c for m in methods for c in
                                                (fmt(r.get(f"{m}:accuracy")), fmt(r.get(f"{m}:ece")))]
            for r in rows]
    sec.blocks.append(Table(header, body))
    if best is not None:
        sec.blocks.append(Paragraph(f"Confusion matrix of {method_label(results, best)} (the lowest NLL in the "
                                    "calibration table): rows are the true class, columns the predicted one."))
    sec.blocks += figs.get("per-class", [])
    return sec


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
        sec.blocks.append(Paragraph(ood_sentence(results)))
        sec.blocks.append(_score_table(results, rows, OOD_METRICS, rank_aleatoric=False))
    sec.blocks += figs.get("ood", [])
    kinds, krows = kind_rows(results)
    if krows and len(ood_kinds(results)) > 1:  # with one kind, the pooled table is the per-kind one
        sec.blocks.append(Paragraph(f"AUROC per kind of OOD input ({len(kinds)} kinds), then each kind's ROC "
                                    "curves and score histograms."))
        body = [[method_label(results, r["method"]), score_label(r["score"], results)
                 + (" (aleatoric, not ranked)" if is_aleatoric(r["score"], results) else "")]
                + [_auroc_cell(r.get(k)) for k in kinds] for r in krows]
        ranked = [i for i, r in enumerate(krows) if not is_aleatoric(r["score"], results)]
        best = [set(), set()] + [{ranked[j] for j in best_indices([(krows[i].get(k) or {}).get("mean")
                                                                   for i in ranked], "auroc")} for k in kinds]
        sec.blocks.append(Table(["method", "score"] + [f"{k.replace('_', ' ')}: AUROC ↑" for k in kinds], body, best,
                                group_rows=True))
        sec.blocks += figs.get("ood-kinds", [])
    return sec if sec.blocks else None


def _shift_section(results: Mapping, figs) -> Section | None:
    stats = shift_stats(results)
    sec = Section("shift", "Under distribution shift")
    if stats:
        metrics = [k for k in SHIFT_METRICS if any(k in v for v in stats.values())]
        rows = [{"method": n, **v} for n, v in stats.items()]
        sec.blocks.append(Paragraph(shift_sentence(results) or ""))
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
    idle = idle_settings(results)
    cfg = _flat({k: v for k, v in (results.get("config") or {}).items() if k not in idle})
    if cfg:
        sec.blocks.append(Paragraph("Configuration:"))
        sec.blocks.append(Table(["setting", "value"], [list(kv) for kv in cfg], style="kv"))
    if idle:
        why: dict[str, list[str]] = {}
        for k, reason in idle.items():
            why.setdefault(reason, []).append(k)
        sec.blocks.append(Paragraph("Settings without effect in this run (left out above): " + "; ".join(
            f"{', '.join(keys)} ({reason})" for reason, keys in why.items()) + "."))
    sec.blocks.append(Paragraph(f"results schema {results.get('schema', '')}; numbers from results.json, also in "
                                "results.csv.", style="meta"))
    return sec


def build_report(results: Mapping[str, Any], *, title: str | None = None,
                 class_names: Sequence[str] | None = None) -> Report:
    """The report of a (validated) results dict as a :class:`~netuq.report.model.Report`.

    Args:
        results: a results dict.
        title: the page's title (default: :func:`netuq.report.sentences.title`).
        class_names: one name per class, over the names the results record.

    Example:
        >>> from netuq.report import example_results
        >>> [s.title for s in build_report(example_results(methods=("ensemble",))).sections][:3]
        ['Summary', 'How to read this report', 'Findings from the literature']
    """
    figs = figure_blocks(results, class_names=class_names)
    report = Report(title or _title(results), _header(results))
    lines = _summary_lines(results)
    summary = Section("summary", "Summary")
    summary.blocks.append(Bullets(lines, style="summary") if lines else
                          Paragraph("No comparable numbers in these results."))
    report.sections.append(summary)
    report.sections.append(Section("how-to-read", "How to read this report",
                                   [Paragraph(_how_to_read(results), "howto")]))
    found = _findings_section(results)
    if found is not None:
        report.sections.append(found)
    for make in (_calibration_section, _ood_section, _shift_section, _selective_section):
        sec = make(results, figs)
        if sec is not None:
            report.sections.append(sec)
            if make is _calibration_section:
                per = _per_class_section(results, figs, class_names)
                if per is not None:
                    report.sections.append(per)
    if figs.get("segmentation"):
        report.sections.append(Section("segmentation", "Segmentation examples", list(figs["segmentation"])))
    for key, section in list(result_sections.SECTIONS.items()):  # registered result sections, read now
        if section.render is not None and any(key in m for m in results["methods"].values()):
            blocks = list(section.render(results) or [])
            if blocks:
                report.sections.append(Section(key, section.title, blocks))
    report.sections.append(_run_section(results))
    return report
