"""Private solvers behind the calibrators: an exact temperature solve and a preconditioned L-BFGS fit.

Temperature scaling minimises NLL(β) = mean_i [logsumexp_c(β z_ic) − β z_iy] over β = 1/T, a
convex function of β with

    NLL'(β)  = mean_i (E_p[z_i] − z_iy),      NLL''(β) = mean_i Var_p[z_i]      (p = softmax(β z_i)),

so a safeguarded Newton iteration (bracketing and geometric bisection whenever a Newton step
leaves the bracket) reaches the optimum in a handful of passes over the logits, each pass giving
value, slope and curvature at once.

Float32 logits are evaluated in float32 (the speed of the fit) with the means over rows in
float64, after two exact rescalings that keep float32 away from its limits: each row's maximum
is subtracted (so exp never overflows) and the logits are multiplied by a power of two that brings
the largest centred magnitude near 1 (so z² neither overflows for huge logits nor underflows for
tiny ones); the solve then runs in the rescaled β. A zero curvature is *not* taken to mean
constant rows: when the float32 softmax is one-hot (saturated logits) the curvature underflows to
0 while the slope does not, and the iteration shrinks β until the softmax is resolved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .base import masked_affine

# Rows per chunk: about 2**19 elements, so one chunk's work buffer stays in cache.
_CHUNK_ELEMENTS = 1 << 19


@dataclass
class TemperatureSolution:
    beta: float  # 1 / T at the optimum (or at a bound)
    nll: float  # NLL at beta
    nll_at_one: float  # NLL at beta = 1 (the uncalibrated logits)
    passes: int  # evaluations of (NLL, slope, curvature), one pass over the logits each
    iterations: int  # Newton / bisection steps taken
    # "converged", "upper" (β at its upper bound, i.e. T at its lower one), "lower", "constant", "max_iter",
    # "smoothed" (separable data, converged on the smoothed target), "smoothed-lower" (separable data whose
    # smoothed optimum lies above the largest allowed T)
    status: str


def centred(z: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
    """(M, C) logits -> z − max_c z (<= 0, one exact zero per row); in place when ``inplace``."""
    zmax = z.amax(1, keepdim=True)
    return z.sub_(zmax) if inplace else z - zmax


class TemperatureObjective:
    """NLL(β), NLL'(β), NLL''(β) in one chunked pass over centred logits ``zc`` (M, C).

    ``zc_y`` (M,) float64 holds the centred logit of the true class (with ``smoothing`` ε > 0:
    the mean centred logit under the smoothed target, 1 − ε on the label and ε/(C−1) on each
    other class, which turns the NLL into the cross-entropy to that target). Every row of ``zc`` has
    maximum 0, so exp(β zc) <= 1 and its row sum s0 >= 1: no overflow, and log s0 is exact for
    any β > 0. Per chunk: e = exp(β zc), s0 = Σ e, s1 = Σ e zc, s2 = Σ e zc² (row sums), then
    E_p[z] − z_y = s1/s0 − zc_y and Var_p[z] = s2/s0 − (s1/s0)². One work buffer is reused for
    every chunk and pass (fresh allocations cost page faults); row sums are matrix-vector
    products with a ones vector (BLAS), and the means over rows are taken in float64.
    """

    def __init__(self, zc: torch.Tensor, y: torch.Tensor, smoothing: float = 0.0) -> None:
        self.zc = zc
        # float64 for the means over rows (on the CPU for devices without float64, e.g. MPS)
        self.acc_device = torch.device("cpu") if zc.device.type == "mps" else zc.device
        self.zc_y = zc.gather(1, y.unsqueeze(1)).squeeze(1).to(self.acc_device, torch.float64)
        M, C = zc.shape
        # A masked class (-inf) has e = exp(β·(-inf)) = 0 and contributes 0 to s0, s1, s2 (the
        # limit of e·zc); 0·(-inf) = NaN is replaced by that 0 (only when a class is masked).
        self.masked = not bool(torch.isfinite(zc.amin()))
        if smoothing:
            if self.masked:  # the smoothed target spreads ε over the k − 1 other unmasked classes of each row
                finite = torch.isfinite(zc)
                rest = zc.masked_fill(~finite, 0.0).sum(1, dtype=torch.float64).to(self.acc_device) - self.zc_y
                others = (finite.sum(1).to(self.acc_device, torch.float64) - 1.0).clamp_min(1.0)
                self.zc_y = (1.0 - smoothing) * self.zc_y + smoothing * rest / others
            else:
                rest = zc.sum(1, dtype=torch.float64).to(self.acc_device) - self.zc_y
                self.zc_y = (1.0 - smoothing) * self.zc_y + smoothing / (C - 1) * rest
        self.rows = max(1, min(M, _CHUNK_ELEMENTS // C))
        self.buf = torch.empty(self.rows, C, dtype=zc.dtype, device=zc.device)
        self.ones = torch.ones(C, dtype=zc.dtype, device=zc.device)
        self.sums = torch.empty(3, M, dtype=zc.dtype, device=zc.device)  # s0, s1, s2 per row
        self.passes = 0

    def __call__(self, beta: float) -> tuple[float, float, float]:
        self.passes += 1
        zc, ones, sums = self.zc, self.ones, self.sums
        for start in range(0, zc.shape[0], self.rows):
            c = zc[start : start + self.rows]
            stop = start + c.shape[0]
            e = self.buf[: c.shape[0]]
            torch.mul(c, beta, out=e)
            e.exp_()
            torch.mv(e, ones, out=sums[0, start:stop])
            e.mul_(c)
            if self.masked:
                e.nan_to_num_(nan=0.0)
            torch.mv(e, ones, out=sums[1, start:stop])
            e.mul_(c)
            if self.masked:
                e.nan_to_num_(nan=0.0)
            torch.mv(e, ones, out=sums[2, start:stop])
        s0, s1, s2 = sums.to(self.acc_device, torch.float64)
        m1 = s1 / s0
        f = float((torch.log(s0) - beta * self.zc_y).mean())
        g = float((m1 - self.zc_y).mean())
        h = float((s2 / s0 - m1 * m1).clamp_min(0.0).mean())
        return f, g, h


def solve_temperature(
    z: torch.Tensor,
    y: torch.Tensor,
    *,
    beta_min: float,
    beta_max: float,
    rtol: float | None = None,
    max_iter: int = 100,
    inplace: bool = False,
    smoothing: float = 0.0,
    separable_smoothing: float | None = None,
    beta_start: float | None = None,
) -> TemperatureSolution:
    """Minimise NLL(β) on [beta_min, beta_max] exactly by safeguarded Newton (see module docstring).

    Args:
        z: (M, C) logits in the compute dtype.
        y: (M,) int64 labels in [0, C).
        beta_min, beta_max: bounds on β = 1/T (0 < beta_min <= beta_max).
        rtol: stop when the next Newton step is below ``rtol * β``: the NLL is then within
            ½ NLL''·(rtol β)² of the optimum, far below float precision. Default 1e-10 for float64
            logits and 1e-6 for float32 (whose rounding makes the slope noisy at ~1e-7).
        max_iter: most Newton / bisection steps.
        inplace: centre ``z`` in place (only for a private copy of the logits).
        smoothing: ε of a smoothed target (see :class:`TemperatureObjective`); 0 for the NLL.
        separable_smoothing: if given and the solve ends at the upper bound on β (separable
            data: no finite optimum), solve again with this ``smoothing``; the status is then
            "smoothed", "smoothed-lower" (its optimum beyond the smallest β) or still "upper";
            ``nll`` and ``nll_at_one`` stay the plain NLL.
        beta_start: start the iteration here instead of at β = 1 (a nearby solution, e.g. the
            whole set's β for one of its folds); ``nll_at_one`` is then NaN (not evaluated).
    """
    if rtol is None:
        rtol = 1e-10 if z.dtype == torch.float64 else 1e-6
    zc = centred(z, inplace=inplace)
    # largest centred magnitude over the unmasked (finite) entries; 0 iff every row is constant
    spread = -float(zc.amin())
    if math.isinf(spread):  # a masked class (-inf): it stays -inf under any β and any scale
        spread = -float(zc.masked_fill(torch.isneginf(zc), 0.0).amin())
    if spread == 0.0:
        # Every row is constant over the classes: NLL = log C whatever β.
        evaluate = TemperatureObjective(zc, y, smoothing)
        f = evaluate(1.0)[0]
        beta = min(max(1.0, beta_min), beta_max)
        return TemperatureSolution(beta, f, f, evaluate.passes, 0, "constant")
    # Exact rescaling by a power of two: zc · 2^-k has its largest magnitude in [1, 2).
    scale = math.ldexp(1.0, math.frexp(spread)[1] - 1)
    if scale != 1.0:
        zc = zc.mul_(1.0 / scale)  # zc is a private tensor here (z − max, or z itself when inplace)
    first = None if beta_start is None else beta_start * scale
    sol = _newton(TemperatureObjective(zc, y, smoothing), beta_min * scale, beta_max * scale, scale, rtol, max_iter,
                  first)
    if sol.status == "upper" and separable_smoothing:
        again = _newton(
            TemperatureObjective(zc, y, separable_smoothing), beta_min * scale, beta_max * scale, scale, rtol, max_iter
        )
        plain = TemperatureObjective(zc, y, smoothing)
        again.nll = plain(again.beta)[0]  # the plain NLL at the smoothed optimum
        again.passes += sol.passes + plain.passes
        again.iterations += sol.iterations
        again.nll_at_one = sol.nll_at_one
        # "smoothed-lower": the smoothed optimum lies beyond the largest T (not anti-informative logits)
        again.status = {"converged": "smoothed", "lower": "smoothed-lower"}.get(again.status, again.status)
        sol = again
    sol.beta /= scale
    return sol


def _newton(evaluate, beta_min, beta_max, beta_one, rtol, max_iter, start=None) -> TemperatureSolution:
    """The safeguarded Newton iteration on [beta_min, beta_max] from ``start`` (default ``beta_one``, β = 1 in
    these units)."""
    beta = min(max(beta_one if start is None else start, beta_min), beta_max)
    f, g, h = evaluate(beta)
    if start is not None:
        nll_at_one = math.nan
    else:
        nll_at_one = f if beta == beta_one else evaluate(beta_one)[0]
    best_beta, best_f = beta, f
    lo, hi = beta_min, beta_max  # bracket of the minimiser
    lo_known = hi_known = False  # whether the slope has been evaluated at lo / hi
    status, iterations, g_prev = "max_iter", 0, math.inf
    while iterations < max_iter:
        iterations += 1
        if beta == beta_max and g <= 0.0:
            status = "upper"
            break
        if beta == beta_min and g >= 0.0:
            status = "lower"
            break
        saturated = g == 0.0 and h == 0.0 and not hi_known
        if g < 0.0 or saturated:
            lo, lo_known = beta, True
        elif g > 0.0:
            hi, hi_known = beta, True
        else:
            status = "converged"
            break
        step = -g / h if h > 0.0 else math.copysign(math.inf, -g)
        if h > 0.0 and abs(step) <= rtol * beta:
            # The Newton step is below the tolerance: converged (β + step may round onto the bracket's
            # end, which the bracket test below would otherwise turn into a jump or a bisection).
            status = "converged"
            break
        cand = beta + step
        if saturated or (not hi_known and g_prev < 0.0 and g / g_prev > 0.25):
            # Saturated: every softmax is one-hot to float precision, the NLL is flat at its
            # infimum. Slope shrinking only linearly while β grows: the exponential tail of
            # (nearly) separable data, where Newton creeps by 1/margin per step. In both cases the
            # optimum is far up: try the bound (and bracket from there if it lies below).
            cand = beta_max
        elif not lo < cand < hi:
            if g > 0.0 and not lo_known and h == 0.0:
                # Curvature underflowed with a positive slope: the float32 softmax is one-hot while
                # some labels disagree. Shrink fast; at β <= 32 (largest |zc| < 2) exp never underflows.
                cand = max(min(beta / 8.0, 32.0), beta_min)
            elif g > 0.0 and not lo_known:
                # Newton in u = log β instead: f'(u) = β g > 0 and f''(u) = β² h + β g > 0, a step
                # that shrinks β by less than a factor e and stays positive.
                cand = max(beta * math.exp(-g / (beta * h + g)), beta_min)
            elif g < 0.0 and not hi_known:
                cand = min(8.0 * beta, beta_max)  # grow geometrically; separable data end at the bound
            else:
                cand = math.sqrt(lo * hi)  # bisection in log β: β spans orders of magnitude
        if abs(cand - beta) <= rtol * beta or (hi - lo) <= rtol * hi:
            status = "converged"
            break
        beta, g_prev = cand, g
        f, g, h = evaluate(beta)
        if f <= best_f:  # a tie (flat NLL at float precision) goes to the later, more converged iterate
            best_beta, best_f = beta, f
    return TemperatureSolution(best_beta, best_f, nll_at_one, evaluate.passes, iterations, status)


def linear_chunk_rows(M: int, C: int) -> int:
    """Rows per chunk of :class:`SoftmaxLinearObjective`: about 2¹⁸ values, at least 256 rows (BLAS-sized)."""
    return max(1, min(M, max(256, _CHUNK_ELEMENTS // 2 // C)))


class SoftmaxLinearObjective:
    """Mean cross-entropy of linearly mapped logits: value, analytic gradient and Hessian diagonal.

    For fit logits ``z`` (M, C), labels ``y`` (M,) and a flat parameter vector ``x``:

    * ``kind="vector"``: x = [w (C), b (C)], calibrated logits a = z ⊙ w + b;
    * ``kind="matrix"``: x = [W (C·C, row-major), b (C)], a = z Wᵀ + b.

    f(x) = mean_i [logsumexp_c a_ic − Σ_c t_ic a_ic] to the target t = (1 − ε) onehot(y) + ε/C
    (ε = ``smoothing``, torch's ``label_smoothing``). With G = (softmax(a) − t) / M the gradient
    is, for matrix scaling, ∂W = Gᵀ z and ∂b = Σ_i G_i, and for vector scaling ∂w = Σ_i G_i ⊙ z_i,
    ∂b = Σ_i G_i: no autograd graph, no (M, C, C) tensor. Rows are processed in chunks of about
    2¹⁸ values (one reused (R, C) buffer), so the memory beyond ``z`` and the parameters is
    O(R·C + C²). The optional Hessian diagonal (for preconditioning) is, with P = softmax(a),
    Σ_i P_ic (1 − P_ic) z_id² / M for W_cd (one more product, (P∘(1−P))ᵀ (z∘z)), and the same
    without z for b — the diagonal of the exact Hessian, whose off-diagonal part is dropped.
    Computed in ``z``'s dtype (float64 for the calibrators; float32 on MPS).

    Masked classes (-inf in ``z``, see :func:`netuq.calibration.base.masked_affine`) enter the map
    as 0 and leave it as -inf: probability 0, target 0, gradient 0 there. The smoothed target of a
    row with k unmasked classes puts 1 − ε' on the label and ε'/(k − 1) on each other unmasked
    class, with ε' = ε(C − 1)/C — for k = C exactly torch's ``label_smoothing`` target above.
    """

    def __init__(self, z, y, kind: str, smoothing: float = 0.0) -> None:
        if kind not in ("vector", "matrix"):
            raise ValueError(f"`kind` must be 'vector' or 'matrix', got {kind!r}")
        # z, y: tensors, or tuples of pieces (views of one tensor: a fold's training rows) taken together
        self.pieces = list(zip(z, y)) if isinstance(z, (tuple, list)) else [(z, y)]
        self.kind, self.smoothing = kind, float(smoothing)
        first = self.pieces[0][0]
        self.M, self.C = sum(p[0].shape[0] for p in self.pieces), first.shape[1]
        self.rows = linear_chunk_rows(self.M, self.C)
        self.buf = torch.empty(self.rows, self.C, dtype=first.dtype, device=first.device)
        self.evals = 0
        self.masked = any(not bool(torch.isfinite(p[0].amin())) for p in self.pieces if p[0].numel())

    @property
    def size(self) -> int:
        """Length of the parameter vector x."""
        return self.C * self.C + self.C if self.kind == "matrix" else 2 * self.C

    def logits(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Calibrated logits (N, C) of logits ``z`` (N, C) under parameters ``x``."""
        C = self.C
        if self.kind == "matrix":
            return masked_affine(lambda t: torch.addmm(x[C * C :], t, x[: C * C].view(C, C).t()), z)
        return masked_affine(lambda t: t * x[:C] + x[C:], z)

    def _masked_target(self, a, yc, mask, eps):
        """(R, C) target of rows with masked classes: 1 − ε' on the label, ε'/(k − 1) on other unmasked ones."""
        if not eps:
            return torch.zeros_like(a).scatter_(1, yc, 1.0)
        eps_row = eps * (self.C - 1) / self.C
        k = (~mask).sum(1, keepdim=True).to(a.dtype)
        other = torch.where(k > 1, eps_row / (k - 1).clamp_min(1.0), torch.zeros_like(k))
        t = (~mask).to(a.dtype).mul_(other)
        return t.scatter_(1, yc, (1.0 - other * (k - 1)))

    def __call__(self, x: torch.Tensor, diag: bool = False):
        """(f, gradient) at ``x`` — plus the Hessian diagonal when ``diag`` — as (float, tensor[, tensor])."""
        self.evals += 1
        C, M, eps = self.C, self.M, self.smoothing
        g = torch.zeros_like(x)
        h = torch.zeros_like(x) if diag else None
        matrix = self.kind == "matrix"
        if matrix:
            W, b = x[: C * C].view(C, C), x[C * C :]
            gw, gb = g[: C * C].view(C, C), g[C * C :]
        else:
            w, b = x[:C], x[C:]
            gw, gb = g[:C], g[C:]
        total = torch.zeros((), dtype=torch.float64, device=x.device)
        chunks = ((z[i : i + self.rows], y[i : i + self.rows]) for z, y in self.pieces
                  for i in range(0, z.shape[0], self.rows))
        for zc, yc in chunks:
            yc = yc.unsqueeze(1)
            a = self.buf[: zc.shape[0]]
            mask = None
            if self.masked:
                mask = torch.isneginf(zc)
                zc = zc.masked_fill(mask, 0.0)  # a masked class enters the map as 0
            if matrix:
                torch.addmm(b, zc, W.t(), out=a)
            else:
                torch.mul(zc, w, out=a).add_(b)
            if mask is not None:
                target = self._masked_target(a, yc, mask, eps)
                total -= (a * target).sum(dtype=torch.float64)  # a is finite here; target is 0 where masked
                a.masked_fill_(mask, -math.inf)  # ... and leaves it as -inf: probability 0
            else:
                # −Σ_c t_c a_c, then logsumexp; a becomes softmax(a) in place
                total -= (1.0 - eps) * a.gather(1, yc).sum(dtype=torch.float64)
                if eps:
                    total -= eps / C * a.sum(dtype=torch.float64)
            amax = a.amax(1, keepdim=True)
            a.sub_(amax).exp_()
            s = a.sum(1, keepdim=True)
            total += (amax + s.log()).sum(dtype=torch.float64)
            a.div_(s)
            if diag:
                q = a * (1.0 - a)
                if matrix:
                    h[: C * C].view(C, C).addmm_(q.t(), zc * zc)
                else:
                    h[:C] += (q * zc * zc).sum(0)
                h[C if not matrix else C * C :] += q.sum(0)
            if mask is not None:
                a.sub_(target)
            else:
                a.scatter_add_(1, yc, torch.full_like(yc, -(1.0 - eps), dtype=a.dtype))
                if eps:
                    a.sub_(eps / C)
            gb += a.sum(0)
            if matrix:
                gw.addmm_(a.t(), zc)
            else:
                gw += a.mul_(zc).sum(0)
        g /= M
        f = float(total) / M
        if diag:
            h /= M
            return f, g, h
        return f, g


@dataclass
class LbfgsResult:
    x: torch.Tensor  # the minimiser found
    f: float  # objective there
    g: torch.Tensor  # its gradient there
    grad_max: float  # largest gradient entry there
    iterations: int
    evals: int  # objective + gradient evaluations
    converged: bool  # stopped by a tolerance, not by max_iter or a failed line search


def lbfgs_minimize(fg, x0: torch.Tensor, *, precond: torch.Tensor | None = None, max_iter: int = 500,
                   tol: float = 1e-7, history: int = 10, f0=None, decrease_tol: float = 0.0) -> LbfgsResult:
    """Minimise a smooth convex f by preconditioned L-BFGS with a backtracking (Armijo) line search.

    ``fg(x)`` returns ``(f, gradient)``. The initial inverse Hessian of the two-loop recursion is
    γ·D⁻¹ with D = ``precond`` (a positive Hessian-diagonal estimate, e.g. from
    :class:`SoftmaxLinearObjective`; identity when None) and γ = sᵀy / yᵀD⁻¹y from the latest
    pair (1 before any), so the first step is a diagonal Newton step and later ones adapt to the
    curvature. The unit step is tried first and halved-by-interpolation until the Armijo
    condition holds; on a convex f every pair has sᵀy >= 0, and pairs with sᵀy <= 0 are skipped.
    Memory: ``history`` pairs of vectors (2·history·len(x)) plus a few more vectors.

    Stops when max|∇f| <= ``tol`` (converged), when the decrease the next step predicts,
    −½ ∇fᵀd, is at most ``decrease_tol`` (converged; 0 disables it: f is then within about that
    of its minimum, all a held-out score needs), when f stops decreasing by more than float
    rounding (relative change <= 1e3·eps, converged), when the line search fails (converged if
    max|∇f| <= 100·tol) or after ``max_iter`` iterations. ``f0``: (f, ∇f) at ``x0`` if known
    (saves an evaluation).

    Example:
        >>> A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
        >>> fg = lambda x: (float(0.5 * x @ A @ x - x.sum()), A @ x - 1.0)
        >>> r = lbfgs_minimize(fg, torch.zeros(2, dtype=torch.float64), tol=1e-12)
        >>> r.converged, torch.allclose(r.x, torch.linalg.solve(A, torch.ones(2, dtype=torch.float64)))
        (True, True)
    """
    x = x0.clone()
    f, g = f0 if f0 is not None else fg(x)
    evals = 0 if f0 is not None else 1
    dinv = None if precond is None else 1.0 / precond
    S: list[torch.Tensor] = []
    Y: list[torch.Tensor] = []
    rho: list[float] = []
    gamma = 1.0
    ftol = 1e3 * torch.finfo(x.dtype).eps
    it, converged = 0, False
    gmax = float(g.abs().max()) if g.numel() else 0.0
    if not math.isfinite(f):
        return LbfgsResult(x, f, g, gmax, 0, evals, False)
    while True:
        if gmax <= tol:
            converged = True
            break
        if it >= max_iter:
            break
        it += 1
        # two-loop recursion: d = −H g
        q = g.neg()
        alphas = []
        for s_, y_, r_ in zip(reversed(S), reversed(Y), reversed(rho)):
            a_ = r_ * float(s_ @ q)
            alphas.append(a_)
            q.add_(y_, alpha=-a_)
        if dinv is not None:
            q.mul_(dinv)
        if gamma != 1.0:
            q.mul_(gamma)
        for (s_, y_, r_), a_ in zip(zip(S, Y, rho), reversed(alphas)):
            b_ = r_ * float(y_ @ q)
            q.add_(s_, alpha=a_ - b_)
        d = q
        slope = float(g @ d)
        if not slope < 0.0:  # not a descent direction (rounding): restart from the preconditioned gradient
            S.clear(), Y.clear(), rho.clear()
            gamma = 1.0
            d = g.neg() if dinv is None else g.neg().mul_(dinv)
            slope = float(g @ d)
            if not slope < 0.0:
                converged = gmax <= 100 * tol
                break
        if -0.5 * slope <= decrease_tol:
            converged = True
            break
        t, ok = 1.0, False
        for _ in range(40):
            x_new = torch.add(x, d, alpha=t)
            f_new, g_new = fg(x_new)
            evals += 1
            if math.isfinite(f_new) and f_new <= f + 1e-4 * t * slope:
                ok = True
                break
            # minimiser of the quadratic through f, slope and f_new, kept in [0.1 t, 0.5 t]
            if math.isfinite(f_new):
                t_q = -slope * t * t / (2.0 * (f_new - f - slope * t))
                t = min(max(t_q, 0.1 * t), 0.5 * t)
            else:
                t *= 0.1
        if not ok:
            converged = gmax <= 100 * tol
            break
        s_vec = x_new - x
        y_vec = g_new - g
        sy = float(s_vec @ y_vec)
        f_old = f
        x, f, g = x_new, f_new, g_new
        gmax = float(g.abs().max())
        if sy > 0.0:
            if len(S) == history:
                S.pop(0), Y.pop(0), rho.pop(0)
            S.append(s_vec), Y.append(y_vec), rho.append(1.0 / sy)
            yy = float(y_vec @ (y_vec * dinv)) if dinv is not None else float(y_vec @ y_vec)
            gamma = sy / yy if yy > 0 else 1.0
        if f_old - f <= ftol * max(abs(f_old), abs(f), 1.0):
            converged = True
            break
    return LbfgsResult(x, f, g, gmax, it, evals, converged)
