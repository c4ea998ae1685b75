"""Pieces shared by the file-reading commands (``calibrate``, ``evaluate``)."""

from __future__ import annotations


def read_arrays(args):
    """Read ``args.file`` with the key options common to the commands; a missing optional reader
    (safetensors) becomes a one-line ValueError like every other bad input."""
    from ..io import load_arrays

    try:
        return load_arrays(
            args.file,
            logits_key=args.logits_key,
            labels_key=args.labels_key,
            probs_key=args.probs_key,
            kind=args.input,
            labels_path=args.labels,
        )
    except ImportError as err:
        raise ValueError(str(err)) from None
