"""TTA speed and memory: netuq.TTA (views batched) vs ttach's SegmentationTTAWrapper (one view per call).

SmallUNet (width 16, 11 classes), batch 4 x 1 x 64 x 64, the 8 views of D4, merge "mean" (ttach
given a softmax model so both average probabilities).

* Time: all variants in this process, interleaved round-robin (so a shared machine's load drifts
  equally on each), median of 3 rounds after a warm-up, on one thread (``NETUQ_BENCH_THREADS`` to
  change; restored afterwards).
* Peak memory: each variant in its own child process, the rise of the peak resident set size
  (VmHWM, reset through /proc/self/clear_refs) over the resident size before its first call.

Run: ``.venv/bin/python benchmarks/bench_tta.py`` (or ``make bench``).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

import torch

VARIANTS = {
    "ttach": "ttach SegmentationTTAWrapper",
    "netuq": "netuq.TTA (default: all 8 views per call)",
    "netuq_mb8": "netuq.TTA (max_batch=8: 2 views per call)",
    "netuq_mb4": "netuq.TTA (max_batch=4: 1 view per call)",
}


def make(variant: str):
    """(model input, a function running the variant and returning merged probabilities)."""
    import ttach

    import netuq
    from netuq.models import SmallUNet

    torch.manual_seed(0)
    model = SmallUNet(1, 11, width=16).eval()
    x = torch.randn(4, 1, 64, 64)

    class Softmaxed(torch.nn.Module):
        def forward(self, inp):
            return model(inp).softmax(1)

    if variant == "ttach":
        wrapper = ttach.SegmentationTTAWrapper(Softmaxed(), ttach.aliases.d4_transform(), merge_mode="mean")

        def run():
            with torch.no_grad():
                return wrapper(x)
    else:
        max_batch = {"netuq": None, "netuq_mb8": 8, "netuq_mb4": 4}[variant]
        tta = netuq.TTA(model, netuq.tta.d4(), task="segmentation", max_batch=max_batch)

        def run():
            return tta(x).probs

    return model, x, run


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def child(variant: str) -> None:
    model, x, run = make(variant)
    with torch.no_grad():
        model(x[:1, :, :8, :8])  # initialise kernels and threads on a tiny input
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS to the current RSS
    base = _status_kib("VmRSS")
    run()
    print((_status_kib("VmHWM") - base) / 1024)


def peak_mib(variant: str) -> float | None:
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    proc = subprocess.run([sys.executable, __file__, "--child", variant], capture_output=True, text=True, check=False)
    if proc.returncode:
        print(f"  memory of {variant} failed: {proc.stderr[-500:]}")
        return None
    return float(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("NETUQ_BENCH_THREADS", "1")))
    try:
        run_all()
    finally:
        torch.set_num_threads(threads)


def run_all() -> None:
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
        "SmallUNet(1, 11, width=16), 4 x 1 x 64 x 64, D4 (8 views)"
    )
    runs = {v: make(v)[2] for v in VARIANTS}
    probs = {v: run() for v, run in runs.items()}  # warm-up, and the results to compare
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(3):
        for v, run in runs.items():
            start = time.perf_counter()
            run()
            times[v].append(time.perf_counter() - start)
    ref = statistics.median(times["ttach"])
    print(f"  {'variant':<44} {'median':>10} {'vs ttach':>9} {'peak mem':>10} {'max |dp|':>9}")
    for v, name in VARIANTS.items():
        t = statistics.median(times[v])
        mem = peak_mib(v)
        mem_s = "   n/a    " if mem is None else f"{mem:6.1f} MiB"
        diff = float((probs[v] - probs["ttach"]).abs().max())
        print(f"  {name:<44} {t * 1e3:8.1f} ms {ref / t:8.2f}x {mem_s:>10} {diff:9.1e}")
    print("  (vs ttach > 1: faster; peak mem: rise of the peak RSS during one call, in a child process)")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        torch.set_num_threads(int(os.environ.get("NETUQ_BENCH_THREADS", "1")))
        child(sys.argv[2])
    else:
        main()
