"""Invertible test-time transforms: each an augment / de-augment pair over a list of parameters.

Semantics follow ttach (https://github.com/qubvel/ttach): a transform has a list of parameter
values with the identity first (flip ``False``, angle 0, scale 1, factor 1, value 0, shift
(0, 0)) — added if you leave it out; :class:`Compose` is the Cartesian product of its transforms'
parameters (one *view* per combination, the all-identity view first), applied in order to the
image and undone in reverse order on segmentation outputs.

Differences from ttach: :class:`Scale` undoes itself by resizing to the exact pre-scale H × W
(ttach rescales by 1/s with int rounding, turning 224 into 223 for s = 0.9), and the image size
after scaling is rounded, not truncated. Images are (N, C, H, W); segmentation outputs
(N, C', H, W) in the augmented frame; classification outputs are never de-augmented.
:meth:`View.deaugment` applies the inverses to any output as it is; :meth:`View.deaugment_log_probs`
(what :class:`netuq.TTA` uses) undoes the pixel permutations (flips, rotations, shifts) on
log-probabilities exactly and resamples (:class:`Scale`) the **probabilities** bilinearly, so each
de-augmented pixel is a convex combination of probability vectors and stays normalised.

Example:
    >>> views = d4()
    >>> len(views)
    8
    >>> x = torch.arange(6.0).reshape(1, 1, 2, 3)
    >>> all(torch.equal(v.deaugment(v.augment(x), x.shape[-2:]), x) for v in views)
    True
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "Transform",
    "HorizontalFlip",
    "VerticalFlip",
    "Rotate90",
    "Scale",
    "Multiply",
    "Add",
    "Shift",
    "Compose",
    "View",
    "flips",
    "d4",
    "as_compose",
]

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

    def deaugment_log_probs(self, log_p: torch.Tensor, size: Size) -> torch.Tensor:
        """Like :meth:`deaugment`, for log-probabilities (N, C', h, w) over dim 1.

        Pixel moves (flips, rotations, shifts) are applied to the log-probabilities as they are
        (exact); resampling transforms (``Transform.resamples``, e.g. :class:`Scale`) interpolate
        the probabilities — bilinear on p, a convex combination per pixel, so the result stays
        normalised — and return their log, clamped at the dtype's smallest normal number.

        Example:
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


class Compose:
    """Cartesian product of transforms' parameters: ``len`` = the product of their counts.

    Iterating yields :class:`View` objects in ``itertools.product`` order (the first transform
    varies slowest), the all-identity view first — the same order as ``ttach.Compose``.

    Args:
        transforms: :class:`Transform` instances, applied in this order.

    Example:
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
