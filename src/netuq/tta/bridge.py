"""The ttach bridge: :func:`as_compose` turns a ``ttach.Compose`` (or netuq transforms) into a :class:`Compose`.

ttach's flips, ``Rotate90``, ``Scale``, ``Multiply`` and ``Add`` become their netuq equivalents
(so they get netuq's exact-size de-augmentation); any other ttach transform (``FiveCrops``, ...)
is used through its own ``apply_aug_image`` / ``apply_deaug_mask``. ttach is imported only when a
ttach object is passed.

Example:
    >>> len(as_compose([HorizontalFlip(), VerticalFlip()]))
    4
"""

from __future__ import annotations

from typing import Any

import torch

from .compose import Compose
from .transforms import Add, HorizontalFlip, Multiply, Rotate90, Scale, Size, Transform, VerticalFlip

__all__ = ["as_compose"]


class _TtachTransform(Transform):
    """Any other ttach transform, used through its own ``apply_aug_image`` / ``apply_deaug_mask``."""

    resamples = True  # unknown: undo on probabilities (exact up to rounding for a pixel permutation)

    def __init__(self, t: Any) -> None:
        self.identity = getattr(t, "identity_param", None)
        self.params = tuple(t.params)
        self.inner = t

    def augment(self, x: torch.Tensor, param: Any) -> torch.Tensor:
        return self.inner.apply_aug_image(x, **{self.inner.pname: param})

    def deaugment(self, y: torch.Tensor, param: Any, size: Size) -> torch.Tensor:
        return self.inner.apply_deaug_mask(y, **{self.inner.pname: param})

    def output_size(self, size: Size, param: Any) -> Size:
        return tuple(self.augment(torch.zeros(1, 1, *size), param).shape[-2:])

    def __repr__(self) -> str:
        return f"ttach.{type(self.inner).__name__}({list(self.params)})"


def _from_ttach(t: Any) -> Transform:
    import ttach  # lazy: ttach is an optional (test) dependency

    if isinstance(t, ttach.HorizontalFlip):
        return HorizontalFlip()
    if isinstance(t, ttach.VerticalFlip):
        return VerticalFlip()
    if isinstance(t, ttach.Rotate90):
        return Rotate90(list(t.params))
    if isinstance(t, ttach.Scale):
        return Scale(list(t.params), interpolation=t.interpolation, align_corners=t.align_corners)
    if isinstance(t, ttach.Multiply):
        return Multiply(list(t.params))
    if isinstance(t, ttach.Add):
        return Add(list(t.params))
    return _TtachTransform(t)


def as_compose(transforms: Any) -> Compose:
    """A :class:`Compose` from a Compose, one Transform, a list of Transforms, or a ``ttach.Compose``.

    ttach's flips, ``Rotate90``, ``Scale`` (keeping its interpolation, but undone to the exact
    size), ``Multiply`` and ``Add`` become their netuq equivalents; any other ttach transform is
    used through its own methods.

    Example:
        >>> len(as_compose([HorizontalFlip(), VerticalFlip()]))
        4
    """
    if isinstance(transforms, Compose):
        return transforms
    if isinstance(transforms, Transform):
        return Compose([transforms])
    if type(transforms).__module__.split(".")[0] == "ttach" and hasattr(transforms, "aug_transforms"):
        return Compose([_from_ttach(t) for t in transforms.aug_transforms])
    if isinstance(transforms, (list, tuple)):
        return Compose(transforms)
    raise TypeError(
        "`transforms` must be a netuq.tta.Compose, a Transform, a list of Transforms or a ttach.Compose, "
        f"got {type(transforms).__name__}"
    )
