"""Out-of-distribution images: natural-image patches, digits and noise, built offline.

The natural patches are random crops of scikit-learn's two bundled sample photographs
(``load_sample_images``: a Chinese temple, ``"china"``, and a flower, ``"flower"``), converted
to gray (ITU-R 601 luma) unless colour is asked for, resized with antialiasing to the input size
and min-max scaled to [0, 1], the intensity range of the digits. Noise images are uniform
U(0, 1) (``"uniform"``) or Gaussian N(0.5, 0.25²) clipped to [0, 1] (``"gaussian"``).
``"digits"`` are scikit-learn's 8×8 handwritten digits (ink 0..16 scaled to [0, 1]) upscaled to
the input size: the classic near-OOD set for Fashion-MNIST (:func:`fashion_ood`).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

__all__ = ["OOD_KINDS", "FASHION_OOD_KINDS", "fashion_ood", "ood_images", "sample_image"]

OOD_KINDS: tuple[str, ...] = ("china", "flower", "uniform", "gaussian", "digits")
FASHION_OOD_KINDS: tuple[str, ...] = ("digits", "photos", "noise")
_ALIASES = {"noise": ("uniform", "gaussian")}


@lru_cache(maxsize=1)
def _sample_images() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_sample_images

    bunch = load_sample_images()
    out = {}
    for name, img in zip(bunch.filenames, bunch.images):
        key = str(name).replace("\\", "/").rsplit("/", 1)[-1].split(".")[0]
        out[key] = np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32) / 255.0
    return out


@lru_cache(maxsize=4)
def _image(name: str, channels: int) -> np.ndarray:
    images = _sample_images()
    if name not in images:
        raise ValueError(f"`name` must be one of {tuple(sorted(images))}, got {name!r}")
    if channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 or 3, got {channels!r}")
    rgb = images[name]
    if channels == 3:
        return rgb
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32).reshape(3, 1, 1)
    return (rgb * weights).sum(0, keepdims=True)


def sample_image(name: str, *, channels: int = 1) -> torch.Tensor:
    """One of scikit-learn's bundled photographs as a (channels, 427, 640) float32 tensor in [0, 1].

    Args:
        name: ``"china"`` or ``"flower"``.
        channels: 1 (gray, ITU-R 601 luma) or 3 (RGB).

    Example:
        >>> sample_image("china").shape
        torch.Size([1, 427, 640])
    """
    return torch.from_numpy(_image(name, channels).copy())


@lru_cache(maxsize=256)
def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) linear-interpolation weights, antialiased when shrinking (a triangle filter
    stretched by the shrink factor, as PIL and ``F.interpolate(..., antialias=True)``; pixel
    centres aligned as ``align_corners=False``). Rows sum to 1."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    centre = (np.arange(n_out) + 0.5) * scale
    src = np.arange(n_in) + 0.5
    w = np.clip(1.0 - np.abs(src[None, :] - centre[:, None]) / support, 0.0, None)
    w /= w.sum(1, keepdims=True)
    return w.astype(np.float32)


def resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize the last two axes of ``x`` to ``size`` with :func:`resize_matrix` (numpy, no threads)."""
    mh = resize_matrix(x.shape[-2], size[0])
    mw = resize_matrix(x.shape[-1], size[1])
    return mh @ np.asarray(x, dtype=np.float32) @ mw.T


@lru_cache(maxsize=64)
def _resized(name: str, channels: int, height: int, width: int) -> np.ndarray:
    return resize(_image(name, channels), (height, width))


_SCALES = 6  # crop sides are drawn from this many geometric levels (one resized image each)


def _minmax(x: np.ndarray, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """Scale each image of (M, ...) to [lo, hi] (constant images become lo)."""
    flat = x.reshape(len(x), -1)
    shape = (-1,) + (1,) * (x.ndim - 1)
    mn = flat.min(1).reshape(shape)
    mx = flat.max(1).reshape(shape)
    return lo + (hi - lo) * (x - mn) / np.maximum(mx - mn, 1e-6)


def crops(name: str, count: int, size: tuple[int, int], rng: np.random.Generator, *, channels: int = 1) -> np.ndarray:
    """``count`` random crops of a sample photograph, resized to ``size``: (count, channels, H, W) in [0, 1].

    A crop covers a window of the photograph whose side is drawn from geometric levels between
    ``max(16, 2 * max(H, W))`` and 160 pixels; the photograph is resized (antialiased) once per
    level and cached, and the crops are cut from the resized image. Each crop is then min-max
    scaled to [0, 1]. Pure numpy: fast on a busy machine.
    """
    oh, ow = size
    out = np.empty((count, channels, oh, ow), dtype=np.float32)
    if count == 0:
        return out
    _, ih, iw = _image(name, 1).shape
    lo = max(16, 2 * max(oh, ow))
    hi = max(lo, min(ih, iw, 160))
    sides = np.unique(np.round(np.geomspace(lo, hi, _SCALES)).astype(np.int64))
    level = rng.integers(0, len(sides), size=count)
    ar_h, ar_w = np.arange(oh), np.arange(ow)
    for j, side in enumerate(sides):
        idx = np.flatnonzero(level == j)
        if len(idx) == 0:
            continue
        scale = oh / float(side)  # output pixels per photo pixel
        rh, rw = max(oh, round(ih * scale)), max(ow, round(iw * scale))
        img = _resized(name, channels, rh, rw)
        top = rng.integers(0, rh - oh + 1, size=len(idx))
        left = rng.integers(0, rw - ow + 1, size=len(idx))
        rows = top[:, None, None] + ar_h[None, :, None]
        cols = left[:, None, None] + ar_w[None, None, :]
        out[idx] = img[:, rows, cols].transpose(1, 0, 2, 3)
    return _minmax(out).astype(np.float32)


@lru_cache(maxsize=1)
def _digit_images() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().images.astype(np.float32) / 16.0  # (1797, 8, 8), ink in [0, 1]


def digits(count: int, size: tuple[int, int], rng: np.random.Generator, *, channels: int = 1) -> np.ndarray:
    """``count`` of scikit-learn's digits drawn at random (without replacement while there are enough),
    upscaled to ``size`` by linear interpolation: (count, channels, H, W) float32 in [0, 1]."""
    pool = _digit_images()
    idx = rng.choice(len(pool), size=count, replace=count > len(pool))
    out = np.clip(resize(pool[idx], size), 0.0, 1.0).astype(np.float32)
    return np.repeat(out[:, None], channels, axis=1)


def _expand_kinds(kinds) -> tuple[str, ...]:
    if isinstance(kinds, str):
        kinds = (kinds,)
    out: list[str] = []
    for k in kinds:
        for concrete in _ALIASES.get(k, (k,)):
            if concrete not in OOD_KINDS:
                raise ValueError(f"`kinds` must be values in {OOD_KINDS + tuple(_ALIASES)}, got {k!r}")
            if concrete not in out:
                out.append(concrete)
    if not out:
        raise ValueError("`kinds` must not be empty, got ()")
    return tuple(out)


def ood_images(
    n: int,
    *,
    size: tuple[int, int] = (8, 8),
    seed: int = 0,
    kinds=("china", "flower", "noise"),
    channels: int = 1,
) -> tuple[torch.Tensor, list[str]]:
    """``n`` out-of-distribution images: natural-image patches and noise (no download).

    The images are split as evenly as possible among the kinds, in a seeded random order.

    Args:
        n: number of images.
        size: (H, W) of each image, the model's input size.
        seed: seed of every random draw.
        kinds: any of ``"china"``, ``"flower"`` (photo patches), ``"uniform"``, ``"gaussian"``
            (noise), ``"digits"`` (scikit-learn's digits, upscaled); ``"noise"`` stands for both
            noise kinds.
        channels: 1 (gray) or 3 (colour patches, noise per channel), to match the model's input.

    Returns:
        ``(x, kind)``: x (n, channels, H, W) float32 in [0, 1] and a list of n kind names.

    Example:
        >>> x, kind = ood_images(8, size=(8, 8), seed=0)
        >>> x.shape, sorted(set(kind))
        (torch.Size([8, 1, 8, 8]), ['china', 'flower', 'gaussian', 'uniform'])
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"`n` must be a positive integer, got {n!r}")
    size = tuple(int(s) for s in (size if not isinstance(size, int) else (size, size)))
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"`size` must be (H, W) with positive values, got {size!r}")
    if channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 or 3, got {channels!r}")
    concrete = _expand_kinds(kinds)
    rng = np.random.default_rng(seed)
    assign = rng.permutation(np.arange(n) % len(concrete))
    x = np.empty((n, channels, *size), dtype=np.float32)
    for k, kind in enumerate(concrete):
        idx = np.flatnonzero(assign == k)
        if len(idx) == 0:
            continue
        shape = (len(idx), channels, *size)
        if kind == "uniform":
            x[idx] = rng.random(shape, dtype=np.float32)
        elif kind == "gaussian":
            x[idx] = np.clip(0.5 + 0.25 * rng.standard_normal(shape), 0.0, 1.0)
        elif kind == "digits":
            x[idx] = digits(len(idx), size, rng, channels=channels)
        else:
            x[idx] = crops(kind, len(idx), size, rng, channels=channels)
    return torch.from_numpy(x), [concrete[k] for k in assign]


def fashion_ood(n: int, seed: int = 0, *, size: tuple[int, int] = (28, 28)) -> dict[str, torch.Tensor]:
    """Out-of-distribution sets for Fashion-MNIST, ``n`` images of each kind, as {kind: tensor}.

    * ``"digits"``: scikit-learn's handwritten digits upscaled to 28 × 28 — near-OOD (the classic
      Fashion-MNIST vs MNIST pairing; bright strokes on black like the clothes);
    * ``"photos"``: grayscale 28 × 28 crops of scikit-learn's two sample photographs;
    * ``"noise"``: uniform and Gaussian noise images.

    Each kind is drawn from its own seed derived from ``seed``, so adding a kind never changes
    another.

    Args:
        n: images per kind.
        seed: seed of every random draw.
        size: (H, W), 28 × 28 for Fashion-MNIST.

    Returns:
        {kind: (n, 1, H, W) float32 tensor in [0, 1]} for the kinds of :data:`FASHION_OOD_KINDS`.

    Example:
        >>> sets = fashion_ood(4, seed=0)
        >>> {k: tuple(v.shape) for k, v in sets.items()}
        {'digits': (4, 1, 28, 28), 'photos': (4, 1, 28, 28), 'noise': (4, 1, 28, 28)}
    """
    from .._random import derive_seed

    kinds = {"digits": ("digits",), "photos": ("china", "flower"), "noise": ("uniform", "gaussian")}
    return {name: ood_images(n, size=size, seed=derive_seed(seed, i), kinds=parts)[0]
            for i, (name, parts) in enumerate(kinds.items())}
