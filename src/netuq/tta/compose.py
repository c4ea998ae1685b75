"""Views and their Cartesian product: :class:`View` (one parameter per transform) and :class:`Compose`.

Semantics follow ttach (https://github.com/qubvel/ttach): :class:`Compose` is the Cartesian
product of its transforms' parameters (one *view* per combination, the all-identity view first),
applied in order to the image and undone in reverse order on segmentation outputs.

Example:
    >>> [v.params for v in Compose([HorizontalFlip(), Rotate90([90])])]
    [(False, 0), (False, 90), (True, 0), (True, 90)]
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from .transforms import Add, HorizontalFlip, Multiply, Rotate90, Size, Transform, VerticalFlip

__all__ = ["View", "Compose", "flips", "d4"]


class View:
    """One combination of parameters of a :class:`Compose`: the augment chain and its inverse.

    Attributes:
        transforms: the transforms, in augmentation order.
        params: one parameter per transform.

    Example:
        >>> v = Compose([HorizontalFlip(), Rotate90([90])]).views[3]
        >>> v.params
        (True, 90)
    """

    def __init__(self, transforms: Sequence[Transform], params: Sequence[Any]) -> None:
        self.transforms = tuple(transforms)
        self.params = tuple(params)

    @property
    def is_identity(self) -> bool:
        """Whether every parameter is its transform's identity."""
        return all(p == t.identity for t, p in zip(self.transforms, self.params))

    @property
    def copies_pixels(self) -> bool:
        """Whether :meth:`deaugment` only moves or copies whole pixels (every transform's
        ``copies_pixels``), so it commutes with per-pixel functions such as softmax and argmax."""
        return all(t.copies_pixels for t in self.transforms)

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> the augmented batch (transforms in order)."""
        for t, p in zip(self.transforms, self.params):
            x = t.augment(x, p)
        return x

    def output_size(self, size: Size) -> Size:
        """Spatial size of the augmented image for an input of spatial size ``size``."""
        for t, p in zip(self.transforms, self.params):
            size = t.output_size(size, p)
        return tuple(size)

    def deaugment(self, y: torch.Tensor, size: Size) -> torch.Tensor:
        """Bring an output (N, C', h, w) of the augmented image back to the frame of the original
        image of spatial size ``size`` (transforms undone in reverse order)."""
        sizes = [tuple(size)]
        for t, p in zip(self.transforms, self.params):
            sizes.append(t.output_size(sizes[-1], p))
        for i in reversed(range(len(self.transforms))):
            y = self.transforms[i].deaugment(y, self.params[i], sizes[i])
        return y

    def deaugment_all(self, ys: Sequence[torch.Tensor], size: Size) -> tuple[torch.Tensor, ...]:
        """:meth:`deaugment` of several outputs of the same augmented image (sizes computed once).

        Example:
            >>> v = d4().views[5]
            >>> y = torch.randn(1, 2, 3, 3)
            >>> all(torch.equal(a, v.deaugment(y, (3, 3))) for a in v.deaugment_all([y, y], (3, 3)))
            True
        """
        form = self.pixel_form
        if form is not None:  # flips and rotations: one transpose (a view) and one flip per output
            transpose, dims = form
            out = [y.mT if transpose else y for y in ys]
            return tuple(y.flip(dims) if dims else y for y in out)
        sizes = [tuple(size)]
        for t, p in zip(self.transforms, self.params):
            sizes.append(t.output_size(sizes[-1], p))
        out = list(ys)
        for i in reversed(range(len(self.transforms))):
            t, p = self.transforms[i], self.params[i]
            if p != t.identity:
                out = [t.deaugment(y, p, sizes[i]) for y in out]
        return tuple(out)

    @property
    def pixel_form(self) -> tuple[bool, tuple[int, ...]] | None:
        """The de-augmentation as ``(transpose, flip_dims)`` when the view is made of flips,
        90° rotations and image-only transforms: ``deaugment(y) == flip(y.mT if transpose else y,
        flip_dims)``; None otherwise. Composes the chain symbolically (a rotation by 90° is a flip
        then a transpose, as in ``torch.rot90``), so D4 views cost one copy instead of up to three.

        Example:
            >>> v = Compose([Rotate90([90])]).views[1]
            >>> v.pixel_form                                    # rot90(y, -1) == flip(y.mT, -1)
            (True, (-1,))
            >>> y = torch.randn(1, 2, 3, 4)
            >>> torch.equal(v.deaugment_all([y], (4, 3))[0], torch.rot90(y, -1, (-2, -1)))
            True
        """
        if not hasattr(self, "_pixel_form"):
            self._pixel_form = _compose_pixel_form(self.transforms, self.params)
        return self._pixel_form

    def deaugment_log_probs(self, log_p: torch.Tensor, size: Size) -> torch.Tensor:
        """Like :meth:`deaugment`, for log-probabilities (N, C', h, w) over dim 1.

        Pixel moves (flips, rotations, shifts) are applied to the log-probabilities as they are
        (exact); resampling transforms (``Transform.resamples``, e.g. :class:`Scale`) interpolate
        the probabilities — bilinear on p, a convex combination per pixel, so the result stays
        normalised — and return their log, clamped at the dtype's smallest normal number.

        Example:
            >>> from netuq.tta import Scale
            >>> v = Compose([Scale([2])]).views[1]
            >>> log_p = torch.log_softmax(torch.randn(1, 3, 8, 8), 1)
            >>> p = v.deaugment_log_probs(log_p, (4, 4)).exp()
            >>> p.shape, torch.allclose(p, v.deaugment(log_p.exp(), (4, 4)), atol=1e-6)
            (torch.Size([1, 3, 4, 4]), True)
        """
        sizes = [tuple(size)]
        for t, p in zip(self.transforms, self.params):
            sizes.append(t.output_size(sizes[-1], p))
        for i in reversed(range(len(self.transforms))):
            t, p = self.transforms[i], self.params[i]
            if not t.resamples:
                log_p = t.deaugment(log_p, p, sizes[i])
            elif p != t.identity or tuple(log_p.shape[-2:]) != sizes[i]:
                log_p = _resample_log_probs(t, log_p, p, sizes[i])
        return log_p

    def __repr__(self) -> str:
        return "View(" + ", ".join(f"{type(t).__name__}={p!r}" for t, p in zip(self.transforms, self.params)) + ")"


def _resample_log_probs(t: Transform, log_p: torch.Tensor, param: Any, size: Size) -> torch.Tensor:
    """``log(t.deaugment(p))`` for p = exp(log_p): interpolation is linear per channel, so each
    (N, C) map is scaled by exp(−its max) first (largest value 1, no underflow of small classes
    that are small everywhere) and the shift added back after the log."""
    shift = log_p.amax(dim=(-2, -1), keepdim=True)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    q = t.deaugment(torch.exp(log_p - shift), param, size)
    return torch.log(q.clamp_min(torch.finfo(q.dtype).tiny)) + shift


def _pixel_ops(t: Transform, p: Any) -> list[str] | None:
    """De-augmentation of one transform as flips of the last axes ("-1", "-2") and transposes
    ("T"), applied in order; None for a transform that is not a pure pixel move of this kind."""
    if p == t.identity or type(t) in (Multiply, Add):  # image-only: nothing to undo
        return []
    if type(t) is HorizontalFlip:
        return ["-1"]
    if type(t) is VerticalFlip:
        return ["-2"]
    if type(t) is Rotate90:  # torch.rot90 by k: k=1 flips the last axis then transposes, k=3 the other
        return {0: [], 1: ["-1", "T"], 2: ["-1", "-2"], 3: ["-2", "T"]}[(-(p // 90)) % 4]  # 360° is 0
    return None


def _compose_pixel_form(transforms: Sequence[Transform], params: Sequence[Any]) -> tuple[bool, tuple[int, ...]] | None:
    """Fold the reverse-order de-augmentation into y -> flip(T^t(y), F): a flip of axis a after it
    toggles a in F; a transpose after it swaps the axes of F and toggles t."""
    transpose, flips = False, set()
    for t, p in zip(reversed(transforms), reversed(params)):
        ops = _pixel_ops(t, p)
        if ops is None:
            return None
        for op in ops:
            if op == "T":
                transpose, flips = not transpose, {{"-1": "-2", "-2": "-1"}[a] for a in flips}
            else:
                flips ^= {op}
    return transpose, tuple(sorted(int(a) for a in flips))


class Compose:
    """Cartesian product of transforms' parameters: ``len`` = the product of their counts.

    Iterating yields :class:`View` objects in ``itertools.product`` order (the first transform
    varies slowest), the all-identity view first — the same order as ``ttach.Compose``.

    Args:
        transforms: :class:`Transform` instances, applied in this order.

    Example:
        >>> from netuq.tta import Multiply
        >>> c = Compose([HorizontalFlip(), Multiply([0.9, 1.1])])
        >>> len(c), [v.params for v in c][:3]
        (6, [(False, 1), (False, 0.9), (False, 1.1)])
    """

    def __init__(self, transforms: Sequence[Transform]) -> None:
        transforms = list(transforms)
        if not transforms:
            raise ValueError("`transforms` must contain at least one transform, got none")
        for t in transforms:
            if not isinstance(t, Transform):
                raise TypeError(f"`transforms` must be netuq.tta.Transform instances, got {type(t).__name__}")
        self.transforms = tuple(transforms)
        self.views = [View(self.transforms, p) for p in itertools.product(*(t.params for t in self.transforms))]

    def __iter__(self) -> Iterator[View]:
        return iter(self.views)

    def __len__(self) -> int:
        return len(self.views)

    def __repr__(self) -> str:
        return f"Compose({list(self.transforms)})"


def flips() -> Compose:
    """Horizontal × vertical flips: 4 views.

    Example:
        >>> len(flips())
        4
    """
    return Compose([HorizontalFlip(), VerticalFlip()])


def d4() -> Compose:
    """The dihedral group D4 (horizontal flip × rotations by 0/90/180/270°): 8 views.

    Example:
        >>> [v.params for v in d4()][:2]
        [(False, 0), (False, 90)]
    """
    return Compose([HorizontalFlip(), Rotate90([0, 90, 180, 270])])
