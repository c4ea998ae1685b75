"""Deep ensembles: vectorised (vmap) vs looped inference, and 5-fold training time on digits.

* Inference: 5 ``SmallCNN(1, 10)`` members (default width) on a batch of 256 8x8 digit images,
  ``Ensemble(vectorize=True)`` vs ``Ensemble(vectorize=False)``, median of repeated calls.
* Training: ``train_ensemble(split="kfold", members=5)`` on all 1797 digits, batch 64, a few
  epochs, on 2 CPU threads: total and per-member seconds.

Run: ``.venv/bin/python benchmarks/bench_ensemble.py`` (about a minute on 2 cores).
"""

from __future__ import annotations

import os
import statistics
import time

import torch
from sklearn.datasets import load_digits

from netuq import Ensemble, train_ensemble
from netuq.models import SmallCNN

THREADS = int(os.environ.get("NETUQ_BENCH_THREADS", "2"))
MEMBERS = 5
BATCH = 256
REPEATS = 9
EPOCHS = 3


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8) in [0, 1]
    return x, torch.tensor(d.target)


def interleaved_medians(fns, repeats: int = REPEATS) -> list[float]:
    """Median seconds of each callable, calls interleaved so that load drift hits all alike."""
    for fn in fns:
        fn()  # warm-up
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            start = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - start)
    return [statistics.median(ts) for ts in times]


def main() -> None:
    torch.set_num_threads(THREADS)
    x, y = digits()
    torch.manual_seed(0)
    members = [SmallCNN(1, 10) for _ in range(MEMBERS)]
    batch = x[:BATCH]
    vec, loop = Ensemble(members, vectorize=True), Ensemble(members, vectorize=False)
    diff = float((vec(batch).probs - loop(batch).probs).abs().max())
    t_vec, t_loop = interleaved_medians([lambda: vec(batch), lambda: loop(batch)])
    print(f"machine load average (1 min): {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"inference: {MEMBERS} x SmallCNN(1, 10), batch {BATCH} of 8x8, {THREADS} threads, median of {REPEATS}")
    print(f"{'mode':<8}{'ms / batch':>12}{'images / s':>14}")
    for name, t in (("vmap", t_vec), ("loop", t_loop)):
        print(f"{name:<8}{1e3 * t:>12.2f}{BATCH / t:>14.0f}")
    print(f"loop / vmap time ratio: {t_loop / t_vec:.2f}x   (max |p_vmap - p_loop| = {diff:.1e})")

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # one-time import of torch's optimizer machinery
    start = time.perf_counter()
    ens = train_ensemble(
        lambda: SmallCNN(1, 10), (x, y), members=MEMBERS, split="kfold", epochs=EPOCHS, batch_size=64, lr=3e-3, seed=0
    )
    total = time.perf_counter() - start
    fit_s = [h.seconds for h in ens.histories_]
    oof_acc = float((ens.oof_probs_.argmax(1) == y).float().mean())
    print(f"\ntraining: {MEMBERS}-fold ensemble, {len(x)} digits, {EPOCHS} epochs, batch 64, {THREADS} threads")
    print(
        f"total {total:.1f} s; per member {total / MEMBERS:.1f} s (fit alone: {', '.join(f'{s:.1f}' for s in fit_s)} s)"
    )
    print(f"out-of-fold accuracy (single members, not the ensemble): {oof_acc:.3f}")


if __name__ == "__main__":
    main()
