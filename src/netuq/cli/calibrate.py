"""``netuq calibrate FILE``: fit a calibrator to stored logits and report it honestly.

The before/after table comes from the repeated k-fold protocol of Ashukha et al. 2020
(:func:`netuq.calibration.cross_validate`): every "after" number is measured on data the
calibrator was not fitted on. ``--save`` then fits once on all the data and writes the
calibrator as JSON (:func:`netuq.calibration.load` reads it back; ``netuq evaluate --calibrator``
applies it). ``--plot`` draws reliability diagrams of the uncalibrated and the out-of-fold
calibrated predictions of the first repeat.

Input: see :mod:`netuq.cli._common` (probabilities are calibrated through their log).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..calibration import CALIBRATORS, registry
from ._common import add_input_arguments, read_predictions

DESCRIPTION = (
    "Fit a calibrator (temperature, vector or matrix scaling, top-label histogram binning, isotonic regression) "
    "to stored logits (or probabilities, through their log). "
    "The before/after table is measured by repeated k-fold cross-validation (Ashukha et al. 2020): every "
    "'calibrated' number comes from data the calibrator was not fitted on. --save then fits once on all "
    "the data and writes the calibrator as JSON, which 'netuq evaluate FILE --calibrator PATH' applies. "
    "A .npy FILE needs --input and --labels."
)


def register(sub) -> None:
    p = sub.add_parser(
        "calibrate",
        help="fit a calibrator (scaling, histogram binning, isotonic) to stored logits; report it by 2-fold CV",
        description=DESCRIPTION,
    )
    add_input_arguments(p)
    p.add_argument("--method", choices=registry.names(none=False), default="temperature",  # read at parse time
                   help="calibrator (default: temperature)")
    p.add_argument(
        "--odir",
        default=None,
        metavar="auto|LAMBDA,MU",
        help="matrix scaling only: ODIR regularisation (Kull et al. 2019), 'auto' or two numbers",
    )
    p.add_argument("--folds", type=int, default=2, help="folds per repeat (default: 2)")
    p.add_argument("--repeats", type=int, default=5, help="random splits (default: 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the splits (default: 0)")
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
    """A zero-argument constructor of the chosen calibrator (``CALIBRATORS[method]``)."""
    cls = CALIBRATORS[method]
    if odir is None:
        return cls
    if method != "matrix":
        raise ValueError(f"--odir applies to --method matrix only, got --method {method}")
    return lambda: cls(odir=odir)


def _check_memory(method: str, logits: torch.Tensor) -> None:
    """Refuse (one line, exit 2) a fit this machine cannot hold, before any work: the calibrator's own estimate
    for the largest fit the command makes (all rows, for ``--save``) against the available memory."""
    from .._memory import check_fit_memory

    cls = CALIBRATORS[method]
    if hasattr(cls, "memory_needed"):
        C = int(logits.shape[1])
        check_fit_memory(cls, logits.numel() // C, C)


def _title(method: str) -> str:
    """"temperature scaling", "histogram binning", ...: a class's ``label``, else "<name> scaling"."""
    return getattr(CALIBRATORS[method], "label", None) or f"{method} scaling"


def _row(name: str, before: dict, after: dict) -> str:
    def fmt(d):
        return f"{d['mean']:.4f} ± {d['std']:.4f}"

    return f"{name:<10}{fmt(before):>20}{fmt(after):>20}"


def run(args, echo=print) -> int:
    from ..calibration import cross_validate

    odir = _parse_odir(args.odir)
    make = _factory(args.method, odir)
    data = read_predictions(args)
    logits, labels = data.logits(), data.labels
    _check_memory(args.method, logits)
    note = " (probabilities: calibrating their log)" if data.kind == "probs" else ""
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
    echo(f"{_title(args.method)} on {args.file} [{data.shape}]{note}")
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
            f"{_title(args.method)} (out-of-fold)",
            metrics.reliability_bins(after, labels, **kw),
            metrics.ece(after, labels, **kw),
        ),
    ]
    from matplotlib.figure import Figure  # lazy; a bare Figure needs no pyplot and no GUI backend

    fig = Figure(figsize=(9, 4.2))
    axes = fig.subplots(1, 2, sharey=True)
    from ..report.plots import reliability_diagram

    for ax, (title, bins, ece) in zip(axes, panels):
        reliability_diagram(bins, ax=ax, title=f"{title}\nECE = {ece:.4f}")
    path = Path(args.plot)
    fig.tight_layout()
    import io

    from .._files import atomic_write_bytes

    buf = io.BytesIO()
    try:
        fig.savefig(buf, dpi=120, format=path.suffix.lstrip(".").lower() or "png")
    except ValueError as err:  # e.g. an unknown image suffix
        raise ValueError(f"--plot {path}: {err}") from None
    atomic_write_bytes(path, buf.getvalue())  # never half-written, never through a symlink
    return path
