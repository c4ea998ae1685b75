"""Conformal prediction: netuq vs MAPIE (and torchcp when it imports) on the same logits.

For each network of the shared real logits (synthetic logits of the same size when the folder is
absent): fit on the 5,000 validation rows and predict on the 10,000 test rows, LAC / randomised APS /
randomised RAPS at α = 0.1; best-of-3 wall time of fit + predict for netuq and MAPIE, their ratio,
and both sets' coverage and mean size. Then conformal risk control's streaming fit on synthetic
segmentation batches (time per megapixel, state size). Fails (exit 1) if netuq's LAC sets differ
from MAPIE's anywhere but within MAPIE's 1e-8 slack, or netuq is slower than MAPIE on any row
(beyond 20%, the noise of shared cores).

Run: ``PYTHONPATH=src python perf/bench_conformal.py`` (about 30 s).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _conformal_common import NETWORKS, load_network, mapie_randomized_sets, mapie_sets, torchcp_status  # noqa: E402

import netuq  # noqa: E402
from netuq.conformal import ConformalRiskControl, SplitConformal  # noqa: E402


def best_of(fn, k=3):
    best, out = float("inf"), None
    for _ in range(k):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> int:
    torch.set_num_threads(1)
    alpha = 0.1
    problems = []
    reason = torchcp_status()
    print(f"torchcp: {'imported' if reason is None else 'not compared: ' + reason}")
    print(f"{'network':<24}{'score':<10}{'netuq s':>9}{'MAPIE s':>9}{'ratio':>7}  {'cov netuq':>9}{'cov MAPIE':>10}"
          f"{'size netuq':>11}{'size MAPIE':>11}")
    for name in NETWORKS:
        p, y, real = load_network(name)
        cal, test = np.arange(5000), np.arange(5000, len(y))
        pn, yn = p.numpy(), y.numpy()
        for score in ("lac", "aps", "raps"):
            rnd = score != "lac"

            def ours(score=score, rnd=rnd, p=p, y=y, cal=cal, test=test):
                cp = SplitConformal(score=score, alpha=alpha, randomized=rnd, seed=0)
                return cp.fit(p[cal], y[cal], input="probs").predict(p[test], input="probs")

            def theirs(score=score, rnd=rnd, pn=pn, yn=yn, cal=cal, test=test):
                f = mapie_randomized_sets if rnd else mapie_sets
                return f(pn, yn, cal, test, score, alpha, 0)

            t_ours, s_ours = best_of(ours)
            t_theirs, s_theirs = best_of(theirs)
            s_theirs = torch.from_numpy(s_theirs)
            if score == "lac":
                differ = (s_ours != s_theirs).numpy()
                q = SplitConformal(alpha=alpha).fit(p[cal], y[cal], input="probs").quantile_
                near = np.abs(1 - pn[test] - q) <= 1e-8
                if (differ & ~near).any():
                    problems.append(f"{name}: LAC sets differ from MAPIE's beyond its slack")
            if t_theirs / t_ours < 0.8:  # the target is parity; 20% spares the noise of shared cores
                problems.append(f"{name} {score}: netuq slower than MAPIE ({t_ours:.3f} s vs {t_theirs:.3f} s)")
            label = name + ("" if real else " (synthetic)")
            print(f"{label:<24}{score + ('-rand' if rnd else ''):<10}{t_ours:>9.4f}{t_theirs:>9.4f}"
                  f"{t_theirs / t_ours:>7.2f}  {netuq.metrics.coverage(s_ours, y[test]):>9.4f}"
                  f"{netuq.metrics.coverage(s_theirs, y[test]):>10.4f}{netuq.metrics.set_size(s_ours):>11.3f}"
                  f"{netuq.metrics.set_size(s_theirs):>11.3f}")
    # Risk control: streaming fit over segmentation batches (memory: the grid, not the pixels).
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(4):
        yb = torch.randint(0, 11, (16, 128, 128), generator=g)
        zb = 2 * torch.nn.functional.one_hot(yb, 11).permute(0, 3, 1, 2).float() + torch.randn(16, 11, 128, 128,
                                                                                                 generator=g)
        batches.append((zb, yb))
    pixels = sum(b[1].numel() for b in batches)
    crc = ConformalRiskControl(loss="miscoverage", alpha=alpha)
    t, _ = best_of(lambda: crc.fit(batches), k=2)
    print(f"\nrisk control: {pixels / 1e6:.2f} Mpx fitted in {t:.2f} s ({t / pixels * 1e6:.3f} s/Mpx), state "
          f"{crc.risk_.numel() * 8 / 1024:.1f} KiB (grid of {crc.risk_.numel()}), threshold {crc.threshold_:.4f}")
    for p_ in problems:
        print("FAIL:", p_)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
