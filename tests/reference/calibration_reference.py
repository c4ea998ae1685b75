"""Plain-loop numpy references for the calibration and selective-prediction metrics.

Written from the paper definitions, deliberately slow and independent of netuq's vectorised code:

* ECE / MCE (Naeini et al. 2015; Guo et al. 2017): equal-width bins (lo, hi] on the top-1
  confidence, the first bin closed at 0; ``Σ_b |B_b|/n · |acc_b − conf_b|``.
* Adaptive ECE (Nguyen & O'Connor 2015; Nixon et al. 2019): the sorted confidences split into
  ``n_bins`` groups of (almost) equal size, as ``numpy.array_split`` does.
* Class-wise ECE (Kull et al. 2019): for each class, bin p_c over all samples and compare with the
  frequency of y = c; average over classes.
* AURC (Geifman et al. 2019): mean selective risk over coverages k/n, k = 1..n, keeping the most
  confident samples first; a tie group is entered as a whole, its errors spread evenly.
"""

from __future__ import annotations

import numpy as np


def _bin_of(value: float, n_bins: int) -> int:
    """Index b of the bin (b/n, (b+1)/n] holding ``value``; 0 goes to bin 0."""
    for b in range(n_bins):
        hi = (b + 1) / n_bins
        if value <= hi:
            return b
    return n_bins - 1


def _top1(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    conf = np.empty(len(labels))
    correct = np.empty(len(labels))
    for i in range(len(labels)):
        row = list(probs[i])
        best = max(range(len(row)), key=lambda c: (row[c], -c))  # first index among ties
        conf[i] = row[best]
        correct[i] = float(best == labels[i])
    return conf, correct


def ece_reference(probs, labels, n_bins: int = 15, norm: str = "l1") -> float:
    """Top-1 calibration error; ``norm`` is "l1" (ECE), "l2" (RMS) or "max" (MCE)."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    conf, correct = _top1(probs, labels)
    members: list[list[int]] = [[] for _ in range(n_bins)]
    for i, c in enumerate(conf):
        members[_bin_of(c, n_bins)].append(i)
    n = len(labels)
    total, worst = 0.0, 0.0
    for idx in members:
        if not idx:
            continue
        gap = abs(sum(correct[i] for i in idx) / len(idx) - sum(conf[i] for i in idx) / len(idx))
        worst = max(worst, gap)
        total += len(idx) / n * (gap if norm == "l1" else gap**2)
    if norm == "max":
        return worst
    return total if norm == "l1" else float(np.sqrt(total))


def adaptive_ece_reference(probs, labels, n_bins: int = 15) -> float:
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    conf, correct = _top1(probs, labels)
    order = np.argsort(conf, kind="stable")
    n = len(labels)
    total = 0.0
    for group in np.array_split(order, min(n_bins, n)):
        total += len(group) / n * abs(correct[group].mean() - conf[group].mean())
    return total


def classwise_ece_reference(probs, labels, n_bins: int = 15) -> float:
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    n, num_classes = probs.shape
    per_class = []
    for c in range(num_classes):
        members: list[list[int]] = [[] for _ in range(n_bins)]
        for i in range(n):
            members[_bin_of(probs[i, c], n_bins)].append(i)
        err = 0.0
        for idx in members:
            if idx:
                freq = sum(labels[i] == c for i in idx) / len(idx)
                mean_p = sum(probs[i, c] for i in idx) / len(idx)
                err += len(idx) / n * abs(freq - mean_p)
        per_class.append(err)
    return float(np.mean(per_class))


def risk_coverage_reference(confidence, errors) -> np.ndarray:
    """Selective risk at k = 1..n for (n,) confidences (higher = keep first) and (n,) 0/1 errors."""
    confidence, errors = np.asarray(confidence, dtype=np.float64), np.asarray(errors, dtype=np.float64)
    n = len(confidence)
    values = sorted(set(confidence.tolist()), reverse=True)
    risks = []
    for k in range(1, n + 1):
        kept, err_sum = 0, 0.0
        for v in values:  # whole tie groups above the k-th position, then a share of the group at it
            group = confidence == v
            size = int(group.sum())
            if kept + size <= k:
                kept += size
                err_sum += errors[group].sum()
                if kept == k:
                    break
            else:
                err_sum += (k - kept) * errors[group].sum() / size
                kept = k
                break
        risks.append(err_sum / k)
    return np.array(risks)


def aurc_reference(probs, labels, scores=None) -> float:
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    conf, correct = _top1(probs, labels)
    if scores is not None:
        conf = np.asarray(scores, dtype=np.float64)
    return float(risk_coverage_reference(conf, 1.0 - correct).mean())


# ----------------------------------------------------------------------------- calibrator objectives
# Float64 scipy references for the calibrators' objectives, written from the definitions:
# temperature scaling (Guo et al. 2017), vector scaling with an L2 pull toward the temperature
# solution, matrix scaling with ODIR (Kull et al. 2019, eq. 7), optionally with the diagonal pulled
# toward 1/T. Inputs are cast to float64 numpy first, so "the float64 optimum of float32 input".


def _lse(s: np.ndarray) -> np.ndarray:
    m = s.max(1, keepdims=True)
    return (m + np.log(np.exp(s - m).sum(1, keepdims=True))).squeeze(1)


def nll_np(s: np.ndarray, y: np.ndarray, smoothing: float = 0.0) -> float:
    """Mean cross-entropy of logits ``s`` to the target 1 − ε on y and ε/(C−1) elsewhere."""
    logp = s - _lse(s)[:, None]
    at_y = logp[np.arange(len(y)), y]
    if not smoothing:
        return float(-at_y.mean())
    rest = logp.sum(1) - at_y
    return float(-((1 - smoothing) * at_y + smoothing / (s.shape[1] - 1) * rest).mean())


def temperature_reference(z, y, bounds=(0.01, 100.0), smoothing: float = 0.0) -> tuple[float, float]:
    """(T, NLL) minimising the NLL over T in ``bounds`` by bounded Brent search on log T."""
    from scipy.optimize import minimize_scalar

    z, y = np.asarray(z, dtype=np.float64), np.asarray(y)
    res = minimize_scalar(
        lambda u: nll_np(z / np.exp(u), y, smoothing), bounds=np.log(bounds), method="bounded",
        options={"xatol": 1e-12},
    )
    return float(np.exp(res.x)), float(res.fun)


def _vector_objective(theta, z, y, lam, beta):
    C = z.shape[1]
    w, b = theta[:C], theta[C:]
    return nll_np(z * w + b, y) + lam * (np.mean((w / beta - 1) ** 2) + np.mean(b**2))


def _matrix_objective(theta, z, y, lam, mu, beta, pull_diagonal):
    C = z.shape[1]
    W, b = theta[: C * C].reshape(C, C), theta[C * C :]
    off = W - np.diag(np.diag(W))
    loss = nll_np(z @ W.T + b, y) + lam * (off**2).sum() / (C * (C - 1)) + mu * np.mean(b**2)
    if pull_diagonal:
        loss += mu * np.mean((np.diag(W) / beta - 1) ** 2)
    return loss


def vector_objective(w, b, z, y, lam, beta) -> float:
    """NLL(w ⊙ z + b) + λ [mean (w T − 1)² + mean b²] in float64, with β = 1/T."""
    z = np.asarray(z, dtype=np.float64)
    return _vector_objective(np.concatenate([np.asarray(w), np.asarray(b)]), z, np.asarray(y), lam, beta)


def matrix_objective(W, b, z, y, lam, mu, beta, pull_diagonal=True) -> float:
    """NLL(W z + b) + λ mean off-diagonal W² + μ mean b² (+ μ mean (W_jj T − 1)²) in float64."""
    z = np.asarray(z, dtype=np.float64)
    theta = np.concatenate([np.asarray(W).ravel(), np.asarray(b)])
    return _matrix_objective(theta, z, np.asarray(y), lam, mu, beta, pull_diagonal)


def vector_reference(z, y, lam, beta) -> float:
    """The minimum of :func:`vector_objective` by scipy BFGS from (w = β, b = 0)."""
    from scipy.optimize import minimize

    z, y = np.asarray(z, dtype=np.float64), np.asarray(y)
    C = z.shape[1]
    start = np.concatenate([np.full(C, beta), np.zeros(C)])
    res = minimize(_vector_objective, start, args=(z, y, lam, beta), method="BFGS", options={"gtol": 1e-10})
    return float(res.fun)


def matrix_reference(z, y, lam, mu, beta, pull_diagonal=True) -> float:
    """The minimum of :func:`matrix_objective` by scipy BFGS from (W = β I, b = 0)."""
    from scipy.optimize import minimize

    z, y = np.asarray(z, dtype=np.float64), np.asarray(y)
    C = z.shape[1]
    start = np.concatenate([(beta * np.eye(C)).ravel(), np.zeros(C)])
    res = minimize(
        _matrix_objective, start, args=(z, y, lam, mu, beta, pull_diagonal), method="BFGS", options={"gtol": 1e-10}
    )
    return float(res.fun)
