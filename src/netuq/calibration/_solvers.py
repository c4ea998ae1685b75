"""Private solvers behind the calibrators: an exact temperature solve and a full-batch L-BFGS fit.

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
    sol = _newton(TemperatureObjective(zc, y, smoothing), beta_min * scale, beta_max * scale, scale, rtol, max_iter)
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


def _newton(evaluate, beta_min, beta_max, beta_one, rtol, max_iter) -> TemperatureSolution:
    """The safeguarded Newton iteration on [beta_min, beta_max]; ``beta_one`` is β = 1 in these units."""
    beta = min(max(beta_one, beta_min), beta_max)
    f, g, h = evaluate(beta)
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
        if f < best_f:
            best_beta, best_f = beta, f
    return TemperatureSolution(best_beta, best_f, nll_at_one, evaluate.passes, iterations, status)


def lbfgs(params: list[torch.Tensor], objective, *, max_iter: int, tol: float) -> tuple[int, int, bool]:
    """Full-batch L-BFGS with a strong-Wolfe line search on ``objective()`` (a scalar tensor).

    Stops when the largest gradient entry is below ``tol``, when the loss or the largest step
    entry changes by less than 1e-12 (float64) / 1e-7 (float32, about its rounding of an NLL near
    1), or after ``max_iter`` iterations.

    Returns:
        (iterations, function evaluations, converged), where converged means it stopped before
        ``max_iter``.
    """
    dtype = params[0].dtype
    opt = torch.optim.LBFGS(
        params,
        lr=1.0,
        max_iter=max_iter,
        max_eval=max_iter * 5 // 4 + 1,
        tolerance_grad=tol,
        tolerance_change=1e-12 if dtype == torch.float64 else 1e-7,
        history_size=20,
        line_search_fn="strong_wolfe",
    )
    evals = 0

    def closure():
        nonlocal evals
        evals += 1
        opt.zero_grad(set_to_none=False)
        loss = objective()
        loss.backward()
        return loss

    opt.step(closure)
    n_iter = int(opt.state[params[0]].get("n_iter", 0))
    return n_iter, evals, n_iter < max_iter
