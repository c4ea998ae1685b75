"""Post-hoc calibration of logits: temperature, vector and matrix scaling.

All three are fitted by minimising the negative log-likelihood (NLL) of held-out logits and
return *new* logits (Guo et al. 2017, "On Calibration of Modern Neural Networks", ICML):

* :class:`TemperatureScaling`: ``softmax(z / T)``, one scalar; keeps the argmax.
* :class:`VectorScaling`: ``softmax(w ⊙ z + b)``, a weight and a bias per class.
* :class:`MatrixScaling`: ``softmax(W z + b)``; optionally with the off-diagonal and intercept
  regularisation (ODIR) of Kull et al. 2019, "Beyond temperature scaling: Obtaining
  well-calibrated multiclass probabilities with Dirichlet calibration", NeurIPS.

Shapes: logits (N, C) with labels (N,), or segmentation logits (N, C, H, W, ...) with labels
(N, H, W, ...); pixels whose label equals ``ignore_index`` are left out of the fit. Fitting and
applying follow the input's device; half precision is computed in float32, float64 stays float64.

For a sampling method (MC dropout, ensembles, TTA) calibrate the log of the mean prediction,
``Prediction.log_probs``, not averaged logits.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .._checks import PROB_SUM_TOL, as_tensor, check_labels, check_logits, flatten_valid, float_dtype
from ..exceptions import NotFittedError
from ._solvers import lbfgs, solve_temperature

__all__ = ["Calibrator", "TemperatureScaling", "VectorScaling", "MatrixScaling", "ODIR_GRID", "load"]

#: The (λ, μ) grid ``MatrixScaling(odir="auto")`` searches by inner cross-validation: μ = λ in
#: 10^-1 … 10^5 (with the normalisation of Kull et al. 2019, λ multiplies the *mean* squared
#: off-diagonal entry, so useful values grow with the number of classes).
ODIR_GRID: tuple[tuple[float, float], ...] = tuple((10.0**k, 10.0**k) for k in range(-1, 6))

_FORMAT = "netuq-calibrator"
_FORMAT_VERSION = 1


# ----------------------------------------------------------------------------- input handling
def _check_logits_finite_hint(logits: Any, *, reject_probs: bool = False) -> torch.Tensor:
    """check_logits, with one allocation-free pass (min/max propagate NaN) when all is well.

    With ``reject_probs``, input that looks like probabilities (every value in [0, 1] and every
    row summing to 1 over dim 1) is refused: fitting a calibrator on probabilities is a known
    failure (temperature scaling then runs to its lower bound).
    """
    z = as_tensor(logits, "logits")
    if z.is_floating_point() and z.ndim >= 2 and z.numel():
        lo, hi = torch.aminmax(z)
        if bool(torch.isfinite(lo)) and bool(torch.isfinite(hi)):
            if z.shape[1] < 2:
                raise ValueError(f"`logits` must have at least 2 classes (dim 1), got shape {tuple(z.shape)}")
            if reject_probs and float(lo) >= 0.0 and float(hi) <= 1.0:
                _reject_probabilities(z)
            return z
        if bool(torch.isneginf(z).any()) and not bool(torch.isnan(z).any()):
            raise ValueError(
                "`logits` must be finite, got -Inf value(s); for log-probabilities with log 0, clamp first, "
                "e.g. log_probs.clamp_min(-100)"
            )
    z = check_logits(z, "logits")
    if z.shape[1] < 2:
        raise ValueError(f"`logits` must have at least 2 classes (dim 1), got shape {tuple(z.shape)}")
    return z


def _reject_probabilities(z: torch.Tensor) -> None:
    """Raise if every row of (N, C, ...) ``z`` (values already known to be in [0, 1]) sums to 1 over dim 1."""
    tol = max(PROB_SUM_TOL, torch.finfo(z.dtype).eps)  # bfloat16 rounding alone moves a sum by ~3e-3
    err = float((z.sum(dim=1, dtype=float_dtype(z)) - 1.0).abs().max())
    if err <= tol:
        raise ValueError(
            "`logits` look like probabilities (every row in [0, 1] sums to 1); pass logits, or log(probs) "
            "for a sampling method's mean prediction (Prediction.log_probs)"
        )


def _prepare(logits, labels, ignore_index, max_samples, seed):
    """Validate and flatten to (M, C) compute-dtype logits, (M,) labels, (M,) image index."""
    z = _check_logits_finite_hint(logits, reject_probs=True)
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
        raise TypeError(f"`ignore_index` must be an int or None, got {type(ignore_index).__name__}")
    if max_samples is not None and (
        isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1
    ):
        raise ValueError(f"`max_samples` must be a positive integer or None, got {max_samples!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"`seed` must be an int, got {type(seed).__name__}")
    y = check_labels(labels, z.shape[1], z.shape[:1] + z.shape[2:], ignore_index=ignore_index, probs_name="logits")
    y = y.to(z.device)
    # Image index of every label, flattened in the same (N, H, W, ...) order as flatten_valid.
    image = torch.arange(z.shape[0], device=z.device).view(-1, *([1] * (y.ndim - 1))).expand_as(y).reshape(-1)
    zf, yf = flatten_valid(z, y, ignore_index)
    if ignore_index is not None:
        image = image[y.reshape(-1) != ignore_index]
    if max_samples is not None and yf.numel() > max_samples:
        gen = torch.Generator().manual_seed(seed)
        keep = torch.randperm(yf.numel(), generator=gen)[:max_samples].sort().values.to(z.device)
        zf, yf, image = zf[keep], yf[keep], image[keep]
    zf = zf.to(float_dtype(z))
    if zf.is_inference():
        zf = zf.clone()  # inference tensors cannot be saved for backward (L-BFGS fits)
    owned = zf.untyped_storage().data_ptr() != z.untyped_storage().data_ptr()
    return zf, yf, image, owned


def _check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
    return value


def _check_positive_float(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be a positive finite number, got {value!r}")
    return float(value)


def _nll(out: torch.Tensor, y: torch.Tensor) -> float:
    if out.device.type == "mps":  # no float64 there
        out, y = out.cpu(), y.cpu()
    return float(F.cross_entropy(out.to(torch.float64), y))


# ----------------------------------------------------------------------------- base class
class Calibrator:
    """Base class: scikit-learn-style ``fit`` plus ``__call__`` returning calibrated logits.

    Subclasses define ``_fit(z, y, image, seed, owned)`` on flattened (M, C) logits (``owned``:
    ``z`` is a private copy that may be overwritten) and ``_transform(z)``
    on (N, C, ...) logits in the compute dtype, plus ``_param_names`` (constructor arguments),
    ``_tensor_names`` (fitted tensors) and ``_info_names`` (fit information).
    """

    _param_names: tuple[str, ...] = ()
    _tensor_names: tuple[str, ...] = ()
    _info_names: tuple[str, ...] = ("num_classes_", "n_samples_", "nll_before_", "nll_after_", "n_iter_", "n_passes_")

    # -------------------------------------------------------------- sklearn-like plumbing
    def get_params(self) -> dict[str, Any]:
        """The constructor arguments, so that ``type(c)(**c.get_params())`` is an unfitted copy."""
        return {name: getattr(self, name) for name in self._param_names}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    @property
    def is_fitted(self) -> bool:
        """Whether ``fit`` (or ``load``) has set the fitted attributes."""
        return hasattr(self, "num_classes_")

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet: call fit(logits, labels) before using it"
            )

    # -------------------------------------------------------------- fit / apply
    def fit(
        self,
        logits,
        labels,
        *,
        ignore_index: int | None = None,
        max_samples: int | None = None,
        seed: int = 0,
    ) -> Calibrator:
        """Fit on held-out logits by minimising the NLL.

        Args:
            logits: (N, C) or (N, C, H, W, ...) logits (not probabilities) collected in eval mode.
            labels: (N,) or (N, H, W, ...) integer labels in [0, C) or ``ignore_index``.
            ignore_index: label value whose pixels are left out of the fit.
            max_samples: fit on a uniform random subsample of at most this many valid pixels
                (rows), drawn with ``seed`` — useful for large segmentation sets.
            seed: seed of that subsample (and of any inner cross-validation split).

        Returns:
            self, with the fitted attributes (ending in ``_``) set.
        """
        # inference_mode(False): logits collected under torch.inference_mode are cloned into normal
        # tensors, which autograd (the L-BFGS fits) may save for backward.
        with torch.inference_mode(False):
            z, y, image, owned = _prepare(logits, labels, ignore_index, max_samples, seed)
            if int(torch.unique(y).numel()) < 2:
                warnings.warn(
                    f"{type(self).__name__}: the labels hold a single class ({int(y[0])}); the fit is degenerate "
                    "and the calibrated probabilities are pushed towards that class",
                    RuntimeWarning,
                    stacklevel=2,
                )
            self._clear_fit()
            self.num_classes_ = int(z.shape[1])
            self.n_samples_ = int(y.numel())
            self._fit(z, y, image, seed, owned)
        return self

    def _clear_fit(self) -> None:
        for name in (*self._info_names, *self._tensor_names, "_cache", "_ts_status"):
            self.__dict__.pop(name, None)

    def _fit(self, z: torch.Tensor, y: torch.Tensor, image, seed: int, owned: bool) -> None:  # pragma: no cover
        raise NotImplementedError

    def _transform(self, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _param(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """A fitted tensor on ``like``'s device and dtype (cached per device and dtype)."""
        cache = self.__dict__.setdefault("_cache", {})
        key = (name, like.device, like.dtype)
        if key not in cache:
            cache[key] = getattr(self, name).to(device=like.device, dtype=like.dtype)
        return cache[key]

    def _validated_input(self, logits) -> torch.Tensor:
        self._check_fitted()
        z = _check_logits_finite_hint(logits)
        if z.shape[1] != self.num_classes_:
            raise ValueError(
                f"`logits` must have {self.num_classes_} classes (dim 1) like the data {type(self).__name__} "
                f"was fitted on, got shape {tuple(z.shape)}"
            )
        return z

    def __call__(self, logits) -> torch.Tensor:
        """Calibrated logits, a new tensor of the input's shape, device and dtype.

        Args:
            logits: (N, C) or (N, C, H, W, ...) logits.

        Returns:
            (N, C, ...) calibrated logits; take ``.softmax(1)`` for probabilities.
        """
        z = self._validated_input(logits)
        with torch.no_grad():
            return self._transform(z.to(float_dtype(z))).to(z.dtype)

    def predict_proba(self, logits) -> torch.Tensor:
        """Calibrated probabilities softmax(calibrated logits) over dim 1, shape (N, C, ...).

        Half-precision input is computed in float32 and returned in its own dtype.
        """
        z = self._validated_input(logits)
        with torch.no_grad():
            return torch.softmax(self._transform(z.to(float_dtype(z))), dim=1).to(z.dtype)

    # -------------------------------------------------------------- persistence
    def to_dict(self) -> dict[str, Any]:
        """Plain-data description (class, constructor arguments, parameters, fit information)."""
        self._check_fitted()
        params = {k: _jsonable(v) for k, v in self.get_params().items()}
        tensors = {name.rstrip("_"): getattr(self, name).to(torch.float64).tolist() for name in self._tensor_names}
        info = {name.rstrip("_"): _jsonable(getattr(self, name)) for name in self._info_names if hasattr(self, name)}
        if info.get("odir_scores") is not None:  # {(λ, μ): score} -> [[λ, μ, score], ...]
            info["odir_scores"] = [[*pair, score] for pair, score in self.odir_scores_.items()]
        return {
            "format": _FORMAT,
            "format_version": _FORMAT_VERSION,
            "class": type(self).__name__,
            "params": params,
            "num_classes": self.num_classes_,
            "fitted": {**tensors, **self._scalars_to_dict()},
            "fit_info": info,
        }

    def _scalars_to_dict(self) -> dict[str, Any]:
        return {}

    def save(self, path: str | Path) -> Path:
        """Write the fitted calibrator to one JSON file (floats round-trip exactly).

        Example:
            >>> import tempfile, os
            >>> z = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
            >>> ts = TemperatureScaling().fit(z, torch.tensor([0, 1, 1]))
            >>> path = ts.save(os.path.join(tempfile.mkdtemp(), "ts.json"))
            >>> load(path).temperature_ == ts.temperature_
            True
        """
        data = self.to_dict()
        path = Path(path)
        path.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n", encoding="utf-8")
        return path


def _jsonable(value):
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value


# ----------------------------------------------------------------------------- temperature
class TemperatureScaling(Calibrator):
    """Temperature scaling: calibrated logits z / T with one scalar T > 0 (Guo et al. 2017).

    The NLL is convex in β = 1/T, so the fit is an exact one-dimensional solve: a safeguarded
    Newton iteration on β with the analytic slope mean(E_p[z] − z_y) and curvature mean(Var_p[z]),
    both computed in the same pass over the logits as the NLL, with a bracket and geometric
    bisection as the safeguard. It reaches the optimum (to float precision) in a handful of passes.
    Dividing by T > 0 keeps the argmax, so accuracy does not change.

    Args:
        bounds: (T_min, T_max) within which T is searched. If the optimum lies outside (the
            validation predictions are separable, e.g. all correct, so T → 0; or anti-informative,
            so T → ∞) the fit stops at the bound with a warning.
        max_iter: most Newton steps.

    Attributes:
        temperature_: the fitted T.
        num_classes_, n_samples_: C and the number of valid pixels (rows) fitted on.
        nll_before_, nll_after_: NLL of the fit data at T = 1 and at ``temperature_``.
        n_passes_: evaluations of (NLL, slope, curvature), one pass over the logits each (plus one
            preparatory pass that subtracts each row's maximum).
        n_iter_: Newton / bisection steps.
        converged_: False only if ``max_iter`` was reached.

    Shapes:
        logits (N, C) or (N, C, H, W, ...); labels (N,) or (N, H, W, ...).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> z = 4 * torch.randn(2000, 5, generator=g)
        >>> y = torch.multinomial((z / 2).softmax(1), 1, generator=g).squeeze(1)  # true T = 2
        >>> ts = TemperatureScaling().fit(z, y)
        >>> abs(ts.temperature_ - 2) < 0.2, ts.nll_after_ < ts.nll_before_
        (True, True)
        >>> torch.equal(ts(z).argmax(1), z.argmax(1))
        True
    """

    _param_names = ("bounds", "max_iter")
    _info_names = (*Calibrator._info_names, "converged_")

    def __init__(self, *, bounds: tuple[float, float] = (0.01, 100.0), max_iter: int = 100) -> None:
        if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
            raise ValueError(f"`bounds` must be a pair (T_min, T_max), got {bounds!r}")
        lo = _check_positive_float(bounds[0], "bounds[0]")
        hi = _check_positive_float(bounds[1], "bounds[1]")
        if lo > hi:
            raise ValueError(f"`bounds` must satisfy T_min <= T_max, got {bounds!r}")
        self.bounds = (lo, hi)
        self.max_iter = _check_positive_int(max_iter, "max_iter")

    def _fit(self, z, y, image, seed, owned) -> None:
        t_min, t_max = self.bounds
        sol = solve_temperature(z, y, beta_min=1.0 / t_max, beta_max=1.0 / t_min, max_iter=self.max_iter, inplace=owned)
        self.temperature_ = 1.0 / sol.beta
        self.nll_before_, self.nll_after_ = sol.nll_at_one, sol.nll
        self.n_passes_, self.n_iter_ = sol.passes, sol.iterations
        self.converged_ = sol.status != "max_iter"
        _warn_temperature_status(sol.status, self.temperature_, "TemperatureScaling")

    def _scalars_to_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature_}

    def _transform(self, z: torch.Tensor) -> torch.Tensor:
        return z / self.temperature_


def _warn_temperature_status(status: str, temperature: float, who: str) -> None:
    if status == "upper":
        warnings.warn(
            f"{who}: the NLL still decreases at the smallest allowed temperature T = {temperature:.4g}: the "
            "predictions are (nearly) separable (e.g. all correct), so the optimum is T -> 0; keeping the bound",
            RuntimeWarning,
            stacklevel=3,
        )
    elif status == "lower":
        warnings.warn(
            f"{who}: the NLL still decreases at the largest allowed temperature T = {temperature:.4g}: the "
            "logits carry no (or inverted) information about the labels; keeping the bound",
            RuntimeWarning,
            stacklevel=3,
        )
    elif status == "constant":
        warnings.warn(
            f"{who}: every row of logits is constant over the classes, so temperature has no effect; keeping T = 1",
            RuntimeWarning,
            stacklevel=3,
        )
    elif status == "max_iter":
        warnings.warn(f"{who}: the temperature solve reached max_iter before converging", RuntimeWarning, stacklevel=3)


# ----------------------------------------------------------------------------- vector / matrix
class _LinearScaling(Calibrator):
    _param_names = ("max_iter", "tol")
    _tensor_names = ("weight_", "bias_")
    _info_names = (*Calibrator._info_names, "converged_")

    def __init__(self, *, max_iter: int = 500, tol: float = 1e-7) -> None:
        self.max_iter = _check_positive_int(max_iter, "max_iter")
        self.tol = _check_positive_float(tol, "tol")

    def _run_lbfgs(self, params, objective):
        with torch.no_grad():
            start = float(objective())
        saved = [p.detach().clone() for p in params]
        with torch.enable_grad():
            n_iter, evals, converged = lbfgs(params, objective, max_iter=self.max_iter, tol=self.tol)
        with torch.no_grad():
            end = float(objective())
        if not all(bool(torch.isfinite(p).all()) for p in params) or not end <= start:
            # L-BFGS with a Wolfe line search never increases the loss; guard against non-finite steps anyway.
            with torch.no_grad():
                for p, s in zip(params, saved):
                    p.copy_(s)
            warnings.warn(
                f"{type(self).__name__}: L-BFGS produced a non-finite or worse solution; keeping the starting point",
                RuntimeWarning,
                stacklevel=4,
            )
        return n_iter, evals + 2, converged

    def _warn_separable(self, status: str) -> None:
        if status == "upper":
            warnings.warn(
                f"{type(self).__name__}: the data are (nearly) separable (e.g. every prediction correct): the NLL "
                "can be driven towards 0, so the parameters grow until L-BFGS stops; they are finite but extreme",
                RuntimeWarning,
                stacklevel=4,
            )

    def _warn_constant(self, z: torch.Tensor) -> None:
        if bool((z.amax(1) == z.amin(1)).all()):
            warnings.warn(
                f"{type(self).__name__}: every row of logits is constant over the classes; only the bias "
                "(the class frequencies) can be learnt",
                RuntimeWarning,
                stacklevel=4,
            )


class VectorScaling(_LinearScaling):
    """Vector scaling: calibrated logits w ⊙ z + b, a weight and a bias per class (Guo et al. 2017).

    The NLL is convex in (w, b); it is minimised by full-batch L-BFGS (``torch.optim.LBFGS``,
    strong-Wolfe line search) started from the temperature-scaling optimum (w = 1/T, b = 0), so
    the fitted NLL is never above temperature scaling's. Stops when the largest gradient entry is
    below ``tol``, when the loss changes by less than 1e-7 (float32; 1e-12 in float64), or after
    ``max_iter`` iterations. Vector scaling can change the argmax: report accuracy.

    Args:
        max_iter: most L-BFGS iterations.
        tol: gradient tolerance (max-norm).

    Attributes:
        weight_: (C,) float64 weights w.  bias_: (C,) float64 biases b.
        num_classes_, n_samples_, nll_before_, nll_after_, n_iter_ (L-BFGS iterations),
        n_passes_ (evaluations of the NLL and its gradient, each a pass over the logits, including
        the temperature warm start), converged_.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> z = torch.randn(500, 3, generator=g)
        >>> y = torch.multinomial((2 * z + torch.tensor([0.0, 1.0, 0.0])).softmax(1), 1, generator=g).squeeze(1)
        >>> vs = VectorScaling().fit(z, y)
        >>> vs.weight_.shape, vs.nll_after_ < vs.nll_before_
        (torch.Size([3]), True)
    """

    def _fit(self, z, y, image, seed, owned) -> None:
        self._warn_constant(z)
        C = z.shape[1]
        sol = solve_temperature(z, y, beta_min=0.01, beta_max=100.0)
        self._ts_status = sol.status
        self._warn_separable(sol.status)
        w = torch.full((C,), sol.beta, dtype=z.dtype, device=z.device, requires_grad=True)
        b = torch.zeros(C, dtype=z.dtype, device=z.device, requires_grad=True)

        def objective():
            return F.cross_entropy(z * w + b, y)

        n_iter, evals, converged = self._run_lbfgs([w, b], objective)
        self.weight_ = w.detach().to("cpu", torch.float64)
        self.bias_ = b.detach().to("cpu", torch.float64)
        self.nll_before_ = sol.nll_at_one
        with torch.no_grad():
            self.nll_after_ = _nll(z * w + b, y)
        self.n_iter_, self.n_passes_, self.converged_ = n_iter, sol.passes + evals, converged

    def _transform(self, z: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (z.ndim - 2)
        return z * self._param("weight_", z).view(shape) + self._param("bias_", z).view(shape)


class MatrixScaling(_LinearScaling):
    """Matrix scaling: calibrated logits W z + b (Guo et al. 2017), optionally with ODIR.

    Unregularised by default. ``odir=(λ, μ)`` adds the off-diagonal and intercept regularisation
    of Kull et al. 2019 (eq. 7 there, with their normalisation):

        loss = NLL + λ · 1/(C(C−1)) Σ_{i≠j} W_ij² + μ · 1/C Σ_j b_j²,

    i.e. λ times the mean squared off-diagonal entry plus μ times the mean squared bias; the
    diagonal is free, so strong regularisation tends to vector scaling without a bias.
    ``odir="auto"`` chooses (λ, μ) from :data:`ODIR_GRID` (λ = μ in 10^-1 … 10^5) by ``cv``-fold
    inner cross-validation of the held-out NLL (split by image for segmentation); a list of
    (λ, μ) pairs searches that grid instead. The fit is full-batch L-BFGS (as
    :class:`VectorScaling`) started from the vector-scaling optimum (W = diag(w), b), so the
    unregularised NLL is never above vector scaling's. Matrix scaling has C² + C parameters and
    overfits with many classes and few samples: use ODIR there. It can change the argmax.

    Args:
        odir: None, a pair (λ, μ) >= 0, "auto", or a list of pairs to choose from.
        cv: folds of the inner cross-validation for ``"auto"`` or a grid.
        max_iter: most L-BFGS iterations per fit.
        tol: gradient tolerance (max-norm).

    Attributes:
        weight_: (C, C) float64 W.  bias_: (C,) float64 b.
        odir_: the (λ, μ) used (None when unregularised).
        odir_scores_: {(λ, μ): mean held-out NLL} of the inner cross-validation (search only;
            grid points below the stopping point of the strong-to-weak path are not scored).
        num_classes_, n_samples_, nll_before_, nll_after_ (unregularised NLL), n_iter_,
        n_passes_ (NLL + gradient evaluations of the final fit and its warm starts), converged_.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> z = torch.randn(600, 3, generator=g)
        >>> y = torch.multinomial((z @ torch.tensor([[2.0, 1, 0], [0, 1, 0], [0, 0, 1]])).softmax(1), 1,
        ...                       generator=g).squeeze(1)
        >>> ms = MatrixScaling().fit(z, y)
        >>> ms.weight_.shape, ms.nll_after_ < VectorScaling().fit(z, y).nll_after_
        (torch.Size([3, 3]), True)
    """

    _param_names = ("odir", "cv", "max_iter", "tol")
    _info_names = (*_LinearScaling._info_names, "odir_", "odir_scores_")

    def __init__(self, *, odir=None, cv: int = 3, max_iter: int = 500, tol: float = 1e-7) -> None:
        super().__init__(max_iter=max_iter, tol=tol)
        self.odir = _check_odir(odir)
        self.cv = _check_positive_int(cv, "cv")
        if self.cv < 2:
            raise ValueError(f"`cv` must be an integer >= 2, got {cv!r}")

    # -------------------------------------------------------------- pieces
    def _vector_start(self, z, y):
        """(W0, b0, passes, nll_at_one) from temperature then vector scaling."""
        vs = VectorScaling(max_iter=self.max_iter, tol=self.tol)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            vs.num_classes_ = z.shape[1]
            vs._fit(z, y, None, 0, False)
        W0 = torch.diag(vs.weight_).to(device=z.device, dtype=z.dtype)
        self._ts_status = vs._ts_status
        return W0, vs.bias_.to(device=z.device, dtype=z.dtype), vs.n_passes_, vs.nll_before_

    def _fit_matrix(self, z, y, W0, b0, lam: float, mu: float):
        C = z.shape[1]
        W = W0.detach().clone().requires_grad_(True)
        b = b0.detach().clone().requires_grad_(True)
        off_mask = 1.0 - torch.eye(C, dtype=z.dtype, device=z.device)

        def objective():
            loss = F.cross_entropy(torch.addmm(b, z, W.t()), y)
            if lam:
                loss = loss + lam * (W * off_mask).square().sum() / (C * (C - 1))
            if mu:
                loss = loss + mu * b.square().mean()
            return loss

        n_iter, evals, converged = self._run_lbfgs([W, b], objective)
        return W.detach(), b.detach(), n_iter, evals, converged

    def _search_odir(self, z, y, image, seed, grid):
        """Mean held-out NLL of (λ, μ) over ``cv`` folds split by image: {pair: score}, or None."""
        groups = torch.unique(image)
        if groups.numel() < self.cv:
            warnings.warn(
                f"MatrixScaling: {groups.numel()} image(s)/sample(s) are too few for {self.cv}-fold ODIR search; "
                "using the strongest regularisation in the grid",
                RuntimeWarning,
                stacklevel=4,
            )
            return None
        gen = torch.Generator().manual_seed(seed)
        fold_of_group = torch.empty(int(groups.max()) + 1, dtype=torch.long)
        fold_of_group[groups[torch.randperm(groups.numel(), generator=gen)].cpu()] = (
            torch.arange(groups.numel()) % self.cv
        )
        fold = fold_of_group.to(image.device)[image]
        # Strongest regularisation first: each fit warm-starts the next weaker one, and the path
        # stops once the held-out NLL has been worse than the best for two grid points in a row
        # (weakly regularised fits are the slow ones, and the score is unimodal in practice).
        order = sorted(grid, key=lambda p: (-p[0], -p[1]))
        folds = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for k in range(self.cv):
                train, test = fold != k, fold == k
                W, b, _, _ = self._vector_start(z[train], y[train])
                folds.append([z[train], y[train], z[test], y[test], W, b])
            scores, best, worse = {}, math.inf, 0
            for lam, mu in order:
                total = 0.0
                for state in folds:
                    zt, yt, zv, yv, W, b = state
                    W, b, *_ = self._fit_matrix(zt, yt, W, b, lam, mu)
                    state[4:] = [W, b]
                    with torch.no_grad():
                        total += float(F.cross_entropy(torch.addmm(b, zv, W.t()), yv, reduction="sum"))
                scores[(lam, mu)] = total / y.numel()
                if scores[(lam, mu)] < best:
                    best, worse = scores[(lam, mu)], 0
                else:
                    worse += 1
                    if worse >= 2:
                        break
        return scores

    def _fit(self, z, y, image, seed, owned) -> None:
        self._warn_constant(z)
        W0, b0, passes, nll_at_one = self._vector_start(z, y)
        self._warn_separable(self._ts_status)
        odir = self.odir
        self.odir_scores_ = None
        if odir == "auto" or isinstance(odir, list):
            grid = list(ODIR_GRID) if odir == "auto" else [tuple(p) for p in odir]
            scores = self._search_odir(z, y, image, seed, grid)
            if scores is None:
                odir = max(grid)
            else:
                odir = min(scores, key=scores.get)
                self.odir_scores_ = scores
        lam, mu = odir if odir is not None else (0.0, 0.0)
        W, b, n_iter, evals, converged = self._fit_matrix(z, y, W0, b0, lam, mu)
        self.odir_ = None if odir is None else (float(lam), float(mu))
        self.weight_ = W.to("cpu", torch.float64)
        self.bias_ = b.to("cpu", torch.float64)
        self.nll_before_ = nll_at_one
        with torch.no_grad():
            self.nll_after_ = _nll(torch.addmm(b, z, W.t()), y)
        self.n_iter_, self.n_passes_, self.converged_ = n_iter, passes + evals, converged

    def _transform(self, z: torch.Tensor) -> torch.Tensor:
        W, b = self._param("weight_", z), self._param("bias_", z)
        if z.ndim == 2:
            return torch.addmm(b, z, W.t())
        out = torch.einsum("ij,nj...->ni...", W, z)
        return out + b.view((1, -1) + (1,) * (z.ndim - 2))


def _check_pair(pair, what: str) -> tuple[float, float]:
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise ValueError(f"`odir` must be None, 'auto', a pair (lambda, mu) or a list of pairs, got {what}")
    out = []
    for v in pair:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"`odir` values must be finite numbers >= 0, got {what}")
        out.append(float(v))
    return out[0], out[1]


def _check_odir(odir):
    if odir is None or odir == "auto":
        return odir
    if isinstance(odir, str):
        raise ValueError(f"`odir` must be None, 'auto', a pair (lambda, mu) or a list of pairs, got {odir!r}")
    if isinstance(odir, list) and odir and all(isinstance(p, (tuple, list)) for p in odir):
        return [_check_pair(p, repr(odir)) for p in odir]
    return _check_pair(odir, repr(odir))


# ----------------------------------------------------------------------------- loading
_CLASSES: dict[str, type[Calibrator]] = {
    "TemperatureScaling": TemperatureScaling,
    "VectorScaling": VectorScaling,
    "MatrixScaling": MatrixScaling,
}


def _from_jsonable_param(name: str, value):
    if name == "bounds" and isinstance(value, list):
        return tuple(value)
    if name == "odir" and isinstance(value, list):
        if value and all(isinstance(v, list) for v in value):
            return [tuple(v) for v in value]
        return tuple(value)
    return value


def load(path: str | Path) -> Calibrator:
    """Read a calibrator written by :meth:`Calibrator.save`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not valid JSON, not a netuq calibrator, or its parameters do not
            match its class or number of classes (the message names the file and the problem).

    Example:
        >>> import tempfile, os
        >>> vs = VectorScaling().fit(torch.randn(50, 3, generator=torch.Generator().manual_seed(0)),
        ...                          torch.arange(50) % 3)
        >>> path = vs.save(os.path.join(tempfile.mkdtemp(), "vs.json"))
        >>> torch.equal(load(path).weight_, vs.weight_)
        True
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"no such calibrator file: {path}") from None
    except (UnicodeDecodeError, OSError) as err:
        raise ValueError(f"{path}: cannot read calibrator file ({err})") from err

    def bad(problem: str) -> ValueError:
        return ValueError(f"{path}: not a valid netuq calibrator file: {problem}")

    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise bad(f"invalid JSON ({err})") from err
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise bad(f'missing "format": "{_FORMAT}"')
    if data.get("format_version") != _FORMAT_VERSION:
        raise bad(f"unsupported format_version {data.get('format_version')!r} (this netuq reads {_FORMAT_VERSION})")
    for key in ("class", "params", "num_classes", "fitted", "fit_info"):
        if key not in data:
            raise bad(f"missing key {key!r}")
    name = data["class"]
    if name not in _CLASSES:
        raise bad(f"unknown class {name!r} (expected one of {sorted(_CLASSES)})")
    cls = _CLASSES[name]
    C = data["num_classes"]
    if isinstance(C, bool) or not isinstance(C, int) or C < 2:
        raise bad(f"num_classes must be an integer >= 2, got {C!r}")
    params, fitted, info = data["params"], data["fitted"], data["fit_info"]
    if not isinstance(params, dict) or not isinstance(fitted, dict) or not isinstance(info, dict):
        raise bad("params, fitted and fit_info must be JSON objects")
    unknown = set(params) - set(cls._param_names)
    if unknown:
        raise bad(f"unknown parameter(s) {sorted(unknown)} for {name}")
    try:
        obj = cls(**{k: _from_jsonable_param(k, v) for k, v in params.items()})
    except (TypeError, ValueError) as err:
        raise bad(f"bad parameters for {name}: {err}") from err
    if cls is TemperatureScaling:
        t = fitted.get("temperature")
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise bad(f"`temperature` must be a positive finite number, got {t!r}")
        obj.temperature_ = float(t)
    else:
        shapes = {"weight": (C, C) if cls is MatrixScaling else (C,), "bias": (C,)}
        for key, shape in shapes.items():
            if key not in fitted:
                raise bad(f"missing fitted parameter {key!r}")
            try:
                tensor = torch.tensor(fitted[key], dtype=torch.float64)
            except (TypeError, ValueError, RuntimeError) as err:
                raise bad(f"`{key}` must be a (nested) list of numbers ({err})") from err
            if tuple(tensor.shape) != shape:
                raise bad(f"`{key}` must have shape {shape} for num_classes={C}, got {tuple(tensor.shape)}")
            if not bool(torch.isfinite(tensor).all()):
                raise bad(f"`{key}` must be finite")
            setattr(obj, key + "_", tensor)
    for key, value in info.items():
        attr = key + "_"
        if attr in cls._info_names:
            if attr == "odir_" and isinstance(value, list):
                value = tuple(value)
            if attr == "odir_scores_" and isinstance(value, list):
                try:
                    value = {(float(lam), float(mu)): float(score) for lam, mu, score in value}
                except (TypeError, ValueError) as err:
                    raise bad(f"`odir_scores` must be a list of [lambda, mu, score], got {value!r}") from err
            setattr(obj, attr, value)
    obj.num_classes_ = C
    return obj
