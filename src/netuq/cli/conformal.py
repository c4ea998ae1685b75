"""``netuq conformal FILE``: conformal prediction sets (classification) or risk control (segmentation)
for stored predictions.

FILE is read like ``netuq evaluate`` (the logits-or-probabilities rule of :mod:`netuq.cli._common`).
With ``--calibration CAL`` the sets are fitted on CAL and scored on FILE; without it, on
``--splits`` random halves of FILE (mean ± sd). (N, C) predictions give split conformal sets
(coverage, mean set size, worst-class coverage per score and α); (N, C, H, W) predictions give
conformal risk control of a per-image loss (achieved risk and mean per-pixel set size).
"""

from __future__ import annotations

import argparse
import copy
import json

from ._common import add_input_arguments, read_predictions

DESCRIPTION = (
    "Conformal prediction sets for stored predictions. Classification (N, C): split conformal sets with "
    "LAC, APS or RAPS scores (coverage, mean set size, worst-class coverage). Segmentation (N, C, H, W): "
    "conformal risk control of the per-image pixel miscoverage, or of a class's false-negative rate "
    "(--loss fnr --target-class K). Fitted on --calibration CAL and scored on FILE, or on --splits random "
    "halves of FILE. FILE and CAL are read like 'netuq evaluate'."
)


def _alpha(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1), got {text!r}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def register(sub) -> None:
    p = sub.add_parser("conformal", help="conformal prediction sets / risk control of stored predictions",
                       description=DESCRIPTION)
    add_input_arguments(p)
    p.add_argument("--calibration", metavar="CAL", default=None,
                   help="file of calibration predictions (same keys and kind as FILE); default: random halves of FILE")
    p.add_argument("--score", action="append", choices=("lac", "aps", "raps"), default=None,
                   help="classification score (repeatable; default: lac, aps and raps)")
    p.add_argument("--alpha", action="append", type=_alpha, default=None,
                   help="miscoverage / risk level in (0, 1) (repeatable; default: 0.1)")
    p.add_argument("--randomized", action="store_true", help="randomised APS / RAPS")
    p.add_argument("--class-conditional", action="store_true", help="one threshold per class (Mondrian)")
    p.add_argument("--splits", type=_positive, default=100, help="random halves without --calibration (default 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of the splits and of the randomised scores")
    p.add_argument("--loss", choices=("miscoverage", "fnr"), default="miscoverage",
                   help="segmentation: the per-image loss controlled (default: miscoverage)")
    p.add_argument("--target-class", type=int, default=None, help="segmentation with --loss fnr: the class")
    p.add_argument("--grid-size", type=_positive, default=2000, help="segmentation: thresholds of the λ grid")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(run=run)


def _read(args, path):
    other = copy.copy(args)
    other.file, other.labels = path, None
    return read_predictions(other)


def _curves(logits, labels, grid, args):
    import torch

    from ..conformal.risk import image_curves

    losses, sizes = [], []
    for start in range(0, logits.shape[0], 16):  # bounded temporaries: 16 images at a time
        probs = torch.softmax(logits[start:start + 16].to(torch.float64), 1)
        lo, si = image_curves(probs, labels[start:start + 16].long(), grid, loss=args.loss,
                              target_class=args.target_class, ignore_index=args.ignore_index)
        losses.append(lo)
        sizes.append(si)
    return torch.cat(losses), torch.cat(sizes)


def _formatter(row):
    def f(key):
        sd = row.get(f"{key}_sd")
        return f"{row[key]:.4f}" + ("" if sd is None else f" ± {sd:.4f}")
    return f


def run(args, echo=print) -> int:
    import torch

    from ..conformal.protocol import fitted_rows, risk_rows, split_rows
    from ..conformal.risk import threshold_grid

    data = read_predictions(args)
    cal = _read(args, args.calibration) if args.calibration else None
    z, y = data.logits(), data.labels
    alphas = tuple(args.alpha or (0.1,))
    if cal is not None and tuple(cal.values.shape[1:2]) != tuple(z.shape[1:2]):
        raise ValueError(f"{cal.path}: {cal.values.shape[1]} classes (dim 1), but {data.path} has {z.shape[1]}")
    if z.ndim == 2:
        scores = tuple(dict.fromkeys(args.score or ("lac", "aps", "raps")))
        kw = {"scores": scores, "alphas": alphas, "randomized": args.randomized, "seed": args.seed,
              "class_conditional": args.class_conditional}
        keep = torch.ones_like(y, dtype=torch.bool) if args.ignore_index is None else y != args.ignore_index
        if cal is not None:
            zc, yc = cal.logits(), cal.labels
            kc = torch.ones_like(yc, dtype=torch.bool) if args.ignore_index is None else yc != args.ignore_index
            rows = fitted_rows(zc[kc], yc[kc], z[keep], y[keep], **kw)
        else:
            rows = split_rows(z[keep], y[keep].long(), splits=args.splits, **kw)
        task = "classification"
    else:
        if args.loss == "fnr" and args.target_class is None:
            raise ValueError("--loss fnr needs --target-class K (the class whose pixels must not be missed)")
        if args.target_class is not None and not 0 <= args.target_class < z.shape[1]:
            raise ValueError(f"--target-class must be a class index in [0, {z.shape[1]}), got {args.target_class}")
        grid = threshold_grid(args.grid_size)
        losses, sizes = _curves(z, y, grid, args)
        cal_losses = None if cal is None else _curves(cal.logits(), cal.labels, grid, args)[0]
        rows = risk_rows(losses, sizes, grid, alphas=alphas, splits=args.splits, seed=args.seed,
                         calibration_losses=cal_losses)
        task = "segmentation"
    protocol = f"calibrated on {cal.path}" if cal is not None else f"{args.splits} random halves of {data.path}"
    if args.json:
        echo(json.dumps({"file": str(data.path), "task": task, "protocol": protocol, "rows": rows}))
        return 0
    echo(f"{data.path} [{data.shape}] ({data.kind}; {task}; {protocol})")
    for r in rows:
        f = _formatter(r)
        if task == "classification":
            name = r["score"] + ("-rand" if r["randomized"] else "")
            echo(f"{name:<10} alpha={r['alpha']:<6g} coverage {f('coverage')}  set size {f('set_size')}  "
                 f"worst class {f('worst_class_coverage')}")
        else:
            echo(f"{args.loss:<12} alpha={r['alpha']:<6g} risk {f('risk')}  set size {f('set_size')}  "
                 f"threshold {f('threshold')}")
    return 0
