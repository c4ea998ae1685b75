"""Training throughput: ``netuq.training.fit`` vs a plain PyTorch loop on the same model and data.

SmallCNN(1, 10, width=8) on random 28x28 images (N = 512, batch 64, Adam, 2 epochs per run):

1. without validation: ``fit(model, (x, y))`` vs the textbook loop (shuffled index slicing,
   ``zero_grad / backward / step``) and vs the same loop over ``DataLoader(TensorDataset)``; and
   the opt-in ``fit(..., channels_last=True)`` (batches channels-last, no check, see
   netuq._layout: no gain at this width 8, ~1.4x at width 16);
2. with validation every epoch (256 held-out images) and the best epoch's weights kept:
   ``fit(model, (x, y), val_data=...)`` vs the plain loop plus an eval pass and a
   ``state_dict`` copy when the validation loss improves.

Every variant starts from the same initial weights; runs are interleaved and repeated. The table
shows images / s from the fastest run of each (the run least disturbed by other load; the
median beside it) and from the median process CPU time, and the ratio fit / plain on the
fastest runs (target >= 0.9, i.e. fit within 10% of the plain loop). The script exits with an
error when the ratio is below ``NETUQ_BENCH_MIN_RATIO`` (default 0.9; timing on a loaded
machine is noisy: set it lower there).

Run: ``.venv/bin/python perf/bench_training.py`` (about 20 s on 2 idle cores).
"""

from __future__ import annotations

import copy
import os
import random
import statistics
import sys
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from netuq.models import SmallCNN
from netuq.training import fit

THREADS = int(os.environ.get("NETUQ_BENCH_THREADS", "2"))
N, N_VAL, BATCH, EPOCHS, REPEATS, WIDTH = 512, 256, 64, 2, 7, 8
LR = 1e-3
MIN_RATIO = float(os.environ.get("NETUQ_BENCH_MIN_RATIO", "0.9"))


def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(N + N_VAL, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (N + N_VAL,), generator=g)
    return x[:N], y[:N], x[N:], y[N:]


def plain_loop(model, x, y, *, val=None, loader=False) -> None:
    """What a user writes by hand: Adam, shuffled batches, optional validation + best-weights copy."""
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(0)
    batches = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True, generator=gen) if loader else None
    best, best_state = float("inf"), None
    for _ in range(EPOCHS):
        model.train()
        if batches is None:
            order = torch.randperm(len(x), generator=gen)
            it = ((x[i], y[i]) for i in (order[s : s + BATCH] for s in range(0, len(x), BATCH)))
        else:
            it = iter(batches)
        for xb, yb in it:
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
        if val is not None:
            model.eval()
            with torch.no_grad():
                total = sum(
                    float(nn.functional.cross_entropy(model(val[0][s : s + BATCH]), val[1][s : s + BATCH]))
                    * len(val[1][s : s + BATCH])
                    for s in range(0, len(val[1]), BATCH)
                )
            if total / len(val[1]) < best:
                best, best_state = total / len(val[1]), copy.deepcopy(model.state_dict())
    if best_state is not None:
        model.load_state_dict(best_state)


def interleaved(fns: dict, repeats: int = REPEATS) -> dict[str, tuple[float, float, float]]:
    """(fastest, median) wall seconds and median CPU seconds per call of each function, calls
    interleaved so that load drift hits all alike."""
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()  # warm-up
    order, shuffle = list(fns), random.Random(0).shuffle
    for _ in range(repeats):
        shuffle(order)  # a new seeded order each round: no variant always runs first or after another
        for name in order:
            fn = fns[name]
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {k: (min(wall[k]), statistics.median(wall[k]), statistics.median(cpu[k])) for k in fns}


def main() -> None:
    torch.set_num_threads(THREADS)
    x, y, xv, yv = data()
    torch.manual_seed(0)
    init = SmallCNN(1, 10, width=WIDTH).state_dict()

    def fresh() -> nn.Module:
        model = SmallCNN(1, 10, width=WIDTH)
        model.load_state_dict(init)
        return model

    cases = {
        "no validation": {
            "fit": lambda: fit(fresh(), (x, y), epochs=EPOCHS, batch_size=BATCH, lr=LR, seed=0),
            "fit (channels_last=True)": lambda: fit(
                fresh(), (x, y), epochs=EPOCHS, batch_size=BATCH, lr=LR, seed=0, channels_last=True
            ),
            "plain loop (slicing)": lambda: plain_loop(fresh(), x, y),
            "plain loop (DataLoader)": lambda: plain_loop(fresh(), x, y, loader=True),
        },
        "validation every epoch": {
            "fit": lambda: fit(fresh(), (x, y), val_data=(xv, yv), epochs=EPOCHS, batch_size=BATCH, lr=LR, seed=0),
            "plain loop (slicing)": lambda: plain_loop(fresh(), x, y, val=(xv, yv)),
        },
    }
    print(f"machine load average (1 min): {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(
        f"SmallCNN(1, 10, width={WIDTH}), {N} random 28x28 images, batch {BATCH}, {EPOCHS} epochs, {THREADS} threads, "
        f"median of {REPEATS} interleaved runs"
    )
    print(f"{'case':<24}{'variant':<27}{'images/s best':>14}{'median':>8}{'per CPU s':>11}{'fit / this':>12}")
    worst = float("inf")
    for case, fns in cases.items():
        res = interleaved(fns)
        images = N * EPOCHS
        for name, (best, med, cpu) in res.items():
            ratio = best / res["fit"][0]  # > 1: fit is faster
            print(f"{case:<24}{name:<27}{images / best:>14.0f}{images / med:>8.0f}{images / cpu:>11.0f}{ratio:>11.2f}x")
        worst = min(worst, res["plain loop (slicing)"][0] / res["fit"][0])
    print(f"fit throughput / plain loop (worst case): {worst:.2f}x (target >= {MIN_RATIO:.2f})")
    if worst < MIN_RATIO:
        sys.exit(f"fit is slower than {MIN_RATIO:.2f}x the plain loop: {worst:.2f}x")


if __name__ == "__main__":
    main()
