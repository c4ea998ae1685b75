"""Which figures a results dict allows, with their captions, and PNG rendering.

:func:`figure_blocks` decides the figures (lazily: nothing is drawn and matplotlib is not
imported until a figure's ``draw()`` is called); :func:`png` renders one. With several seeds,
curves, histograms and reliability diagrams are the first seed's and the captions say so; the
shift curves are the means over seeds.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping

from . import plots
from ._text import cal_label, fmt, is_aleatoric, method_label, metric_label, n_seeds, score_label
from .model import Figure
from .sentences import ood_kinds
from .tables import per_class_rows

__all__ = ["figure_blocks", "png", "slug"]


def slug(name: str) -> str:
    """A file-name-safe version of ``name`` (letters, digits, ``_.-``; never empty, never ``..``)."""
    s = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("_.") or "x"
    return s


def _best_score(m: Mapping, results: Mapping | None = None) -> str | None:
    ood = m.get("ood") or {}
    scored = [(s, v.get("auroc")) for s, v in ood.items()
              if v.get("auroc") is not None and not is_aleatoric(s, results)]
    if scored:
        return max(scored, key=lambda t: t[1])[0]
    return next(iter(m.get("roc") or m.get("ood_hist") or {}), None)


#: Widest figure in inches: at the report's 100 dpi it shows at its own size in a 1200 px page,
#: so its fonts are not scaled down.
MAX_WIDTH_IN = 11.6


def _cols(n: int, panel: float, gap: float, margins: float = 1.4) -> int:
    """Panels per row so that the figure stays within :data:`MAX_WIDTH_IN`."""
    fit = max(1, int((MAX_WIDTH_IN - margins + gap) // (panel + gap)))
    return max(1, min(n, fit))


def _grid(n: int, *, panel=(4.2, 3.3), margins=(0.7, 0.65, 0.55, 0.4), gap=(0.95, 0.75)):
    cols = _cols(n, panel[0], gap[0], margins[0] + margins[1])
    rows = math.ceil(n / cols)
    fig, axes = plots.grid_figure(rows, cols, panel=panel, margins=margins, gap=gap)
    flat = axes.ravel()
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _auc_text(auc) -> str:
    return f"AUROC {fmt(auc)}" if auc is not None else "AUROC not recorded"


def figure_blocks(results: Mapping, *, class_names=None) -> dict[str, list[Figure]]:
    """Section id -> the figures of that section (``"reliability"``, ``"per-class"``, ``"shift"``,
    ``"ood"``, ``"ood-kinds"``, ``"selective"``, ``"segmentation"``), each drawn only when its
    ``draw()`` is called. ``class_names`` overrides the names the results record."""
    methods = results["methods"]
    colors = plots.method_colors(list(methods))
    seeds = results.get("seeds")
    first = f" (seed {next(iter(seeds))} of {n_seeds(results)})" if seeds else ""
    # Numbers printed on a seed-0 figure are seed 0's own.
    own = (next(iter(seeds.values())).get("methods") or {}) if seeds else methods
    out: dict[str, list[Figure]] = {}

    def add(section: str, file: str, caption: str, draw, alt: str = "") -> None:
        out.setdefault(section, []).append(Figure(file, caption, draw, alt))

    # Reliability diagrams: one figure per method, one panel per calibration (every calibrator recorded).
    for name, m in methods.items():
        rel = m.get("reliability") or {}
        if not rel:
            continue
        titles = {}
        for cal, bins in rel.items():
            ece = bins.get("ece")
            if ece is None and cal in ("uncalibrated", "none"):
                ece = ((own.get(name) or {}).get("metrics") or {}).get("ece")
            titles[cal] = f"{cal_label(cal, results)}" + (f" (ECE {fmt(ece)})" if ece is not None else "")

        def draw(name=name, rel=rel, titles=titles):
            fig, axes = _grid(len(rel), gap=(1.45, 0.85))
            for ax, (cal, bins) in zip(axes, rel.items()):
                plots.reliability_diagram(bins, ax=ax, title=f"{method_label(results, name)}: {titles[cal]}",
                                          color=colors[name])
            return fig

        add("reliability", f"reliability_{slug(name)}.png",
            f"{method_label(results, name)}: accuracy per confidence bin on the test set{first}", draw,
            f"Reliability diagrams of {method_label(results, name)}: " + "; ".join(titles.values()) + ".")

    # Per class: the confusion matrix of the best method.
    names, _methods, _rows, best = per_class_rows(results, class_names)
    if best is not None and len(names) <= 30:
        conf = methods[best]["per_class"]["confusion"]
        acc = methods[best]["per_class"].get("accuracy") or []
        low = min(((a, n) for a, n in zip(acc, names) if a is not None), default=None)
        add("per-class", f"confusion_{slug(best)}.png",
            f"{method_label(results, best)}: confusion matrix on the test set{first}; each row shaded by the share "
            "of its true class",
            lambda: plots.confusion_plot(conf, names, title=method_label(results, best)),
            f"Confusion matrix of {method_label(results, best)} over {len(names)} classes"
            + (f"; least accurate class {low[1]} ({fmt(low[0])})" if low else "") + ".")

    # Shift: accuracy, ECE and NLL against severity.
    shift_metrics = [k for k in ("accuracy", "ece", "nll", "ece_temperature")
                     if any(r.get(k) is not None for m in methods.values()
                            for rs in (m.get("shift") or {}).values() for r in rs)]
    if shift_metrics:
        def draw_shift():
            fig, axes = _grid(len(shift_metrics), panel=(4.6, 3.3), margins=(0.8, 0.25, 0.6, 0.3), gap=(0.9, 0.75))
            for i, (ax, metric) in enumerate(zip(axes, shift_metrics)):
                plots.shift_plot(results, metric, ax=ax, per_kind=True, colors=colors, legend=i == 0)
            return fig

        kinds = sorted({k for m in methods.values() for k in (m.get("shift") or {})})
        over = f", mean over {n_seeds(results)} seeds" if seeds else ""
        clean = "; severity 0 (clean) is the clean test set" + (
            " (for ECE after temperature scaling: the calibration table's temperature-scaled ECE)"
            if "ece_temperature" in shift_metrics else "")
        shown = [k.replace("_", " ") for k in kinds]
        if len(kinds) > 1:
            head = f"Mean over the shifts ({', '.join(shown)}{over}); faint lines: each shift alone"
        else:
            head = shown[0][0].upper() + shown[0][1:] + (f" ({over[2:]})" if over else "")
        add("shift", "shift.png", head + clean, draw_shift,
            f"{', '.join(metric_label(k) for k in shift_metrics)} against shift severity for "
            + ", ".join(method_label(results, n) for n in methods if methods[n].get("shift")) + ".")

    # OOD: ROC of each method's best score, and score histograms (all kinds pooled).
    _ood_figures(results, methods, own, colors, first, add)
    # OOD per kind (several kinds only: with one, the pooled figures are that kind's).
    _kind_figures(results, methods, own, colors, first, add)

    # Risk-coverage.
    rc = {n: m["risk_coverage"] for n, m in methods.items() if m.get("risk_coverage")}
    if rc:
        aurc = {n: ((own.get(n) or {}).get("metrics") or {}).get("aurc") for n in rc}
        add("selective", "risk_coverage.png",
            f"Error rate of the predictions kept when abstaining on the least confident ones{first}",
            lambda: plots.risk_coverage_plot(rc, colors=colors, aurc=aurc),
            "Risk-coverage curves: " + "; ".join(
                f"{method_label(results, n)}" + (f" AURC {fmt(aurc[n])}" if aurc.get(n) is not None else "")
                for n in rc) + ".")

    # Segmentation examples.
    seg_names = None
    if any(m.get("segmentation_examples") for m in methods.values()):
        nc = (results.get("data") or {}).get("num_classes")
        seg_names = class_names if class_names is not None else (results.get("data") or {}).get("class_names")
        if seg_names is None and nc:
            seg_names = [str(i) for i in range(int(nc))]
    for name, m in methods.items():
        ex = m.get("segmentation_examples")
        if not ex:
            continue

        def draw_seg(name=name, ex=ex):
            return plots.segmentation_grid(ex["image"], ex["label"], ex["prediction"], ex["entropy"],
                                           ex.get("epistemic"), ex.get("anomaly"),
                                           num_classes=(results.get("data") or {}).get("num_classes"),
                                           title=method_label(results, name), class_names=seg_names)

        k = min(len(ex["image"]), 4)
        cols = "image, labels, prediction, entropy" + (", epistemic uncertainty" if ex.get("epistemic") else "")
        add("segmentation", f"segmentation_{slug(name)}.png",
            f"{method_label(results, name)}: test scenes (unknown objects outlined in red){first}", draw_seg,
            f"{k} test scenes segmented by {method_label(results, name)}; columns: {cols}"
            + ("; unknown objects outlined in red" if ex.get("anomaly") else "") + ".")
    _unique_files(out)
    return out


def _ood_figures(results, methods, own, colors, first, add) -> None:
    roc_curves, roc_auc, roc_labels, hist = {}, {}, {}, []
    for name, m in methods.items():
        s = _best_score(m, results)
        if s is None:
            continue
        if s in (m.get("roc") or {}):
            roc_curves[name] = m["roc"][s]
            roc_auc[name] = ((own.get(name) or {}).get("ood") or {}).get(s, {}).get("auroc")
            roc_labels[name] = f"{method_label(results, name)}, {score_label(s, results)}"
        if s in (m.get("ood_hist") or {}):
            hist.append((name, s))
    pooled = " (all kinds pooled)" if len(ood_kinds(results)) > 1 else ""
    if roc_curves:
        add("ood", "roc.png", f"ROC of OOD detection{pooled}, each method with its best score{first}",
            lambda: plots.roc_plot(roc_curves, colors=colors, auroc=roc_auc, labels=roc_labels),
            f"ROC curves of OOD detection{pooled}: " + "; ".join(
                f"{roc_labels[n]} {_auc_text(roc_auc[n])}" for n in roc_curves) + ".")
    if hist:
        def draw_hist():
            fig, axes = _grid(len(hist), panel=(3.8, 2.9), margins=(0.7, 0.2, 0.55, 0.35), gap=(0.8, 0.8))
            for ax, (name, s) in zip(axes, hist):
                auc = ((own.get(name) or {}).get("ood") or {}).get(s, {}).get("auroc")
                title = f"{method_label(results, name)}" + (f" (AUROC {fmt(auc)})" if auc is not None else "")
                plots.ood_histogram(methods[name]["ood_hist"][s], ax=ax, title=title, xlabel=score_label(s, results))
            return fig

        add("ood", "ood_hist.png", f"Uncertainty on in-distribution and OOD inputs{pooled}{first}", draw_hist,
            f"Histograms of each method's best uncertainty score on in-distribution and OOD inputs{pooled}: "
            + "; ".join(f"{method_label(results, n)}, {score_label(s, results)}" for n, s in hist) + ".")


def _kind_figures(results, methods, own, colors, first, add) -> None:
    kinds = ood_kinds(results)
    if len(kinds) < 2:
        return
    for kind in kinds:
        picks = []
        for name, m in methods.items():
            per_kind = ((own.get(name) or {}).get("ood_kinds") or {}).get(kind, {})
            scored = [(s, v.get("auroc")) for s, v in per_kind.items()
                      if v.get("auroc") is not None and not is_aleatoric(s, results)]
            if not scored:
                continue
            s, auc = max(scored, key=lambda t: t[1])
            roc = ((m.get("ood_kinds_roc") or {}).get(kind) or {}).get(s)
            hist = ((m.get("ood_kinds_hist") or {}).get(kind) or {}).get(s)
            if roc or hist:
                picks.append((name, s, auc, roc, hist))
        if not picks:
            continue
        label = kind.replace("_", " ")

        def draw(picks=picks, label=label):
            with_hist = [p for p in picks if p[4]]
            fig, axes = _grid(1 + len(with_hist), panel=(3.8, 2.9), margins=(0.7, 0.2, 0.55, 0.35), gap=(0.8, 0.8))
            curves = {p[0]: p[3] for p in picks if p[3]}
            if curves:
                labels = {p[0]: f"{method_label(results, p[0])}, {score_label(p[1], results)}" for p in picks}
                plots.roc_plot(curves, ax=axes[0], colors=colors, auroc={p[0]: p[2] for p in picks},
                               labels=labels, title=f"{label}: ROC")
            else:
                axes[0].set_visible(False)
            for ax, (name, s, auc, _roc, hist) in zip(axes[1:], with_hist):
                plots.ood_histogram(hist, ax=ax, title=f"{method_label(results, name)} (AUROC {fmt(auc)})",
                                    xlabel=score_label(s, results), labels=("in-distribution", label))
            return fig

        add("ood-kinds", f"ood_kind_{slug(kind)}.png",
            f"OOD inputs of kind {label}: ROC and score histograms, each method with its best score on this "
            f"kind{first}", draw,
            f"ROC curves and score histograms for OOD inputs of kind {label}: " + "; ".join(
                f"{method_label(results, n)}, {score_label(s, results)} {_auc_text(a)}"
                for n, s, a, _r, _h in picks) + ".")


def _unique_files(figs: dict[str, list[Figure]]) -> None:
    """Two method keys with the same slug must not share a file: suffix the later ones."""
    seen: set[str] = set()
    for items in figs.values():
        for i, f in enumerate(items):
            file, k = f.file, 2
            while file in seen:
                stem, ext = f.file.rsplit(".", 1)
                file, k = f"{stem}_{k}.{ext}", k + 1
            seen.add(file)
            if file != f.file:
                items[i] = Figure(file, f.caption, f.draw, f.alt)


def png(fig, dpi: int) -> bytes:
    """The PNG bytes of a matplotlib figure (no timestamp or software metadata: reproducible)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()
