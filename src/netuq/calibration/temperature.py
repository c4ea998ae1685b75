"""Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks", ICML).

Calibrated logits z / T with one scalar T > 0 fitted by minimising the NLL of held-out logits;
dividing by T keeps the argmax. The solve is exact (see :mod:`netuq.calibration._solvers`).
"""

from __future__ import annotations

import warnings
from typing import ClassVar

import torch

from .._checks import check_choice, check_positive_int
from ._solvers import solve_temperature
from .base import Calibrator, check_positive_float, separable_smoothing

__all__ = ["TemperatureScaling"]


class TemperatureScaling(Calibrator):
    """Temperature scaling: calibrated logits z / T with one scalar T > 0 (Guo et al. 2017).

    The NLL is convex in β = 1/T, so the fit is an exact one-dimensional solve: a safeguarded
    Newton iteration on β with the analytic slope mean(E_p[z] − z_y) and curvature mean(Var_p[z]),
    both computed in the same pass over the logits as the NLL, with a bracket and geometric
    bisection as the safeguard. It reaches the optimum (to float precision) in a handful of passes,
    also for float32 logits whose softmax is exactly one-hot (they are rescaled exactly first).
    Dividing by T > 0 keeps the argmax, so accuracy does not change.

    Separable fit data (typically: every prediction correct, as on a small error-free half of a
    test set) have no finite optimum: the NLL keeps falling as T → 0, and a T at the lower bound
    makes the first held-out error cost an NLL of hundreds. With ``separable="smooth"`` (the
    default) such a fit instead minimises the cross-entropy to the Laplace-smoothed target
    (1 − ε on the label, ε = 1/(n+2) spread over the other classes; Platt 1999's correction), so
    T stays where n correct predictions in n justify; ``separable="bound"`` keeps the bound.
    Both warn. Non-separable data are fitted by plain NLL either way.

    Args:
        bounds: (T_min, T_max) within which T is searched (and which a loaded T must respect).
            If the optimum lies outside (anti-informative logits: T → ∞; separable ones with
            ``separable="bound"``: T → 0) the fit stops at the bound with a warning.
        max_iter: most Newton steps.
        separable: "smooth" or "bound", see above.

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

    name: ClassVar[str] = "temperature"
    label: ClassVar[str] = "temperature scaling"
    order: ClassVar[float] = 10
    changes_prediction: ClassVar[bool] = False  # z / T with T > 0 keeps every row's argmax
    _param_names = ("bounds", "max_iter", "separable")
    _params_added = {"separable": "bound"}  # files written before it existed hit the bound

    def __init__(
        self, *, bounds: tuple[float, float] = (0.01, 100.0), max_iter: int = 100, separable: str = "smooth"
    ) -> None:
        if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
            raise ValueError(f"`bounds` must be a pair (T_min, T_max), got {bounds!r}")
        lo = check_positive_float(bounds[0], "bounds[0]")
        hi = check_positive_float(bounds[1], "bounds[1]")
        if lo > hi:
            raise ValueError(f"`bounds` must satisfy T_min <= T_max, got {bounds!r}")
        self.bounds = (lo, hi)
        self.max_iter = check_positive_int(max_iter, "max_iter")
        self.separable = check_choice(separable, "separable", ("smooth", "bound"))

    @classmethod
    def _param_from_json(cls, name, value):
        return tuple(value) if name == "bounds" and isinstance(value, list) else value

    def _fitted_shapes(self, num_classes: int) -> dict[str, tuple[int, ...]]:
        return {"temperature_": ()}

    def _check_fitted_values(self) -> str | None:
        problem = super()._check_fitted_values()
        if problem is not None:
            return problem
        t, (lo, hi) = self.temperature_, self.bounds
        if not lo <= t <= hi:
            return f"`temperature` must lie within bounds [{lo:g}, {hi:g}], got {t!r}"
        return None

    def _fit(self, z, y, image, seed, owned) -> None:
        t_min, t_max = self.bounds
        eps = separable_smoothing(y.numel()) if self.separable == "smooth" else None
        sol = solve_temperature(
            z, y, beta_min=1.0 / t_max, beta_max=1.0 / t_min, max_iter=self.max_iter, inplace=owned,
            separable_smoothing=eps,
        )
        status = sol.status
        self.temperature_ = min(max(1.0 / sol.beta, t_min), t_max)  # 1/(1/T) may be off by one ulp
        self.nll_before_, self.nll_after_ = sol.nll_at_one, sol.nll
        self.n_passes_, self.n_iter_ = sol.passes, sol.iterations
        self.converged_ = sol.status != "max_iter"
        warn_temperature_status(status, self.temperature_, "TemperatureScaling", y.numel())

    def _transform(self, z: torch.Tensor) -> torch.Tensor:
        return z / self.temperature_


def warn_temperature_status(status: str, temperature: float, who: str, n: int = 0) -> None:
    """The RuntimeWarning for a temperature solve that did not end at an interior optimum."""
    if status == "upper":
        warnings.warn(
            f"{who}: the NLL still decreases at the smallest allowed temperature T = {temperature:.4g}: the "
            "predictions are (nearly) separable (e.g. all correct), so the optimum is T -> 0; keeping the bound",
            RuntimeWarning,
            stacklevel=4,
        )
    elif status == "smoothed":
        warnings.warn(
            f"{who}: the fit data are separable (e.g. every prediction correct), so the NLL has no finite "
            f"optimum (T -> 0); fitted to the Laplace-smoothed target 1 - 1/(n+2) with n = {n} instead: "
            f"T = {temperature:.4g}",
            RuntimeWarning,
            stacklevel=4,
        )
    elif status == "smoothed-lower":
        warnings.warn(
            f"{who}: the fit data are separable (e.g. every prediction correct), so the NLL has no finite "
            f"optimum (T -> 0); the Laplace-smoothed target 1 - 1/(n+2) with n = {n} instead asks for a temperature "
            f"above the largest allowed T = {temperature:.4g} (few rows with very confident logits); keeping the "
            "bound: widen `bounds` or fit on more data",
            RuntimeWarning,
            stacklevel=4,
        )
    elif status == "lower":
        warnings.warn(
            f"{who}: the NLL still decreases at the largest allowed temperature T = {temperature:.4g}: the "
            "logits carry no (or inverted) information about the labels; keeping the bound",
            RuntimeWarning,
            stacklevel=4,
        )
    elif status == "constant":
        warnings.warn(
            f"{who}: every row of logits is constant over the classes, so temperature has no effect; "
            f"keeping T = {temperature:.4g}",
            RuntimeWarning,
            stacklevel=4,
        )
    elif status == "max_iter":
        warnings.warn(f"{who}: the temperature solve reached max_iter before converging", RuntimeWarning, stacklevel=4)
