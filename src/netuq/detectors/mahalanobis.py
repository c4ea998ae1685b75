"""Mahalanobis OOD detector with class means and one shared covariance (Lee et al. 2018, "A Simple
Unified Framework for Detecting Out-of-Distribution Samples and Adversarial Attacks", NeurIPS; the
plain form, without input preprocessing or layer ensembles).

Fit, in one streaming pass over in-distribution data: per-class feature sums (C, D), counts (C,)
and one scatter matrix (D, D), all float64 and taken about a fixed shift (the first batch's mean,
which keeps the subtraction below well conditioned), so memory is O(C·D + D²) whatever N.
Then μ_c = S_c / n_c and Σ = (Σ_i (f_i − s)(f_i − s)ᵀ − Σ_c n_c (μ_c − s)(μ_c − s)ᵀ) / N, the
pooled within-class covariance (maximum likelihood, divided by N). Score:
``min_c (f − μ_c)ᵀ (Σ + εI)⁻¹ (f − μ_c)``, higher = more OOD, through the Cholesky factor of
Σ + εI with ε = ``ridge`` · mean(diag Σ).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from ..exceptions import NotFittedError
from ..scores import Score, register
from .features import LayerFeatures

__all__ = ["Mahalanobis"]


class Mahalanobis:
    """Class-conditional Gaussians with a shared covariance on a layer's features (Lee et al. 2018).

    Use it on features directly (``partial_fit(features, labels)`` per batch, then ``score``),
    or on a model's named layer (``fit(model, loader)``, then ``score_inputs(x)``); netuq.compare
    takes it through ``detectors=`` and scores every OOD kind with it.

    Args:
        layer: name of the submodule whose output are the features (``model.named_modules()``);
            only needed for ``fit`` / ``score_inputs``. A feature map (N, D, H, W) is averaged over
            H, W.
        ridge: ε / mean(diag Σ): the relative ridge added to Σ before its Cholesky factor.

    Attributes:
        means_: (C, D) class means (float64). A class without fit data has no mean and is skipped.
        counts_: (C,) fit examples per class.
        covariance_: (D, D) the shared covariance (without the ridge).
        n_samples_: N.

    Shapes:
        features (N, D); labels (N,); scores (N,).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> f = torch.randn(500, 3, generator=g, dtype=torch.float64); y = torch.arange(500) % 2
        >>> f[y == 1] += 4.0
        >>> det = Mahalanobis().partial_fit(f[:200], y[:200]).partial_fit(f[200:], y[200:])
        >>> far = torch.full((1, 3), 20.0, dtype=torch.float64)
        >>> bool(det.score(far) > det.score(f).max())
        True
    """

    name = "mahalanobis"

    def __init__(self, *, layer: str | None = None, ridge: float = 1e-6) -> None:
        if layer is not None and not isinstance(layer, str):
            raise TypeError(f"`layer` must be a module name (str) or None, got {type(layer).__name__}")
        if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not ridge >= 0 or ridge != ridge:
            raise ValueError(f"`ridge` must be a number >= 0, got {ridge!r}")
        self.layer, self.ridge = layer, float(ridge)
        self._reset()

    def _reset(self) -> None:
        self._sums: torch.Tensor | None = None  # (C, D) Σ (f − shift) per class
        self._counts: torch.Tensor | None = None  # (C,)
        self._scatter: torch.Tensor | None = None  # (D, D) Σ (f − shift)(f − shift)ᵀ
        self._shift: torch.Tensor | None = None  # (D,)
        self._factor: torch.Tensor | None = None  # Cholesky factor of Σ + εI, computed when first needed
        self._features: LayerFeatures | None = None

    def __repr__(self) -> str:
        return f"Mahalanobis(layer={self.layer!r}, ridge={self.ridge!r})"

    @property
    def is_fitted(self) -> bool:
        """Whether some data were added (``fit`` or ``partial_fit``)."""
        return self._sums is not None

    def _ensure(self) -> None:
        if self._sums is None:
            raise NotFittedError("this Mahalanobis detector is not fitted yet: call fit or partial_fit first")
        if self._factor is None:
            self._finish()

    @property
    def means_(self) -> torch.Tensor:
        self._ensure()
        return self._means

    @property
    def counts_(self) -> torch.Tensor:
        self._ensure()
        return self._counts.to(torch.int64)

    @property
    def covariance_(self) -> torch.Tensor:
        self._ensure()
        return self._cov

    @property
    def n_samples_(self) -> int:
        self._ensure()
        return int(self._counts.sum())

    # ------------------------------------------------------------------ fit
    def partial_fit(self, features, labels, *, num_classes: int | None = None) -> Mahalanobis:
        """Add one batch of in-distribution (N, D) features and (N,) labels to the sums (returns self).

        ``num_classes`` fixes C on the first call (default: grow to the largest label seen).
        The covariance's factor is computed once, when first needed after the last call.
        """
        f = torch.as_tensor(features)
        if not f.is_floating_point() or f.ndim != 2 or f.shape[0] == 0:
            raise ValueError(f"`features` must be a non-empty float tensor of shape (N, D), got "
                             f"{f.dtype} {tuple(f.shape)}")
        dtype = torch.float32 if f.device.type == "mps" else torch.float64
        f = f.to(dtype)
        if not bool(torch.isfinite(f).all()):
            raise ValueError("`features` must be finite")
        y = torch.as_tensor(labels).to(f.device)
        if y.dtype.is_floating_point or y.dtype == torch.bool:
            raise ValueError(f"`labels` must be integers, got dtype {y.dtype}")
        if y.shape != f.shape[:1]:
            raise ValueError(f"`labels` must have shape ({f.shape[0]},) like the features, got {tuple(y.shape)}")
        if bool((y < 0).any()):
            raise ValueError(f"`labels` must be >= 0, got {int(y.min())}")
        if self._shift is None:
            self._shift = f.mean(0)
            C = int(y.max()) + 1 if num_classes is None else int(num_classes)
            self._sums = torch.zeros(C, f.shape[1], dtype=dtype, device=f.device)
            self._counts = torch.zeros(C, dtype=dtype, device=f.device)
            self._scatter = torch.zeros(f.shape[1], f.shape[1], dtype=dtype, device=f.device)
        elif f.shape[1] != self._shift.numel():
            raise ValueError(
                f"`features` must have D = {self._shift.numel()} like the earlier batches, got {f.shape[1]}"
            )
        C = self._sums.shape[0]
        if int(y.max()) >= C:
            if num_classes is not None:
                raise ValueError(f"`labels` must be in [0, {C}) for num_classes={C}, got {int(y.max())}")
            extra = int(y.max()) + 1 - C
            self._sums = torch.cat([self._sums, self._sums.new_zeros(extra, self._sums.shape[1])])
            self._counts = torch.cat([self._counts, self._counts.new_zeros(extra)])
        g = f - self._shift
        self._sums.index_add_(0, y, g)
        self._counts += torch.bincount(y, minlength=self._counts.numel()).to(dtype)
        self._scatter.addmm_(g.T, g)
        self._factor = None
        return self

    def _finish(self) -> None:
        n = float(self._counts.sum())
        seen = self._counts > 0
        centred = self._sums[seen] / self._counts[seen].unsqueeze(1)  # μ_c − shift
        within = self._scatter - (centred.T * self._counts[seen]) @ centred
        cov = (within + within.T) / (2 * n)
        eps = self.ridge * float(cov.diagonal().mean().clamp_min(0)) if cov.numel() else 0.0
        eye = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
        factor, info = torch.linalg.cholesky_ex(cov + eps * eye)
        if int(info) != 0:
            raise ValueError(
                f"Mahalanobis: the shared covariance (D = {cov.shape[0]}, N = {int(n)}) is singular with "
                f"ridge={self.ridge:g}; raise `ridge` (e.g. 1e-3) or fit on more data"
            )
        means = torch.full_like(self._sums, float("nan"))
        means[seen] = centred + self._shift
        self._means, self._cov, self._seen, self._factor = means, cov, seen, factor

    def fit(self, model: torch.nn.Module, loader: Iterable, *, device: Any = None,
            num_classes: int | None = None) -> Mahalanobis:
        """One streaming pass over labelled batches ``(x, y, ...)`` of ``loader``: features of
        ``model``'s ``layer`` (eval mode, no grad) into the sums. Memory O(C·D + D²), not N·D.

        Args:
            model: the network (an ``nn.Module`` holding ``layer``).
            loader: batches ``(x, y)`` (more elements are ignored) or dicts with "input"/"label".
            device: where inputs go (default: the model's first parameter's device).
            num_classes: C (default: the largest label + 1).

        Returns:
            self, fitted.
        """
        if self.layer is None:
            raise ValueError("`layer` must be set to fit on a model: Mahalanobis(layer='name'), or use partial_fit")
        self._reset()
        self.bind(model)
        dev = device if device is not None else _model_device(model)
        for i, batch in enumerate(loader):
            x, y = _xy(batch, i)
            x = x.to(dev) if isinstance(x, torch.Tensor) else x
            self.partial_fit(self._features(x), y, num_classes=num_classes)
        if self._sums is None:
            raise ValueError("`loader` yielded no batch to fit the Mahalanobis detector on")
        self._ensure()
        return self

    def bind(self, model: torch.nn.Module) -> Mahalanobis:
        """Use ``model``'s ``layer`` for ``score_inputs`` (returns self); ``fit`` binds itself."""
        if self.layer is None:
            raise ValueError("`layer` must be set to score inputs: Mahalanobis(layer='name')")
        self._features = LayerFeatures(model, self.layer)
        return self

    # ------------------------------------------------------------------ score
    def score(self, features) -> torch.Tensor:
        """(N,) min over classes of the squared Mahalanobis distance of (N, D) ``features``, float64."""
        self._ensure()
        f = torch.as_tensor(features).to(self._factor)
        if f.ndim != 2 or f.shape[1] != self._factor.shape[0]:
            raise ValueError(f"`features` must have shape (N, {self._factor.shape[0]}), got {tuple(f.shape)}")
        L = self._factor
        # whiten: u = L⁻¹ (f − shift), m_c = L⁻¹ (μ_c − shift); d_c = |u|² − 2 u·m_c + |m_c|²
        u = torch.linalg.solve_triangular(L, (f - self._shift).T, upper=False).T
        m = torch.linalg.solve_triangular(L, (self._means[self._seen] - self._shift).T, upper=False).T
        d = (u * u).sum(1, keepdim=True) - 2.0 * u @ m.T + (m * m).sum(1)
        return d.min(1).values.clamp_min(0.0)

    def score_inputs(self, x) -> torch.Tensor:
        """(N,) scores of a batch of inputs through the bound model's ``layer``."""
        if self._features is None:
            raise NotFittedError("this Mahalanobis detector has no model: call fit(model, loader) or bind(model)")
        return self.score(self._features(x))


def _model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _xy(batch, index: int):
    if isinstance(batch, dict):
        if "input" in batch and "label" in batch:
            return batch["input"], batch["label"]
    elif isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ValueError(f"`loader` batch {index} must be (x, y, ...) or a dict with 'input' and 'label' to fit on, "
                     f"got {type(batch).__name__}")


class MahalanobisScore:
    """:class:`Mahalanobis` as a fitted score of :mod:`netuq.scores`: ``update(pred, labels)`` per
    in-distribution batch (``pred.features``, (N, D)), then ``finish()`` gives the function
    Prediction → (N,) score. ``netuq.compare`` fits it on the calibration loader.

    Labels outside [0, C) (an ``ignore_index``) are left out of the fit.

    Example:
        >>> from netuq import Prediction
        >>> pred = Prediction.from_logits(torch.zeros(4, 2)); pred.features = torch.eye(4, 3, dtype=torch.float64)
        >>> fit = MahalanobisScore(); fit.update(pred, torch.tensor([0, 1, 0, 1]))
        >>> fit.finish()(pred).shape
        torch.Size([4])
    """

    def __init__(self, *, ridge: float = 1e-6) -> None:
        self.detector = Mahalanobis(ridge=ridge)

    def update(self, pred, labels) -> None:
        f = getattr(pred, "features", None)
        if f is None:
            raise ValueError("the Mahalanobis score needs features: pass compare(..., features='layer name')")
        num_classes = pred.log_probs.shape[1]
        y = torch.as_tensor(labels).to(f.device).reshape(-1)
        if y.numel() != f.shape[0]:
            raise ValueError(f"the Mahalanobis score takes one feature row per label; got {f.shape[0]} feature rows "
                             f"for {y.numel()} labels (segmentation is scored per pixel: not supported)")
        keep = (y >= 0) & (y < num_classes)
        if bool(keep.any()):
            self.detector.partial_fit(f[keep], y[keep], num_classes=num_classes)

    def finish(self):
        det = self.detector
        det._ensure()
        return lambda pred: det.score(pred.features)


#: The feature score of :mod:`netuq.scores`, declared here where it is implemented: compare fits it
#: on the calibration loader when asked for features (``compare(..., features="layer")``).
SCORE = register(Score(
    "mahalanobis", "Mahalanobis distance", fit=MahalanobisScore, needs=("features",), kind="epistemic",
    description="min_c (f − μ_c)ᵀ Σ⁻¹ (f − μ_c) on a layer's features, class means and one shared covariance "
                "fitted on the calibration loader (Lee et al. 2018).",
), replace=True)
