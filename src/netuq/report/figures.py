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
from ._text import cal_label, fmt, is_aleatoric, method_label, n_seeds, score_label
from .model import Figure

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


def figure_blocks(results: Mapping) -> dict[str, list[Figure]]:
    """Section id -> the figures of that section (``"reliability"``, ``"shift"``, ``"ood"``,
    ``"selective"``, ``"segmentation"``), each drawn only when its ``draw()`` is called."""
    methods = results["methods"]
    colors = plots.method_colors(list(methods))
    seeds = results.get("seeds")
    first = f" (seed {next(iter(seeds))} of {n_seeds(results)})" if seeds else ""
    # Numbers printed on a seed-0 figure are seed 0's own.
    own = (next(iter(seeds.values())).get("methods") or {}) if seeds else methods
    out: dict[str, list[Figure]] = {}

    def add(section: str, file: str, caption: str, draw) -> None:
        out.setdefault(section, []).append(Figure(file, caption, draw))

    # Reliability diagrams: one figure per method, one panel per calibration.
    for name, m in methods.items():
        rel = m.get("reliability") or {}
        if not rel:
            continue

        def draw(name=name, m=m, rel=rel):
            fig, axes = plots.grid_figure(1, len(rel), gap=(1.45, 0.75))
            for ax, (cal, bins) in zip(axes[0], rel.items()):
                ece = bins.get("ece")
                if ece is None and cal in ("uncalibrated", "none"):
                    ece = ((own.get(name) or {}).get("metrics") or {}).get("ece")
                title = f"{method_label(results, name)}: {cal_label(cal, results)}"
                if ece is not None:
                    title += f" (ECE {fmt(ece)})"
                plots.reliability_diagram(bins, ax=ax, title=title, color=colors[name])
            return fig

        add("reliability", f"reliability_{slug(name)}.png",
            f"{method_label(results, name)}: accuracy per confidence bin on the test set{first}", draw)

    # Shift: accuracy, ECE and NLL against severity.
    shift_metrics = [k for k in ("accuracy", "ece", "nll", "ece_temperature")
                     if any(r.get(k) is not None for m in methods.values()
                            for rs in (m.get("shift") or {}).values() for r in rs)]
    if shift_metrics:
        def draw_shift():
            fig, axes = plots.grid_figure(1, len(shift_metrics), margins=(0.7, 0.2, 0.55, 0.3), gap=(0.8, 0.7))
            for i, (ax, metric) in enumerate(zip(axes[0], shift_metrics)):
                plots.shift_plot(results, metric, ax=ax, per_kind=True, colors=colors, legend=i == 0)
            return fig

        kinds = sorted({k for m in methods.values() for k in (m.get("shift") or {})})
        over = f", mean over {n_seeds(results)} seeds" if seeds else ""
        add("shift", "shift.png", "Mean over the shifts (" + ", ".join(k.replace("_", " ") for k in kinds)
            + f"{over}); faint lines: each shift alone; severity 0 is the clean test set", draw_shift)

    # OOD: ROC of each method's best score, and score histograms.
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
    if roc_curves:
        add("ood", "roc.png", f"ROC of OOD detection, each method with its best score{first}",
            lambda: plots.roc_plot(roc_curves, colors=colors, auroc=roc_auc, labels=roc_labels))
    if hist:
        def draw_hist():
            cols = min(3, len(hist))
            rows = math.ceil(len(hist) / cols)
            fig, axes = plots.grid_figure(rows, cols, panel=(3.8, 2.9), margins=(0.7, 0.2, 0.55, 0.35),
                                          gap=(0.8, 0.8))
            axes = axes.ravel()
            for ax, (name, s) in zip(axes, hist):
                auc = ((own.get(name) or {}).get("ood") or {}).get(s, {}).get("auroc")
                title = f"{method_label(results, name)}" + (f" (AUROC {fmt(auc)})" if auc is not None else "")
                plots.ood_histogram(methods[name]["ood_hist"][s], ax=ax, title=title, xlabel=score_label(s, results))
            for ax in axes[len(hist):]:
                ax.set_visible(False)
            return fig

        add("ood", "ood_hist.png", f"Uncertainty on in-distribution and OOD inputs{first}", draw_hist)

    # Risk-coverage.
    rc = {n: m["risk_coverage"] for n, m in methods.items() if m.get("risk_coverage")}
    if rc:
        aurc = {n: ((own.get(n) or {}).get("metrics") or {}).get("aurc") for n in rc}
        add("selective", "risk_coverage.png",
            f"Error rate of the predictions kept when abstaining on the least confident ones{first}",
            lambda: plots.risk_coverage_plot(rc, colors=colors, aurc=aurc))

    # Segmentation examples.
    for name, m in methods.items():
        ex = m.get("segmentation_examples")
        if not ex:
            continue

        def draw_seg(name=name, ex=ex):
            return plots.segmentation_grid(ex["image"], ex["label"], ex["prediction"], ex["entropy"],
                                           ex.get("epistemic"), ex.get("anomaly"),
                                           num_classes=(results.get("data") or {}).get("num_classes"),
                                           title=method_label(results, name))

        add("segmentation", f"segmentation_{slug(name)}.png",
            f"{method_label(results, name)}: test scenes (unknown objects outlined in red){first}", draw_seg)
    _unique_files(out)
    return out


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
                items[i] = Figure(file, f.caption, f.draw)


def png(fig, dpi: int) -> bytes:
    """The PNG bytes of a matplotlib figure (no timestamp or software metadata: reproducible)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()
