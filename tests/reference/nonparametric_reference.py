"""Plain-loop numpy references for the non-parametric calibrators and the selective-prediction areas.

Written from the papers, slow and independent of netuq's vectorised code:

* Top-label histogram binning (Gupta & Ramdas 2022; their ``HB_toplabel`` / ``HB_binary`` /
  ``get_uniform_mass_bins`` / ``bin_points``): per predicted class, ``n // points_per_bin``
  equal-mass groups by ``numpy.array_split``, upper edges the groups' maxima (the last +inf), a
  point in bin ``sum(score > edges)``, a bin's value its accuracy. Their ``nudge`` randomises ties;
  here ties stay together: repeated edges are merged and a last edge with no point above dropped.
* The sharing of the remaining mass: a direct water-filling loop over one row.
* AUGRC (Traub et al. 2024): the generalised risk at coverage k/n is (errors among the k most
  confident)/n; a tie group enters as a whole, its errors spread evenly; AUGRC is the mean over k.
* Selective risk at coverage c: the error rate among the ceil(c · n) most confident, a tie group
  cut at that count with its errors spread evenly.
"""

from __future__ import annotations

import math

import numpy as np


def histogram_fit_reference(probs: np.ndarray, labels: np.ndarray, points_per_bin: int):
    """{class: (upper edges without the last +inf, bin values)}; classes with no bins left out."""
    top = probs.max(1)
    pred = probs.argmax(1)
    out = {}
    for c in range(probs.shape[1]):
        idx = np.where(pred == c)[0]
        n = idx.size
        b = n // points_per_bin
        if b == 0:
            continue
        s = np.sort(top[idx])
        groups = np.array_split(s, b)
        edges = []
        for g in groups[:-1]:
            if not edges or max(g) != edges[-1]:
                edges.append(max(g))
        if edges and edges[-1] >= s.max():
            edges.pop()
        sums = [0.0] * (len(edges) + 1)
        counts = [0] * (len(edges) + 1)
        for i in idx:
            k = sum(1 for e in edges if top[i] > e)
            sums[k] += float(labels[i] == c)
            counts[k] += 1
        assert all(counts), "every bin holds points"
        out[c] = (np.array(edges), np.array([s_ / n_ for s_, n_ in zip(sums, counts)]))
    return out


def histogram_top_label_reference(fit, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class, calibrated top-label probability or the raw one for unbinned classes) per row."""
    pred = probs.argmax(1)
    q = probs.max(1).copy()
    for i in range(len(q)):
        c = int(pred[i])
        if c in fit:
            edges, values = fit[c]
            q[i] = values[sum(1 for e in edges if q[i] > e)]
    return pred, q


def share_rest_reference(p: np.ndarray, top: int, q: float) -> np.ndarray:
    """One row: q (floored at 1/C) on ``top``, the rest water-filled under (1 − 2⁻¹⁶) q by p."""
    C = p.size
    q = min(max(q, 1.0 / C), 1.0)
    cap = q * (1.0 - 2.0**-16)
    others = [j for j in range(C) if j != top]
    capped: set[int] = set()
    out = np.zeros(C)
    while True:
        free = [j for j in others if j not in capped]
        mass = max(1.0 - q - cap * len(capped), 0.0)
        weights = {j: p[j] for j in free}
        if free and sum(weights.values()) == 0:
            weights = {j: 1.0 for j in free}
        total = sum(weights.values())
        for j in capped:
            out[j] = cap
        for j in free:
            out[j] = weights[j] * mass / total if total > 0 else 0.0
        over = [j for j in free if out[j] > cap]
        if not over:
            break
        capped.update(over)
    out[top] = max(q, 1.0 - sum(out[j] for j in others))
    return out


def _tie_groups(conf: np.ndarray, err: np.ndarray):
    """[(size, errors)] of the tie groups in order of decreasing confidence."""
    groups: dict[float, list[float]] = {}
    for c, e in zip(conf.tolist(), err.tolist()):
        groups.setdefault(c, [0, 0.0])
        groups[c][0] += 1
        groups[c][1] += e
    return [tuple(groups[c]) for c in sorted(groups, reverse=True)]


def _errors_among(conf: np.ndarray, err: np.ndarray, k: int) -> float:
    """Expected errors among the k most confident, a tie group's errors spread evenly."""
    taken, errors = 0, 0.0
    for size, e in _tie_groups(conf, err):
        if taken + size <= k:
            taken += size
            errors += e
        else:
            errors += e * (k - taken) / size
            break
    return errors


def augrc_reference(conf, err) -> float:
    conf, err = np.asarray(conf, dtype=float), np.asarray(err, dtype=float)
    n = conf.size
    return sum(_errors_among(conf, err, k) / n for k in range(1, n + 1)) / n


def selective_risk_reference(conf, err, coverage: float) -> float:
    conf, err = np.asarray(conf, dtype=float), np.asarray(err, dtype=float)
    k = max(1, math.ceil(coverage * conf.size - 1e-9))
    return _errors_among(conf, err, k) / k
