"""The invertible transforms: each an augment / de-augment pair over a list of parameters.

A transform has a list of parameter values with the identity first (flip ``False``, angle 0,
scale 1, factor 1, value 0, shift (0, 0)), added if you leave it out. Images are (N, C, H, W);
:meth:`Transform.deaugment` brings an output (N, C', h, w) of the augmented image back to the
frame of the transform's input. Transforms that only move or copy whole pixels
(``copies_pixels``: flips, rotations, shifts, and the image-only ``Multiply`` / ``Add``) commute
with any per-pixel function of the output (softmax, entropy, argmax); :class:`Scale` resamples.

Example:
    >>> Rotate90([90]).deaugment(Rotate90([90]).augment(torch.eye(2)[None, None], 90), 90, (2, 2))
    tensor([[[[1., 0.],
              [0., 1.]]]])
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["Transform", "HorizontalFlip", "VerticalFlip", "Rotate90", "Scale", "Multiply", "Add", "Shift", "Size"]

Size = tuple[int, int]


class Transform:
    """Base class: parameters (identity first) and the augment / de-augment pair.

    Subclasses implement :meth:`augment`, and :meth:`deaugment` / :meth:`output_size` when they
    move pixels (the defaults are the identity).

    Args:
        params: the parameter values; ``identity`` is prepended when missing.
    """

    identity: Any = None
    #: Whether :meth:`deaugment` mixes several pixels (interpolation) rather than moving or copying
    #: them; such a transform is undone on probabilities, not log-probabilities or logits.
    resamples: bool = False
    #: Whether :meth:`deaugment` only moves or copies whole pixels (all channels together): then it
    #: commutes with per-pixel functions, and :class:`netuq.TTA` computes softmax, entropy and argmax
    #: in the augmented frame and de-augments the results. False for unknown subclasses.
    copies_pixels: bool = False

    def __init__(self, params: Iterable[Any]) -> None:
        params = list(params)
        if not params:
            raise ValueError(f"`params` of {type(self).__name__} must not be empty, got []")
        if self.identity not in params:
            params = [self.identity, *params]
        self.params = tuple(params)

    def augment(self, x: torch.Tensor, param: Any) -> torch.Tensor:
        """(N, C, H, W) image batch -> augmented batch."""
        raise NotImplementedError

    def deaugment(self, y: torch.Tensor, param: Any, size: Size) -> torch.Tensor:
        """(N, C', h, w) output in the augmented frame -> the frame of this transform's input,
        whose spatial size was ``size``."""
        return y

    def output_size(self, size: Size, param: Any) -> Size:
        """Spatial size after :meth:`augment` of an input of spatial size ``size``."""
        return size

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self.params)})"


class HorizontalFlip(Transform):
    """Flip left-right (the last axis). Parameters ``(False, True)``.

    Example:
        >>> HorizontalFlip().augment(torch.tensor([[[[1, 2, 3]]]]), True)
        tensor([[[[3, 2, 1]]]])
    """

    identity = False
    copies_pixels = True

    def __init__(self) -> None:
        super().__init__([False, True])

    def augment(self, x: torch.Tensor, param: bool) -> torch.Tensor:
        return x.flip(-1) if param else x

    def deaugment(self, y: torch.Tensor, param: bool, size: Size) -> torch.Tensor:
        return y.flip(-1) if param else y

    def __repr__(self) -> str:
        return "HorizontalFlip()"


class VerticalFlip(Transform):
    """Flip up-down (the second-last axis). Parameters ``(False, True)``.

    Example:
        >>> VerticalFlip().augment(torch.tensor([[[[1], [2]]]]), True).flatten()
        tensor([2, 1])
    """

    identity = False
    copies_pixels = True

    def __init__(self) -> None:
        super().__init__([False, True])

    def augment(self, x: torch.Tensor, param: bool) -> torch.Tensor:
        return x.flip(-2) if param else x

    def deaugment(self, y: torch.Tensor, param: bool, size: Size) -> torch.Tensor:
        return y.flip(-2) if param else y

    def __repr__(self) -> str:
        return "VerticalFlip()"


class Rotate90(Transform):
    """Rotate by multiples of 90° (``torch.rot90`` over (H, W), counter-clockwise, as ttach).

    Non-square images swap H and W at 90° and 270°; de-augmenting rotates by −angle.

    Args:
        angles: angles in degrees, multiples of 90 (0 is added when missing).

    Example:
        >>> Rotate90([90, 180]).params
        (0, 90, 180)
        >>> Rotate90([90]).augment(torch.zeros(1, 1, 2, 5), 90).shape
        torch.Size([1, 1, 5, 2])
    """

    identity = 0
    copies_pixels = True

    def __init__(self, angles: Sequence[int] = (0, 90, 180, 270)) -> None:
        for a in angles:
            if isinstance(a, bool) or not isinstance(a, int) or a % 90:
                raise ValueError(f"`angles` must be integer multiples of 90, got {a!r}")
        super().__init__(angles)

    def augment(self, x: torch.Tensor, param: int) -> torch.Tensor:
        k = (param // 90) % 4
        return torch.rot90(x, k, (-2, -1)) if k else x

    def deaugment(self, y: torch.Tensor, param: int, size: Size) -> torch.Tensor:
        k = (param // 90) % 4
        return torch.rot90(y, -k, (-2, -1)) if k else y

    def output_size(self, size: Size, param: int) -> Size:
        return (size[1], size[0]) if (param // 90) % 2 else size


class Scale(Transform):
    """Resize the image by a factor; de-augment resizes outputs back to the exact pre-scale H × W.

    The scaled size is ``max(1, round(H·s)) × max(1, round(W·s))``. :meth:`deaugment` brings an
    output back with bilinear interpolation (``align_corners=False``) to the size the image had
    before this transform — never by 1/s, which misses by a pixel after rounding. :class:`netuq.TTA`
    (through :meth:`View.deaugment_log_probs`) interpolates the softmax probabilities, not the
    logits.

    Args:
        scales: positive factors (1 is added when missing).
        interpolation: ``torch.nn.functional.interpolate`` mode for the image
            ("bilinear", "nearest", "bicubic", "area", ...).
        align_corners: passed to ``interpolate`` for the image in the (bi)linear/bicubic modes.

    Example:
        >>> s = Scale([0.9])
        >>> y = s.augment(torch.zeros(1, 3, 224, 224), 0.9)
        >>> y.shape[-2:], s.deaugment(y, 0.9, (224, 224)).shape[-2:]
        (torch.Size([202, 202]), torch.Size([224, 224]))
    """

    identity = 1
    resamples = True

    def __init__(
        self, scales: Sequence[float], interpolation: str = "bilinear", align_corners: bool | None = False
    ) -> None:
        for s in scales:
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s <= 0:
                raise ValueError(f"`scales` must be positive finite numbers, got {s!r}")
        valid = ("nearest", "nearest-exact", "bilinear", "bicubic", "area")
        if interpolation not in valid:
            raise ValueError(f"`interpolation` must be one of {list(valid)}, got {interpolation!r}")
        super().__init__(scales)
        self.interpolation = interpolation
        self.align_corners = align_corners

    def output_size(self, size: Size, param: float) -> Size:
        if param == 1:
            return size
        return (max(1, round(size[0] * param)), max(1, round(size[1] * param)))

    def augment(self, x: torch.Tensor, param: float) -> torch.Tensor:
        if param == 1:
            return x
        corners = self.align_corners if self.interpolation in ("bilinear", "bicubic") else None
        size = self.output_size(tuple(x.shape[-2:]), param)
        out = F.interpolate(x.to(_float(x)), size=size, mode=self.interpolation, align_corners=corners)
        return out.to(x.dtype) if x.is_floating_point() else out

    def deaugment(self, y: torch.Tensor, param: float, size: Size) -> torch.Tensor:
        if tuple(y.shape[-2:]) == tuple(size):
            return y
        return F.interpolate(y.to(_float(y)), size=tuple(size), mode="bilinear", align_corners=False).to(y.dtype)

    def __repr__(self) -> str:
        return f"Scale({list(self.params)}, interpolation={self.interpolation!r})"


def _float(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class Multiply(Transform):
    """Multiply the image by a factor (image only: outputs are not changed).

    Args:
        factors: factors (1 is added when missing).

    Example:
        >>> Multiply([0.9, 1.1]).params
        (1, 0.9, 1.1)
    """

    identity = 1
    copies_pixels = True

    def __init__(self, factors: Sequence[float]) -> None:
        for f in factors:
            if isinstance(f, bool) or not isinstance(f, (int, float)) or not math.isfinite(f):
                raise ValueError(f"`factors` must be finite numbers, got {f!r}")
        super().__init__(factors)

    def augment(self, x: torch.Tensor, param: float) -> torch.Tensor:
        return x if param == 1 else x * param


class Add(Transform):
    """Add a value to every pixel (image only: outputs are not changed).

    Args:
        values: values (0 is added when missing).

    Example:
        >>> Add([0.1]).augment(torch.zeros(1, 1, 1, 1), 0.1).item()
        0.1
    """

    identity = 0
    copies_pixels = True

    def __init__(self, values: Sequence[float]) -> None:
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"`values` must be finite numbers, got {v!r}")
        super().__init__(values)

    def augment(self, x: torch.Tensor, param: float) -> torch.Tensor:
        return x if param == 0 else x + param


class Shift(Transform):
    """Translate the image by (dy, dx) pixels (down, right); de-augment translates back.

    ``mode="circular"`` (default) rolls the image (``torch.roll``): exactly invertible, outputs
    are rolled back. ``mode="zeros"`` fills the uncovered border of the image with zeros; the
    outputs are shifted back and the strip that left the field of view (no prediction exists
    for it) copies the nearest predicted row/column (edge replication).

    Args:
        pixels: shifts, each an int ``d`` (meaning (d, d)) or a pair ``(dy, dx)``; (0, 0) is
            added when missing.
        mode: "circular" or "zeros".

    Example:
        >>> x = torch.tensor([[[[1, 2, 3]]]])
        >>> Shift([(0, 1)]).augment(x, (0, 1)), Shift([(0, 1)], mode="zeros").augment(x, (0, 1))
        (tensor([[[[3, 1, 2]]]]), tensor([[[[0, 1, 2]]]]))
    """

    identity = (0, 0)
    copies_pixels = True

    def __init__(self, pixels: Sequence[int | tuple[int, int]], mode: str = "circular") -> None:
        if mode not in ("circular", "zeros"):
            raise ValueError(f"`mode` must be one of ['circular', 'zeros'], got {mode!r}")
        pairs = []
        for p in pixels:
            pair = (p, p) if isinstance(p, int) and not isinstance(p, bool) else tuple(p) if _is_pair(p) else None
            if pair is None:
                raise ValueError(f"`pixels` must be ints or (dy, dx) pairs of ints, got {p!r}")
            pairs.append(pair)
        super().__init__(pairs)
        self.mode = mode

    def augment(self, x: torch.Tensor, param: tuple[int, int]) -> torch.Tensor:
        return _shift(x, param[0], param[1], self.mode)

    def deaugment(self, y: torch.Tensor, param: tuple[int, int], size: Size) -> torch.Tensor:
        return _shift(y, -param[0], -param[1], "circular" if self.mode == "circular" else "replicate")

    def __repr__(self) -> str:
        return f"Shift({list(self.params)}, mode={self.mode!r})"


def _is_pair(p: object) -> bool:
    return (
        isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in p)
    )


def _shift(x: torch.Tensor, dy: int, dx: int, mode: str) -> torch.Tensor:
    if dy == 0 and dx == 0:
        return x
    if mode == "circular":
        return torch.roll(x, (dy, dx), (-2, -1))
    h, w = x.shape[-2:]
    if abs(dy) >= h or abs(dx) >= w:
        raise ValueError(f"`pixels` must be smaller than the image ({h} x {w}) with mode='zeros', got ({dy}, {dx})")
    # keep the part that stays in view, then pad the uncovered side
    kept = x[..., max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
    pad = (max(0, dx), max(0, -dx), max(0, dy), max(0, -dy))  # left, right, top, bottom
    if mode == "zeros":
        return F.pad(kept, pad)
    lead = kept.shape[:-2]  # replicate padding wants (N, C, H, W)
    flat = kept.reshape(-1, 1, *kept.shape[-2:])
    out = F.pad(flat.to(_float(flat)), pad, mode="replicate").to(x.dtype)
    return out.reshape(*lead, h, w)
