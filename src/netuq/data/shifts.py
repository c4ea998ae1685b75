"""Image corruptions at five severities, for calibration under distribution shift.

Following Ovadia et al. 2019 ("Can you trust your model's uncertainty? Evaluating predictive
uncertainty under dataset shift"), a model trained on clean data is evaluated on the test set
corrupted at increasing severity. The parameter of each kind at severities 1..5
(``SEVERITY_PARAMS``; severity 0 returns an unchanged copy):

==================  ======================================================  ===========================
kind                parameter                                               severities 1..5
==================  ======================================================  ===========================
``rotation``        angle in degrees, sign (±) drawn per image              15, 30, 45, 60, 90
``gaussian_noise``  standard deviation of additive N(0, σ²) noise           0.04, 0.08, 0.15, 0.25, 0.4
``blur``            Gaussian σ in pixels per 8 pixels of the shorter side   0.4, 0.6, 0.8, 1.1, 1.5
``pixel_dropout``   fraction of pixels set to 0 (all channels)              0.1, 0.2, 0.3, 0.45, 0.6
==================  ======================================================  ===========================

The blur scales with the image (σ = 1.5 px on 8x8 digits is σ = 5.25 px on 28x28 MNIST). With one
``seed`` the random draws are shared across severities (the same noise pattern scaled, nested
dropout masks, the same rotation signs), so the change grows monotonically with severity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["SHIFTS", "SEVERITY_PARAMS", "corrupt"]

SHIFTS: tuple[str, ...] = ("rotation", "gaussian_noise", "blur", "pixel_dropout")

SEVERITY_PARAMS: dict[str, tuple[float, ...]] = {
    "rotation": (15.0, 30.0, 45.0, 60.0, 90.0),
    "gaussian_noise": (0.04, 0.08, 0.15, 0.25, 0.4),
    "blur": (0.4, 0.6, 0.8, 1.1, 1.5),
    "pixel_dropout": (0.1, 0.2, 0.3, 0.45, 0.6),
}


def _rotate(x: torch.Tensor, degrees: float, gen: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    sign = torch.randint(0, 2, (n,), generator=gen).mul(2).sub(1).to(torch.float32)
    a = torch.deg2rad(sign * degrees)
    cos, sin = torch.cos(a), torch.sin(a)
    # A rotation in pixel units expressed in grid_sample's normalised coordinates (x by W/2, y by H/2).
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = cos
    theta[:, 0, 1] = -sin * h / w
    theta[:, 1, 0] = sin * w / h
    theta[:, 1, 1] = cos
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    n, c, h, w = x.shape
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    y = F.pad(x.reshape(n * c, 1, h, w), (radius, radius, radius, radius), mode="replicate")
    y = F.conv2d(y, k.view(1, 1, 1, -1))
    y = F.conv2d(y, k.view(1, 1, -1, 1))
    return y.reshape(n, c, h, w)


def corrupt(x: torch.Tensor, kind: str, severity: int, *, seed: int = 0) -> torch.Tensor:
    """Corrupt a batch of images with one shift at one severity (Ovadia et al. 2019).

    Args:
        x: (N, C, H, W) floating-point images in [0, 1], any size and channel count.
        kind: one of ``SHIFTS``: ``"rotation"``, ``"gaussian_noise"``, ``"blur"``, ``"pixel_dropout"``.
        severity: 1 (mild) .. 5 (strong); 0 returns an unchanged copy. Parameters in the module docstring.
        seed: seeds every random draw (a CPU ``torch.Generator``); the result is deterministic.

    Returns:
        (N, C, H, W) corrupted images, clipped to [0, 1], on ``x``'s device and dtype (half
        precision is computed in float32). ``x`` is not modified.

    Example:
        >>> x = torch.zeros(2, 1, 8, 8); x[:, :, 2:6, 3:5] = 1.0
        >>> y = corrupt(x, "blur", 3, seed=0)
        >>> y.shape, bool(y.min() >= 0), bool(y.max() <= 1), bool((y - x).abs().mean() > 0)
        (torch.Size([2, 1, 8, 8]), True, True, True)
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"`x` must be a tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"`x` must have shape (N, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"`x` must be floating point, got {x.dtype}")
    if kind not in SHIFTS:
        raise ValueError(f"`kind` must be one of {SHIFTS}, got {kind!r}")
    if isinstance(severity, bool) or not isinstance(severity, int) or not 0 <= severity <= 5:
        raise ValueError(f"`severity` must be an integer in [0, 5], got {severity!r}")
    if severity == 0 or x.numel() == 0:
        return x.clone()
    gen = torch.Generator().manual_seed(int(seed))
    dtype = x.dtype
    xf = x.to(torch.float64 if dtype == torch.float64 else torch.float32)
    param = SEVERITY_PARAMS[kind][severity - 1]
    n, c, h, w = x.shape
    if kind == "rotation":
        out = _rotate(xf, param, gen)
    elif kind == "gaussian_noise":
        noise = torch.randn(x.shape, generator=gen).to(xf)
        out = xf + param * noise
    elif kind == "blur":
        out = _blur(xf, param * min(h, w) / 8.0)
    else:  # pixel_dropout
        keep = torch.rand((n, 1, h, w), generator=gen).to(x.device) >= param
        out = xf * keep
    return out.clamp(0.0, 1.0).to(dtype)
