"""Independent reference for vector and matrix scaling: numpy objective + scipy L-BFGS-B.

Written from the definitions (Guo et al. 2017; ODIR of Kull et al. 2019, with netuq's
``pull_diagonal`` term), in float64 numpy, with its own hand-derived gradient (checked against
finite differences by the tests) and scipy's L-BFGS-B (Fortran, its own line search) — no code
shared with netuq's torch solver. The penalised objective in the units of the given logits z:

* vector: NLL_t(z ⊙ w + b) + λ [mean_c (w_c / β − 1)² + mean_c b_c²]
* matrix: NLL_t(z Wᵀ + b) + λ Σ_{i≠j} W_ij² / (C(C−1)) + μ mean_c b_c² [+ μ mean_c (W_cc / β − 1)²]

with NLL_t the mean cross-entropy to the target (1 − ε) onehot(y) + ε / C (torch's
``label_smoothing`` ε) and β = 1/T.
"""

from __future__ import annotations

import numpy as np


def _softmax_terms(a: np.ndarray, y: np.ndarray, eps: float):
    m = a.max(1, keepdims=True)
    e = np.exp(a - m)
    s = e.sum(1, keepdims=True)
    lse = (m + np.log(s)).ravel()
    n, c = a.shape
    t = np.full((n, c), eps / c)
    t[np.arange(n), y] += 1.0 - eps
    f = float(np.mean(lse - (t * a).sum(1)))
    return f, (e / s - t) / n


def objective(theta, z, y, kind, penalty, beta, eps=0.0, pull_diagonal=True):
    """(value, gradient) of the penalised objective at the flat parameters ``theta``.

    ``theta`` is [w, b] (vector) or [W row-major, b] (matrix); ``penalty`` is λ (vector, or None)
    or (λ, μ) (matrix, or None).
    """
    z = np.asarray(z, dtype=np.float64)
    C = z.shape[1]
    if kind == "vector":
        w, b = theta[:C], theta[C:]
        f, G = _softmax_terms(z * w + b, y, eps)
        g = np.concatenate([(G * z).sum(0), G.sum(0)])
        if penalty:
            lam = penalty
            f += lam * (np.mean((w / beta - 1) ** 2) + np.mean(b**2))
            g[:C] += 2 * lam / C * (w / beta - 1) / beta
            g[C:] += 2 * lam / C * b
        return f, g
    W, b = theta[: C * C].reshape(C, C), theta[C * C :]
    f, G = _softmax_terms(z @ W.T + b, y, eps)
    gW, gb = G.T @ z, G.sum(0)
    if penalty is not None:
        lam, mu = penalty
        off = W - np.diag(np.diag(W))
        f += lam * (off**2).sum() / (C * (C - 1)) + mu * np.mean(b**2)
        gW = gW + 2 * lam * off / (C * (C - 1))
        gb = gb + 2 * mu * b / C
        if pull_diagonal:
            r = np.diag(W) / beta - 1
            f += mu * np.mean(r**2)
            gW = gW + np.diag(2 * mu / C * r / beta)
    return f, np.concatenate([gW.ravel(), gb])


def minimise(z, y, kind, penalty, beta, eps=0.0, pull_diagonal=True):
    """(theta, value) at the minimum, by scipy L-BFGS-B from the temperature solution, to float64 precision."""
    from scipy.optimize import minimize

    z = np.asarray(z, dtype=np.float64)
    y = np.asarray(y)
    C = z.shape[1]
    if kind == "vector":
        start = np.concatenate([np.full(C, beta), np.zeros(C)])
    else:
        start = np.concatenate([(beta * np.eye(C)).ravel(), np.zeros(C)])
    res = minimize(objective, start, args=(z, y, kind, penalty, beta, eps, pull_diagonal), jac=True,
                   method="L-BFGS-B", options={"maxiter": 20000, "maxfun": 40000, "ftol": 1e-15, "gtol": 1e-11,
                                               "maxcor": 30})
    return res.x, float(res.fun)


def nll(a, y) -> float:
    """Plain mean NLL of logits ``a``."""
    return _softmax_terms(np.asarray(a, dtype=np.float64), np.asarray(y), 0.0)[0]
