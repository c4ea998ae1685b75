"""Real image data sets from a local folder: MNIST, Fashion-MNIST and CIFAR-10.

Nothing is downloaded unless asked. With torchvision installed (``pip install netuq[vision]``)
its dataset classes read the files; without it, a built-in reader understands the same
on-disk formats that torchvision's downloads leave behind:

* MNIST / Fashion-MNIST: the four IDX files ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each plain or ``.gz``, in any of the
  layouts :func:`idx_folders` lists: a flat folder (``data_dir`` itself, e.g. the Debian package
  ``dataset-fashion-mnist``'s ``/usr/share/datasets/fashion-mnist``), ``data_dir/raw/``, or
  torchvision's ``<data_dir>/MNIST/raw/`` / ``<data_dir>/FashionMNIST/raw/``. The built-in reader
  always reads these (torchvision's own reader needs the files uncompressed), so the result does
  not depend on whether torchvision is installed; torchvision is used to download.
* CIFAR-10: the "python version" pickle batches in ``<data_dir>/cifar-10-batches-py/``:
  ``data_batch_1`` .. ``data_batch_5``, ``test_batch``, ``batches.meta``. The built-in reader
  unpickles with a restricted unpickler that only rebuilds numpy arrays and plain containers.
"""

from __future__ import annotations

import gzip
import io
import pickle
import zlib
from pathlib import Path

import numpy as np
import torch

from .digits import ClassificationData, Split, _check_size

__all__ = ["VISION_DATASETS", "DEFAULT_DIRS", "idx_folders", "load_torchvision", "read_idx", "read_mnist",
           "read_cifar10"]

VISION_DATASETS = ("mnist", "fashionmnist", "cifar10")
# Where a data set is found when no folder is given: the path the Debian package installs
# (`apt-get install dataset-fashion-mnist`; `dpkg -L dataset-fashion-mnist` lists it).
DEFAULT_DIRS: dict[str, tuple[Path, ...]] = {"fashionmnist": (Path("/usr/share/datasets/fashion-mnist"),)}
_FOLDERS = {"mnist": "MNIST", "fashionmnist": "FashionMNIST"}
_FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_CIFAR = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_HINT = "install torchvision (`pip install netuq[vision]`) and download it with `download=True`"
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), plain or gzip-compressed, into a numpy array.

    Compression is recognised by the gzip magic bytes, not the suffix. The header (magic number,
    type code, dimensions) is validated against the data size.

    Raises:
        FileNotFoundError: no such file.
        ValueError: starting with the file: not gzip-readable, not IDX, truncated or too long.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "x-idx1-ubyte")
        >>> _ = open(p, "wb").write(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]))
        >>> read_idx(p).tolist()
        [7, 8, 9]
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as err:
        raise ValueError(f"{path} cannot be read ({err.strerror or err})") from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(f"{path} is a truncated or corrupt gzip file ({type(err).__name__}: {err})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES or data[3] == 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4].hex() or 'none: empty file'})")
    ndim = data[3]
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise ValueError(f"{path} is truncated or corrupt: the header needs {offset} bytes, got {len(data)}")
    dims = [int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4)]
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = dtype.itemsize
    for d in dims:
        expected *= d
    if len(data) - offset != expected:
        raise ValueError(f"{path} is truncated or corrupt: expected {expected} data bytes, got {len(data) - offset} "
                         f"(dimensions {tuple(dims)})")
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(dims).astype(dtype.newbyteorder("="))


def idx_folders(root: str | Path, folder: str = "MNIST") -> list[Path]:
    """The folders searched for IDX files, in order: ``root``, ``root/raw``, ``root/<folder>/raw``, ``root/<folder>``.

    Example:
        >>> [str(p) for p in idx_folders("data", "FashionMNIST")]
        ['data', 'data/raw', 'data/FashionMNIST/raw', 'data/FashionMNIST']
    """
    root = Path(root)
    return [root, root / "raw", root / folder / "raw", root / folder]


def _pick(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):  # an uncompressed copy (torchvision leaves both) reads faster
        if (folder / name).is_file():
            return folder / name
    return None


def _find_idx(root: Path, folder: str, train: bool) -> tuple[Path, Path]:
    prefix = "train" if train else "t10k"
    stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    folders = idx_folders(root, folder)
    for d in folders:
        images, labels = (_pick(d, stem) for stem in stems)
        if images is not None and labels is not None:
            return images, labels
    tried = ", ".join(str(d) for d in folders)
    raise FileNotFoundError(f"no {stems[0]}[.gz] with {stems[1]}[.gz] in {tried}; {_HINT}")


def read_mnist(data_dir: str | Path, *, train: bool = True, folder: str = "MNIST") -> tuple[np.ndarray, np.ndarray]:
    """Read MNIST-format IDX files (plain or ``.gz``) from any layout of :func:`idx_folders`, without torchvision.

    Args:
        data_dir: a flat folder holding the four files, or the root folder given to torchvision.
        train: the training files (``train-*``) or the test files (``t10k-*``).
        folder: ``"MNIST"`` or ``"FashionMNIST"`` (torchvision's subfolder name).

    Returns:
        ``(images, labels)``: (N, H, W) uint8 and (N,) int64 with values 0..9.

    Raises:
        FileNotFoundError: naming every folder searched.
        ValueError: naming the file: corrupt, or not MNIST-shaped images/labels, or counts that differ.
    """
    images_path, labels_path = _find_idx(Path(data_dir), folder, train)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{images_path}: expected (N, H, W) uint8 images, got {images.shape} {images.dtype}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise ValueError(f"{labels_path}: expected (N,) uint8 labels, got {labels.shape} {labels.dtype}")
    if len(labels) != len(images):
        raise ValueError(f"{labels_path} holds {len(labels)} labels for the {len(images)} images of {images_path}")
    if len(labels) and int(labels.max()) > 9:
        raise ValueError(f"{labels_path}: labels must be 0..9, got {int(labels.max())}")
    return images, labels.astype(np.int64)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only numpy arrays and plain containers (CIFAR batches need nothing more)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("builtins", "bytearray"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} from a data file")


def _load_pickle(path: Path) -> dict:
    """Unpickle a CIFAR file with :class:`_ArrayUnpickler`; every failure is a ValueError naming the file."""
    try:
        with open(path, "rb") as fh:
            data = _ArrayUnpickler(io.BytesIO(fh.read()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            OSError) as err:
        raise ValueError(f"{path}: not a CIFAR-10 python batch ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a CIFAR-10 python batch (a {type(data).__name__}, expected a dict)")
    return data


def _key(d: dict, name: str, path: Path):
    for k in (name, name.encode()):
        if k in d:
            return d[k]
    raise ValueError(f"{path}: CIFAR batch has no {name!r} entry (keys: {sorted(map(str, d))})")


def read_cifar10(data_dir: str | Path, *, train: bool = True) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Read CIFAR-10 python batches from ``<data_dir>/cifar-10-batches-py/`` without torchvision.

    Returns:
        ``(images, labels, class_names)``: (N, 3, 32, 32) uint8, (N,) int64, 10 names.

    Raises:
        FileNotFoundError: a batch is missing.
        ValueError: naming the file: not a CIFAR batch (also any pickled object other than
            numpy arrays and plain containers, which is never unpickled), or inconsistent sizes.
    """
    folder = Path(data_dir) / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    xs, ys = [], []
    for name in names:
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"no {name} in {folder}; {_HINT}")
        batch = _load_pickle(path)
        try:
            x = np.asarray(_key(batch, "data", path), dtype=np.uint8).reshape(-1, 3, 32, 32)
            y = np.asarray(_key(batch, "labels", path), dtype=np.int64).reshape(-1)
        except (TypeError, ValueError) as err:
            msg = str(err)
            raise ValueError(msg if msg.startswith(str(path)) else f"{path}: bad CIFAR batch ({msg})") from None
        if len(x) != len(y) or (len(y) and not 0 <= int(y.min()) <= int(y.max()) <= 9):
            raise ValueError(f"{path}: bad CIFAR batch ({len(x)} images, {len(y)} labels, labels must be 0..9)")
        xs.append(x)
        ys.append(y)
    classes = _CIFAR
    meta = folder / "batches.meta"
    if meta.is_file():
        raw = _key(_load_pickle(meta), "label_names", meta)
        classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in raw)
        if len(classes) != 10:
            raise ValueError(f"{meta}: expected 10 label names, got {len(classes)}")
    return np.concatenate(xs), np.concatenate(ys), classes


def _read_torchvision(name: str, root: Path, train: bool, download: bool):
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "fashionmnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[name]
    try:
        ds = cls(root=str(root), train=train, download=download)
    except RuntimeError as err:  # torchvision: "Dataset not found. You can use download=True ..."
        extra = "; torchvision's reader needs uncompressed files in <root>/<name>/raw: backend='auto' reads " \
            "every layout" if name != "cifar10" else ""
        raise FileNotFoundError(f"{name} not found under {root} ({err}){extra}") from None
    if name == "cifar10":
        return np.asarray(ds.data).transpose(0, 3, 1, 2), np.asarray(ds.targets, np.int64), tuple(ds.classes)
    return ds.data.numpy(), ds.targets.numpy().astype(np.int64), None


def _subsample(x: np.ndarray, y: np.ndarray, count: int | None, seed: int, name: str):
    if count is None:
        return x, y
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"`{name}` must be a positive integer or None, got {count!r}")
    if count >= len(y):
        return x, y
    from .digits import _split_off

    _, keep = _split_off(np.arange(len(y)), y, count, seed)
    keep = np.sort(keep)
    return x[keep], y[keep]


def _default_dir(key: str) -> Path:
    """The folder of ``key`` when no ``data_dir`` is given (see :data:`DEFAULT_DIRS`)."""
    if key not in DEFAULT_DIRS:
        raise ValueError(f"`data_dir` must name the folder holding {key!r}, got None "
                         f"(only {sorted(DEFAULT_DIRS)} have a default location)")
    candidates = DEFAULT_DIRS[key]
    for d in candidates:
        try:
            _find_idx(d, _FOLDERS[key], True)
            _find_idx(d, _FOLDERS[key], False)
        except FileNotFoundError:
            continue
        return d
    tried = ", ".join(str(d) for d in candidates)
    raise FileNotFoundError(f"{key}: no `data_dir` given and the IDX files are not in {tried}; "
                            f"`apt-get install dataset-fashion-mnist` puts them there, or pass data_dir")


def load_torchvision(
    name: str,
    data_dir: str | Path | None = None,
    *,
    seed: int = 0,
    val_size: float | int = 0.1,
    max_train: int | None = None,
    max_test: int | None = None,
    backend: str = "auto",
    download: bool = False,
) -> ClassificationData:
    """Load MNIST, Fashion-MNIST or CIFAR-10 from a local folder as :class:`ClassificationData`.

    The official test set is the test split; the validation split is carved out of the official
    training set, stratified by class with ``seed``.

    Args:
        name: ``"mnist"``, ``"fashionmnist"`` or ``"cifar10"``.
        data_dir: the folder holding the files (any layout of :func:`idx_folders` for the MNISTs;
            torchvision's ``root`` for CIFAR-10). None: Fashion-MNIST is looked for where the Debian
            package ``dataset-fashion-mnist`` installs it (:data:`DEFAULT_DIRS`).
        seed: seed of the validation split and of the optional subsampling.
        val_size: fraction (or count) of the training set held out for validation.
        max_train: keep at most this many training+validation images (stratified subsample).
        max_test: keep at most this many test images (stratified subsample).
        backend: ``"auto"`` (the built-in reader for the MNISTs; torchvision for CIFAR-10 when it
            is installed), ``"torchvision"`` or ``"builtin"``.
        download: let torchvision download missing files into ``data_dir`` (needs torchvision).

    Returns:
        :class:`ClassificationData` with x (N, C, H, W) float32 in [0, 1] (C = 1 for the MNISTs,
        3 for CIFAR-10) and y (N,) int64.

    Raises:
        ImportError: ``backend="torchvision"`` or ``download=True`` without torchvision.
        FileNotFoundError: the files are not there (the message names the folders searched).
        ValueError: a file is corrupt (the message names it).

    Example:
        >>> load_torchvision("svhn", "data")
        Traceback (most recent call last):
        ...
        ValueError: `name` must be one of ('mnist', 'fashionmnist', 'cifar10'), got 'svhn'
    """
    key = str(name).lower().replace("-", "").replace("_", "")
    if key not in VISION_DATASETS:
        raise ValueError(f"`name` must be one of {VISION_DATASETS}, got {name!r}")
    if backend not in ("auto", "torchvision", "builtin"):
        raise ValueError(f"`backend` must be one of ('auto', 'torchvision', 'builtin'), got {backend!r}")
    if backend == "builtin" and download:
        raise ValueError("`download=True` needs the torchvision backend, got backend='builtin'")
    if data_dir is None:
        if download:
            raise ValueError("`download=True` needs a `data_dir` to download into, got None")
        root = _default_dir(key)
    else:
        root = Path(data_dir)
    has_tv = False
    if backend != "builtin":
        try:
            import torchvision  # noqa: F401

            has_tv = True
        except ImportError:
            if backend == "torchvision" or download:
                raise ImportError(
                    "torchvision is not installed; `pip install netuq[vision]` to read or download "
                    f"{name} with torchvision (the built-in reader needs the files in {root})"
                ) from None
    # torchvision reads only its own uncompressed raw/ layout of the MNISTs: the built-in reader
    # reads every layout, so "auto" uses it (after a torchvision download, when asked).
    use_tv = backend == "torchvision" or (backend == "auto" and has_tv and key == "cifar10")

    def read(train: bool):
        if use_tv:
            return _read_torchvision(key, root, train, download)
        if download:
            _read_torchvision(key, root, train, download)
        if key == "cifar10":
            return read_cifar10(root, train=train)
        x, y = read_mnist(root, train=train, folder=_FOLDERS[key])
        return x, y, None

    x_tr, y_tr, classes = read(True)
    x_te, y_te, _ = read(False)
    if classes is None:
        classes = _FASHION if key == "fashionmnist" else tuple(str(d) for d in range(10))
    x_tr, y_tr = _subsample(x_tr, y_tr, max_train, seed, "max_train")
    x_te, y_te = _subsample(x_te, y_te, max_test, seed, "max_test")
    from .digits import _split_off

    n_val = _check_size(val_size, "val_size", len(y_tr))
    tr, va = _split_off(np.arange(len(y_tr)), y_tr, n_val, seed)

    def part(x: np.ndarray, y: np.ndarray, idx=None) -> Split:
        if idx is not None:
            idx = np.sort(idx)
            x, y = x[idx], y[idx]
        if x.ndim == 3:
            x = x[:, None]
        # one float32 allocation, divided in place (same values as x.astype(float32) / 255)
        images = torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32).div_(255.0)
        return Split(images, torch.from_numpy(y.astype(np.int64)))

    return ClassificationData(part(x_tr, y_tr, tr), part(x_tr, y_tr, va), part(x_te, y_te), tuple(classes), key)
