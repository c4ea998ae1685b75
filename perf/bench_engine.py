"""Peak memory of ``netuq.compare`` on segmentation: 30 vs 120 images of 3 x 128 x 128, 19 classes.

Each size runs in its own child process (peak RSS is per process): a tiny seeded conv segmenter,
a loader that *generates* its batches (so the data set itself is never held), labels with 5%
ignored pixels and an anomaly mask as the third element, then ``netuq.compare`` with the default
2-fold calibration protocol. Reported per size: wall time, peak RSS (``ru_maxrss``) and its growth
over the RSS just before the call (after the imports and a warm-up call on 2 images), and the
tracemalloc peak of Python objects (tracemalloc does not see torch's tensor allocations, hence RSS).
The children run with ``MALLOC_MMAP_THRESHOLD_=65536``: freed buffers go back to the system at
once, so the RSS follows live memory (with glibc's adaptive threshold the heap keeps what it
once held, and the "growth" then measures fragmentation: 1.0x-1.3x between runs).

For scale: holding the (N, C, H, W) probabilities of the whole set alone would take N x 19 x 128
x 128 x 4 bytes (37 MB for 30 images, 149 MB for 120). Target: growth ratio 120/30 about 1.0.

Environment: ``NETUQ_BENCH_QUICK=1`` uses 64 x 64 images; ``NETUQ_BENCH_THREADS`` sets torch's
intra-op threads in the children (default 1).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

QUICK = os.environ.get("NETUQ_BENCH_QUICK", "") not in ("", "0")
THREADS = int(os.environ.get("NETUQ_BENCH_THREADS", "1"))
SIZE = 64 if QUICK else 128
CLASSES, BATCH, SIZES = 19, 10, (30, 120)

CHILD = """
import json, resource, sys, time, tracemalloc
import torch
import netuq
from torch import nn

n, size, classes, batch, threads = (int(v) for v in sys.argv[1:6])
torch.set_num_threads(threads)
torch.manual_seed(0)
net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Dropout2d(0.1), nn.Conv2d(8, classes, 1)).eval()


def loader(count):
    g = torch.Generator().manual_seed(0)
    for start in range(0, count, batch):
        k = min(batch, count - start)
        x = torch.rand(k, 3, size, size, generator=g)
        y = torch.randint(0, classes, (k, size, size), generator=g)
        y[torch.rand(k, size, size, generator=g) < 0.05] = 255
        anomaly = torch.zeros(k, size, size, dtype=torch.bool)
        anomaly[:, : size // 8, : size // 8] = True
        yield x, y, anomaly


def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


netuq.compare({"net": net}, loader(2), ignore_index=255, repeats=1, calibrators=("none", "temperature"))  # warm-up
before = rss()
tracemalloc.start()
t0 = time.perf_counter()
res = netuq.compare({"net": net}, loader(n), ignore_index=255, repeats=2)
wall = time.perf_counter() - t0
py_peak = tracemalloc.get_traced_memory()[1]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
pixels = res["methods"]["net"]["counts"]["test"]
print(json.dumps({"n": n, "wall": wall, "before": before, "peak": peak, "py_peak": py_peak, "pixels": pixels}))
"""


def run(n: int) -> dict:
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.path.join(here, "..", "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS=str(THREADS), MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, "-c", CHILD, str(n), str(SIZE), str(CLASSES), str(BATCH), str(THREADS)],
                         capture_output=True, text=True, env=env, timeout=600)
    if out.returncode:
        raise RuntimeError(f"child for {n} images failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    start = time.perf_counter()
    rows = [run(n) for n in SIZES]
    mb = 2.0**20
    print(f"netuq.compare, segmentation: {CLASSES} classes, 3 x {SIZE} x {SIZE} images, batches of {BATCH}, "
          f"{THREADS} thread(s); one child process per size")
    print(f"{'images':>7} {'pixels':>11} {'wall s':>8} {'peak RSS MB':>12} {'growth MB':>10} {'py peak MB':>11} "
          f"{'(N,C,H,W) probs MB':>19}")
    for r in rows:
        held = r["n"] * CLASSES * SIZE * SIZE * 4 / mb
        print(f"{r['n']:>7} {r['pixels']:>11} {r['wall']:>8.1f} {r['peak'] / mb:>12.0f} "
              f"{(r['peak'] - r['before']) / mb:>10.0f} {r['py_peak'] / mb:>11.1f} {held:>19.0f}")
    a, b = rows
    growth_a, growth_b = max(a["peak"] - a["before"], 1), max(b["peak"] - b["before"], 1)
    print(f"ratio {b['n']}/{a['n']} images: peak RSS {b['peak'] / a['peak']:.2f}, growth {growth_b / growth_a:.2f}, "
          f"python peak {b['py_peak'] / max(a['py_peak'], 1):.2f} (target about 1.0; data grew "
          f"{b['n'] / a['n']:.0f}x)")
    print(f"total {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
