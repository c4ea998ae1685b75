"""Figures drawn from results data: each function takes plain data (the pieces of a results dict,
see :mod:`netuq.report.schema`) and an optional matplotlib ``ax``, and returns the figure.

Nothing here computes a metric: bins, curves and scores come ready-made from the benchmark (or
from ``netuq.metrics``). matplotlib is imported inside the functions; figures are created as
``matplotlib.figure.Figure`` objects (no pyplot, no global state, rendered with Agg when saved),
so drawing works on headless machines and never opens a window.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..traits import family_label

__all__ = [
    "reliability_diagram",
    "shift_plot",
    "risk_coverage_plot",
    "ood_histogram",
    "roc_plot",
    "segmentation_grid",
    "confusion_plot",
    "method_colors",
    "grid_figure",
    "METRIC_LABELS",
]

METRIC_LABELS = {
    "ece": "ECE",
    "nll": "NLL",
    "brier": "Brier score",
    "accuracy": "accuracy",
    "mce": "MCE",
    "adaptive_ece": "adaptive ECE",
    "classwise_ece": "classwise ECE",
    "aurc": "AURC",
    "ece_temperature": "ECE after temperature scaling",
    "entropy_mean": "mean predictive entropy",
    "auroc": "AUROC",
    "aupr": "AUPR",
    "fpr95": "FPR at 95% TPR",
}


def _label(mapping: Mapping[str, str], key: str) -> str:
    return mapping.get(key, str(key).replace("_", " "))


def method_colors(names: Sequence[str]) -> dict[str, Any]:
    """One distinct colour per method name, in order (matplotlib's tab10, then tab20).

    Example:
        >>> method_colors(["a", "b"])["b"]
        'C1'
    """
    palette = [f"C{i}" for i in range(10)]
    out: dict[str, Any] = {}
    for i, name in enumerate(names):
        if i < 10:
            out[name] = palette[i]
        else:
            import matplotlib

            out[name] = matplotlib.colormaps["tab20"]((i - 10) % 20)
    return out


def grid_figure(
    rows: int = 1,
    cols: int = 1,
    *,
    panel: tuple[float, float] = (4.2, 3.3),
    margins: tuple[float, float, float, float] = (0.7, 0.65, 0.55, 0.4),
    gap: tuple[float, float] = (0.95, 0.75),
):
    """A ``Figure`` with a rows x cols grid of axes laid out with fixed margins in inches.

    Cheaper than matplotlib's constrained layout (which re-measures every text): the report
    draws many figures. ``margins`` are (left, right, bottom, top), ``gap`` (horizontal,
    vertical), ``panel`` the (width, height) of one axes, all in inches.

    Returns:
        ``(fig, axes)`` with axes a (rows, cols) numpy array.

    Example:
        >>> fig, axes = grid_figure(1, 2)
        >>> axes.shape
        (1, 2)
    """
    from matplotlib.figure import Figure

    left, right, bottom, top = margins
    width = left + right + cols * panel[0] + (cols - 1) * gap[0]
    height = bottom + top + rows * panel[1] + (rows - 1) * gap[1]
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(rows, cols, squeeze=False)
    fig.subplots_adjust(
        left=left / width,
        right=1 - right / width,
        bottom=bottom / height,
        top=1 - top / height,
        wspace=gap[0] / panel[0],
        hspace=gap[1] / panel[1],
    )
    return fig, axes


def _figure_ax(ax):
    if ax is not None:
        return ax.figure, ax
    fig, axes = grid_figure()
    return fig, axes[0, 0]


def _floats(values) -> np.ndarray:
    """A list with ``None`` (JSON null) or a tensor/array to a float64 array with NaN."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    if isinstance(values, np.ndarray):
        return values.astype(np.float64)
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _as_bins(bins) -> dict[str, np.ndarray]:
    if hasattr(bins, "to_dict") and not isinstance(bins, Mapping):
        bins = bins.to_dict()
    if not isinstance(bins, Mapping):
        raise TypeError(f"`bins` must be a ReliabilityBins or its to_dict() mapping, got {type(bins).__name__}")
    missing = [k for k in ("edges", "counts", "confidence", "accuracy") if k not in bins]
    if missing:
        raise ValueError(f"`bins` must have keys edges, counts, confidence, accuracy, got missing {missing}")
    out = {k: _floats(bins[k]) for k in ("edges", "counts", "confidence", "accuracy")}
    n = len(out["counts"])
    if len(out["edges"]) != n + 1 or len(out["confidence"]) != n or len(out["accuracy"]) != n:
        raise ValueError(
            f"`bins` must have n + 1 edges and n counts/confidence/accuracy values, got lengths "
            f"{[len(out[k]) for k in ('edges', 'counts', 'confidence', 'accuracy')]}"
        )
    return out


def reliability_diagram(bins, *, ax=None, title: str | None = None, color: Any = "C0", show_counts: bool = True):
    """Reliability diagram: accuracy per confidence bin against the diagonal (Guo et al. 2017).

    Bars show each non-empty bin's accuracy; the hatched part is the gap to the bin's mean
    confidence: red above the bar where the model is over-confident, white inside the bar where it
    is under-confident. An outlined histogram along the bottom (right-hand axis) shows the fraction
    of samples per bin, so sparse bins are easy to discount.

    Args:
        bins: a :class:`netuq.metrics.ReliabilityBins` or its ``to_dict()`` (``None`` = empty bin).
        ax: matplotlib axes to draw into (a new figure when ``None``).
        title: axes title.
        color: colour of the accuracy bars.
        show_counts: draw the sample-fraction histogram.

    Returns:
        The matplotlib ``Figure``.

    Example:
        >>> fig = reliability_diagram({"edges": [0, 0.5, 1], "counts": [0, 2],
        ...                            "confidence": [None, 0.75], "accuracy": [None, 0.5]})
        >>> type(fig).__name__
        'Figure'
    """
    b = _as_bins(bins)
    fig, ax = _figure_ax(ax)
    edges, counts, conf, acc = b["edges"], b["counts"], b["confidence"], b["accuracy"]
    left, width = edges[:-1], np.diff(edges)
    ok = (counts > 0) & np.isfinite(acc) & np.isfinite(conf)
    ax.bar(left[ok], acc[ok], width=width[ok], align="edge", color=color, edgecolor="white", linewidth=0.6,
           label="accuracy")
    over = ok & (conf > acc)
    under = ok & (conf <= acc)
    ax.bar(left[over], (conf - acc)[over], bottom=acc[over], width=width[over], align="edge",
           facecolor=(0.84, 0.15, 0.16, 0.25), edgecolor=(0.84, 0.15, 0.16, 0.8), hatch="///", linewidth=0,
           label="gap: over-confident")
    ax.bar(left[under], (acc - conf)[under], bottom=conf[under], width=width[under], align="edge",
           facecolor=(1.0, 1.0, 1.0, 0.4), edgecolor=(0.05, 0.1, 0.35, 0.7), hatch="\\\\\\", linewidth=0,
           label="gap: under-confident")
    if show_counts and counts.sum() > 0:
        ax2 = ax.twinx()  # drawn above ax: an outlined histogram in the bottom quarter
        frac = counts / counts.sum()
        top = max(frac.max(), 1e-12)
        ax2.stairs(frac, edges, fill=True, color="0.2", alpha=0.18)
        ax2.stairs(frac, edges, color="0.2", linewidth=0.8)
        ax2.set_ylim(0, top * 4)
        from matplotlib.ticker import MaxNLocator

        ticks = MaxNLocator(nbins=3).tick_values(0, top)
        ax2.set_yticks([t for t in ticks if 0 <= t <= top * 1.001])
        ax2.set_ylabel("fraction of samples", color="0.35", fontsize="small", loc="bottom")
        ax2.tick_params(axis="y", colors="0.35", labelsize="x-small")
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.3", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize="small", frameon=False)
    if title:
        ax.set_title(title, fontsize="medium")
    return fig


def _shift_curves(method: Mapping, metric: str):
    """severities (sorted) -> per-kind values and the mean over kinds, from one method's results."""
    shift = method.get("shift") or {}
    per_kind: dict[str, dict[int, float]] = {}
    for kind, rows in shift.items():
        vals = {int(r["severity"]): float(r[metric]) for r in rows if r.get(metric) is not None}
        if vals:
            per_kind[kind] = vals
    clean = (method.get("metrics") or {}).get(metric)
    if clean is None and metric == "ece_temperature":  # clean: the calibrated test-set ECE of the main table
        clean = (((method.get("in_distribution") or {}).get("temperature") or {}).get("ece") or {}).get("mean")
    if per_kind and clean is not None:
        for vals in per_kind.values():
            vals.setdefault(0, float(clean))
    sev = sorted({s for vals in per_kind.values() for s in vals})
    mean = [float(np.mean([vals[s] for vals in per_kind.values() if s in vals])) for s in sev]
    return sev, per_kind, mean


def shift_plot(
    results: Mapping,
    metric: str = "ece",
    *,
    ax=None,
    per_kind: bool = False,
    methods: Sequence[str] | None = None,
    colors: Mapping[str, Any] | None = None,
    title: str | None = None,
    legend: bool = True,
):
    """A metric against shift severity, one line per method, averaged over the kinds of shift
    (Ovadia et al. 2019). Severity 0 is the clean test set (taken from ``metrics`` when present;
    for ``"ece_temperature"`` the temperature-scaled ECE of ``in_distribution``).

    Args:
        results: a results dict (``results["methods"][m]["shift"][kind]`` rows).
        metric: a key of the shift rows: ``"ece"``, ``"accuracy"``, ``"nll"``, ``"brier"``,
            ``"ece_temperature"``, ``"entropy_mean"``.
        ax: matplotlib axes to draw into (a new figure when ``None``).
        per_kind: also draw each kind of shift as a faint line.
        methods: which methods, in order (default: all with shift data).
        colors: method -> colour (default :func:`method_colors`).
        title: axes title.
        legend: draw the legend (turn off on all but one panel of a multi-panel figure).

    Returns:
        The matplotlib ``Figure``.

    Example:
        >>> rows = [{"severity": 1, "ece": 0.1}, {"severity": 2, "ece": 0.2}]
        >>> fig = shift_plot({"methods": {"a": {"shift": {"blur": rows}}}}, "ece")
        >>> fig.axes[0].get_lines()[0].get_ydata().tolist()
        [0.1, 0.2]
    """
    all_methods = _mapping_of(results, "results").get("methods") or {}
    names = list(methods) if methods is not None else [m for m in all_methods if all_methods[m].get("shift")]
    unknown = [m for m in names if m not in all_methods]
    if unknown:
        raise ValueError(f"`methods` must be methods of the results {list(all_methods)}, got {unknown}")
    curves = {m: _shift_curves(all_methods[m], metric) for m in names}
    curves = {m: c for m, c in curves.items() if c[0]}
    if not curves:
        raise ValueError(f"`results` must hold shift rows with {metric!r} for at least one method, got none")
    colors = dict(colors or method_colors(list(all_methods)))
    fig, ax = _figure_ax(ax)
    for m, (sev, kinds, mean) in curves.items():
        color = colors.get(m)
        if per_kind and len(kinds) > 1:
            for vals in kinds.values():
                s = sorted(vals)
                ax.plot(s, [vals[k] for k in s], color=color, alpha=0.25, linewidth=0.8)
        label = all_methods[m].get("label") or family_label(m)
        ax.plot(sev, mean, marker="o", markersize=3.5, color=color, label=label)
    ticks = sorted({s for c in curves.values() for s in c[0]})
    ax.set_xticks(ticks, ["clean" if s == 0 else str(s) for s in ticks])
    ax.set_xlabel("shift severity")
    n_kinds = len({k for c in curves.values() for k in c[1]})
    ax.set_ylabel(_label(METRIC_LABELS, metric) + (" (mean over shifts)" if n_kinds > 1 else ""))
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize="small", frameon=False)
    if title:
        ax.set_title(title, fontsize="medium")
    return fig


def _mapping_of(value, name: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise TypeError(f"`{name}` must be a mapping, got {type(value).__name__}")
    return value


def _curves(curves, keys: tuple[str, str], name: str) -> dict[str, Mapping]:
    _mapping_of(curves, name)
    if all(k in curves for k in keys):
        curves = {"": curves}
    for label, c in curves.items():
        if not isinstance(c, Mapping) or not all(k in c for k in keys):
            raise ValueError(f"`{name}[{label!r}]` must be a mapping with keys {keys}, got {type(c).__name__}")
        if len(c[keys[0]]) != len(c[keys[1]]):
            raise ValueError(
                f"`{name}[{label!r}]` must have as many {keys[0]} as {keys[1]} values, "
                f"got {len(c[keys[0]])} and {len(c[keys[1]])}"
            )
    return dict(curves)


def risk_coverage_plot(
    curves: Mapping,
    *,
    ax=None,
    colors: Mapping[str, Any] | None = None,
    aurc: Mapping[str, float | None] | None = None,
    title: str | None = None,
):
    """Selective risk against coverage (Geifman & El-Yaniv 2017), one line per method.

    Keeping only the most confident predictions should lower the error rate: a good uncertainty
    estimate gives a curve that starts low on the left and rises late.

    Args:
        curves: method -> ``{"coverage": [...], "risk": [...]}``, or one such curve.
        ax: matplotlib axes to draw into (a new figure when ``None``).
        colors: method -> colour.
        aurc: optional method -> area under the curve, shown in the legend.
        title: axes title.

    Example:
        >>> fig = risk_coverage_plot({"a": {"coverage": [0.5, 1.0], "risk": [0.0, 0.5]}})
        >>> fig.axes[0].get_xlabel()
        'coverage'
    """
    curves = _curves(curves, ("coverage", "risk"), "curves")
    colors = dict(colors or method_colors(list(curves)))
    fig, ax = _figure_ax(ax)
    for m, c in curves.items():
        label = family_label(m) if m else None
        if label and aurc and aurc.get(m) is not None:
            label += f" (AURC {aurc[m]:.3f})"
        ax.plot(_floats(c["coverage"]), _floats(c["risk"]), color=colors.get(m), label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("coverage")
    ax.set_ylabel("selective risk (error rate)")
    ax.grid(alpha=0.3)
    if any(curves):
        ax.legend(fontsize="small", frameon=False)
    if title:
        ax.set_title(title, fontsize="medium")
    return fig


def ood_histogram(
    hist: Mapping,
    *,
    ax=None,
    title: str | None = None,
    xlabel: str = "uncertainty score",
    labels: tuple[str, str] = ("in-distribution", "out-of-distribution"),
):
    """Histograms of an uncertainty score on in-distribution and OOD inputs, on shared bins.

    Args:
        hist: ``{"edges": [B + 1], "in": [B], "out": [B]}`` (fractions or counts).
        ax: matplotlib axes to draw into (a new figure when ``None``).
        title: axes title.
        xlabel: name of the score.
        labels: legend labels of the two sets.

    Example:
        >>> fig = ood_histogram({"edges": [0, 1, 2], "in": [0.9, 0.1], "out": [0.2, 0.8]})
        >>> len(fig.axes[0].patches)
        2
    """
    _mapping_of(hist, "hist")
    missing = [k for k in ("edges", "in", "out") if k not in hist]
    if missing:
        raise ValueError(f"`hist` must have keys edges, in, out, got missing {missing}")
    edges, h_in, h_out = _floats(hist["edges"]), _floats(hist["in"]), _floats(hist["out"])
    if not len(edges) == len(h_in) + 1 == len(h_out) + 1:
        raise ValueError(
            f"`hist` must have B + 1 edges and B values per set, got {len(edges)}, {len(h_in)}, {len(h_out)}"
        )
    fig, ax = _figure_ax(ax)
    ax.stairs(h_in, edges, fill=True, alpha=0.45, color="tab:blue", label=labels[0])
    ax.stairs(h_out, edges, fill=True, alpha=0.45, color="tab:orange", label=labels[1])
    fractions = abs(np.nansum(h_in) - 1) < 1e-3 and abs(np.nansum(h_out) - 1) < 1e-3
    ax.set_ylabel("fraction of inputs" if fractions else "count")
    ax.set_xlabel(xlabel)
    ax.legend(fontsize="small", frameon=False)
    if title:
        ax.set_title(title, fontsize="medium")
    return fig


def roc_plot(
    curves: Mapping,
    *,
    ax=None,
    colors: Mapping[str, Any] | None = None,
    auroc: Mapping[str, float | None] | None = None,
    title: str | None = None,
    labels: Mapping[str, str] | None = None,
):
    """ROC curves of OOD detection (OOD = positive), one line per method (or per score).

    Args:
        curves: name -> ``{"fpr": [...], "tpr": [...]}``, or one such curve.
        ax: matplotlib axes to draw into (a new figure when ``None``).
        colors: name -> colour.
        auroc: optional name -> AUROC shown in the legend.
        title: axes title.
        labels: optional name -> legend label (default: the method's display name).

    Example:
        >>> fig = roc_plot({"a": {"fpr": [0, 0.5, 1], "tpr": [0, 1, 1]}}, auroc={"a": 0.75})
        >>> fig.axes[0].get_legend().get_texts()[0].get_text()
        'a (AUROC 0.750)'
    """
    curves = _curves(curves, ("fpr", "tpr"), "curves")
    colors = dict(colors or method_colors(list(curves)))
    fig, ax = _figure_ax(ax)
    ax.plot([0, 1], [0, 1], linestyle=":", color="0.5", linewidth=1)
    for m, c in curves.items():
        label = (labels or {}).get(m) or (family_label(m) if m else None)
        if label and auroc and auroc.get(m) is not None:
            label += f" (AUROC {auroc[m]:.3f})"
        ax.plot(_floats(c["fpr"]), _floats(c["tpr"]), color=colors.get(m), label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate (in-distribution flagged)")
    ax.set_ylabel("true positive rate (OOD flagged)")
    ax.grid(alpha=0.3)
    if any(curves):
        ax.legend(fontsize="small", frameon=False, loc="lower right")
    if title:
        ax.set_title(title, fontsize="medium")
    return fig


def _maps(x, name: str, ndim: int = 3) -> np.ndarray:
    if x is None:
        return None
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == ndim + 1 and a.shape[1] in (1, 3) and name == "images":  # (K, C, H, W) -> (K, H, W[, 3])
        a = a[:, 0] if a.shape[1] == 1 else np.moveaxis(a, 1, -1)
    if a.ndim == ndim + 1 and a.shape[-1] == 3 and name == "images":
        return a
    if a.ndim != ndim:
        raise ValueError(f"`{name}` must have shape (K, H, W), got shape {a.shape}")
    return a


def segmentation_grid(
    images,
    labels,
    preds,
    entropy,
    epistemic=None,
    anomaly=None,
    *,
    ignore_index: int = 255,
    num_classes: int | None = None,
    max_rows: int = 4,
    axes=None,
    title: str | None = None,
    class_names: Sequence[str] | None = None,
):
    """A grid of segmentation examples: image, ground truth, prediction and uncertainty maps.

    One row per example; columns: the image (unknown objects outlined in red when ``anomaly``
    is given), the labels (``ignore_index`` in white), the prediction, the predictive entropy
    and, when given, the epistemic part (mutual information).

    Args:
        images: (K, H, W) gray, (K, H, W, 3) or (K, C, H, W) images in [0, 1].
        labels: (K, H, W) integer labels.
        preds: (K, H, W) predicted classes.
        entropy: (K, H, W) predictive entropy.
        epistemic: optional (K, H, W) mutual information.
        anomaly: optional (K, H, W) boolean (or 0/1) unknown-object masks.
        ignore_index: label value drawn as "ignored".
        num_classes: number of classes for the colour map (default: from the data).
        max_rows: draw at most this many examples.
        axes: optional (rows, columns) array of matplotlib axes to draw into.
        title: figure title.
        class_names: one name per class: a legend of the class colours under the grid.

    Returns:
        The matplotlib ``Figure``.

    Example:
        >>> z = np.zeros((2, 4, 4))
        >>> fig = segmentation_grid(z, z, z, z, epistemic=z)
        >>> [a.get_title() for a in fig.axes[:5]]
        ['image', 'labels', 'prediction', 'entropy', 'epistemic']
    """
    img = _maps(images, "images")
    lab, pred, ent = _maps(labels, "labels"), _maps(preds, "preds"), _maps(entropy, "entropy")
    epi, anom = _maps(epistemic, "epistemic"), _maps(anomaly, "anomaly")
    k = len(img)
    shapes = {n: a.shape[:3] for n, a in (("images", img), ("labels", lab), ("preds", pred), ("entropy", ent),
                                          ("epistemic", epi), ("anomaly", anom)) if a is not None}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"segmentation maps must share the shape (K, H, W), got {shapes}")
    rows = min(k, max(1, int(max_rows)))
    cols = 5 if epi is not None else 4
    if axes is None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(2.1 * cols, 2.1 * rows + (0.4 if title else 0.2)), layout="constrained")
        axes = np.asarray(fig.subplots(rows, cols, squeeze=False))
    else:
        axes = np.asarray(axes, dtype=object).reshape(-1, cols) if np.ndim(axes) < 2 else np.asarray(axes)
        if axes.shape[0] < rows or axes.shape[1] < cols:
            raise ValueError(f"`axes` must hold at least {rows} x {cols} axes, got {axes.shape}")
        fig = axes[0, 0].figure
    import matplotlib
    from matplotlib.colors import ListedColormap

    valid = lab[lab != ignore_index]
    n_cls = int(num_classes) if num_classes else int(max(valid.max(initial=0), pred.max(initial=0))) + 1
    # Up to 10 classes besides background: tab10's distinct hues; more: tab20's dark shades first,
    # then the light ones (tab20's own order puts each light shade beside its dark one).
    if n_cls - 1 <= 10:
        hues = [matplotlib.colormaps["tab10"](i) for i in range(10)]
    else:
        tab20 = matplotlib.colormaps["tab20"]
        hues = [tab20(i) for i in [*range(0, 20, 2), *range(1, 20, 2)]]
    colors = [(0.08, 0.08, 0.08)] + [hues[i % len(hues)] for i in range(max(n_cls - 1, 1))]
    cmap = ListedColormap(colors).with_extremes(bad="white")
    emax = max(float(np.nanmax(ent[:rows])), 1e-6)
    titles = ["image", "labels", "prediction", "entropy", "epistemic"][:cols]
    for r in range(rows):
        a = axes[r]
        a[0].imshow(img[r], cmap="gray", vmin=0, vmax=1)
        if anom is not None and anom[r].any():
            a[0].contour(anom[r].astype(float), levels=[0.5], colors="red", linewidths=0.8)
        a[1].imshow(np.ma.masked_equal(lab[r], ignore_index), cmap=cmap, vmin=-0.5, vmax=n_cls - 0.5,
                    interpolation="nearest")
        a[2].imshow(pred[r], cmap=cmap, vmin=-0.5, vmax=n_cls - 0.5, interpolation="nearest")
        im = a[3].imshow(ent[r], cmap="magma", vmin=0, vmax=emax)
        if epi is not None:
            im2 = a[4].imshow(epi[r], cmap="viridis", vmin=0, vmax=max(float(np.nanmax(epi[:rows])), 1e-6))
        for j, axis in enumerate(a[:cols]):
            axis.set_xticks([])
            axis.set_yticks([])
            if r == 0:
                axis.set_title(titles[j], fontsize="small")
    fig.colorbar(im, ax=list(axes[:rows, 3]), shrink=0.8, fraction=0.05)
    if epi is not None:
        fig.colorbar(im2, ax=list(axes[:rows, 4]), shrink=0.8, fraction=0.05)
    if class_names is not None:
        from matplotlib.patches import Patch

        present = sorted({int(v) for v in np.unique(lab[:rows]) if v != ignore_index}
                         | {int(v) for v in np.unique(pred[:rows])})
        handles = [Patch(facecolor=colors[c % len(colors)], edgecolor="0.5", label=str(class_names[c]))
                   for c in present if 0 <= c < len(class_names)]
        handles.append(Patch(facecolor="white", edgecolor="0.5", label="ignored"))
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 8), fontsize="small",
                   frameon=False, title="classes", title_fontsize="small")
    if title:
        fig.suptitle(title, fontsize="medium")
    return fig


def confusion_plot(confusion, class_names: Sequence[str], *, ax=None, title: str | None = None):
    """A confusion matrix: rows the true class, columns the predicted one, shaded by the row's share.

    Args:
        confusion: (C, C) counts ``[true][predicted]``.
        class_names: C names.
        ax: matplotlib axes to draw into (a new figure when ``None``).
        title: axes title.

    Example:
        >>> fig = confusion_plot([[3, 1], [0, 4]], ["cat", "dog"])
        >>> [t.get_text() for t in fig.axes[0].get_yticklabels()]
        ['cat', 'dog']
    """
    m = np.asarray(confusion, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or len(class_names) != m.shape[0]:
        raise ValueError(f"`confusion` must be C x C with C = len(class_names) = {len(class_names)}, "
                         f"got shape {m.shape}")
    c = m.shape[0]
    if ax is None:
        side = min(9.0, max(3.6, 0.42 * c + 1.6))
        fig, axes = grid_figure(1, 1, panel=(side, side), margins=(1.1, 0.9, 1.0, 0.45))
        ax = axes[0, 0]
    fig = ax.figure
    share = m / np.maximum(m.sum(1, keepdims=True), 1)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(c), [str(n) for n in class_names], rotation=90 if c > 6 else 0, fontsize="small")
    ax.set_yticks(range(c), [str(n) for n in class_names], fontsize="small")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if c <= 15:
        for i in range(c):
            for j in range(c):
                if m[i, j]:
                    ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize="small",
                            color="white" if share[i, j] > 0.6 else "0.1")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if title:
        ax.set_title(title, fontsize="medium")
    return fig
