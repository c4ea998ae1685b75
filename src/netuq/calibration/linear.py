"""Vector and matrix scaling (Guo et al. 2017), regularised as their small-data use needs.

* :class:`VectorScaling`: ``softmax(w ⊙ z + b)``; by default with an L2 penalty that pulls
  (w, b) toward the temperature-scaling solution (w = 1/T, b = 0), its strength chosen by inner
  cross-validation.
* :class:`MatrixScaling`: ``softmax(W z + b)``; by default with the off-diagonal and intercept
  regularisation (ODIR) of Kull et al. 2019, "Beyond temperature scaling: Obtaining
  well-calibrated multiclass probabilities with Dirichlet calibration", NeurIPS, its (λ, μ)
  chosen by inner cross-validation as there.

Unregularised (``l2=None`` / ``odir=None``) both have C or C² free parameters and, fitted on a
few hundred near-separable validation points, make held-out NLL many times worse than
temperature scaling; the defaults are what :data:`~netuq.calibration.CALIBRATORS` recommends.

All fits run in float64 (float32 on MPS): full-batch L-BFGS on a convex objective, so float32
input reaches the float64 optimum (in float32 the loss-change stop of 1e-7 ends near-separable
fits, whose NLL is ~1e-2, after one iteration), on the logits divided by an exact power of two
that brings their largest magnitude near 1, so that huge, tiny or saturated logits give the same
well-conditioned problem (the weights are stored in the input's units). Separable fit data (no
finite optimum) are fitted to the Laplace-smoothed target of
:func:`~netuq.calibration.base.separable_smoothing`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from .._checks import check_positive_int
from ._solvers import lbfgs, solve_temperature
from .base import Calibrator, check_positive_float, masked_affine, nll64, separable_smoothing

__all__ = ["VectorScaling", "MatrixScaling", "ODIR_GRID", "L2_GRID"]

#: The (λ, μ) grid ``MatrixScaling(odir="auto")`` searches by inner cross-validation: μ = λ in
#: 10^-1 … 10^5 (with the normalisation of Kull et al. 2019, λ multiplies the *mean* squared
#: off-diagonal entry, so useful values grow with the number of classes).
ODIR_GRID: tuple[tuple[float, float], ...] = tuple((10.0**k, 10.0**k) for k in range(-1, 6))

#: The λ grid ``VectorScaling(l2="auto")`` searches: 10^-4 … 10^2 (λ multiplies the mean squared
#: relative deviation of w from 1/T plus the mean squared bias; the NLL is a mean over samples).
L2_GRID: tuple[float, ...] = tuple(10.0**k for k in range(-4, 3))


#: L-BFGS iterations per fit inside the inner cross-validation: each fit is warm-started from the
#: previous (stronger) penalty's, and the weakly penalised ones that would need more are the ones
#: the held-out score rejects.
_INNER_MAX_ITER = 100
#: Gradient tolerance of those fits: a held-out score needs the optimum to ~1e-6 in NLL, not 1e-12.
_INNER_TOL = 1e-5


def _unit_scale(z: torch.Tensor) -> float:
    """The power of two s with max |z| / s in [1, 2) (1 for all-zero z): z / s is exact."""
    top = float(z.abs().max()) if z.numel() else 0.0
    if math.isinf(top):  # masked classes (-inf) keep out of the scale
        top = float(z.masked_fill(torch.isneginf(z), 0.0).abs().max())
    return math.ldexp(1.0, math.frexp(top)[1] - 1) if top > 0 else 1.0


class _Start:
    """The temperature solve every linear fit starts from: β = 1/T, smoothing ε (0 unless separable).

    Fits run on logits divided by a power of two ``scale`` (so that huge, tiny and saturated logits
    give a well-conditioned problem); β, the weights and the solve are in those units.
    """

    def __init__(self, z: torch.Tensor, y: torch.Tensor, scale: float = 1.0) -> None:
        self.scale = scale
        sol = solve_temperature(z, y, beta_min=0.01, beta_max=100.0, separable_smoothing=separable_smoothing(y.numel()))
        self.beta, self.status, self.passes = sol.beta, sol.status, sol.passes
        C = z.shape[1]
        eps = separable_smoothing(y.numel()) if sol.status in ("smoothed", "upper") else 0.0
        self.label_smoothing = eps * C / (C - 1)  # torch's smoothing spreads ε·C/(C−1) over all C classes


class _LinearScaling(Calibrator):
    """Shared machinery: float64 L-BFGS fits of a penalised NLL and the inner cross-validation."""

    _param_names: ClassVar[tuple[str, ...]] = ("cv", "max_iter", "tol")
    _penalty_name: ClassVar[str] = ""  # "l2" or "odir": the constructor argument holding the penalty

    def __init__(self, *, cv: int = 3, max_iter: int = 500, tol: float = 1e-7) -> None:
        self.cv = check_positive_int(cv, "cv")
        if self.cv < 2:
            raise ValueError(f"`cv` must be an integer >= 2, got {cv!r}")
        self.max_iter = check_positive_int(max_iter, "max_iter")
        self.tol = check_positive_float(tol, "tol")

    # -------------------------------------------------------------- per-class pieces
    def _init(self, start: _Start, z, y) -> list[torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def _logits(self, params, z):  # pragma: no cover
        raise NotImplementedError

    def _penalty(self, params, start: _Start, penalty):  # pragma: no cover
        raise NotImplementedError

    # -------------------------------------------------------------- fitting
    def _solve(self, z, y, start: _Start, penalty, init, max_iter: int | None = None, tol: float | None = None):
        """Minimise NLL (to the smoothed target if separable) + penalty from ``init``; (params, n_iter, evals, ok)."""
        params = [p.detach().clone().requires_grad_(True) for p in init]

        def objective():
            loss = F.cross_entropy(self._logits(params, z), y, label_smoothing=start.label_smoothing)
            return loss + self._penalty(params, start, penalty) if penalty is not None else loss

        n_iter, evals, converged = self._run_lbfgs(params, objective, max_iter or self.max_iter, tol or self.tol)
        return [p.detach() for p in params], n_iter, evals, converged

    def _run_lbfgs(self, params, objective, max_iter, tol):
        with torch.no_grad():
            start = float(objective())
        saved = [p.detach().clone() for p in params]
        with torch.enable_grad():
            n_iter, evals, converged = lbfgs(params, objective, max_iter=max_iter, tol=tol)
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
                stacklevel=5,
            )
        return n_iter, evals + 2, converged

    def _search(self, z, y, image, seed, grid) -> dict | None:
        """Mean held-out NLL of each penalty in ``grid`` (ordered strongest first) over ``cv`` folds split by image.

        Each fit warm-starts the next weaker one, and the path stops once the held-out NLL has been
        worse than the best for two grid points in a row (weak penalties are the slow fits, and the
        score is unimodal in practice); each inner fit runs at most ``_INNER_MAX_ITER`` iterations, to ``_INNER_TOL``.
        None when there are fewer images than folds.
        """
        groups = torch.unique(image)
        if groups.numel() < self.cv:
            warnings.warn(
                f"{type(self).__name__}: {groups.numel()} image(s)/sample(s) are too few for {self.cv}-fold "
                f"{self._penalty_name} search; using the strongest penalty in the grid",
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
        folds = []
        for k in range(self.cv):
            train, test = fold != k, fold == k
            start = _Start(z[train], y[train], self._scale)
            folds.append([z[train], y[train], z[test], y[test], start, self._init(start, z[train], y[train])])
        scores, best, worse = {}, math.inf, 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for penalty in grid:
                total = 0.0
                for state in folds:
                    zt, yt, zv, yv, start, params = state
                    inner = min(self.max_iter, _INNER_MAX_ITER)
                    state[5] = params = self._solve(zt, yt, start, penalty, params, inner, _INNER_TOL)[0]
                    with torch.no_grad():
                        total += float(F.cross_entropy(self._logits(params, zv), yv, reduction="sum"))
                scores[penalty] = total / y.numel()
                if scores[penalty] < best:
                    best, worse = scores[penalty], 0
                else:
                    worse += 1
                    if worse >= 2:
                        break
        return scores

    def _choose(self, z, y, image, seed, setting, grid_default, strength):
        """(penalty or None, scores or None) for the constructor's setting: None, a value, "auto" or a list."""
        if setting is None or not (setting == "auto" or isinstance(setting, list)):
            return setting, None
        grid = sorted(grid_default if setting == "auto" else setting, key=strength, reverse=True)
        scores = self._search(z, y, image, seed, grid)
        if scores is None:
            return grid[0], None
        return min(scores, key=scores.get), scores

    def _scaled(self, z: torch.Tensor) -> torch.Tensor:
        """Float64 (float32 on MPS) logits divided by an exact power of two; sets ``self._scale``."""
        z = z if z.device.type == "mps" else z.to(torch.float64)
        self._scale = _unit_scale(z)
        return z / self._scale if self._scale != 1.0 else z

    def _finish(self, z, y, start: _Start, params, n_iter, evals, converged, extra_passes=0) -> None:
        """Store the fit in the units of the logits ``z`` (the fit ran on z / scale)."""
        params = [params[0] / start.scale, params[1]]
        self.weight_ = params[0].to("cpu", torch.float64)
        self.bias_ = params[1].to("cpu", torch.float64)
        with torch.no_grad():
            self.nll_before_ = nll64(z, y)  # the uncalibrated NLL (the start solve ran on z / scale)
            self.nll_after_ = nll64(self._logits(params, z.to(params[0].dtype)), y)
        self.n_iter_, self.n_passes_, self.converged_ = n_iter, start.passes + extra_passes + evals, converged

    # -------------------------------------------------------------- warnings
    def _warn_separable(self, start: _Start) -> None:
        if start.status in ("smoothed", "upper"):
            warnings.warn(
                f"{type(self).__name__}: the fit data are (nearly) separable (e.g. every prediction correct): the "
                "NLL has no finite optimum, so the fit uses the Laplace-smoothed target 1 - 1/(n+2) instead",
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

    # -------------------------------------------------------------- persistence hooks
    def _info_to_json(self, name: str, value: Any) -> Any:
        if name == f"{self._penalty_name}_scores_" and value is not None:
            return [[*_as_tuple(key), score] for key, score in value.items()]
        return super()._info_to_json(name, value)

    def _info_from_json(self, name: str, value: Any) -> Any:
        if name == f"{self._penalty_name}_":
            return None if value is None else self._check_penalty_value(value)
        if name == f"{self._penalty_name}_scores_":
            if value is None:
                return None
            if not isinstance(value, list):
                raise ValueError(f"must be null or a list, got {type(value).__name__}")
            out = {}
            for row in value:
                if not isinstance(row, list) or len(row) < 2:
                    raise ValueError(f"must be a list of [penalty..., score] rows, got {row!r}"[:200])
                out[self._check_penalty_value(row[:-1] if len(row) > 2 else row[0])] = _finite(row[-1])
            return out
        return super()._info_from_json(name, value)

    def _check_penalty_value(self, value):  # pragma: no cover
        raise NotImplementedError


def _as_tuple(key) -> tuple:
    return key if isinstance(key, tuple) else (key,)


def _finite(v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"scores must be finite numbers, got {v!r}")
    return float(v)


def _nonneg(v, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise ValueError(f"`{what}` values must be finite numbers >= 0, got {v!r}")
    return float(v)


# ----------------------------------------------------------------------------- vector scaling
class VectorScaling(_LinearScaling):
    """Vector scaling: calibrated logits w ⊙ z + b, a weight and a bias per class (Guo et al. 2017).

    Fitted by minimising

        NLL(w ⊙ z + b) + λ · [ 1/C Σ_c (w_c T − 1)² + 1/C Σ_c b_c² ],

    a convex objective whose penalty pulls (w, b) toward the temperature-scaling solution
    (w = 1/T, b = 0; T fitted first on the same data): λ → ∞ is temperature scaling, λ = 0 plain
    vector scaling. ``l2="auto"`` (the default) chooses λ from :data:`L2_GRID` by ``cv``-fold inner
    cross-validation of the held-out NLL (split by image for segmentation), which keeps vector
    scaling from overfitting a few hundred near-separable points. Full-batch float64 L-BFGS from
    the temperature solution; it stops when the largest gradient entry is below ``tol``, the loss
    changes by less than 1e-12, or after ``max_iter`` iterations. It can change the argmax.

    Args:
        l2: None (unregularised), λ >= 0, "auto", or a list of λ to choose from.
        cv: folds of the inner cross-validation for "auto" or a list.
        max_iter: most L-BFGS iterations per fit.
        tol: gradient tolerance (max-norm).

    Attributes:
        weight_: (C,) float64 weights w.  bias_: (C,) float64 biases b.
        l2_: the λ used (None when unregularised).  l2_scores_: {λ: mean held-out NLL} of the
            search (None without one).
        num_classes_, n_samples_, nll_before_, nll_after_ (unpenalised NLL), n_iter_ (L-BFGS
        iterations of the final fit), n_passes_ (NLL and gradient evaluations of the final fit and
        the temperature start), converged_.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> z = torch.randn(500, 3, generator=g)
        >>> y = torch.multinomial((2 * z + torch.tensor([0.0, 1.0, 0.0])).softmax(1), 1, generator=g).squeeze(1)
        >>> vs = VectorScaling().fit(z, y)
        >>> vs.weight_.shape, vs.nll_after_ < vs.nll_before_, vs.l2_ in L2_GRID
        (torch.Size([3]), True, True)
    """

    name: ClassVar[str] = "vector"
    label: ClassVar[str] = "vector scaling"
    order: ClassVar[float] = 20
    _param_names = ("l2", "cv", "max_iter", "tol")
    _params_added = {"l2": None, "cv": 3}  # files written before l2 existed were unregularised
    _info_names = (*Calibrator._info_names, "l2_", "l2_scores_")
    _penalty_name = "l2"

    def __init__(self, *, l2="auto", cv: int = 3, max_iter: int = 500, tol: float = 1e-7) -> None:
        super().__init__(cv=cv, max_iter=max_iter, tol=tol)
        self.l2 = _check_l2(l2)

    def _fitted_shapes(self, num_classes: int) -> dict[str, tuple[int, ...]]:
        return {"weight_": (num_classes,), "bias_": (num_classes,)}

    def _check_penalty_value(self, value):
        return _nonneg(value, "l2")

    def _init(self, start, z, y):
        C = z.shape[1]
        like = dict(dtype=z.dtype, device=z.device)
        return [torch.full((C,), start.beta, **like), torch.zeros(C, **like)]

    def _logits(self, params, z):
        return masked_affine(lambda t: t * params[0] + params[1], z, self.__dict__.get("_fit_masked"))

    def _penalty(self, params, start, lam):
        if not lam:
            return 0.0
        w, b = params
        return lam * ((w / start.beta - 1.0).square().mean() + b.square().mean())

    def _fit(self, z, y, image, seed, owned) -> None:
        z0, z = z, self._scaled(z)
        self._warn_constant(z)
        start = _Start(z, y, self._scale)
        self._warn_separable(start)
        lam, self.l2_scores_ = self._choose(z, y, image, seed, self.l2, L2_GRID, strength=lambda v: v)
        self.l2_ = None if lam is None else float(lam)
        params, n_iter, evals, converged = self._solve(z, y, start, lam, self._init(start, z, y))
        self._finish(z0, y, start, params, n_iter, evals, converged)

    def _transform(self, z: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (z.ndim - 2)
        w, b = self._param("weight_", z).view(shape), self._param("bias_", z).view(shape)
        return masked_affine(lambda t: t * w + b, z)


def _check_l2(l2):
    if l2 is None or l2 == "auto":
        return l2
    if isinstance(l2, list) and l2:
        return [_nonneg(v, "l2") for v in l2]
    if isinstance(l2, str) or isinstance(l2, bool) or not isinstance(l2, (int, float)):
        raise ValueError(f"`l2` must be None, 'auto', a number >= 0 or a non-empty list of them, got {l2!r}")
    return _nonneg(l2, "l2")


# ----------------------------------------------------------------------------- matrix scaling
class MatrixScaling(_LinearScaling):
    """Matrix scaling: calibrated logits W z + b (Guo et al. 2017), by default with ODIR.

    ``odir=(λ, μ)`` adds the off-diagonal and intercept regularisation of Kull et al. 2019 (eq. 7
    there, with their normalisation):

        loss = NLL + λ · 1/(C(C−1)) Σ_{i≠j} W_ij² + μ · 1/C Σ_j b_j²,

    i.e. λ times the mean squared off-diagonal entry plus μ times the mean squared bias. In
    Kull et al. the diagonal is free (``pull_diagonal=False``); on a few hundred near-separable
    points a free diagonal has no finite optimum in practice (a class that is never confused lets
    its W_cc grow without bound, and L-BFGS drifts there for hundreds of iterations while the
    held-out NLL worsens), so by default (``pull_diagonal=True``) the μ term also pulls the
    diagonal toward the temperature solution, μ · 1/C Σ_j (W_jj T − 1)², the penalty of
    :class:`VectorScaling`: strong regularisation then tends to temperature scaling.
    ``odir="auto"`` (the default, as Kull et al. recommend) chooses (λ, μ) from :data:`ODIR_GRID`
    (λ = μ in 10^-1 … 10^5) by ``cv``-fold inner cross-validation of the held-out NLL (split by
    image for segmentation); a list of (λ, μ) pairs searches that grid instead. ``odir=None`` is
    unregularised matrix scaling, started from the unregularised vector-scaling optimum
    (W = diag(w), b) so its NLL is never above vector scaling's; regularised fits start from the
    temperature solution (W = I/T, b = 0). Full-batch float64 L-BFGS as :class:`VectorScaling`.
    Unregularised matrix scaling has C² + C parameters and overfits with many classes and few
    samples. It can change the argmax.

    Args:
        odir: None, a pair (λ, μ) >= 0, "auto", or a list of pairs to choose from.
        pull_diagonal: let μ also pull the diagonal toward 1/T (see above).
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
        >>> ms = MatrixScaling(odir=None).fit(z, y)
        >>> ms.weight_.shape, ms.nll_after_ < VectorScaling(l2=None).fit(z, y).nll_after_
        (torch.Size([3, 3]), True)
    """

    name: ClassVar[str] = "matrix"
    label: ClassVar[str] = "matrix scaling"
    order: ClassVar[float] = 30
    _param_names = ("odir", "pull_diagonal", "cv", "max_iter", "tol")
    _params_added = {"pull_diagonal": False}  # files written before it existed used Kull et al.'s exact ODIR
    _info_names = (*Calibrator._info_names, "odir_", "odir_scores_")
    _penalty_name = "odir"

    def __init__(
        self, *, odir="auto", pull_diagonal: bool = True, cv: int = 3, max_iter: int = 500, tol: float = 1e-7
    ) -> None:
        super().__init__(cv=cv, max_iter=max_iter, tol=tol)
        self.odir = _check_odir(odir)
        if not isinstance(pull_diagonal, bool):
            raise TypeError(f"`pull_diagonal` must be True or False, got {type(pull_diagonal).__name__}")
        self.pull_diagonal = pull_diagonal

    @classmethod
    def _param_from_json(cls, name, value):
        if name == "odir" and isinstance(value, list):
            if value and all(isinstance(v, list) for v in value):
                return [tuple(v) for v in value]
            return tuple(value)
        return value

    def _fitted_shapes(self, num_classes: int) -> dict[str, tuple[int, ...]]:
        return {"weight_": (num_classes, num_classes), "bias_": (num_classes,)}

    def _check_penalty_value(self, value):
        return _check_pair(value, repr(value)[:100])

    def _init(self, start, z, y):
        C = z.shape[1]
        eye = torch.eye(C, dtype=z.dtype, device=z.device)
        return [start.beta * eye, torch.zeros(C, dtype=z.dtype, device=z.device)]

    def _logits(self, params, z):
        return masked_affine(lambda t: torch.addmm(params[1], t, params[0].t()), z, self.__dict__.get("_fit_masked"))

    def _penalty(self, params, start, odir):
        lam, mu = odir
        W, b = params
        C = W.shape[0]
        loss = 0.0
        if lam:  # W here is W·scale (the fit runs on z / scale): the penalty is on W itself
            off = (W.square().sum() - W.diagonal().square().sum()) / (C * (C - 1) * start.scale**2)
            loss = loss + lam * off
        if mu:
            loss = loss + mu * b.square().mean()
            if self.pull_diagonal:
                loss = loss + mu * (W.diagonal() / start.beta - 1.0).square().mean()
        return loss

    def _fit(self, z, y, image, seed, owned) -> None:
        z0, z = z, self._scaled(z)
        self._warn_constant(z)
        start = _Start(z, y, self._scale)
        self._warn_separable(start)
        odir, self.odir_scores_ = self._choose(z, y, image, seed, self.odir, ODIR_GRID, strength=lambda p: p)
        self.odir_ = None if odir is None else (float(odir[0]), float(odir[1]))
        extra = 0
        if odir is None:  # from the unregularised vector optimum: the NLL is never above vector scaling's
            vs = VectorScaling(l2=None, max_iter=self.max_iter, tol=self.tol)
            (w, b), _, extra, _ = vs._solve(z, y, start, None, vs._init(start, z, y))
            init = [torch.diag(w), b]
        else:
            init = self._init(start, z, y)
        params, n_iter, evals, converged = self._solve(z, y, start, odir, init)
        self._finish(z0, y, start, params, n_iter, evals, converged, extra)

    def _transform(self, z: torch.Tensor) -> torch.Tensor:
        return masked_affine(self._affine, z)

    def _affine(self, z: torch.Tensor) -> torch.Tensor:
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
