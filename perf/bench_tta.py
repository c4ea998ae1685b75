"""TTA speed and memory: netuq.TTA vs ttach (one view per call), and how both grow with H × W and views.

Cases (issue 14): "seg" = SmallUNet(1, 11, width=16) on 4 x 1 x 64 x 64, D4 (8 views);
"cls" = SmallCNN(1, 10) on 64 x 1 x 28 x 28, D4; "cls256" the same on 256 images (a test-set
batch: there netuq also splits each view's 256 rows into forwards whose largest activation stays
near the caches). Variants: ttach; netuq's default, which feeds the views in the input's layout
(the same function as ttach's forwards); netuq with the opt-in ``channels_last=True``
(netuq._layout: views fed channels-last, no check); and ttach given a channels-last input,
what the layout alone gives a user by hand (ttach's rotated views come out transposed, so half of
its forwards leave that layout). ttach gets a softmax
model and merge "mean", so both average probabilities; netuq also returns the entropy /
aleatoric / epistemic sums and votes.
The run fails (exit status 1) if netuq's mean probabilities differ from ttach's by more than 1e-5.

* Time: the headline table from ``PROCESSES`` fresh processes (median of their medians, and the
  range of their ratios: one process's placement of buffers can move identical code by 10-20%
  here); the cost curves from this process. Within a process every variant is interleaved in a
  fresh seeded order each round (a shared machine's load drifts equally on each), median of
  ``ROUNDS`` rounds after a warm-up, on one thread
  (``NETUQ_BENCH_THREADS`` to change; restored afterwards). "vs ttach" = ttach's median / netuq's.
* Peak memory: one child process runs every variant in turn with ``MALLOC_MMAP_THRESHOLD_=65536``
  (freed buffers go back to the system, so the resident size follows live memory); for each, after
  a warm-up call, the rise of the peak resident set size (VmHWM, reset through
  /proc/self/clear_refs) over the resident size before the call.
* Cost curves: the "seg" model at H × W = 32², 64², 128² (D4), and at 64² with 2, 4, 8, 16 views
  (flip; flips; D4; D4 x Add([0.1])); slope = least-squares slope of log(time or peak) against
  log(H·W or views): ~1 = linear. Memory should not grow with the views (streaming merge).

Run: ``.venv/bin/python perf/bench_tta.py`` (or ``make bench``); about 90 s on an idle machine.
"""

from __future__ import annotations

import json
import math
import os
import random
import statistics
import subprocess
import sys
import time

import torch

ROUNDS = 6
CURVE_ROUNDS = 5  # the cost curves (their slopes, not ratios near 1)
PROCESSES = 3
TOLERANCE = 1e-5
CASES = {
    "seg": "SmallUNet 4 x 1 x 64 x 64, D4",
    "cls": "SmallCNN 64 x 1 x 28 x 28, D4",
    "cls256": "SmallCNN 256 x 1 x 28 x 28, D4",
}
VARIANTS = {
    "ttach": "ttach wrapper (1 view per call)",
    "netuq": "netuq.TTA (default: views as given)",
    "netuq_cl": "netuq.TTA (opt-in channels_last=True)",
    "ttach_cl": "ttach on a channels-last input",
}
SIZES = (32, 64, 128)
_SIZE = {"seg": 64, "cls": 28, "cls256": 28}
VIEWS = (2, 4, 8, 16)


def _transforms(views: int, lib):
    """The same views in netuq (``lib`` = netuq.tta) or ttach (``lib`` = ttach)."""
    flip = lib.HorizontalFlip()
    if views == 2:
        return lib.Compose([flip])
    if views == 4:
        return lib.Compose([flip, lib.VerticalFlip()])
    rot = lib.Rotate90([0, 90, 180, 270]) if lib.__name__ == "netuq.tta" else lib.Rotate90(angles=[0, 90, 180, 270])
    if views == 8:
        return lib.Compose([flip, rot])
    return lib.Compose([flip, rot, lib.Add([0.1]) if lib.__name__ == "netuq.tta" else lib.Add(values=[0, 0.1])])


_MODELS: dict[tuple[str, int], tuple[torch.nn.Module, torch.Tensor]] = {}


def make(case: str, variant: str, size: int = 64, views: int = 8):
    """A function running one variant on one input and returning the merged probabilities."""
    import ttach

    import netuq
    from netuq._layout import to_channels_last
    from netuq.models import SmallCNN, SmallUNet

    key = (case, size)
    if key not in _MODELS:  # one model and input per case, shared by every variant (same memory)
        torch.manual_seed(0)
        if case.startswith("cls"):
            _MODELS[key] = SmallCNN(1, 10).eval(), torch.randn(256 if case == "cls256" else 64, 1, 28, 28)
        else:
            _MODELS[key] = SmallUNet(1, 11, width=16).eval(), torch.randn(4, 1, size, size)
    model, x = _MODELS[key]
    if case.startswith("cls"):
        task, wrapper = "classification", ttach.ClassificationTTAWrapper
    else:
        task, wrapper = "segmentation", ttach.SegmentationTTAWrapper
    if variant.startswith("ttach"):
        softmaxed = torch.nn.Sequential(model, torch.nn.Softmax(1))
        tta = wrapper(softmaxed, _transforms(views, ttach), merge_mode="mean")
        inp = to_channels_last(x) if variant == "ttach_cl" else x  # what a user could do by hand

        def run():
            with torch.no_grad():
                return tta(inp)

        return run
    layout = variant == "netuq_cl"
    tta = netuq.TTA(model, _transforms(views, netuq.tta), task=task, channels_last=layout)
    return lambda: tta(x).probs


def points() -> list[tuple[str, str, int, int]]:
    """Every (case, variant, size, views) measured."""
    out = main_points()
    out += [("seg", v, s, 8) for s in SIZES for v in ("ttach", "netuq")]
    out += [("seg", v, 64, k) for k in VIEWS for v in ("ttach", "netuq")]
    return list(dict.fromkeys(out))  # the main "seg" case is also a point of both curves


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def child() -> None:
    """Peak memory of every point, one JSON line each."""
    for case, variant, size, views in points():
        run = make(case, variant, size, views)
        run()  # warm-up: kernels, thread pools, oneDNN primitives
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS to the current RSS
        base = _status_kib("VmRSS")
        run()
        print(json.dumps([case, variant, size, views, (_status_kib("VmHWM") - base) / 1024]), flush=True)


def peaks() -> dict[tuple, float]:
    if not os.path.exists("/proc/self/clear_refs"):
        return {}
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    proc = subprocess.run([sys.executable, __file__, "--child"], capture_output=True, text=True, check=False, env=env)
    if proc.returncode:
        print(f"  memory measurement failed: {proc.stderr[-500:]}")
        return {}
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("[")]
    return {tuple(r[:4]): r[4] for r in rows}


def timings(keys: list[tuple], rounds: int = ROUNDS) -> dict[tuple, float]:
    """Median seconds per call, all points interleaved (a new seeded order each round)."""
    runs = {k: make(*k) for k in keys}
    for run in runs.values():
        run()
    times: dict[tuple, list[float]] = {k: [] for k in keys}
    order = list(runs)
    shuffle = random.Random(0).shuffle
    for _ in range(rounds):
        shuffle(order)  # no variant always runs right after the same other one (caches, allocator state)
        for k in order:
            start = time.perf_counter()
            runs[k]()
            times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def slope(xs, ys) -> float:
    lx, ly = [math.log(x) for x in xs], [math.log(max(y, 1e-9)) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def _mem(m: float | None) -> str:
    return "   n/a   " if m is None else f"{m:6.1f} MiB"


def main() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("NETUQ_BENCH_THREADS", "1")))
    try:
        run_all()
    finally:
        torch.set_num_threads(threads)


def merge_overhead(rounds: int = 40) -> dict[str, float]:
    """Median seconds of each library's own per-call work: the model is a stub returning fixed logits."""
    import ttach

    import netuq

    z, x = torch.randn(4, 11, 64, 64, generator=torch.Generator().manual_seed(0)), torch.zeros(4, 1, 64, 64)
    ours = netuq.TTA(lambda inp: z, _transforms(8, netuq.tta), task="segmentation")
    theirs = ttach.SegmentationTTAWrapper(lambda inp: torch.softmax(z, 1), _transforms(8, ttach), merge_mode="mean")
    runs = {"netuq": lambda: ours(x), "ttach": lambda: theirs(x)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    order, shuffle = list(runs), random.Random(1).shuffle
    for f in runs.values():
        f()
    for _ in range(rounds):
        shuffle(order)
        for k in order:
            start = time.perf_counter()
            runs[k]()
            times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


# "cls256": the default and the opt-in channels-last run (the layout rows of the other cases say the rest)
CASE_VARIANTS = {"cls256": ("ttach", "netuq", "netuq_cl")}


def variants(case: str) -> tuple[str, ...]:
    return CASE_VARIANTS.get(case, tuple(VARIANTS))


def main_points() -> list[tuple[str, str, int, int]]:
    """The headline points: every variant of every case at its default size, D4."""
    return [(case, v, _SIZE[case], 8) for case in CASES for v in variants(case)]


def timing_child() -> None:
    """The timings of one fresh process (the points in $NETUQ_BENCH_POINTS), as one JSON line."""
    keys = [tuple(k) for k in json.loads(os.environ["NETUQ_BENCH_POINTS"])]
    print(json.dumps([[*k, sec] for k, sec in timings(keys).items()]), flush=True)


def process_timings(keys, processes: int = PROCESSES, env: dict | None = None) -> list[dict[tuple, float]]:
    """The timings of ``keys`` from ``processes`` fresh processes, one after the other.

    On this kind of (virtual) machine the same code measured in two processes, or as two
    instances in one process, can differ by 10-20% for the whole process's lifetime (where its
    buffers land); a ratio from one process is only as good as that. Each process measures
    every point; the table reports the median over processes and their range.
    """
    out = []
    child_env = dict(os.environ, **(env or {}), NETUQ_BENCH_POINTS=json.dumps(keys))
    for _ in range(processes):
        proc = subprocess.run(
            [sys.executable, __file__, "--timing-child"], capture_output=True, text=True, check=False, env=child_env
        )
        if proc.returncode:
            raise RuntimeError(f"timing child failed: {proc.stderr[-800:]}")
        rows = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("[")))
        out.append({tuple(r[:4]): r[4] for r in rows})
    return out


def run_all() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); headline: {PROCESSES} processes x "
          f"{ROUNDS} rounds")
    worst = 0.0
    for case in CASES:
        ref = make(case, "ttach")()
        for v in variants(case):
            worst = max(worst, float((make(case, v)() - ref).abs().max()))
    mem = peaks()
    runs = process_timings(main_points())
    print(f"  {'case':<32} {'variant':<42} {'median':>10} {'vs ttach':>9} {'(range)':>13} {'peak mem':>10} "
          f"{'mem/ttach':>9}")
    for case, title in CASES.items():
        key = (case, "ttach", _SIZE[case], 8)
        ref_m = mem.get(key)
        for v in variants(case):
            name = VARIANTS[v]
            k = (case, v, *key[2:])
            sec = statistics.median(r[k] for r in runs)
            ratios = [r[key] / r[k] for r in runs]
            m = mem.get(k)
            rel = "   n/a" if m is None or not ref_m else f"{m / ref_m:8.2f}x"
            spread = f"({min(ratios):.2f}-{max(ratios):.2f})"
            print(f"  {title:<32} {name:<42} {sec * 1e3:8.1f} ms {statistics.median(ratios):8.2f}x {spread:>13} "
                  f"{_mem(m):>10} {rel:>9}")
    print(f"  max |p_netuq - p_ttach| = {worst:.1e} (must be <= {TOLERANCE:g})")
    print("  (vs ttach > 1: faster, median over processes of each process's ratio. The default feeds the views")
    print("   as given (the same function as ttach's forwards); the opt-in channels_last=True rows feed them")
    print("   channels-last (CPU convolutions run faster, no check), and ttach on a channels-last input shows")
    print("   what the layout alone gives by hand (ttach's rotated views leave it). In \"cls256\" netuq also splits")
    print("   each view's rows (largest activation near the caches); peak mem: rise of the peak RSS during one call)")
    stub = merge_overhead()
    print(f"  merge work alone (a stub model returning fixed 4 x 11 x 64 x 64 logits, D4): netuq "
          f"{stub['netuq'] * 1e3:.1f} ms (softmax, entropy, votes, sums), ttach {stub['ttach'] * 1e3:.1f} ms "
          f"(softmax, mean): {stub['netuq'] / stub['ttach']:.2f}x ttach's")
    t = timings([k for k in points() if k not in set(main_points()) or k[0] == "seg"], rounds=CURVE_ROUNDS)

    for axis, values in (("H x W", SIZES), ("views", VIEWS)):
        print(f"\n  cost curve over {axis} (seg, {'D4' if axis == 'H x W' else '64 x 64'}):")
        print(f"  {axis:>7} {'netuq':>10} {'ttach':>10} {'vs ttach':>9} {'netuq mem':>10} {'ttach mem':>10}")
        keys = {
            v: [("seg", v, s, 8) if axis == "H x W" else ("seg", v, 64, s) for s in values] for v in ("netuq", "ttach")
        }
        for i, s in enumerate(values):
            kn, kt = keys["netuq"][i], keys["ttach"][i]
            label = f"{s}x{s}" if axis == "H x W" else str(s)
            print(
                f"  {label:>7} {t[kn] * 1e3:7.1f} ms {t[kt] * 1e3:7.1f} ms {t[kt] / t[kn]:8.2f}x "
                f"{_mem(mem.get(kn)):>10} {_mem(mem.get(kt)):>10}"
            )
        xs = [s * s for s in values] if axis == "H x W" else list(values)
        line = f"  log-log slope over {axis}: time netuq {slope(xs, [t[k] for k in keys['netuq']]):.2f}, "
        line += f"ttach {slope(xs, [t[k] for k in keys['ttach']]):.2f}"
        if mem:
            line += f"; peak memory netuq {slope(xs, [mem[k] for k in keys['netuq']]):.2f}, "
            line += f"ttach {slope(xs, [mem[k] for k in keys['ttach']]):.2f}"
        print(line)
    if worst > TOLERANCE:
        raise SystemExit(f"netuq.TTA and ttach disagree: max |dp| = {worst:.2e} > {TOLERANCE:g}")


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1] in ("--child", "--timing-child"):
        torch.set_num_threads(int(os.environ.get("NETUQ_BENCH_THREADS", "1")))
        child() if sys.argv[1] == "--child" else timing_child()
    else:
        main()
