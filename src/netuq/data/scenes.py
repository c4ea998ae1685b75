"""Digit scenes: a small embedded semantic-segmentation task with unknown objects.

Each scene is a ``size`` x ``size`` gray canvas holding 1..3 handwritten digits (scikit-learn's
8x8 digits upscaled to 12..16 px) in distinct cells of a grid, so they do not overlap. Per-pixel
labels: background 0, digit ``d`` -> class ``d + 1`` (classes 1..10) on the pixels where the
upscaled digit is brighter than ``threshold``. Some scenes also hold an *unknown object*: a patch
of a natural photograph (scikit-learn's sample images) cut to a random blob shape and scaled to
[0.2, 1]. Its pixels are flagged in ``anomaly`` and labelled ``ignore_index`` (255), so they
drop out of the in-distribution metrics and serve as out-of-distribution pixels.

Shapes: images (N, 1, S, S) float32 in [0, 1], labels (N, S, S) int64, anomaly (N, S, S) bool,
dominant (N,) int64 (the class with the most pixels, used to stratify splits by image).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .digits import Split, _digits_arrays, split_indices
from .ood import crops, resize

__all__ = ["Scenes", "SceneData", "digit_scenes", "split_scenes", "load_digit_scenes", "IGNORE_INDEX"]

IGNORE_INDEX = 255
NUM_CLASSES = 11  # background + 10 digits


@dataclass(frozen=True)
class Scenes:
    """A set of digit scenes.

    Attributes:
        images: (N, 1, S, S) float32 in [0, 1].
        labels: (N, S, S) int64: 0 background, 1..10 digit classes, 255 unknown object.
        anomaly: (N, S, S) bool, True on unknown-object pixels.
        dominant: (N,) int64, the digit class (1..10) with the most labelled pixels (0 if none).
    """

    images: torch.Tensor
    labels: torch.Tensor
    anomaly: torch.Tensor
    dominant: torch.Tensor

    num_classes = NUM_CLASSES
    ignore_index = IGNORE_INDEX

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index) -> Scenes:
        """A subset (tensor/array/list of indices, or a slice)."""
        if isinstance(index, int):
            index = [index]  # keep the leading axis
        if isinstance(index, np.ndarray):
            index = torch.from_numpy(index)
        return Scenes(self.images[index], self.labels[index], self.anomaly[index], self.dominant[index])

    @property
    def split(self) -> Split:
        """``(images, labels)`` as a :class:`Split`, ready for ``netuq.training.fit``."""
        return Split(self.images, self.labels)


@dataclass(frozen=True)
class SceneData:
    """Train/validation/test digit scenes built from disjoint pools of digit images.

    Attributes:
        train, val, test: :class:`Split` of (images (N, 1, S, S), labels (N, S, S) int64).
        train_anomaly, val_anomaly, test_anomaly: (N, S, S) bool unknown-object masks.
        train_strata, val_strata, test_strata: (N,) int64 dominant class of each scene.
    """

    train: Split
    val: Split
    test: Split
    train_anomaly: torch.Tensor
    val_anomaly: torch.Tensor
    test_anomaly: torch.Tensor
    train_strata: torch.Tensor
    val_strata: torch.Tensor
    test_strata: torch.Tensor
    num_classes: int = NUM_CLASSES
    ignore_index: int = IGNORE_INDEX
    class_names: tuple[str, ...] = ("background",) + tuple(str(d) for d in range(10))


def _check_range(value, name: str, minimum: int) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    try:
        lo, hi = (int(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(f"`{name}` must be an int or a (min, max) pair, got {value!r}") from None
    if not minimum <= lo <= hi:
        raise ValueError(f"`{name}` must be a (min, max) pair with {minimum} <= min <= max, got {value!r}")
    return lo, hi


def _blob_masks(count: int, side: int, rng: np.random.Generator) -> np.ndarray:
    """(count, side, side) bool random blobs: wobbly rotated ellipses around the patch centre."""
    t = (np.arange(side, dtype=np.float32) + 0.5) / side * 2 - 1
    u, v = t[None, None, :], t[None, :, None]
    p = rng.random((count, 6)).astype(np.float32).T[:, :, None, None]
    phi = p[0] * np.pi
    a, b = 0.6 + 0.4 * p[1], 0.45 + 0.45 * p[2]
    k = 2 + np.floor(p[3] * 3)
    psi, amp = p[4] * 2 * np.pi, 0.1 + 0.15 * p[5]
    uu = np.cos(phi) * u + np.sin(phi) * v
    vv = -np.sin(phi) * u + np.cos(phi) * v
    rho = np.sqrt((uu / a) ** 2 + (vv / b) ** 2)
    return rho <= 1.0 + amp * np.sin(k * np.arctan2(vv, uu) + psi)


def _paste_positions(cell_index, sides, size: int, g: int, rng: np.random.Generator):
    """Top-left pixel of each patch of side ``sides`` inside its grid cell (jittered)."""
    edges = np.floor(np.arange(g + 1) * size / g).astype(np.int64)
    row, col = cell_index // g, cell_index % g
    r0, c0 = edges[row], edges[col]
    r_room = np.maximum(edges[row + 1] - r0 - sides, 0)
    c_room = np.maximum(edges[col + 1] - c0 - sides, 0)
    r = r0 + np.floor(rng.random(len(sides)) * (r_room + 1)).astype(np.int64)
    c = c0 + np.floor(rng.random(len(sides)) * (c_room + 1)).astype(np.int64)
    return np.minimum(r, size - sides), np.minimum(c, size - sides)


def _patch_index(b, r, c, side):
    ar = np.arange(side)
    return b[:, None, None], r[:, None, None] + ar[None, :, None], c[:, None, None] + ar[None, None, :]


def _generate(
    n: int,
    rng: np.random.Generator,
    pool_x: np.ndarray,
    pool_y: np.ndarray,
    *,
    size: int,
    digits_per_scene: tuple[int, int],
    digit_size: tuple[int, int],
    anomaly_prob: float,
    anomaly_size: tuple[int, int],
    threshold: float,
) -> Scenes:
    # numpy throughout: hundreds of tiny torch ops are slow when other processes hold the cores.
    cell = max(digit_size[1], anomaly_size[1] if anomaly_prob > 0 else 0)
    g = size // cell
    if g * g < digits_per_scene[1]:
        raise ValueError(
            f"`size` {size} must fit {digits_per_scene[1]} digits of {digit_size[1]} px in separate cells "
            f"(a {g}x{g} grid of {cell} px cells here)"
        )
    images = np.zeros((n, size, size), dtype=np.float32)
    labels = np.zeros((n, size, size), dtype=np.int64)
    anomaly = np.zeros((n, size, size), dtype=bool)

    # Digits: k_i per scene in distinct cells (a random permutation of the cells per scene).
    k = rng.integers(digits_per_scene[0], digits_per_scene[1] + 1, size=n)
    cells = np.argsort(rng.random((n, g * g)), axis=1)
    scene = np.repeat(np.arange(n), k)
    slot = np.arange(len(scene)) - np.repeat(np.cumsum(k) - k, k)
    cell_of = cells[scene, slot]
    pick = rng.integers(0, len(pool_y), size=len(scene))
    sides = rng.integers(digit_size[0], digit_size[1] + 1, size=len(scene))
    r, c = _paste_positions(cell_of, sides, size, g, rng)
    classes = pool_y[pick] + 1
    for side in np.unique(sides):
        m = np.flatnonzero(sides == side)
        s = int(side)
        patch = np.clip(resize(pool_x[pick[m], 0], (s, s)), 0.0, 1.0)
        idx = _patch_index(scene[m], r[m], c[m], s)
        images[idx] = patch
        labels[idx] = np.where(patch > threshold, classes[m, None, None], 0)

    # Unknown objects: at most one per scene, in a free cell when there is one.
    has = np.flatnonzero(rng.random(n) < anomaly_prob)
    if len(has):
        free = k[has] < g * g
        cell_a = np.where(free, cells[has, np.minimum(k[has], g * g - 1)], rng.integers(0, g * g, size=len(has)))
        a_sides = rng.integers(anomaly_size[0], anomaly_size[1] + 1, size=len(has))
        ra, ca = _paste_positions(cell_a, a_sides, size, g, rng)
        source = rng.integers(0, 2, size=len(has))
        big = anomaly_size[1]
        patches = np.empty((len(has), big, big), dtype=np.float32)
        for j, name in enumerate(("china", "flower")):
            sel = np.flatnonzero(source == j)
            if len(sel):
                patches[sel] = crops(name, len(sel), (big, big), rng)[:, 0]
        for side in np.unique(a_sides):
            m = np.flatnonzero(a_sides == side)
            s = int(side)
            patch = patches[m] if s == big else resize(patches[m], (s, s))
            patch = 0.2 + 0.8 * np.clip(patch, 0.0, 1.0)
            blob = _blob_masks(len(m), s, rng)
            idx = _patch_index(has[m], ra[m], ca[m], s)
            images[idx] = np.where(blob, patch, images[idx])
            labels[idx] = np.where(blob, IGNORE_INDEX, labels[idx])
            anomaly[idx] |= blob

    # Dominant digit class per scene (stratification label).
    counts = np.bincount((labels + 256 * np.arange(n)[:, None, None]).ravel(), minlength=256 * n).reshape(n, 256)
    digit_counts = counts[:, 1:NUM_CLASSES]
    dominant = np.where(digit_counts.sum(1) > 0, digit_counts.argmax(1) + 1, 0)
    return Scenes(
        torch.from_numpy(images[:, None].copy()),
        torch.from_numpy(labels),
        torch.from_numpy(anomaly),
        torch.from_numpy(dominant.astype(np.int64)),
    )


def _check_common(n, size, anomaly_prob, threshold):
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"`n` must be a positive integer, got {n!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"`size` must be an integer >= 8, got {size!r}")
    if not 0.0 <= float(anomaly_prob) <= 1.0:
        raise ValueError(f"`anomaly_prob` must be in [0, 1], got {anomaly_prob!r}")
    if not 0.0 <= float(threshold) < 1.0:
        raise ValueError(f"`threshold` must be in [0, 1), got {threshold!r}")


def digit_scenes(
    n: int,
    *,
    size: int = 32,
    digits_per_scene=(1, 3),
    digit_size=(12, 16),
    anomaly_prob: float = 0.5,
    anomaly_size=(10, 16),
    threshold: float = 0.3,
    seed: int = 0,
    source: tuple | None = None,
) -> Scenes:
    """Generate ``n`` digit scenes for semantic segmentation, with unknown objects in some.

    Args:
        n: number of scenes.
        size: height and width S of a scene (the grid has ``size // 16`` cells a side by default).
        digits_per_scene: (min, max) digits per scene, inclusive.
        digit_size: (min, max) side in pixels of an upscaled digit.
        anomaly_prob: probability that a scene holds one unknown object.
        anomaly_size: (min, max) side in pixels of an unknown object's patch.
        threshold: digit pixels brighter than this get the digit's class; dimmer ones stay background.
        seed: seed of every random draw.
        source: optional ``(x, y)`` digit images (M, 1, h, w) in [0, 1] and labels (M,) in 0..9 to
            draw from; default all 1,797 scikit-learn digits.

    Returns:
        :class:`Scenes` (images, labels, anomaly, dominant); see the module docstring for shapes.

    Example:
        >>> sc = digit_scenes(4, size=32, seed=0)
        >>> sc.images.shape, sc.labels.shape, sc.labels.dtype, int(sc.labels[sc.anomaly].ne(255).sum())
        (torch.Size([4, 1, 32, 32]), torch.Size([4, 32, 32]), torch.int64, 0)
    """
    _check_common(n, size, anomaly_prob, threshold)
    if source is None:
        pool_x, pool_y = _digits_arrays()
    else:
        pool_x = np.asarray(source[0].numpy() if isinstance(source[0], torch.Tensor) else source[0], np.float32)
        pool_y = np.asarray(source[1].numpy() if isinstance(source[1], torch.Tensor) else source[1], np.int64)
        if pool_x.ndim != 4 or pool_x.shape[1] != 1 or len(pool_x) != len(pool_y) or len(pool_y) == 0:
            raise ValueError(f"`source` must be (x (M, 1, h, w), y (M,)), got shapes {pool_x.shape}, {pool_y.shape}")
        if pool_y.min() < 0 or pool_y.max() > 9:
            raise ValueError(
                f"`source` labels must be integers in [0, 10), got values in [{pool_y.min()}, {pool_y.max()}]"
            )
    return _generate(
        n,
        np.random.default_rng(seed),
        pool_x,
        pool_y,
        size=size,
        digits_per_scene=_check_range(digits_per_scene, "digits_per_scene", 1),
        digit_size=_check_range(digit_size, "digit_size", 2),
        anomaly_prob=float(anomaly_prob),
        anomaly_size=_check_range(anomaly_size, "anomaly_size", 3),
        threshold=float(threshold),
    )


def split_scenes(
    scenes: Scenes, *, val_size: float | int = 0.15, test_size: float | int = 0.3, seed: int = 0
) -> tuple[Scenes, Scenes, Scenes]:
    """Split scenes by image (never by pixel) into train/val/test, stratified on ``dominant``.

    Note that scenes generated together may reuse the same digit images; for splits without
    shared digits use :func:`load_digit_scenes`.

    Example:
        >>> tr, va, te = split_scenes(digit_scenes(40, seed=0), val_size=0.2, test_size=0.2)
        >>> len(tr), len(va), len(te)
        (24, 8, 8)
    """
    if not isinstance(scenes, Scenes):
        raise TypeError(f"`scenes` must be Scenes, got {type(scenes).__name__}")
    tr, va, te = split_indices(
        len(scenes), strata=scenes.dominant.numpy(), val_size=val_size, test_size=test_size, seed=seed
    )
    return scenes[tr], scenes[va], scenes[te]


def load_digit_scenes(
    n: int = 1200,
    *,
    size: int = 32,
    seed: int = 0,
    val_size: float | int = 0.15,
    test_size: float | int = 0.3,
    anomaly_prob: float = 0.5,
    train_anomalies: bool = False,
    **kwargs,
) -> SceneData:
    """Train/val/test digit scenes whose digits come from disjoint pools of digit images.

    The 1,797 scikit-learn digits are first split 55/15/30 % stratified by class (as
    :func:`~netuq.data.load_digits` with its defaults), and each part's scenes are drawn from its
    own pool, so no digit image is seen both in training and in testing. Unknown objects appear
    in validation and test scenes only (unless ``train_anomalies``): they stay unknown to the
    trained model.

    Args:
        n: total number of scenes, split by ``val_size`` and ``test_size`` (fractions or counts).
        size, anomaly_prob, **kwargs: passed to :func:`digit_scenes`.
        seed: seed of the pool split and of the scene generation.
        train_anomalies: also paste unknown objects into training scenes.

    Example:
        >>> sd = load_digit_scenes(20, size=32, seed=0)
        >>> len(sd.train.y), len(sd.val.y), len(sd.test.y), sd.num_classes
        (11, 3, 6, 11)
    """
    from .digits import _check_size

    _check_common(n, size, anomaly_prob, kwargs.get("threshold", 0.3))
    if n < 3:
        raise ValueError(f"`n` must be at least 3, got {n}")
    n_test = _check_size(test_size, "test_size", n)
    n_val = _check_size(val_size, "val_size", n)
    if n_test + n_val >= n:
        raise ValueError(f"`val_size` + `test_size` must leave training scenes, got {n_val} + {n_test} of {n}")
    x, y = _digits_arrays()
    pools = split_indices(len(y), strata=y, val_size=0.15, test_size=0.3, seed=seed)
    counts = (n - n_val - n_test, n_val, n_test)
    parts = []
    for i, (pool, count) in enumerate(zip(pools, counts)):
        prob = anomaly_prob if (i > 0 or train_anomalies) else 0.0
        parts.append(digit_scenes(count, size=size, anomaly_prob=prob, seed=seed * 3 + i + 1,
                                  source=(x[pool], y[pool]), **kwargs))
    tr, va, te = parts
    return SceneData(tr.split, va.split, te.split, tr.anomaly, va.anomaly, te.anomaly,
                     tr.dominant, va.dominant, te.dominant)
