"""Post-hoc pieces at real scale: the Mahalanobis fit's memory and time, the non-parametric calibrators.

Part 1, Mahalanobis (shared covariance) at D = 512 features, C = 1,000 classes: netuq's streaming
fit (batches of 500 features made on the fly, never all held) against the all-at-once baseline
(every N x D feature in memory, float64, scikit-learn's EmpiricalCovariance on the class-centred
features, as pytorch-ood-style detectors do). For N = 12,500 / 25,000 / 50,000: fit seconds and
peak memory above the start (RSS high-water mark, Linux), with the log-log slope of the peak
against N (streaming: ~0, memory independent of N; baseline: ~1). Also: the largest difference
between the two covariances (they are the same estimate) and scoring time per 10,000 inputs.

Part 2, top-label histogram binning and isotonic regression on N = 20,000 x C = 100 overconfident
logits (+ a held-out set): fit seconds, held-out ECE and NLL, against TorchUncertainty's
HistogramBinningScaler / IsotonicRegressionScaler when importable.

Run: ``.venv/bin/python perf/bench_posthoc.py`` (or ``make bench``); ``--quick`` for a smaller run.
"""

from __future__ import annotations

import gc
import math
import sys
import time
import warnings

import numpy as np
import torch

from netuq import metrics
from netuq.calibration import HistogramBinning, IsotonicRegression
from netuq.detectors import Mahalanobis

QUICK = "--quick" in sys.argv
D, C, BATCH = 512, 1000, 500


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise OSError(key)


def _peak_reset() -> int | None:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _status_kib("VmRSS") * 1024
    except OSError:
        return None


def _peak_mib(before: int | None) -> float | None:
    return None if before is None else (_status_kib("VmHWM") * 1024 - before) / 2**20


def _exact_rss_accounting() -> None:
    """glibc: serve large allocations by mmap, returned on free, so each run's peak is its own."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 128 * 1024)
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def batches(n: int, seed: int = 0):
    """Seeded (features (BATCH, D) float32, labels) batches: class centres plus correlated noise."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(C, D, generator=g)
    mix = torch.randn(D, D, generator=g) / math.sqrt(D)
    for start in range(0, n, BATCH):
        m = min(BATCH, n - start)
        y = torch.randint(0, C, (m,), generator=g)
        yield centres[y] + torch.randn(m, D, generator=g) @ mix, y


def streaming_fit(n: int) -> Mahalanobis:
    det = Mahalanobis()
    for f, y in batches(n):
        det.partial_fit(f, y, num_classes=C)
    det.score(torch.zeros(1, D))  # the Cholesky factor
    return det


def all_at_once_fit(n: int):
    from sklearn.covariance import EmpiricalCovariance

    parts = list(batches(n))
    f = torch.cat([p[0] for p in parts]).double().numpy()
    y = torch.cat([p[1] for p in parts]).numpy()
    means = np.zeros((C, D))
    np.add.at(means, y, f)
    with np.errstate(invalid="ignore"):  # classes without data (small N) have no mean; none is used
        means /= np.bincount(y, minlength=C)[:, None]
    cov = EmpiricalCovariance(assume_centered=True).fit(f - means[y]).covariance_
    return means, cov


def part1() -> None:
    sizes = (2_500, 5_000, 10_000) if QUICK else (12_500, 25_000, 50_000)
    print(f"Mahalanobis fit, D = {D}, C = {C}, batches of {BATCH} (median of 2 runs; peak = RSS high-water "
          "above start)")
    print(f"{'N':>8} {'streaming s':>12} {'peak MiB':>9} {'all-at-once s':>14} {'peak MiB':>9} {'max |Δcov|':>11}")
    peaks_s, peaks_b = [], []
    streaming_fit(BATCH), all_at_once_fit(BATCH)  # warm up (first-call allocations, imports)
    for n in sizes:
        rows = {"s": [], "b": []}
        for _ in range(2):
            for key, fn in (("s", streaming_fit), ("b", all_at_once_fit)):
                gc.collect()
                before = _peak_reset()
                t0 = time.perf_counter()
                out = fn(n)
                rows[key].append((time.perf_counter() - t0, _peak_mib(before), out))
                del out
        det = rows["s"][0][2]
        _, cov_b = rows["b"][0][2]
        diff = float(np.abs(det.covariance_.numpy() - cov_b).max())
        t_s, p_s = np.median([r[0] for r in rows["s"]]), np.median([r[1] or 0 for r in rows["s"]])
        t_b, p_b = np.median([r[0] for r in rows["b"]]), np.median([r[1] or 0 for r in rows["b"]])
        peaks_s.append(p_s)
        peaks_b.append(p_b)
        print(f"{n:>8} {t_s:>12.2f} {p_s:>9.0f} {t_b:>14.2f} {p_b:>9.0f} {diff:>11.2e}")
        del rows, det
    x = np.log(np.array(sizes, dtype=float))
    for name, peaks in (("streaming", peaks_s), ("all-at-once", peaks_b)):
        p = np.maximum(np.array(peaks, dtype=float), 1.0)
        print(f"log-log slope of peak memory against N, {name}: {np.polyfit(x, np.log(p), 1)[0]:.2f}")
    det = streaming_fit(sizes[0])
    f = next(batches(10_000, seed=5))[0]
    f = torch.cat([f] * (10_000 // BATCH))
    t0 = time.perf_counter()
    det.score(f)
    print(f"scoring 10,000 inputs against {C} classes: {time.perf_counter() - t0:.2f} s "
          f"(state {4 * (C * D + D * D) * 2 / 2**20:.1f} MiB float64: sums C x D + scatter D x D)")


def overconfident(n: int, c: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, c, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    base[torch.arange(n), y] += 3.05
    return 6.0 * base, y


def _peer_fits():
    try:
        from torch_uncertainty.post_processing import HistogramBinningScaler, IsotonicRegressionScaler
    except ImportError:
        return {}

    def wrap(cls):
        def fit(z, y):
            scaler = cls()
            loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(z, y), batch_size=4096)
            scaler.fit(loader, progress=False)
            return lambda zz: scaler(zz)
        return fit

    return {"TorchUncertainty HistogramBinningScaler": wrap(HistogramBinningScaler),
            "TorchUncertainty IsotonicRegressionScaler": wrap(IsotonicRegressionScaler)}


def part2() -> None:
    n, c = (5_000, 100) if QUICK else (20_000, 100)
    z, y = overconfident(n, c, 0)
    zt, yt = overconfident(n, c, 1)
    print(f"\nnon-parametric calibrators, N = {n} x C = {c} (+ held-out set of the same size)")
    print(f"{'calibrator':<44} {'fit s':>7} {'held-out ECE':>13} {'NLL':>7} {'accuracy':>9}")
    p = zt.softmax(1)
    print(f"{'uncalibrated':<44} {'':>7} {metrics.ece(p, yt):>13.4f} {metrics.nll(p, yt):>7.4f} "
          f"{metrics.accuracy(p, yt):>9.4f}")
    fits = {"netuq HistogramBinning (top-label)": lambda a, b: HistogramBinning().fit(a, b),
            "netuq IsotonicRegression": lambda a, b: IsotonicRegression().fit(a, b), **_peer_fits()}
    for name, fit in fits.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            try:
                cal = fit(z, y)
            except Exception as err:  # a peer's failure is a row, not a crash
                print(f"{name:<44} failed: {type(err).__name__}: {err}")
                continue
            t = time.perf_counter() - t0
            q = torch.softmax(cal(zt).float(), 1)
        print(f"{name:<44} {t:>7.2f} {metrics.ece(q, yt):>13.4f} {metrics.nll(q, yt):>7.4f} "
              f"{metrics.accuracy(q, yt):>9.4f}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    _exact_rss_accounting()
    part1()
    part2()
