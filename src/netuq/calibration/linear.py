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
from .._memory import check_fit_memory
from ._solvers import LbfgsResult, SoftmaxLinearObjective, lbfgs_minimize, linear_chunk_rows, solve_temperature
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
#: Relative excess of held-out NLL over the best so far that ends the penalty path at once.
_CLEARLY_WORSE = 0.01
#: Stop of those fits on the decrease the next step predicts (NLL units): the held-out scores of
#: neighbouring grid points differ by far more.
_INNER_DECREASE = 1e-8
#: The same on the first fold alone (a larger margin: one fold's score is noisier).
_FOLD_CLEARLY_WORSE = 0.05
#: L-BFGS history (pairs of parameter-sized vectors kept).
_HISTORY = 10
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

    def __init__(self, z: torch.Tensor, y: torch.Tensor, scale: float = 1.0, near: float | None = None,
                 inplace: bool = False) -> None:
        self.scale = scale
        # Newton from β = 1 in the logits' own units (T = 1), or from ``near`` (the whole set's β, for a fold);
        # ``inplace``: z is a private copy the solve may centre in place
        sol = solve_temperature(z, y, beta_min=0.01, beta_max=100.0, separable_smoothing=separable_smoothing(y.numel()),
                                beta_start=scale if near is None else near, inplace=inplace)
        self.beta, self.status, self.passes = sol.beta, sol.status, sol.passes
        C = z.shape[1]
        eps = separable_smoothing(y.numel()) if sol.status in ("smoothed", "upper") else 0.0
        self.label_smoothing = eps * C / (C - 1)  # torch's smoothing spreads ε·C/(C−1) over all C classes


class _LinearScaling(Calibrator):
    """Shared machinery: float64 preconditioned L-BFGS fits of a penalised NLL and the inner cross-validation.

    A fit's parameters are one flat vector x (see :class:`~netuq.calibration._solvers.SoftmaxLinearObjective`);
    the objective is the exact mean NLL (to the smoothed target if separable) plus the penalty,
    both with analytic gradients.
    """

    _param_names: ClassVar[tuple[str, ...]] = ("cv", "max_iter", "tol")
    _penalty_name: ClassVar[str] = ""  # "l2" or "odir": the constructor argument holding the penalty
    _kind: ClassVar[str] = ""  # "vector" or "matrix": the SoftmaxLinearObjective kind

    def __init__(self, *, cv: int = 3, max_iter: int = 500, tol: float = 1e-7) -> None:
        self.cv = check_positive_int(cv, "cv")
        if self.cv < 2:
            raise ValueError(f"`cv` must be an integer >= 2, got {cv!r}")
        self.max_iter = check_positive_int(max_iter, "max_iter")
        self.tol = check_positive_float(tol, "tol")

    # -------------------------------------------------------------- per-class pieces
    def _init(self, start: _Start, C: int, like: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """The flat starting point: the temperature solution."""
        raise NotImplementedError

    def _quadratic(self, start: _Start, penalty, C: int, like: torch.Tensor):  # pragma: no cover
        """The penalty as a diagonal quadratic: (h, c) with penalty(x) = ½ Σ_i h_i (x_i − c_i)² (both like ``x``).

        Every penalty here is of that form, so its value, gradient h ⊙ (x − c) and Hessian diagonal h
        cost a few vector operations per evaluation (the (h, c) pair is built once per fit).
        """
        raise NotImplementedError

    def _penalty(self, x: torch.Tensor, start: _Start, penalty, C: int, hess: bool = True):
        """(value, gradient, Hessian diagonal or None) of the penalty at the flat parameters ``x``."""
        h, c = self._quadratic(start, penalty, C, x)
        r = x - c
        g = r.mul_(h)
        return 0.5 * float(g @ (x - c)), g, (h if hess else None)

    def _unpack(self, x: torch.Tensor, C: int) -> list[torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    # -------------------------------------------------------------- memory
    @classmethod
    def memory_needed(cls, n_samples: int, num_classes: int, *, cv: int = 3, itemsize: int = 8) -> int:
        """Bytes a fit on ``n_samples`` × ``num_classes`` logits needs at most, beyond the caller's logits.

        Three (N, C) copies (the float64 logits, the fold-ordered copy of the inner cross-validation,
        the working copy of the temperature start) and, per parameter vector of P = C·C + C
        (matrix) or 2C (vector) entries, 2·history + 12 + 2·cv vectors (the L-BFGS pairs, its
        working vectors, the folds' warm starts and preconditioners): O(N·C + C²), never N·C².
        """
        P = num_classes * num_classes + num_classes if cls._kind == "matrix" else 2 * num_classes
        vectors = 2 * _HISTORY + 12 + 2 * cv
        chunk = linear_chunk_rows(n_samples, num_classes) * num_classes * 4  # the chunk buffer and temporaries
        return itemsize * (3 * n_samples * num_classes + vectors * P + chunk)

    def _check_memory(self, n_samples: int, num_classes: int) -> None:
        check_fit_memory(type(self), n_samples, num_classes, cv=self.cv)

    # -------------------------------------------------------------- fitting
    def _objective(self, z, y, start: _Start) -> SoftmaxLinearObjective:
        return SoftmaxLinearObjective(z, y, self._kind, start.label_smoothing)

    def _minimize(self, obj, start: _Start, penalty, x0, nll_diag, max_iter=None, tol=None, nll0=None,
                  decrease_tol=0.0) -> LbfgsResult:
        """Minimise NLL + penalty from ``x0``, preconditioned by ``nll_diag`` + the penalty's Hessian diagonal.

        ``nll0``: the NLL's (value, gradient) at ``x0`` when known (a warm start): saves a pass.
        The result's ``f`` and ``g`` are of NLL + penalty.
        """
        C = obj.C
        if penalty is not None:
            h, c = self._quadratic(start, penalty, C, x0)

        def fg(x):
            f, g = obj(x)
            if penalty is not None:  # + ½ Σ h (x − c)², gradient h ⊙ (x − c)
                r = x - c
                pg = r.mul_(h)
                f = f + 0.5 * float(pg @ (x - c))
                g = g.add_(pg)
            return f, g

        diag = nll_diag.clone()
        f0 = None
        if penalty is not None:
            pf, pg, ph = self._penalty(x0, start, penalty, C)
            diag += ph
            if nll0 is not None:
                f0 = (nll0[0] + pf, nll0[1] + pg)
        elif nll0 is not None:
            f0 = (nll0[0], nll0[1].clone())
        top = float(diag.max())
        diag.clamp_(min=max(top, 1e-300) * 1e-6)
        res = lbfgs_minimize(fg, x0, precond=diag, max_iter=max_iter or self.max_iter, tol=tol or self.tol,
                             history=_HISTORY, f0=f0, decrease_tol=decrease_tol)
        if not bool(torch.isfinite(res.x).all()) or not math.isfinite(res.f):  # pragma: no cover - guard
            warnings.warn(
                f"{type(self).__name__}: L-BFGS produced a non-finite solution; keeping the starting point",
                RuntimeWarning,
                stacklevel=5,
            )
            res = LbfgsResult(x0, math.nan, torch.full_like(x0, math.nan), math.nan, res.iterations, res.evals, False)
        return res

    def _nll_part(self, res: LbfgsResult, start: _Start, penalty, C: int):
        """The NLL's (value, gradient) at ``res.x``: the result's objective minus the penalty."""
        if penalty is None:
            return res.f, res.g
        pf, pg, _ = self._penalty(res.x, start, penalty, C, hess=False)
        return res.f - pf, res.g - pg

    def _search(self, z, y, image, seed, grid, C, near=None):
        """Held-out NLL of each penalty in ``grid`` (ordered strongest first) over ``cv`` folds split by image.

        Returns (scores, warm) with scores {penalty: mean held-out NLL} and warm {penalty: the mean
        over folds of that penalty's fitted parameters} (the final fit starts from the chosen one's);
        None when there are fewer images than folds.

        The rows are reordered once so that every fold is a contiguous block: a fold's training
        data are two views of that copy, no per-fold copies. Along the path each fold's fit is
        warm-started from its previous (stronger) penalty's optimum with the same preconditioner
        (its NLL Hessian diagonal at the temperature start), and the path stops once the held-out
        NLL has been worse than the best for two grid points in a row (weak penalties are the slow
        fits, and the score is unimodal in practice) or once it is worse than the best by more than
        ``_CLEARLY_WORSE`` (1 %, e.g. the overfitting side of matrix scaling) — or, without fitting
        the other folds, once the first fold's held-out NLL is worse than its best by more than
        ``_FOLD_CLEARLY_WORSE`` (5 %; that grid point is then not scored); each inner fit runs at
        most ``_INNER_MAX_ITER`` iterations, to ``_INNER_TOL`` or a predicted decrease of
        ``_INNER_DECREASE``; it starts from the NLL value and gradient its previous fit ended with.
        """
        groups = torch.unique(image)
        if groups.numel() < self.cv:
            warnings.warn(
                f"{type(self).__name__}: {groups.numel()} image(s)/sample(s) are too few for {self.cv}-fold "
                f"{self._penalty_name} search; using the strongest penalty in the grid",
                RuntimeWarning,
                stacklevel=4,
            )
            return None, None
        gen = torch.Generator().manual_seed(seed)
        fold_of_group = torch.empty(int(groups.max()) + 1, dtype=torch.long)
        fold_of_group[groups[torch.randperm(groups.numel(), generator=gen)].cpu()] = (
            torch.arange(groups.numel()) % self.cv
        )
        fold = fold_of_group.to(image.device)[image]
        order = torch.sort(fold, stable=True).indices
        zs, ys = z[order], y[order]
        bounds = torch.cumsum(torch.bincount(fold, minlength=self.cv), 0).tolist()
        folds = []
        for k in range(self.cv):
            lo, hi = (bounds[k - 1] if k else 0), bounds[k]
            zt, yt = (zs[:lo], zs[hi:]), (ys[:lo], ys[hi:])
            start = _Start(torch.cat(zt), torch.cat(yt), self._scale, near=near, inplace=True)
            obj = SoftmaxLinearObjective(zt, yt, self._kind, start.label_smoothing)
            x0 = self._init(start, C, z)
            f0, g0, diag = obj(x0, diag=True)
            folds.append({"obj": obj, "start": start, "x": x0, "diag": diag, "nll": (f0, g0), "zv": zs[lo:hi],
                          "yv": ys[lo:hi]})
        scores, warm, best, worse = {}, {}, math.inf, 0
        inner = min(self.max_iter, _INNER_MAX_ITER)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for penalty in grid:
                total, mean_x, stop = 0.0, torch.zeros_like(folds[0]["x"]), False
                for i, f in enumerate(folds):
                    res = self._minimize(f["obj"], f["start"], penalty, f["x"], f["diag"], inner, _INNER_TOL,
                                         nll0=f["nll"], decrease_tol=_INNER_DECREASE)
                    f["x"] = x = res.x
                    f["nll"] = self._nll_part(res, f["start"], penalty, C)
                    mean_x += x
                    with torch.no_grad():
                        held = float(F.cross_entropy(f["obj"].logits(x, f["zv"]), f["yv"], reduction="sum"))
                    total += held
                    if i == 0 and held > f.get("best", math.inf) * (1.0 + _FOLD_CLEARLY_WORSE):
                        stop = True  # the first fold alone is far worse: not scored, the path ends here
                        break
                    if i == 0:
                        f["best"] = min(f.get("best", math.inf), held)
                if stop:
                    break
                scores[penalty] = total / y.numel()
                if scores[penalty] < best:
                    best, worse = scores[penalty], 0
                    warm = {penalty: mean_x / self.cv}
                else:
                    worse += 1
                    if worse >= 2 or scores[penalty] > best * (1.0 + _CLEARLY_WORSE):
                        break
        return scores, warm

    def _choose(self, z, y, image, seed, setting, grid_default, strength, C, near=None):
        """(penalty or None, scores or None, warm start or None) for the setting: None, a value, "auto" or a list."""
        if setting is None or not (setting == "auto" or isinstance(setting, list)):
            return setting, None, None
        grid = sorted(grid_default if setting == "auto" else setting, key=strength, reverse=True)
        scores, warm = self._search(z, y, image, seed, grid, C, near)
        if scores is None:
            return grid[0], None, None
        chosen = min(scores, key=scores.get)
        return chosen, scores, warm.get(chosen)

    def _scaled(self, z: torch.Tensor) -> torch.Tensor:
        """Float64 (float32 on MPS) logits divided by an exact power of two; sets ``self._scale``."""
        z64 = z if z.device.type == "mps" else z.to(torch.float64)
        self._scale = _unit_scale(z64)
        if self._scale == 1.0:
            return z64
        return z64.div_(self._scale) if z64 is not z else z64 / self._scale

    def _fit_at(self, z, y, start: _Start, penalty, x0) -> LbfgsResult:
        """The final fit on all of ``z`` from ``x0``."""
        obj = self._objective(z, y, start)
        f0, g0, diag = obj(x0, diag=True)
        res = self._minimize(obj, start, penalty, x0, diag, nll0=(f0, g0))
        res.evals += 1  # the first pass (value, gradient and preconditioner)
        return res

    def _finish(self, z0, y, start: _Start, res: LbfgsResult, extra_passes=0) -> None:
        """Store the fit in the units of the logits ``z0`` (the fit ran on z / scale)."""
        C = z0.shape[1]
        params = self._unpack(res.x, C)
        params = [params[0] / start.scale, params[1]]
        self.weight_ = params[0].to("cpu", torch.float64)
        self.bias_ = params[1].to("cpu", torch.float64)
        with torch.no_grad():
            self.nll_before_ = nll64(z0, y)  # the uncalibrated NLL (the start solve ran on z / scale)
            self.nll_after_ = nll64(self._transform(z0.to(params[0].dtype)), y)
        self.n_iter_ = res.iterations
        self.n_passes_ = start.passes + extra_passes + res.evals
        self.converged_ = res.converged

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

    _kind = "vector"

    def _init(self, start, C, like):
        x = torch.zeros(2 * C, dtype=like.dtype, device=like.device)
        x[:C] = start.beta
        return x

    def _unpack(self, x, C):
        return [x[:C], x[C:]]

    def _quadratic(self, start, lam, C, like):
        # λ [1/C Σ (w_c/β − 1)² + 1/C Σ b_c²] = ½ Σ 2λ/(Cβ²) (w_c − β)² + ½ Σ 2λ/C b_c²
        h = torch.empty(2 * C, dtype=like.dtype, device=like.device)
        c = torch.zeros_like(h)
        h[:C], h[C:], c[:C] = 2.0 * lam / (C * start.beta**2), 2.0 * lam / C, start.beta
        return h, c

    def _fit(self, z, y, image, seed, owned) -> None:
        z0, z = z, self._scaled(z)
        C = z.shape[1]
        self._warn_constant(z)
        start = _Start(z, y, self._scale)
        self._warn_separable(start)
        lam, self.l2_scores_, warm = self._choose(z, y, image, seed, self.l2, L2_GRID, strength=lambda v: v, C=C,
                                                     near=start.beta)
        self.l2_ = None if lam is None else float(lam)
        res = self._fit_at(z, y, start, lam, warm if warm is not None else self._init(start, C, z))
        self._finish(z0, y, start, res)

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

    _kind = "matrix"

    def _init(self, start, C, like):
        x = torch.zeros(C * C + C, dtype=like.dtype, device=like.device)
        x[: C * C].view(C, C).diagonal().fill_(start.beta)
        return x

    def _unpack(self, x, C):
        return [x[: C * C].view(C, C), x[C * C :]]

    def _quadratic(self, start, odir, C, like):
        # λ/(C(C−1)) Σ_{i≠j} W_ij² (W here is W·scale: the fit runs on z / scale, the penalty is on W itself)
        # + μ/C Σ b_j² (+ μ/C Σ (W_jj/β − 1)² with pull_diagonal), each ½ h (x − c)²
        lam, mu = odir
        h = torch.zeros(C * C + C, dtype=like.dtype, device=like.device)
        c = torch.zeros_like(h)
        hW = h[: C * C].view(C, C)
        hW.fill_(2.0 * lam / (C * (C - 1) * start.scale**2))
        hW.diagonal().zero_()
        h[C * C :] = 2.0 * mu / C
        if self.pull_diagonal:
            hW.diagonal().fill_(2.0 * mu / (C * start.beta**2))
            c[: C * C].view(C, C).diagonal().fill_(start.beta)
        return h, c

    def _fit(self, z, y, image, seed, owned) -> None:
        z0, z = z, self._scaled(z)
        C = z.shape[1]
        self._warn_constant(z)
        start = _Start(z, y, self._scale)
        self._warn_separable(start)
        odir, self.odir_scores_, warm = self._choose(z, y, image, seed, self.odir, ODIR_GRID, strength=lambda p: p,
                                                     C=C, near=start.beta)
        self.odir_ = None if odir is None else (float(odir[0]), float(odir[1]))
        extra = 0
        if odir is None:  # from the unregularised vector optimum: the NLL is never above vector scaling's
            vs = VectorScaling(l2=None, max_iter=self.max_iter, tol=self.tol)
            r = vs._fit_at(z, y, start, None, vs._init(start, C, z))
            x0 = self._init(start, C, z)
            x0[: C * C].view(C, C).diagonal().copy_(r.x[:C])
            x0[C * C :] = r.x[C:]
            extra = r.evals
        else:
            x0 = warm if warm is not None else self._init(start, C, z)
        res = self._fit_at(z, y, start, odir, x0)
        self._finish(z0, y, start, res, extra)

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
