"""``netuq evaluate FILE``: every metric of :func:`netuq.metrics.evaluate` for stored predictions.

FILE holds probabilities or logits plus labels (.npz / .pt / .safetensors with arrays ``probs``
or ``logits`` and ``labels``, or FILE.npy with ``--labels LABELS.npy``); which one is detected
from the array names, or chosen with ``--input``. Logits are turned into probabilities with a
softmax over dim 1.
"""

from __future__ import annotations

import json

import torch

from ._common import read_arrays


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="print calibration and selective-prediction metrics of stored predictions")
    p.add_argument("file", metavar="FILE", help=".npz, .pt, .safetensors or .npy file of probs/logits and labels")
    p.add_argument("--labels", metavar="LABELS", default=None, help="labels .npy file (for FILE.npy input)")
    p.add_argument(
        "--input", choices=("logits", "probs"), default=None, help="which array to read (default: detect by name)"
    )
    p.add_argument("--logits-key", default="logits", help="array name of the logits (default: logits)")
    p.add_argument("--probs-key", default="probs", help="array name of the probabilities (default: probs)")
    p.add_argument("--labels-key", default="labels", help="array name of the labels (default: labels)")
    p.add_argument("--ignore-index", type=int, default=None, help="label value to ignore (segmentation)")
    p.add_argument("--n-bins", type=int, default=15, help="ECE bins (default: 15)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(run=run)


def run(args, echo=print) -> int:
    from .. import metrics
    from .._checks import float_dtype
    if args.input is None and args.file.lower().endswith(".npy"):
        raise ValueError("a .npy file holds one array: say what it is with --input logits or --input probs")
    data = read_arrays(args)
    values = data.values
    if data.kind == "logits":
        from .._checks import check_logits

        values = torch.softmax(check_logits(values).to(float_dtype(values)), dim=1)
    result = metrics.evaluate(values, data.labels, n_bins=args.n_bins, ignore_index=args.ignore_index)
    if args.json:
        echo(json.dumps({"file": str(data.path), "input": data.kind, **result}))
        return 0
    shape = "x".join(str(s) for s in data.values.shape)
    echo(f"{data.path} [{shape}] ({data.kind})")
    for name, value in result.items():
        echo(f"{name:<15}{value:.6f}")
    return 0
