"""``netuq calibrate FILE``: fit a calibrator to stored logits and report it honestly.

The before/after table comes from the repeated k-fold protocol of Ashukha et al. 2020
(:func:`netuq.calibration.cross_validate`): every "after" number is measured on data the
calibrator was not fitted on. ``--save`` then fits once on all the data and writes the
calibrator as JSON (:func:`netuq.calibration.load` reads it back). ``--plot`` draws reliability
diagrams of the uncalibrated and the out-of-fold calibrated predictions of the first repeat.

Input: .npz / .pt / .safetensors with arrays ``logits`` (or ``probs``, whose log is calibrated)
and ``labels``, or ``FILE.npy`` with ``--labels LABELS.npy`` (see :func:`netuq.io.load_arrays`).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..calibration import CALIBRATORS
from ._common import read_arrays

METHODS = tuple(CALIBRATORS)


def register(sub) -> None:
    p = sub.add_parser(
        "calibrate",
        help="fit temperature/vector/matrix scaling to stored logits; report it by repeated 2-fold CV",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("file", metavar="FILE", help=".npz, .pt, .safetensors or .npy file of logits and labels")
    p.add_argument("--labels", metavar="LABELS", default=None, help="labels .npy file (for FILE.npy input)")
    p.add_argument("--method", choices=METHODS, default="temperature", help="calibrator (default: temperature)")
    p.add_argument(
        "--odir",
        default=None,
        metavar="auto|LAMBDA,MU",
        help="matrix scaling only: ODIR regularisation (Kull et al. 2019), 'auto' or two numbers",
    )
    p.add_argument("--folds", type=int, default=2, help="folds per repeat (default: 2)")
    p.add_argument("--repeats", type=int, default=5, help="random splits (default: 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the splits (default: 0)")
    p.add_argument("--n-bins", type=int, default=15, help="ECE bins (default: 15)")
    p.add_argument("--ignore-index", type=int, default=None, help="label value to ignore (segmentation)")
    p.add_argument("--input", choices=("logits", "probs"), default=None, help="which array to read (default: auto)")
    p.add_argument("--logits-key", default="logits", help="array name of the logits (default: logits)")
    p.add_argument("--probs-key", default="probs", help="array name of the probabilities (default: probs)")
    p.add_argument("--labels-key", default="labels", help="array name of the labels (default: labels)")
    p.add_argument("--save", metavar="PATH", default=None, help="fit on all data and write the calibrator (JSON)")
    p.add_argument("--plot", metavar="PNG", default=None, help="write reliability diagrams before/after")
    p.set_defaults(run=run)


def _parse_odir(text):
    if text is None or text == "auto":
        return text
    parts = text.split(",")
    try:
        pair = tuple(float(v) for v in parts)
    except ValueError:
        pair = ()
    if len(pair) != 2 or not all(math.isfinite(v) and v >= 0 for v in pair):
        raise ValueError(f"--odir must be 'auto' or two numbers >= 0 like 1,1, got {text!r}")
    return pair


def _factory(method: str, odir):
    if odir is not None and method != "matrix":
        raise ValueError(f"--odir applies to --method matrix only, got --method {method}")
    cls = CALIBRATORS[method]  # the recommended configuration unless --odir says otherwise
    return cls if odir is None else (lambda: cls(odir=odir))


def read_logits(args):
    """Read FILE; return (logits, labels, note) where probabilities become log-probabilities."""
    data = read_arrays(args)
    if data.kind == "logits":
        values = data.values
        if args.input is None and str(args.file).lower().endswith(".npy") and _looks_like_probs(values):
            raise ValueError(
                f"{args.file} looks like probabilities (values in [0, 1] summing to 1): pass --input probs, "
                "or --input logits if they really are logits"
            )
        return values, data.labels, ""
    from .._checks import check_probs

    probs = check_probs(data.values, "probs")
    tiny = torch.finfo(probs.dtype if probs.dtype == torch.float64 else torch.float32).tiny
    logits = probs.to(torch.float64 if probs.dtype == torch.float64 else torch.float32).clamp_min(tiny).log()
    return logits, data.labels, " (probabilities: calibrating their log)"


def _looks_like_probs(values: torch.Tensor) -> bool:
    if not values.is_floating_point() or values.numel() == 0:
        return False
    v = values.to(torch.float64)
    return bool(v.min() >= 0) and bool(v.max() <= 1) and bool(((v.sum(1) - 1).abs() <= 1e-3).all())


def _row(name: str, before: dict, after: dict) -> str:
    def fmt(d):
        return f"{d['mean']:.4f} ± {d['std']:.4f}"

    return f"{name:<10}{fmt(before):>20}{fmt(after):>20}"


def run(args, echo=print) -> int:
    from ..calibration import cross_validate

    odir = _parse_odir(args.odir)
    make = _factory(args.method, odir)
    logits, labels, note = read_logits(args)
    cv = cross_validate(
        make,
        logits,
        labels,
        folds=args.folds,
        repeats=args.repeats,
        seed=args.seed,
        n_bins=args.n_bins,
        ignore_index=args.ignore_index,
    )
    shape = "x".join(str(s) for s in logits.shape)
    echo(f"{args.method} scaling on {args.file} [{shape}]{note}")
    echo(f"{args.folds}-fold x {args.repeats} repeats (seed {args.seed}), mean ± std over held-out folds:")
    echo(f"{'metric':<10}{'uncalibrated':>20}{'calibrated':>20}")
    for name in ("nll", "ece", "brier", "accuracy"):
        echo(_row(name, cv["uncalibrated"][name], cv[name]))
    temps = [s["temperature"] for s in cv["splits"] if "temperature" in s]
    if temps:
        t = torch.tensor(temps, dtype=torch.float64)
        echo(f"temperature per fold: {float(t.mean()):.4f} ± {float(t.std(unbiased=False)):.4f}")
    if args.save:
        cal = make().fit(logits, labels, ignore_index=args.ignore_index, seed=args.seed)
        path = cal.save(args.save)
        extra = f", T = {cal.temperature_:.4f}" if hasattr(cal, "temperature_") else ""
        echo(f"saved {type(cal).__name__} fitted on all {cal.n_samples_} samples{extra} to {path}")
    if args.plot:
        path = _plot(args, make, logits, labels)
        echo(f"wrote {path}")
    return 0


def _out_of_fold_probs(args, make, logits, labels) -> torch.Tensor:
    """Calibrated probabilities of each example from the split (repeat 0) that held it out."""
    from .._checks import float_dtype
    from ..calibration.crossval import split_indices

    out = torch.empty(logits.shape, dtype=float_dtype(logits))
    n = logits.shape[0]
    for _, _, held in split_indices(n, folds=args.folds, repeats=1, seed=args.seed):
        fit = torch.ones(n, dtype=torch.bool)
        fit[held] = False
        cal = make().fit(logits[fit], labels[fit], ignore_index=args.ignore_index)
        out[held] = cal.predict_proba(logits[held].to(out.dtype))
    return out


def _plot(args, make, logits, labels) -> Path:
    from .. import metrics
    from .._checks import float_dtype

    before = torch.softmax(logits.to(float_dtype(logits)), dim=1)
    after = _out_of_fold_probs(args, make, logits, labels)
    kw = {"n_bins": args.n_bins, "ignore_index": args.ignore_index, "validate_args": False}
    panels = [
        ("uncalibrated", metrics.reliability_bins(before, labels, **kw), metrics.ece(before, labels, **kw)),
        (
            f"{args.method} scaling (out-of-fold)",
            metrics.reliability_bins(after, labels, **kw),
            metrics.ece(after, labels, **kw),
        ),
    ]
    from matplotlib.figure import Figure  # lazy; a bare Figure needs no pyplot and no GUI backend

    fig = Figure(figsize=(9, 4.2))
    axes = fig.subplots(1, 2, sharey=True)
    try:  # the report's diagram when that module is there; a plain one otherwise
        from ..report.plots import reliability_diagram
    except ImportError:  # pragma: no cover - depends on the installed pieces
        reliability_diagram = None
    for ax, (title, bins, ece) in zip(axes, panels):
        label = f"{title}\nECE = {ece:.4f}"
        if reliability_diagram is not None:
            reliability_diagram(bins, ax=ax, title=label)
        else:  # pragma: no cover
            _draw_reliability(ax, bins)
            ax.set_title(label)
    path = Path(args.plot)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except ValueError as err:  # e.g. an unknown image suffix
        raise ValueError(f"--plot {path}: {err}") from None
    return path


def _draw_reliability(ax, bins) -> None:
    """A plain reliability diagram: accuracy per confidence bin against the diagonal."""
    edges = bins.edges.numpy()
    width = edges[1:] - edges[:-1]
    acc = torch.nan_to_num(bins.accuracy, nan=0.0).numpy()
    conf = torch.nan_to_num(bins.confidence, nan=0.0).numpy()
    nonempty = (bins.counts > 0).numpy()
    ax.bar(edges[:-1], acc, width=width, align="edge", color="tab:blue", edgecolor="black", label="accuracy")
    ax.bar(
        edges[:-1][nonempty],
        (conf - acc)[nonempty],
        bottom=acc[nonempty],
        width=width[nonempty],
        align="edge",
        color="tab:red",
        alpha=0.3,
        edgecolor="tab:red",
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], "k--", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left")
