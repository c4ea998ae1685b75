"""Deep ensembles: vectorised (vmap) vs looped inference, and 5-fold training time on digits.

* Inference: 5 ``SmallCNN(1, 10)`` members (default width) on a batch of 256 8x8 digit images,
  ``Ensemble(vectorize=True)`` (vmap) vs the default (``vectorize="auto"``: on the CPU the loop,
  inputs as given) vs the opt-in ``channels_last=True`` (the loop, inputs channels-last, see
  netuq._layout) vs a loop written by hand
  (softmax of each member, mean), median of interleaved repeated calls. The default must be as
  fast as the faster of the first two (the rule, ``netuq.methods.ensemble.prefers_vmap``: loop on
  the CPU, vmap on CUDA); the script exits with an error when ``auto`` is below
  ``NETUQ_BENCH_MIN_RATIO`` (default 0.9, timing noise) times the faster one.
* Training: ``train_ensemble(split="kfold", members=5)`` on all 1797 digits, batch 64, a few
  epochs, on 2 CPU threads: total and per-member seconds.

Run: ``.venv/bin/python perf/bench_ensemble.py`` (about a minute on 2 cores). ``NETUQ_BENCH_DEVICE=cuda``
times the inference on a GPU.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import time

import torch
from sklearn.datasets import load_digits

from netuq import Ensemble, train_ensemble
from netuq.models import SmallCNN

THREADS = int(os.environ.get("NETUQ_BENCH_THREADS", "2"))
MEMBERS = 5
BATCH = 256
REPEATS = 41  # ~4 s: the auto-vs-loop ratio compares identical code, so its spread is the noise
EPOCHS = 3
MIN_RATIO = float(os.environ.get("NETUQ_BENCH_MIN_RATIO", "0.9"))
DEVICE = torch.device(os.environ.get("NETUQ_BENCH_DEVICE", "cpu"))


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8) in [0, 1]
    return x, torch.tensor(d.target)


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def interleaved_medians(fns, repeats: int = REPEATS) -> list[float]:
    """Median seconds of each callable, calls interleaved (a new seeded order each round) so that
    load drift hits all alike."""
    for fn in fns:
        fn()  # warm-up
    times: list[list[float]] = [[] for _ in fns]
    order, shuffle = list(range(len(fns))), random.Random(0).shuffle
    for _ in range(repeats):
        shuffle(order)  # no callable always runs right after the same other one
        for i in order:
            _sync()
            start = time.perf_counter()
            fns[i]()
            _sync()
            times[i].append(time.perf_counter() - start)
    return [statistics.median(ts) for ts in times]


def main() -> None:
    torch.set_num_threads(THREADS)
    x, y = digits()
    torch.manual_seed(0)
    members = [SmallCNN(1, 10).to(DEVICE) for _ in range(MEMBERS)]
    batch = x[:BATCH].to(DEVICE)
    vec, loop = Ensemble(members, vectorize=True), Ensemble(members, vectorize=False, channels_last=True)
    auto = Ensemble(members)

    def by_hand():  # what a user writes: each member's softmax, averaged
        with torch.no_grad():
            return torch.stack([m.eval()(batch).softmax(1) for m in members]).mean(0)

    diff = max(float((p - auto(batch).probs).abs().max()) for p in (vec(batch).probs, loop(batch).probs, by_hand()))
    t_vec, t_loop, t_auto, t_hand = interleaved_medians(
        [lambda: vec(batch), lambda: loop(batch), lambda: auto(batch), by_hand]
    )
    print(f"machine load average (1 min): {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(
        f"inference on {DEVICE}: {MEMBERS} x SmallCNN(1, 10), batch {BATCH} of 8x8, {THREADS} threads, "
        f"median of {REPEATS}"
    )
    picked = "vmap" if auto.vectorized else "loop"
    rows = (
        ("vmap", t_vec), ("loop (opt-in channels_last=True)", t_loop), (f"default ({picked}, as given)", t_auto),
        ("by hand (softmax, mean)", t_hand),
    )  # fmt: skip
    print(f"{'mode':<34}{'ms / batch':>12}{'images / s':>14}")
    for name, t in rows:
        print(f"{name:<34}{1e3 * t:>12.2f}{BATCH / t:>14.0f}")
    print(f"default / vmap time ratio: {t_auto / t_vec:.2f}x   (max |p - p_default| over the others = {diff:.1e})")
    best = t_vec  # the default picks between vmap and the loop as given; channels-last is the user's opt-in
    print(f"opt-in channels_last=True vs the default: {t_auto / t_loop:.2f}x; default vs vmap: {best / t_auto:.2f}x; "
          f"vs by hand: {t_hand / t_auto:.2f}x")
    if best / t_auto < MIN_RATIO:
        sys.exit(f"vectorize='auto' is slower than {MIN_RATIO:.2f}x the faster mode: {best / t_auto:.2f}x")

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # one-time import of torch's optimizer machinery
    start = time.perf_counter()
    ens = train_ensemble(
        lambda: SmallCNN(1, 10),
        (x, y),
        members=MEMBERS,
        split="kfold",
        epochs=EPOCHS,
        batch_size=64,
        lr=3e-3,
        seed=0,
        device=DEVICE,
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
