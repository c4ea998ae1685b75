"""Conformal risk control for segmentation (Angelopoulos, Bates, Fisch, Lei & Schuster 2022).

Each calibration *image* i has a loss L_i(λ) ∈ [0, B] (B = 1 here) that does not increase with
λ. With R̂_n(λ) the mean loss over n calibration images,

    λ̂ = inf{λ ∈ Λ : (n/(n+1))·R̂_n(λ) + B/(n+1) ≤ α},

and then E[L_{n+1}(λ̂)] ≤ α for a new image exchangeable with the calibration images.

What is and is not guaranteed:

* the guarantee is over **images**: the expected per-image loss of a new image, averaged over
  the draw of the calibration images and of that image. Pixels within an image are not
  exchangeable (they are spatially correlated), so nothing is promised for single pixels, for
  one given image, or for the fraction of all pixels of a data set;
* it holds for any model, calibrated or not; a poor model only makes the sets larger;
* the images must be exchangeable with the calibration images (no shift between them).

Losses (the set at λ holds the pixels / classes with probability ≥ t = 1 − λ):

* ``"fnr"``: the fraction of the target class's valid pixels whose probability of the target
  class is below t (missed by the mask {p_target ≥ t}); an image without target pixels has loss 0.
* ``"miscoverage"``: the fraction of the image's valid pixels whose true class is outside the
  per-pixel set {c : p_c ≥ t}; an image without valid pixels has loss 0.

Bounded memory (the choice made here): λ ranges over a **fixed grid** Λ of G thresholds, and
the calibration pass adds each image's loss at every grid point to one (G,) float64 sum, so
memory is O(G), independent of the number of pixels and images (per batch O(N·G) extra).
Effect of the grid: the guarantee is exact for any finite Λ that contains λ_max = 1 (where
every loss is 0), so it is untouched; λ̂ on the grid is the smallest grid value that the
continuous rule would also accept, i.e. at most one grid step more conservative (sets no
smaller) than the continuous inf. The default grid has 2,000 thresholds: 1,001 evenly spaced
in [0, 1] plus 500 geometric ones in [1e-9, 1e-2] near 0 and near 1, where softmax
probabilities pile up.

Shapes: ``x`` (N, C, H, W) (or (N, C, ...)) logits, probabilities or a Prediction; labels
(N, H, W) with ``ignore_index``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from .._checks import check_choice, check_ignore_index, check_int
from ..exceptions import NotFittedError
from ._inputs import as_probs64, labels_for
from .quantile import check_alpha

__all__ = ["ConformalRiskControl", "LOSSES", "threshold_grid", "image_losses", "image_curves", "threshold_index"]

LOSSES = ("fnr", "miscoverage")
BOUND = 1.0  # B: both losses are fractions


def threshold_grid(size: int = 2000) -> torch.Tensor:
    """The default grid of thresholds t = 1 − λ, ascending float64, from 0 to 1 inclusive.

    About half evenly spaced in [0, 1], a quarter geometric in [1e-9, 1e-2] and a quarter
    geometric in 1 − [1e-9, 1e-2].

    Example:
        >>> t = threshold_grid(100)
        >>> float(t[0]), float(t[-1]), bool((t[1:] > t[:-1]).all())
        (0.0, 1.0, True)
    """
    size = check_int(size, "grid_size", 8)
    even = torch.linspace(0.0, 1.0, size // 2 + 1, dtype=torch.float64)
    tail = torch.logspace(-9, -2, (size - size // 2 - 1) // 2, dtype=torch.float64)
    return torch.unique(torch.cat([even, tail, 1.0 - tail]))  # sorted ascending, duplicates merged


def _values(probs: torch.Tensor, y: torch.Tensor, loss: str, target: int | None, ignore_index: int | None):
    """Per image, the probabilities whose coverage the loss counts: (N, L) values and (N, L) mask."""
    N, C = probs.shape[:2]
    p = probs.reshape(N, C, -1)
    y = y.reshape(N, -1)
    valid = torch.ones_like(y, dtype=torch.bool) if ignore_index is None else y != ignore_index
    if loss == "fnr":
        return p[:, target], valid & (y == target)
    safe = torch.where(valid, y, 0)
    return p.gather(1, safe.unsqueeze(1)).squeeze(1), valid


def _losses_on_grid(values: torch.Tensor, mask: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """(N, G) loss of each image at each threshold: the fraction of its masked values below t_g."""
    N = values.shape[0]
    G = thresholds.numel()
    idx = torch.searchsorted(thresholds, values.contiguous(), right=True)  # #{t <= v}: v < t_g  <=>  idx <= g
    code = (torch.arange(N, device=idx.device).unsqueeze(1) * (G + 1) + idx).reshape(-1)
    counts = torch.bincount(code, weights=mask.reshape(-1).to(torch.float64), minlength=N * (G + 1))
    missed = counts.view(N, G + 1).cumsum(1)[:, :G]
    m = mask.sum(1, dtype=torch.float64).unsqueeze(1)
    return torch.where(m > 0, missed / m.clamp_min(1.0), 0.0)


def image_curves(probs: torch.Tensor, y: torch.Tensor, thresholds: torch.Tensor, *, loss: str,
                 target_class: int | None, ignore_index: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the loss and the mean per-pixel set size at every threshold of the grid.

    Args:
        probs: (N, C, ...) float64 probabilities; y: (N, ...) validated labels.
        thresholds: (G,) ascending float64 grid.

    Returns:
        ``(losses (N, G), sizes (N, G))``: sizes are the mean over the image's valid pixels of
        #{c : p_c ≥ t} (0 for an image without valid pixels).
    """
    v, mask = _values(probs, y, loss, target_class, ignore_index)
    grid = thresholds.to(v.device)
    losses = _losses_on_grid(v, mask, grid)
    N, C = probs.shape[:2]
    valid = torch.ones_like(y, dtype=torch.bool) if ignore_index is None else y != ignore_index
    flat = probs.reshape(N, C, -1)
    valid = valid.reshape(N, 1, -1).expand_as(flat).reshape(N, -1)
    # #{t ≤ p} counted per (image, class, pixel); the set size at t_g is the count of p ≥ t_g.
    below = _losses_on_grid(flat.reshape(N, -1), valid, grid)  # fraction of (pixel, class) pairs with p < t_g
    pixels = valid.sum(1, dtype=torch.float64).unsqueeze(1) / C
    sizes = torch.where(pixels > 0, (1.0 - below) * C, 0.0)
    return losses, sizes


def threshold_index(loss_sum: torch.Tensor, n: int, alpha: float, bound: float = BOUND) -> tuple[int, bool]:
    """Index into the ascending grid of t̂ = 1 − λ̂ from the summed per-image losses, and whether certified.

    λ̂ = inf{λ : (n/(n+1)) R̂(λ) + B/(n+1) ≤ α} ⇔ the largest t with Σ_i L_i(t) + B ≤ α (n+1); when
    none qualifies, t = the first grid point (0: λ_max, every class everywhere) and certified is False.

    Example:
        >>> threshold_index(torch.tensor([0.0, 1.0, 5.0, 9.0], dtype=torch.float64), 19, 0.1)
        (1, True)
    """
    ok = (loss_sum + bound) <= alpha * (n + 1)
    good = ok.nonzero()
    if not good.numel():
        return 0, False
    return int(good.max()), True


def image_losses(x: Any, labels: Any, threshold: float, *, loss: str = "miscoverage", target_class: int | None = None,
                 ignore_index: int | None = None, input: str = "auto") -> torch.Tensor:
    """(N,) per-image loss of the sets {p ≥ threshold}: FNR of the target class, or pixel miscoverage.

    Example:
        >>> p = torch.tensor([[[[0.9, 0.2]], [[0.1, 0.8]]]], dtype=torch.float64)  # (1, 2, 1, 2)
        >>> image_losses(p, torch.tensor([[[0, 1]]]), 0.85).tolist()  # pixel 2's class 1 has 0.8 < 0.85
        [0.5]
    """
    check_choice(loss, "loss", LOSSES)
    probs = as_probs64(x, input=input)
    ignore_index = check_ignore_index(ignore_index)
    y = labels_for(probs, labels, ignore_index)
    v, mask = _values(probs, y, loss, target_class, ignore_index)
    t = torch.tensor([float(threshold)], dtype=torch.float64, device=v.device)
    return _losses_on_grid(v, mask, t)[:, 0]


class ConformalRiskControl:
    """Conformal risk control of a per-image segmentation loss (Angelopoulos et al. 2022).

    Fit streams over calibration batches (:meth:`update` per batch, or :meth:`fit` on tensors
    or an iterable of ``(x, labels)`` batches) keeping O(G) state; ``threshold_`` (t̂ = 1 − λ̂)
    then defines the sets {p ≥ t̂}. See the module docstring for what is guaranteed.

    Args:
        loss: ``"fnr"`` (false-negative rate of ``target_class`` per image) or ``"miscoverage"``
            (fraction of an image's valid pixels whose class is outside its per-pixel set).
        alpha: the risk level: E[loss of a new image] ≤ α.
        target_class: the class of interest (required for ``"fnr"``; for ``"miscoverage"``
            optional, used by :meth:`predict_mask`).
        grid_size: G, the number of thresholds of the default grid (:func:`threshold_grid`).
        thresholds: optional ascending grid of thresholds in [0, 1] instead (0 is added:
            λ_max = 1 must be in the grid).

    Fitted attributes: ``threshold_`` (t̂), ``lambda_`` (λ̂ = 1 − t̂), ``n_calibration_`` (images),
    ``risk_`` ((G,) mean calibration loss at each threshold), ``thresholds_`` ((G,) the grid),
    ``certified_`` (False when n is too small for α: (B)/(n+1) > α, and λ̂ = 1 covers everything).

    Example:
        >>> gen = torch.Generator().manual_seed(0)
        >>> labels = torch.randint(0, 3, (40, 8, 8), generator=gen)
        >>> logits = 2.0 * torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2) + torch.randn(40, 3, 8, 8,
        ...     generator=gen)
        >>> crc = ConformalRiskControl(loss="fnr", alpha=0.1, target_class=1).fit(logits, labels)
        >>> crc.predict_mask(logits[:2]).shape
        torch.Size([2, 8, 8])
    """

    def __init__(
        self,
        *,
        loss: str = "fnr",
        alpha: float = 0.1,
        target_class: int | None = None,
        grid_size: int = 2000,
        thresholds: Any = None,
    ) -> None:
        self.loss = check_choice(loss, "loss", LOSSES)
        self.alpha = check_alpha(alpha)
        self.target_class = check_int(target_class, "target_class", 0, allow_none=True)
        if loss == "fnr" and target_class is None:
            raise ValueError("`target_class` must be given for loss='fnr' (the class whose pixels must not be missed)")
        self.grid_size = check_int(grid_size, "grid_size", 8)
        if thresholds is None:
            grid = threshold_grid(self.grid_size)
        else:
            grid = torch.as_tensor(thresholds, dtype=torch.float64).reshape(-1)
            finite = grid.numel() > 0 and bool(torch.isfinite(grid).all())
            if not finite or float(grid.min()) < 0 or float(grid.max()) > 1:
                raise ValueError("`thresholds` must be finite values in [0, 1]")
            if bool((grid[1:] <= grid[:-1]).any()):
                raise ValueError("`thresholds` must be strictly increasing")
            if float(grid[0]) > 0.0:
                grid = torch.cat([grid.new_zeros(1), grid])
        self.thresholds = thresholds
        self._grid = grid
        self.reset()

    def get_params(self) -> dict[str, Any]:
        """The constructor arguments."""
        names = ("loss", "alpha", "target_class", "grid_size", "thresholds")
        return {name: getattr(self, name) for name in names}

    def __repr__(self) -> str:
        args = {k: v for k, v in self.get_params().items() if k != "thresholds" or v is not None}
        return f"ConformalRiskControl({', '.join(f'{k}={v!r}' for k, v in args.items())})"

    # ------------------------------------------------------------------ streaming fit
    def reset(self) -> ConformalRiskControl:
        """Forget the calibration images seen so far (and the fitted attributes)."""
        self._loss_sum = torch.zeros(self._grid.numel(), dtype=torch.float64)
        self._n = 0
        for name in ("threshold_", "lambda_", "n_calibration_", "risk_", "thresholds_", "certified_"):
            self.__dict__.pop(name, None)
        return self

    def update(self, x: Any, labels: Any, *, ignore_index: int | None = None, input: str = "auto") -> None:
        """Add a batch of calibration images: x (N, C, H, W), labels (N, H, W)."""
        probs = as_probs64(x, input=input)
        ignore_index = check_ignore_index(ignore_index)
        if probs.ndim < 3:
            raise ValueError(f"`x` must have shape (N, C, H, W) (or (N, C, ...)): a loss per image needs pixels, "
                             f"got shape {tuple(probs.shape)}")
        if self.target_class is not None and self.target_class >= probs.shape[1]:
            raise ValueError(f"`target_class` must be a class index in [0, {probs.shape[1]}), got {self.target_class}")
        y = labels_for(probs, labels, ignore_index)
        v, mask = _values(probs, y, self.loss, self.target_class, ignore_index)
        grid = self._grid.to(v.device)
        self._loss_sum += _losses_on_grid(v, mask, grid).sum(0).cpu()
        self._n += probs.shape[0]
        self._finish()

    def fit(self, x: Any, labels: Any = None, *, ignore_index: int | None = None,
            input: str = "auto") -> ConformalRiskControl:
        """Calibrate λ̂ from scratch on tensors, or on an iterable of ``(x, labels)`` batches (labels=None).

        Returns:
            self.
        """
        self.reset()
        if labels is None:
            if isinstance(x, torch.Tensor) or not isinstance(x, Iterable):
                raise ValueError("`labels` must be given with tensors; pass an iterable of (x, labels) batches "
                                 "to fit over a loader")
            for i, batch in enumerate(x):
                if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                    raise ValueError(f"calibration batch {i} must be an (x, labels) pair, got {type(batch).__name__}")
                self.update(batch[0], batch[1], ignore_index=ignore_index, input=input)
        else:
            self.update(x, labels, ignore_index=ignore_index, input=input)
        if self._n == 0:
            raise ValueError("`x` must hold at least one calibration image, got none")
        return self

    def _finish(self) -> None:
        n = self._n
        # The accepted set is a prefix of the ascending grid (the loss sum is non-decreasing in t).
        index, certified = threshold_index(self._loss_sum, n, self.alpha)
        self.threshold_ = float(self._grid[index])
        self.lambda_ = 1.0 - self.threshold_
        self.n_calibration_ = n
        self.risk_ = self._loss_sum / n
        self.thresholds_ = self._grid
        self.certified_ = certified

    # ------------------------------------------------------------------ predict
    def _check_fitted(self) -> None:
        if not hasattr(self, "threshold_"):
            raise NotFittedError("this ConformalRiskControl is not fitted yet: call fit(x, labels) before predict")

    def predict(self, x: Any, *, input: str = "auto") -> torch.Tensor:
        """Per-pixel sets {c : p_c ≥ t̂}: a bool (N, C, H, W) mask."""
        self._check_fitted()
        return as_probs64(x, input=input) >= self.threshold_

    def predict_mask(self, x: Any, *, input: str = "auto") -> torch.Tensor:
        """The thresholded mask of ``target_class``, {p_target ≥ t̂}: bool (N, H, W)."""
        self._check_fitted()
        if self.target_class is None:
            raise ValueError("`target_class` must be set to predict a mask (construct with target_class=...)")
        probs = as_probs64(x, input=input)
        return probs[:, self.target_class] >= self.threshold_

    def risk(self, x: Any, labels: Any, *, ignore_index: int | None = None, input: str = "auto") -> torch.Tensor:
        """(N,) loss of each image at the fitted t̂ (its mean estimates the controlled risk on test images)."""
        self._check_fitted()
        return image_losses(x, labels, self.threshold_, loss=self.loss, target_class=self.target_class,
                            ignore_index=ignore_index, input=input)


