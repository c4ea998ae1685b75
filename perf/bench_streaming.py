"""Streaming ECE + NLL + Brier on segmentation-sized data: netuq vs torchmetrics, time, memory, exactness.

6 batches of (4, 19, 512, 512) probabilities (softmax of seeded, over-confident synthetic logits)
with labels (5% = ignore_index 255): about 6M valid pixels (``NETUQ_BENCH_BATCHES=20``: 21M, the
size of the earlier README figures, a few minutes). Every library runs in its own child
process (so peak-memory figures don't mix) on the same batches, regenerated there from the same
seeded generator, and only the metric calls are timed:

* netuq ``UncertaintyMetrics`` (accuracy, NLL, Brier, ECE, MCE, reliability bins, fine histogram);
* netuq ``CalibrationError`` (ECE only, the like-for-like comparison);
* torchmetrics ``MulticlassCalibrationError(num_classes=19, n_bins=15, norm="l1", ignore_index=255)``;
* the exact reference: ``netuq.metrics.ece`` (float64 sums) on all valid pixels at once, NLL and
  Brier from the functional metrics per batch (exact: they are means) and, in quick runs or with
  ``NETUQ_BENCH_APPROX=1`` (about a minute more), the exact adaptive ECE, misclassification AUROC
  and AURC against which the fine-histogram approximations are checked.

Memory: the bytes of the metric's state tensors after the loop (what grows with the data), the
process RSS held after compute() relative to just before the first update, and "peak +MiB": the
largest extra resident memory *during* one update or compute() call (the peak RSS is reset before
each call through ``/proc/self/clear_refs`` and read back as ``VmHWM``; the children run with a
fixed glibc mmap threshold, so freed tensor buffers go back to the OS and cannot hide a peak in
already-resident heap). The old figure, the growth of the process-lifetime ``ru_maxrss``, read 0:
generating a batch already set a higher peak than any metric call. tracemalloc is not used: it
does not see torch's tensor allocations. Outside Linux the peak falls back to ``ru_maxrss``.

Cost curves (the last table): CPU time and peak extra memory of one ``update`` of each netuq metric
as the pixels per batch (N·H·W) grow at C = 19, and as C grows at a fixed pixel count, with the
fitted log-log slope (time ~ pixels^slope: 1 is linear; a memory slope near 0 means the
temporaries are bounded by the chunking, not by the batch).

Environment: ``NETUQ_BENCH_QUICK=1`` runs 4 batches of (2, 19, 256, 256) and smaller curves;
``NETUQ_BENCH_CURVES_ONLY=1`` prints only the cost curves; ``NETUQ_BENCH_THREADS`` sets torch's
intra-op threads in the children (default 1: stable figures on a shared machine).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

QUICK = os.environ.get("NETUQ_BENCH_QUICK", "") not in ("", "0")
THREADS = int(os.environ.get("NETUQ_BENCH_THREADS", "1"))
# Exact adaptive ECE / AUROC / AURC sort all pixels (~1 min at full size): quick runs, or on request.
EXACT_APPROX = QUICK or os.environ.get("NETUQ_BENCH_APPROX", "") not in ("", "0")
CURVES_ONLY = os.environ.get("NETUQ_BENCH_CURVES_ONLY", "") not in ("", "0")
# Cost curves: pixels per batch at C = 19, and classes at a fixed pixel count.
CURVE_PIXELS = (2**14, 2**16, 2**18) if QUICK else (2**15, 2**17, 2**19, 2**21)
CURVE_CLASSES = (4, 19, 76) if QUICK else (4, 16, 64, 256)
CURVE_C_PIXELS = 2**15 if QUICK else 2**17
BATCHES, SHAPE = (4, (2, 19, 256, 256)) if QUICK else (6, (4, 19, 512, 512))
BATCHES = int(os.environ.get("NETUQ_BENCH_BATCHES", BATCHES))  # 6 keeps the default run under a minute
IGNORE, IGNORE_FRAC, SEED = 255, 0.05, 0
N_BINS = 15


def make_batch(g):
    """One seeded synthetic segmentation batch: over-confident softmax outputs and labels."""
    import torch

    N, C, H, W = SHAPE
    labels = torch.randint(0, C, (N, H, W), generator=g)
    logits = torch.randn(N, C, H, W, generator=g)
    # The "network" favours the true class on ~85% of pixels and a random class elsewhere, and is
    # over-confident (logits x 2.5): accuracy ~0.83, mean confidence ~0.94, ECE ~0.11.
    right = torch.rand(N, H, W, generator=g) < 0.85
    guess = torch.where(right, labels, torch.randint(0, C, (N, H, W), generator=g))
    logits.scatter_add_(1, guess.unsqueeze(1), torch.full((N, 1, H, W), 4.0))
    probs = logits.mul_(2.5).softmax(1)
    labels[torch.rand(N, H, W, generator=g) < IGNORE_FRAC] = IGNORE
    return probs, labels


def batches():
    """The BATCHES batches, generated one at a time from the same seed in every child."""
    import torch

    g = torch.Generator().manual_seed(SEED)
    for _ in range(BATCHES):
        yield make_batch(g)


def _rss_mib() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux
        return float("nan")


def _peak_mib() -> float:
    """Peak RSS since the last :func:`_reset_peak` (VmHWM), or the process-lifetime ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _reset_peak() -> None:
    """Reset the peak RSS to the current RSS (Linux >= 4.0); a no-op elsewhere."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _measured(fn):
    """Run ``fn()``; return (its result, wall seconds, cpu seconds, peak extra resident MiB during it)."""
    _reset_peak()
    rss = _rss_mib()
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    return out, wall, cpu, max(0.0, _peak_mib() - rss)


def _state_mib(metric) -> float:
    import torch

    total = 0
    for value in metric.metric_state.values():
        for t in value if isinstance(value, list) else [value]:
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total / 2**20


def child(name: str) -> dict:
    """Run one library over all batches; return timings, memory and results."""
    import torch

    if name == "exact":
        torch.set_num_threads(os.cpu_count() or 1)  # not timed against anything
        return exact()
    if name == "curves":
        return curves()
    torch.set_num_threads(THREADS)
    if name == "torchmetrics":
        from torchmetrics.classification import MulticlassCalibrationError

        metric = MulticlassCalibrationError(num_classes=SHAPE[1], n_bins=N_BINS, norm="l1", ignore_index=IGNORE)
    elif name == "netuq-um":
        from netuq.metrics import UncertaintyMetrics

        metric = UncertaintyMetrics(SHAPE[1], n_bins=N_BINS, ignore_index=IGNORE)
    else:
        from netuq.metrics import CalibrationError

        metric = CalibrationError(n_bins=N_BINS, ignore_index=IGNORE)
    update_s = update_cpu = peak = 0.0
    g = torch.Generator().manual_seed(SEED)
    rss0 = None
    for _ in range(BATCHES):
        probs = labels = None  # free the previous batch before making the next one
        probs, labels = make_batch(g)
        if rss0 is None:  # baseline: one batch in memory, as at the end
            rss0 = _rss_mib()
        _, wall, cpu, extra = _measured(lambda: metric.update(probs, labels))  # noqa: B023 (called at once)
        update_s, update_cpu, peak = update_s + wall, update_cpu + cpu, max(peak, extra)
    state = _state_mib(metric)
    out, compute_s, compute_cpu, extra = _measured(metric.compute)
    result = {
        "update_s": update_s,
        "compute_s": compute_s,
        "cpu_s": update_cpu + compute_cpu,
        "state_mib": state,
        "rss_growth_mib": _rss_mib() - rss0,
        "peak_growth_mib": max(peak, extra),
    }
    if isinstance(out, dict):  # compute() returns 0-dim tensors
        keep = ("ece", "nll", "brier", "accuracy", "n", "adaptive_ece", "misclassification_auroc", "aurc")
        result.update({k: float(out[k]) for k in keep})
        result.update({k: float(out[k]) for k in out if k.endswith("_error_bound")})
    else:
        result["ece"] = float(out)
    return result


def curves() -> dict:
    """Time and peak extra memory of one update of each netuq metric over a grid of sizes."""
    import torch

    from netuq.metrics import CalibrationError, UncertaintyMetrics

    torch.set_num_threads(THREADS)
    g = torch.Generator().manual_seed(SEED)
    rows = []
    grid = [("pixels", p, 19) for p in CURVE_PIXELS] + [("classes", CURVE_C_PIXELS, c) for c in CURVE_CLASSES]
    for axis, pixels, C in grid:
        probs = labels = None  # free the previous batch first
        side = 256 if pixels >= 2**16 else 64
        shape = (max(1, pixels // side**2), C, side, side)  # (N, C, H, W) with N·H·W = pixels
        probs = (torch.randn(shape, generator=g) * 3).softmax(1)
        labels = torch.randint(0, C, shape[:1] + shape[2:], generator=g)
        row = {"axis": axis, "pixels": labels.numel(), "C": C}
        for name, make in (("um", lambda: UncertaintyMetrics(C, ignore_index=255)),  # noqa: B023
                           ("ce", lambda: CalibrationError(ignore_index=255))):
            metric = make()
            metric.update(probs, labels)  # warm-up (lookup tables, allocator)
            reps = 5 if labels.numel() <= 2**17 else 2
            times, peaks = [], []
            for _ in range(reps):
                _, _, cpu, extra = _measured(lambda: metric.update(probs, labels))  # noqa: B023
                times.append(cpu)
                peaks.append(extra)
            # CPU time of the (single-threaded by default) call: unlike wall time it does not count the
            # time other processes hold the cores, so the curve's shape survives a shared machine.
            row[f"{name}_s"] = min(times)
            row[f"{name}_peak_mib"] = max(peaks)
        rows.append(row)
    return {"rows": rows}


def _slope(xs, ys) -> float:
    """Least-squares slope of log y against log x (NaN with fewer than two positive points)."""
    import math

    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y > 0]
    if len(pts) < 2:
        return float("nan")
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    den = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / den


def print_curves(res: dict) -> None:
    rows = res["rows"]
    print("\ncost curves (one update; best-of-reps CPU time, peak extra resident memory during the call):")
    head = f"{'axis':8s} {'pixels':>9s} {'C':>4s} {'input MiB':>9s} {'UM cpu ms':>9s} {'UM peak MiB':>11s} " \
           f"{'CE cpu ms':>9s} {'CE peak MiB':>11s}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['axis']:8s} {r['pixels']:9d} {r['C']:4d} {r['pixels'] * r['C'] * 4 / 2**20:9.1f} "
              f"{r['um_s'] * 1e3:9.2f} {r['um_peak_mib']:11.1f} {r['ce_s'] * 1e3:9.2f} {r['ce_peak_mib']:11.1f}")
    for axis, var in (("pixels", "pixels"), ("classes", "C")):
        sel = [r for r in rows if r["axis"] == axis]
        xs = [r[var] for r in sel]
        parts = []
        for name in ("um", "ce"):
            t = _slope(xs, [r[f"{name}_s"] for r in sel])
            peaks = [max(r[f"{name}_peak_mib"], 0.1) for r in sel]  # 0.1 MiB: below the RSS resolution
            m, tail = _slope(xs, peaks), _slope(xs[-2:], peaks[-2:])
            parts.append(f"{name.upper()} time x^{t:.2f}, peak memory x^{m:.2f} (last two points x^{tail:.2f})")
        print(f"  log-log slope vs {var:6s}: " + "; ".join(parts))


def exact() -> dict:
    """Float64 reference over all valid pixels with the functional metrics."""
    import torch

    from netuq import metrics

    N, C, H, W = SHAPE
    all_probs = torch.empty(BATCHES * N * H * W, C)  # valid pixels, class last
    all_labels = torch.empty(BATCHES * N * H * W, dtype=torch.int64)
    m = 0
    nll_sum = brier_sum = 0.0
    t = time.perf_counter()
    for probs, labels in batches():
        keep = labels != IGNORE
        k = int(keep.sum())
        kw = {"ignore_index": IGNORE, "validate_args": False}
        nll_sum += metrics.nll(probs, labels, **kw) * k  # the mean over the batch, times its size
        brier_sum += metrics.brier(probs, labels, **kw) * k
        all_probs[m : m + k] = probs.movedim(1, -1)[keep]
        all_labels[m : m + k] = labels[keep]
        m += k
    probs, labels = all_probs[:m], all_labels[:m]
    out = {
        "n": m,
        "ece": metrics.ece(probs, labels, n_bins=N_BINS, validate_args=False),
        "nll": nll_sum / m,
        "brier": brier_sum / m,
        "accuracy": metrics.accuracy(probs, labels, validate_args=False),
    }
    if EXACT_APPROX:
        conf, pred = probs.max(1)
        correct = pred == labels
        out["adaptive_ece"] = metrics.adaptive_ece(probs, labels, n_bins=N_BINS, validate_args=False)
        out["misclassification_auroc"] = metrics.auroc(conf[correct], conf[~correct])
        out["aurc"] = metrics.aurc(probs, labels, validate_args=False)
    out["total_s"] = time.perf_counter() - t
    return out


def run_child(name: str) -> dict:
    # A fixed mmap threshold: large tensor buffers are mmapped and unmapped on free, so the resident
    # set follows the live tensors and a peak cannot hide in heap pages kept from an earlier batch.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 20)}
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", name], capture_output=True, text=True, check=False,
        env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child {name!r} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    N, C, H, W = SHAPE
    if CURVES_ONLY:
        print_curves(run_child("curves"))
        return
    print(
        f"streaming ECE+NLL+Brier: {BATCHES} batches of ({N}, {C}, {H}, {W}) float32 probabilities, "
        f"{IGNORE_FRAC:.0%} ignore_index={IGNORE}; torch threads per child: {THREADS}"
        + (" [QUICK]" if QUICK else ""),
        flush=True,
    )
    names = {
        "netuq-um": "netuq UncertaintyMetrics",
        "netuq-ce": "netuq CalibrationError",
        "torchmetrics": "torchmetrics MulticlassCalibrationError",
    }
    res = {}
    for key in (*names, "exact"):
        start = time.perf_counter()
        res[key] = run_child(key)
        print(f"  {key}: done in {time.perf_counter() - start:.1f} s (incl. start-up and data generation)", flush=True)
    ex = res["exact"]
    print(f"\nvalid pixels: {ex['n']:,}; exact ECE (float64, netuq.metrics.ece on all pixels): {ex['ece']:.6f}")
    head = (
        f"{'library':42s} {'update s':>9s} {'compute s':>9s} {'total s':>8s} {'cpu s':>7s} {'state KiB':>10s} "
        f"{'RSS held MiB':>12s} {'peak +MiB':>10s} {'ECE':>9s} {'|ECE-exact|':>12s}"
    )
    print(head)
    print("-" * len(head))
    for key, label in names.items():
        r = res[key]
        total = r["update_s"] + r["compute_s"]
        print(
            f"{label:42s} {r['update_s']:9.2f} {r['compute_s']:9.2f} {total:8.2f} {r['cpu_s']:7.2f} "
            f"{r['state_mib'] * 2**10:10.1f} {r['rss_growth_mib']:12.1f} {r['peak_growth_mib']:10.1f} "
            f"{r['ece']:9.6f} {abs(r['ece'] - ex['ece']):12.2e}"
        )
    tm = res["torchmetrics"]
    tm_total = tm["update_s"] + tm["compute_s"]
    print("\nratios (torchmetrics / netuq; > 1 means netuq is faster or smaller):")
    for key in ("netuq-um", "netuq-ce"):
        r = res[key]
        total = r["update_s"] + r["compute_s"]
        print(
            f"  {names[key]:26s} speed x{tm_total / total:5.2f} (cpu x{tm['cpu_s'] / r['cpu_s']:5.2f}); "
            f"state memory netuq/torchmetrics = {r['state_mib'] / tm['state_mib']:.2e} "
            f"({r['state_mib'] * 2**10:.1f} KiB vs {tm['state_mib']:.1f} MiB); "
            f"peak growth {r['peak_growth_mib']:.1f} vs {tm['peak_growth_mib']:.1f} MiB"
        )
    um = res["netuq-um"]
    print("\nnetuq UncertaintyMetrics vs the exact functional values:")
    for key in ("accuracy", "nll", "brier", "ece"):
        print(f"  {key:24s} streaming {um[key]:.10f}  exact {ex[key]:.10f}  |diff| {abs(um[key] - ex[key]):.1e}")
    for key in ("adaptive_ece", "misclassification_auroc", "aurc"):
        bound = um[f"{key}_error_bound"]
        if key not in ex:
            print(f"  {key:24s} fine-hist {um[key]:.10f}  (bound {bound:.1e}; NETUQ_BENCH_APPROX=1 for exact)")
            continue
        err = abs(um[key] - ex[key])
        print(
            f"  {key:24s} fine-hist {um[key]:.10f}  exact {ex[key]:.10f}  |diff| {err:.1e} "
            f"(guaranteed bound {bound:.1e}{', OK' if err <= bound + 1e-12 else ', VIOLATED'})"
        )
    print(f"  (exact reference took {ex['total_s']:.1f} s and ~{ex['n'] * C * 4 / 2**30:.1f} GiB of probabilities)")
    start = time.perf_counter()
    curve = run_child("curves")
    print_curves(curve)
    print(f"  (cost curves took {time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2])))
    else:
        main()
