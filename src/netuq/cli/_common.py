"""Pieces shared by the file-reading commands (``calibrate``, ``evaluate``).

* :func:`add_input_arguments` and :func:`n_bins`: the flags both commands take, validated at parse
  time (a bad value is a usage error: one line, exit 2).
* :func:`read_predictions`: read FILE and apply the one rule for "is this array logits or
  probabilities" that both commands follow:

  - the kind comes from ``--input`` when given, else from the array names (``--logits-key``
    first, then ``--probs-key``); a ``.npy`` file has no names, so it needs ``--input``;
  - an array taken as logits by its name that looks like probabilities (every value in [0, 1],
    every row summing to 1 over dim 1) is refused: softmaxing probabilities silently gives wrong
    metrics. ``--input logits`` overrides the check;
  - an array taken as probabilities must be probabilities (in [0, 1], rows summing to 1).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch

from .._checks import looks_like_probs

N_BINS_MAX = 100_000


def n_bins(text: str) -> int:
    """argparse type of ``--n-bins``: an integer in [1, N_BINS_MAX]."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer in [1, {N_BINS_MAX}], got {text!r}") from None
    if not 1 <= value <= N_BINS_MAX:
        raise argparse.ArgumentTypeError(f"must be an integer in [1, {N_BINS_MAX}], got {value}")
    return value


def add_input_arguments(p: argparse.ArgumentParser) -> None:
    """FILE and the flags that say how to read it (shared by ``calibrate`` and ``evaluate``)."""
    p.add_argument("file", metavar="FILE", help=".npz, .pt, .safetensors or .npy file of logits/probs and labels")
    p.add_argument("--labels", metavar="LABELS", default=None,
                   help="labels .npy file for FILE.npy (default: FILE_labels.npy or labels.npy beside it)")
    p.add_argument("--input", choices=("logits", "probs"), default=None,
                   help="what FILE holds (default: detected from the array names; required for .npy)")
    p.add_argument("--logits-key", default="logits", help="array name of the logits (default: logits)")
    p.add_argument("--probs-key", default="probs", help="array name of the probabilities (default: probs)")
    p.add_argument("--labels-key", default="labels", help="array name of the labels (default: labels)")
    p.add_argument("--ignore-index", type=int, default=None, help="label value to ignore (segmentation)")
    p.add_argument("--n-bins", type=n_bins, default=15, help="ECE bins (default: 15)")


@dataclass(frozen=True)
class Predictions:
    """What :func:`read_predictions` read: validated values of the given kind and labels.

    Attributes:
        values: (N, C, ...) float tensor, finite; probabilities when ``kind == "probs"``.
        labels: (N, ...) int64.
        kind: "logits" or "probs".
        path: the file.
    """

    values: torch.Tensor
    labels: torch.Tensor
    kind: str
    path: Path

    @property
    def shape(self) -> str:
        return "x".join(str(s) for s in self.values.shape)

    def logits(self) -> torch.Tensor:
        """Logits; probabilities become their log (clamped at the dtype's smallest normal number)."""
        if self.kind == "logits":
            return self.values
        dtype = torch.float64 if self.values.dtype == torch.float64 else torch.float32
        return self.values.to(dtype).clamp_min(torch.finfo(dtype).tiny).log()

    def probs(self) -> torch.Tensor:
        """Probabilities; logits go through a softmax over dim 1 (in float32, or float64 for float64)."""
        if self.kind == "probs":
            return self.values
        from .._checks import float_dtype

        return torch.softmax(self.values.to(float_dtype(self.values)), dim=1)


def read_predictions(args) -> Predictions:
    """Read ``args.file`` with the shared flags and apply the logits-or-probabilities rule (see the module)."""
    from .._checks import check_log_values, check_probs
    from ..io import load_arrays

    path = Path(args.file)
    if args.input is None and path.suffix.lower() == ".npy":
        raise ValueError(f"{path}: a .npy file holds one array: say what it is with --input logits or --input probs "
                         "(and give the labels with --labels LABELS.npy)")
    try:
        data = load_arrays(path, logits_key=args.logits_key, labels_key=args.labels_key, probs_key=args.probs_key,
                           kind=args.input, labels_path=args.labels)
    except ImportError as err:  # the optional safetensors reader
        raise ValueError(str(err)) from None
    npy = path.suffix.lower() == ".npy"
    name = path.name if npy else (args.logits_key if data.kind == "logits" else args.probs_key)
    if data.kind == "logits":
        try:
            values = check_log_values(data.values, "logits")  # -inf: a masked class (the rule of every entry point)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: array {name!r}: {err}") from None
        if args.input is None and looks_like_probs(values):
            raise ValueError(
                f"{path}: array {name!r} looks like probabilities (values in [0, 1] summing to 1): pass "
                f"--input probs --probs-key {name}, or --input logits if they really are logits"
            )
    else:
        try:
            values = check_probs(data.values, "probs")
        except (TypeError, ValueError) as err:
            hint = "" if npy else f" --logits-key {name}"
            raise ValueError(f"{path}: array {name!r} read as probabilities: {err} (logits? pass --input logits{hint})"
                             ) from None
    return Predictions(values=values, labels=data.labels, kind=data.kind, path=path)
