"""``netuq evaluate FILE``: every metric of :func:`netuq.metrics.evaluate` for stored predictions.

FILE holds probabilities or logits plus labels; the kind follows the rule of
:mod:`netuq.cli._common` (the same as ``netuq calibrate``). Logits become probabilities by a
softmax over dim 1. ``--calibrator PATH`` applies a calibrator saved by ``netuq calibrate --save``
(or ``calibrator.save``) first: to the logits, or to the log of the probabilities.
"""

from __future__ import annotations

import json
from pathlib import Path

from ._common import add_input_arguments, read_predictions

DESCRIPTION = (
    "Print calibration and selective-prediction metrics (accuracy, NLL, Brier, ECE, MCE, adaptive and "
    "class-wise ECE, AURC) of stored predictions. FILE holds logits or probabilities plus labels; which "
    "one is detected from the array names (an array named like logits that holds probabilities is refused), "
    "or given with --input. A .npy FILE needs --input and --labels. --calibrator applies a calibrator saved "
    "by 'netuq calibrate --save' before the metrics."
)


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="print calibration and selective-prediction metrics of stored predictions",
                       description=DESCRIPTION)
    add_input_arguments(p)
    p.add_argument("--calibrator", metavar="JSON", default=None,
                   help="apply this saved calibrator (netuq calibrate --save) before the metrics")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(run=run)


def _load_calibrator(path: str):
    from ..calibration import load

    try:
        return load(path)
    except FileNotFoundError:
        raise ValueError(f"--calibrator {path}: no such file") from None
    except Exception as err:  # load names the file for what it checks; anything else (e.g. RecursionError) too
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(msg if str(path) in msg else f"--calibrator {path}: {msg}") from None


def run(args, echo=print) -> int:
    from .. import metrics

    calibrator = _load_calibrator(args.calibrator) if args.calibrator else None
    data = read_predictions(args)
    if calibrator is None:
        probs, how = data.probs(), data.kind
    else:
        logits = data.logits()
        if logits.shape[1] != calibrator.num_classes_:
            raise ValueError(
                f"--calibrator {args.calibrator} was fitted on {calibrator.num_classes_} classes, "
                f"{data.path} has {logits.shape[1]} (dim 1 of shape {tuple(logits.shape)})"
            )
        probs = calibrator.predict_proba(logits)
        how = f"{data.kind}, calibrated by {type(calibrator).__name__} from {args.calibrator}"
    result = metrics.evaluate(probs, data.labels, n_bins=args.n_bins, ignore_index=args.ignore_index)
    result = {k: float(v) for k, v in result.items()}
    if args.json:
        extra = {"calibrator": str(Path(args.calibrator))} if calibrator is not None else {}
        echo(json.dumps({"file": str(data.path), "input": data.kind, **extra, **result}))
        return 0
    echo(f"{data.path} [{data.shape}] ({how})")
    for name, value in result.items():
        echo(f"{name:<15}{value:.6f}")
    return 0
