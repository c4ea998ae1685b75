"""Calibration fits: speed and exactness of netuq against a plain LBFGS baseline and peers.

Part 1, temperature scaling on N = 10,000 x C = 1,000 float32 logits (overconfident, ~75 %
accuracy, seeded): fit time, passes over the logits (forward evaluations), fitted T, final NLL
and its gap to an independent float64 solve (scipy.optimize.minimize_scalar on β = 1/T).
Compared: netuq.TemperatureScaling; a gpleiss/temperature_scaling-style baseline (torch LBFGS,
lr = 0.01, max_iter = 50 on T, start 1.5); netcal's TemperatureScaling and TorchUncertainty's
TemperatureScaler when importable.

Part 2, vector and matrix scaling on N = 6,000 x C = 100 (+ a held-out set of the same size
from the same generator): fit time, train NLL, held-out NLL for netuq (unregularised, ODIR
"auto") and the peers when importable.

Part 3, cost curves of temperature scaling: fit time and peak memory above the logits for four
values of N (C = 100) and four of C (N = 20,000), each with its fitted log-log slope, so a change
in how the fit scales shows as a number (slope 1 = linear; the fit is a few passes over N·C).

Run: ``.venv/bin/python perf/bench_calibration.py`` (or ``make bench``).
"""

from __future__ import annotations

import gc
import math
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from netuq.calibration import MatrixScaling, TemperatureScaling, VectorScaling


def make_logits(n: int, c: int, *, seed: int, scale: float):
    """Seeded overconfident logits with ~75 % accuracy.

    Uniform labels; latent scores N(0, 1) plus a margin on the true class (tuned per C for ~75 %
    top-1 accuracy); the logits are ``scale`` times the scores, so the fitted temperature is > 1
    when ``scale`` exceeds the scores' own well-calibrated scale.
    """
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, c, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    # Offset m chosen so that P(z_y > max_{c != y} z_c) ~ accuracy for Gaussian noise.
    m = {1000: 3.9, 100: 3.05}.get(c, 3.0)  # margin for ~75 % accuracy
    base[torch.arange(n), y] += m
    return (scale * base).contiguous(), y


def nll_at(z64: torch.Tensor, y: torch.Tensor, t: float) -> float:
    return float(F.cross_entropy(z64 / t, y))


def reference_temperature(z: torch.Tensor, y: torch.Tensor):
    """Independent float64 solve: scipy bounded Brent on β, chunked float64 NLL."""
    from scipy.optimize import minimize_scalar

    z64 = z.double()
    zy = z64.gather(1, y[:, None]).squeeze(1)
    rows = 2048

    def f(beta):  # chunked float64 NLL(β) = mean(logsumexp(β z) − β z_y)
        total = 0.0
        for s in range(0, len(y), rows):
            total += float((torch.logsumexp(beta * z64[s : s + rows], 1) - beta * zy[s : s + rows]).sum())
        return total / len(y)

    res = minimize_scalar(f, bounds=(1e-2, 10.0), method="bounded", options={"xatol": 1e-9, "maxiter": 500})
    return 1.0 / res.x, res.fun, z64, res.nfev


def baseline_lbfgs(z: torch.Tensor, y: torch.Tensor):
    """gpleiss/temperature_scaling: nn.Parameter T = 1.5, LBFGS(lr=0.01, max_iter=50), CE(z / T)."""
    t = torch.nn.Parameter(torch.ones(1) * 1.5)
    opt = torch.optim.LBFGS([t], lr=0.01, max_iter=50)
    evals = 0

    def closure():
        nonlocal evals
        evals += 1
        opt.zero_grad()
        loss = F.cross_entropy(z / t, y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(t.detach()), evals


def netcal_ts(z: torch.Tensor, y: torch.Tensor):
    """netcal 1.x: fits w in softmax(w · log p) with scipy.optimize.minimize (numerical gradients)."""
    import sys

    from netcal.scaling import TemperatureScaling as NC

    alr = sys.modules["netcal.scaling.AbstractLogisticRegression"]  # the module (its class shadows the name)

    probs = torch.softmax(z.double(), 1).numpy()  # netcal takes probabilities; float64 (float32 stalls)
    model = NC(detection=False, use_cuda=False)
    evals, minimize = 0, alr.minimize

    def counting_minimize(fun, *args, **kwargs):
        def counted(*a):
            nonlocal evals
            evals += 1
            return fun(*a)

        return minimize(counted, *args, **kwargs)

    alr.minimize = counting_minimize
    try:
        model.fit(probs, y.numpy(), tensorboard=False)
    finally:
        alr.minimize = minimize
    w = float(np.asarray(model.weights).reshape(-1)[0])  # multiplies log p, i.e. 1 / T on the logits
    return 1.0 / w, evals


def tu_ts(z: torch.Tensor, y: torch.Tensor):
    """TorchUncertainty (API as documented for 0.x; not exercised here: it needs torchvision)."""
    from torch.utils.data import DataLoader, TensorDataset
    from torch_uncertainty.post_processing import TemperatureScaler

    scaler = TemperatureScaler(model=torch.nn.Identity())
    scaler.fit(DataLoader(TensorDataset(z, y), batch_size=len(y)))
    return float(scaler.temperature[0]), None


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def part1() -> None:
    n, c = 10_000, 1_000
    z, y = make_logits(n, c, seed=0, scale=8.0)
    acc = float((z.argmax(1) == y).float().mean())
    print(f"temperature scaling, N = {n:,}, C = {c:,} float32, accuracy {acc:.3f}")
    (t_ref, f_ref, z64, nfev), t_scipy = timed(reference_temperature, z, y)
    print(
        f"reference (scipy minimize_scalar bounded on beta, float64, xatol 1e-9): T = {t_ref:.8f}, "
        f"NLL = {f_ref:.10f} ({nfev} evaluations, {t_scipy:.1f} s)"
    )
    rows = []
    TemperatureScaling().fit(z[:100], y[:100])  # warm-up (first-call overheads)
    ts, secs = timed(lambda: TemperatureScaling().fit(z, y))
    rows.append(("netuq TemperatureScaling", secs, ts.n_passes_ + 1, ts.temperature_))
    (t_b, evals), secs = timed(baseline_lbfgs, z, y)
    rows.append(("LBFGS lr=0.01 max_iter=50 (gpleiss)", secs, evals, t_b))
    for name, fn in (("netcal TemperatureScaling", netcal_ts), ("TorchUncertainty TemperatureScaler", tu_ts)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                (t_p, evals), secs = timed(fn, z, y)
            rows.append((name, secs, evals, t_p))
        except ImportError as err:
            print(f"{name}: skipped: not installed ({type(err).__name__}: {err})")
        except Exception as err:  # a peer's API change must not hide the other figures
            print(f"{name}: failed: {type(err).__name__}: {err}")
    print(f"{'method':<38}{'time s':>8}{'passes':>8}{'T':>12}{'NLL':>14}{'NLL gap':>10}{'time x':>8}")
    base_time = rows[0][1]
    for name, secs, passes, t in rows:
        f = nll_at(z64, y, t) if math.isfinite(t) and t > 0 else float("nan")
        p = "-" if passes is None else str(passes)
        print(f"{name:<38}{secs:>8.3f}{p:>8}{t:>12.6f}{f:>14.8f}{f - f_ref:>10.1e}{secs / base_time:>8.1f}")
    print("passes: evaluations of NLL (+ derivatives) over all logits; netuq adds 1 for centring the logits")


def part2() -> None:
    n, c = 6_000, 100
    z, y = make_logits(2 * n, c, seed=1, scale=6.0)
    ztr, ytr, zte, yte = z[:n], y[:n], z[n:], y[n:]
    print(
        f"\nvector / matrix scaling, N = {n:,} train + {n:,} held-out, C = {c} float32, "
        f"accuracy {float((zte.argmax(1) == yte).float().mean()):.3f}"
    )
    rows = [("uncalibrated", 0.0, float(F.cross_entropy(ztr, ytr)), float(F.cross_entropy(zte, yte)))]
    MatrixScaling().fit(ztr[:50, :5], ytr[:50] % 5)  # warm-up: first use of torch.optim imports torch._dynamo

    def run(name, make):
        cal, secs = timed(lambda: make().fit(ztr, ytr))
        rows.append((name, secs, float(F.cross_entropy(cal(ztr), ytr)), float(F.cross_entropy(cal(zte), yte))))
        return cal

    run("netuq TemperatureScaling", TemperatureScaling)
    run("netuq VectorScaling (unregularised)", lambda: VectorScaling(l2=None))
    run("netuq VectorScaling (L2 auto, default)", VectorScaling)
    run("netuq MatrixScaling (unregularised)", lambda: MatrixScaling(odir=None))
    ms = run("netuq MatrixScaling (ODIR auto, default)", MatrixScaling)
    print(
        f"ODIR auto chose (lambda, mu) = {ms.odir_}; inner-CV NLL per grid point: "
        + ", ".join(f"{k[0]:g}: {v:.4f}" for k, v in ms.odir_scores_.items())
    )
    try:
        from torch_uncertainty.post_processing import MatrixScaler, VectorScaler  # noqa: F401
    except ImportError as err:
        print(f"TorchUncertainty vector/matrix scalers: skipped: not installed ({type(err).__name__})")
    try:
        from netcal.scaling import LogisticCalibration  # noqa: F401

        print(
            "netcal LogisticCalibration: not run: it fits with scipy.optimize.minimize without gradients "
            f"(finite differences over {2 * c} or {c * c + c} parameters per step), far beyond this time budget"
        )
    except ImportError:
        print("netcal: skipped: not installed")
    print(f"{'method':<42}{'time s':>8}{'train NLL':>12}{'held-out NLL':>14}")
    for name, secs, tr, te in rows:
        print(f"{name:<42}{secs:>8.3f}{tr:>12.5f}{te:>14.5f}")
    by = {r[0]: r for r in rows}
    m, o = by["netuq MatrixScaling (unregularised)"], by["netuq MatrixScaling (ODIR auto, default)"]
    print(
        f"held-out NLL, ODIR / unregularised matrix: {o[3] / m[3]:.3f}; train NLL gap (overfit) unregularised: "
        f"{m[3] - m[2]:.4f}, ODIR: {o[3] - o[2]:.4f}"
    )


def _exact_rss_accounting() -> None:
    """glibc only: serve every allocation >= 128 KiB by mmap and return it on free, so that a
    buffer the fit allocates always shows in the peak RSS instead of reusing freed heap."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD (fixes it: no dynamic growth)
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _peak_rss_reset() -> int | None:
    """Reset the process's peak RSS (Linux /proc/self/clear_refs) and return the current RSS in bytes."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _status_kib("VmRSS") * 1024
    except OSError:
        return None


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise OSError(key)


def _measure(n: int, c: int, repeats: int = 3) -> tuple[float, float | None]:
    """(median fit seconds, peak extra MiB above the logits) of TemperatureScaling on n x c float32 logits."""
    z, y = make_logits(n, c, seed=2, scale=4.0)
    times, peaks = [], []
    for _ in range(repeats):
        gc.collect()
        before = _peak_rss_reset()
        t0 = time.perf_counter()
        TemperatureScaling().fit(z, y)
        times.append(time.perf_counter() - t0)
        if before is not None:
            peaks.append((_status_kib("VmHWM") * 1024 - before) / 2**20)
    return float(np.median(times)), (float(np.median(peaks)) if peaks else None)


def part3() -> None:
    """Cost curves of temperature scaling: time and peak memory against N and C, with log-log slopes."""
    _exact_rss_accounting()
    print("\ntemperature scaling cost curves (float32 logits, median of 3 fits; memory: peak RSS above the logits)")
    for label, points in (("N", [(n, 100) for n in (12_500, 25_000, 50_000, 100_000)]),
                          ("C", [(20_000, c) for c in (50, 100, 200, 400)])):
        xs, ts, ms = [], [], []
        print(f"{label:>8}{'time ms':>10}{'peak MiB':>10}{'logits MiB':>12}")
        for n, c in points:
            secs, mib = _measure(n, c)
            xs.append(n if label == "N" else c)
            ts.append(secs)
            ms.append(mib)
            peak = "n/a" if mib is None else f"{mib:.1f}"
            print(f"{xs[-1]:>8}{secs * 1e3:>10.1f}{peak:>10}{n * c * 4 / 2**20:>12.1f}")
        slope_t = np.polyfit(np.log(xs), np.log(ts), 1)[0]
        good = [(x, m) for x, m in zip(xs, ms) if m is not None and m > 0]
        slope_m = math.nan
        if len(good) > 1:
            slope_m = np.polyfit(np.log([g[0] for g in good]), np.log([g[1] for g in good]), 1)[0]
        print(f"log-log slope in {label}: time {slope_t:.2f}, peak memory {slope_m:.2f} (1.0 = linear)")


if __name__ == "__main__":
    import os
    import subprocess
    import sys

    # Default 1 thread: on a small shared machine OpenMP threads fighting other processes slow every
    # method down many-fold; set NETUQ_BENCH_THREADS to measure with more.
    torch.set_num_threads(int(os.environ.get("NETUQ_BENCH_THREADS", "1")))
    if sys.argv[1:] != ["--curves"]:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    torch.manual_seed(0)
    start = time.perf_counter()
    if sys.argv[1:] == ["--curves"]:
        part3()
        sys.exit(0)
    part1()
    part2()
    # The cost curves run in a fresh process: peak RSS only sees the fit's buffers when the heap
    # has not been grown (and left holding freed memory) by the parts above.
    sys.stdout.flush()
    subprocess.run([sys.executable, __file__, "--curves"], check=True)
    print(f"\ntotal {time.perf_counter() - start:.1f} s")
