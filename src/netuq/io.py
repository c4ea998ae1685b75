"""Reading and writing prediction files: logits or probabilities plus labels.

Supported formats (chosen by the file's suffix):

* ``.npz`` — a numpy archive with arrays named ``logits`` (or ``probs``) and ``labels``;
* ``.pt`` / ``.pth`` — a ``torch.save``-d dict of tensors (read with ``weights_only=True``);
* ``.safetensors`` — a safetensors file (needs the optional ``safetensors`` package);
* ``.npy`` — one array per file: ``FILE.npy`` holds the logits (or probabilities) and the labels
  come from ``labels_path`` or, by convention, from the sibling ``FILE_labels.npy`` or, failing
  that, ``labels.npy`` in the same folder.

Calibrators are saved with ``calibrator.save(path)`` and read with :func:`netuq.calibration.load`.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["ArrayFile", "load_arrays", "save_arrays", "torch_load", "SUFFIXES"]

SUFFIXES = (".npz", ".npy", ".pt", ".pth", ".safetensors")
_KINDS = ("logits", "probs")


@dataclass(frozen=True)
class ArrayFile:
    """What :func:`load_arrays` read.

    Attributes:
        values: (N, C) or (N, C, H, W, ...) float tensor: logits or probabilities (see ``kind``).
        labels: (N,) or (N, H, W, ...) int64 labels.
        kind: "logits" or "probs".
        path: the file read.
        keys: every array name found in the file.
    """

    values: torch.Tensor
    labels: torch.Tensor
    kind: str
    path: Path
    keys: tuple[str, ...]

    @property
    def logits(self) -> torch.Tensor | None:
        """The logits, or None when the file holds probabilities."""
        return self.values if self.kind == "logits" else None

    @property
    def probs(self) -> torch.Tensor | None:
        """The probabilities, or None when the file holds logits."""
        return self.values if self.kind == "probs" else None


def _safetensors_module():
    try:
        import safetensors.torch as st
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading or writing .safetensors files needs the optional package safetensors: pip install safetensors"
        ) from err
    return st


def _to_tensor(value, name: str, path: Path) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise ValueError(f"{path}: array {name!r} has dtype object, expected numbers")
        return torch.from_numpy(np.ascontiguousarray(value))
    raise ValueError(f"{path}: entry {name!r} must be a tensor or array, got {type(value).__name__}")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def torch_load(path: str | Path):
    """``torch.load(path, weights_only=True)`` on the CPU, quietly, every failure a ValueError naming the file.

    Only tensors and plain containers are rebuilt (no arbitrary unpickling); a file holding other
    Python objects is refused with the name of the first one torch would not rebuild.

    Raises:
        ValueError: starting with the file (missing, truncated, foreign, not a torch file).
    """
    import pickle

    path = Path(path)
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error, if any, is what matters
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist") from None
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported (?:global: GLOBAL [\w.]+|operand \d+)", str(err))
        why = found.group(0) if found else _first_line(err)
        raise ValueError(f"{path}: refused: it holds Python objects other than tensors and plain containers "
                         f"({why})") from None
    except Exception as err:  # EOFError, RuntimeError (zip archive), OSError [Errno 22], ...
        raise ValueError(f"{path}: cannot read file ({type(err).__name__}: {_first_line(err)})") from None


def _read_mapping(path: Path) -> dict:
    """All named arrays of an .npz / .pt / .safetensors file (values may be numpy or torch)."""
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    if suffix in (".pt", ".pth"):
        data = torch_load(path)
        if not isinstance(data, dict):
            raise ValueError(
                f"{path}: expected a dict of tensors (torch.save({{'logits': ..., 'labels': ...}})), "
                f"got {type(data).__name__}"
            )
        return data
    if suffix == ".safetensors":
        return dict(_safetensors_module().load_file(str(path)))
    raise ValueError(f"{path}: unsupported file type {suffix or '(none)'!r}; expected one of {', '.join(SUFFIXES)}")


def _read_npy(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def _guarded_read(reader, path: Path):
    """Run ``reader(path)``; turn the many error types of corrupt input into one ValueError naming the file."""
    try:
        return reader(path)
    except (ImportError, FileNotFoundError):
        raise
    except ValueError as err:
        if str(err).startswith(str(path)):  # already ours, naming the file
            raise
        raise ValueError(f"{path}: cannot read file (ValueError: {str(err).strip().splitlines()[0]})") from err
    except Exception as err:  # numpy, pickle, zipfile, safetensors: each raises its own type
        msg = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ValueError(f"{path}: cannot read file ({type(err).__name__}: {msg})") from err


def _labels_for_npy(path: Path, labels_path) -> Path:
    if labels_path is not None:
        return Path(labels_path)
    candidates = [path.with_name(f"{path.stem}_labels.npy"), path.with_name("labels.npy")]
    for cand in candidates:
        if cand.exists() and cand.resolve() != path.resolve():
            return cand
    tried = ", ".join(str(c) for c in candidates)
    raise ValueError(
        f"{path}: a .npy file holds one array; pass the labels file (--labels FILE), or put them in {tried}"
    )


def _as_labels(labels: torch.Tensor, path: Path) -> torch.Tensor:
    if labels.dtype == torch.bool or labels.is_complex():
        raise ValueError(f"{path}: labels must be integers, got dtype {labels.dtype}")
    if labels.is_floating_point():
        if not bool(torch.isfinite(labels).all()) or not bool((labels == labels.round()).all()):
            raise ValueError(f"{path}: labels must be integers, got non-integer values of dtype {labels.dtype}")
    return labels.to(torch.int64)


def load_arrays(
    path: str | Path,
    *,
    logits_key: str = "logits",
    labels_key: str = "labels",
    probs_key: str = "probs",
    kind: str | None = None,
    labels_path: str | Path | None = None,
) -> ArrayFile:
    """Read logits (or probabilities) and labels from a .npz, .npy, .pt or .safetensors file.

    Args:
        path: the file. For ``.npy`` it holds the values; the labels come from ``labels_path``,
            else ``<stem>_labels.npy``, else ``labels.npy`` beside it.
        logits_key, labels_key, probs_key: array names inside .npz / .pt / .safetensors files.
        kind: "logits", "probs" or None (auto: ``logits_key`` if present, else ``probs_key``;
            a .npy file is taken as logits unless ``kind="probs"``).
        labels_path: labels file for ``.npy`` input (``.npy``); ignored otherwise.

    Returns:
        An :class:`ArrayFile` with ``values`` (N, C, ...) float, ``labels`` (N, ...) int64 and ``kind``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unreadable or unsupported file, missing keys (the message lists the keys
            found), non-float values, non-integer labels, or shapes that do not match.

    Example:
        >>> import tempfile, os, numpy as np
        >>> path = os.path.join(tempfile.mkdtemp(), "preds.npz")
        >>> np.savez(path, logits=np.zeros((3, 2), np.float32), labels=np.array([0, 1, 1]))
        >>> data = load_arrays(path)
        >>> data.kind, tuple(data.values.shape), data.labels.tolist()
        ('logits', (3, 2), [0, 1, 1])
    """
    path = Path(path)
    if kind not in (None, *_KINDS):
        raise ValueError(f"`kind` must be None, 'logits' or 'probs', got {kind!r}")
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if path.is_dir():
        raise ValueError(f"{path}: is a folder, expected a file")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{path}: unsupported file type {suffix or '(none)'!r}; expected one of {', '.join(SUFFIXES)}")
    if suffix == ".npy":
        lpath = _labels_for_npy(path, labels_path)
        if not lpath.exists():
            raise FileNotFoundError(f"no such labels file: {lpath}")
        values_raw, labels_raw = _guarded_read(_read_npy, path), _guarded_read(_read_npy, lpath)
        kind = kind or "logits"
        keys: tuple[str, ...] = (path.name, lpath.name)
        values_name, labels_name = path.name, lpath.name
    else:
        data = _guarded_read(_read_mapping, path)
        keys = tuple(data)
        found = ", ".join(repr(k) for k in keys) or "no arrays"
        if kind is None:
            if logits_key not in data and probs_key not in data:
                raise ValueError(
                    f"{path}: no array named {logits_key!r} or {probs_key!r}; the file holds {found} "
                    "(choose names with --logits-key/--probs-key)"
                )
            kind = "logits" if logits_key in data else "probs"
        values_name = logits_key if kind == "logits" else probs_key
        for key in (values_name, labels_key):
            if key not in data:
                raise ValueError(f"{path}: no array named {key!r}; the file holds {found}")
        values_raw, labels_raw, labels_name = data[values_name], data[labels_key], labels_key
    values = _to_tensor(values_raw, values_name, path)
    labels = _as_labels(_to_tensor(labels_raw, labels_name, path), path)
    if not values.is_floating_point():
        raise ValueError(f"{path}: {kind} {values_name!r} must be floating point, got dtype {values.dtype}")
    if values.ndim < 2:
        raise ValueError(
            f"{path}: {kind} {values_name!r} must have shape (N, C) or (N, C, ...), got {tuple(values.shape)}"
        )
    expected = tuple(values.shape[:1] + values.shape[2:])
    if tuple(labels.shape) != expected:
        raise ValueError(
            f"{path}: labels {labels_name!r} must have shape {expected} to match {kind} of shape "
            f"{tuple(values.shape)}, got {tuple(labels.shape)}"
        )
    return ArrayFile(values=values, labels=labels, kind=kind, path=path, keys=keys)


def save_arrays(
    path: str | Path,
    labels,
    *,
    logits=None,
    probs=None,
    logits_key: str = "logits",
    labels_key: str = "labels",
    probs_key: str = "probs",
) -> Path:
    """Write labels and logits and/or probabilities to a .npz, .pt or .safetensors file.

    For ``.npy`` the values go to ``path`` and the labels to ``<stem>_labels.npy`` beside it
    (the convention :func:`load_arrays` reads); exactly one of ``logits``/``probs`` then.

    Example:
        >>> import tempfile, os
        >>> path = save_arrays(os.path.join(tempfile.mkdtemp(), "p.pt"), torch.tensor([1]), logits=torch.zeros(1, 2))
        >>> load_arrays(path).labels.tolist()
        [1]
    """
    path = Path(path)
    suffix = path.suffix.lower()
    arrays = {k: v for k, v in ((logits_key, logits), (probs_key, probs)) if v is not None}
    if not arrays:
        raise ValueError("save_arrays needs `logits` or `probs`, got neither")
    arrays[labels_key] = labels

    def as_torch(v):
        return torch.as_tensor(v).detach().cpu().contiguous()

    from ._files import atomic_write, atomic_write_bytes

    # every file goes through the atomic writer: never half-written, never through a symlink
    if suffix == ".npz":
        atomic_write(path, lambda fh: np.savez(fh, **{k: as_torch(v).numpy() for k, v in arrays.items()}))
    elif suffix in (".pt", ".pth"):
        atomic_write(path, lambda fh: torch.save({k: as_torch(v) for k, v in arrays.items()}, fh))
    elif suffix == ".safetensors":
        atomic_write_bytes(path, _safetensors_module().save({k: as_torch(v) for k, v in arrays.items()}))
    elif suffix == ".npy":
        if logits is not None and probs is not None:
            raise ValueError("a .npy file holds one array: pass `logits` or `probs`, not both")
        atomic_write(path, lambda fh: np.save(fh, as_torch(logits if logits is not None else probs).numpy()))
        atomic_write(path.with_name(f"{path.stem}_labels.npy"), lambda fh: np.save(fh, as_torch(labels).numpy()))
    else:
        raise ValueError(f"{path}: unsupported file type {suffix or '(none)'!r}; expected one of {', '.join(SUFFIXES)}")
    return path
