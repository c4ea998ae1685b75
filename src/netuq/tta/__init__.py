"""Test-time augmentation: invertible transforms and the :class:`TTA` wrapper (``netuq.TTA``).

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
undoes the pixel permutations (flips, rotations, shifts) on log-probabilities exactly and
resamples (:class:`Scale`) the **probabilities** bilinearly, so each de-augmented pixel is a
convex combination of probability vectors and stays normalised.

Modules: :mod:`~netuq.tta.transforms` (the transforms), :mod:`~netuq.tta.compose` (:class:`View`,
:class:`Compose`, :func:`flips`, :func:`d4`), :mod:`~netuq.tta.bridge` (:func:`as_compose`, ttach
objects), :mod:`~netuq.tta.merges` (streaming merges), :mod:`~netuq.tta.wrapper` (:class:`TTA`).

Example:
    >>> views = d4()
    >>> len(views)
    8
    >>> x = torch.arange(6.0).reshape(1, 1, 2, 3)
    >>> all(torch.equal(v.deaugment(v.augment(x), x.shape[-2:]), x) for v in views)
    True
"""

import torch  # noqa: F401  (the doctests above use it)

from .bridge import as_compose
from .compose import Compose, View, d4, flips
from .merges import MERGES, TSHARPEN_T
from .transforms import Add, HorizontalFlip, Multiply, Rotate90, Scale, Shift, Transform, VerticalFlip
from .wrapper import TTA

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
    "TTA",
    "MERGES",
    "TSHARPEN_T",
]
