"""The conformal study for the note: netuq vs MAPIE on the shared real logits, and risk control on digit scenes.

For each of the four shared networks (val + test pooled, 15,000 rows) and α ∈ {0.1, 0.05}: 100
random splits into 5,000 calibration and 10,000 test rows; on the same splits, netuq's LAC, APS,
randomised APS and randomised RAPS (k_reg, λ tuned as Angelopoulos et al. 2021) and MAPIE's
LAC, APS (its default: include_last_label=True), randomised APS and randomised RAPS; coverage
and mean set size, mean ± sd over the splits, and the total fit + predict time of each.
Segmentation: a SmallUNet trained on digit scenes; conformal risk control (miscoverage, and
the FNR of digit class 1) on 100 random halves of the validation + test scenes: the achieved
mean risk ± sd at α ∈ {0.1, 0.05}.

Run: ``PYTHONPATH=src python perf/conformal_study.py [--splits 100] [--out table.md]`` (~10 min on
one core; ``--splits 5`` for a smoke run).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _conformal_common import NETWORKS, load_network, mapie_randomized_sets, mapie_sets  # noqa: E402

import netuq  # noqa: E402
from netuq.conformal import ConformalRiskControl, SplitConformal  # noqa: E402

OURS = {"LAC": ("lac", False), "APS": ("aps", False), "APS-rand": ("aps", True), "RAPS-rand": ("raps", True)}
THEIRS = {"LAC": ("lac", False), "APS": ("aps", False), "APS-rand": ("aps", True), "RAPS-rand": ("raps", True)}


def classification(splits: int, lines: list[str]) -> None:
    lines += ["| network | α | method | netuq coverage | netuq size | MAPIE coverage | MAPIE size "
              "| time MAPIE / netuq |", "|---|---|---|---|---|---|---|---|"]
    for name in NETWORKS:
        p, y, real = load_network(name)
        pn, yn = p.numpy(), y.numpy()
        for alpha in (0.1, 0.05):
            res = {k: {"ours": [], "theirs": [], "t_ours": 0.0, "t_theirs": 0.0} for k in OURS}
            for s in range(splits):
                perm = np.random.default_rng(s).permutation(len(y))
                cal, test = perm[:5000], perm[5000:]
                for key, (score, rnd) in OURS.items():
                    t = time.perf_counter()
                    cp = SplitConformal(score=score, alpha=alpha, randomized=rnd, seed=s)
                    sets = cp.fit(p[cal], y[cal], input="probs").predict(p[test], input="probs")
                    res[key]["t_ours"] += time.perf_counter() - t
                    res[key]["ours"].append((netuq.metrics.coverage(sets, y[test]), netuq.metrics.set_size(sets)))
                    mscore, mrnd = THEIRS[key]
                    t = time.perf_counter()
                    ms = (mapie_randomized_sets if mrnd else mapie_sets)(pn, yn, cal, test, mscore, alpha, s)
                    res[key]["t_theirs"] += time.perf_counter() - t
                    ms = torch.from_numpy(ms)
                    res[key]["theirs"].append((netuq.metrics.coverage(ms, y[test]), netuq.metrics.set_size(ms)))
            for key, r in res.items():
                o, t = np.array(r["ours"]), np.array(r["theirs"])
                label = name + ("" if real else " (synthetic)")
                lines.append(f"| {label} | {alpha} | {key} | {o[:, 0].mean():.4f} ± {o[:, 0].std(ddof=1):.4f} | "
                             f"{o[:, 1].mean():.3f} ± {o[:, 1].std(ddof=1):.3f} | "
                             f"{t[:, 0].mean():.4f} ± {t[:, 0].std(ddof=1):.4f} | "
                             f"{t[:, 1].mean():.3f} ± {t[:, 1].std(ddof=1):.3f} | {r['t_theirs'] / r['t_ours']:.2f} |")
            print("\n".join(lines[-4:]), flush=True)


def segmentation(splits: int, lines: list[str]) -> None:
    from netuq.data import load_digit_scenes
    from netuq.models import SmallUNet
    from netuq.training import fit

    sd = load_digit_scenes(900, size=32, seed=0)
    torch.manual_seed(0)
    net = SmallUNet(1, sd.num_classes)
    t = time.perf_counter()
    fit(net, (sd.train.x, sd.train.y), loss=torch.nn.CrossEntropyLoss(ignore_index=sd.ignore_index), epochs=8,
        batch_size=32, seed=0)
    net.eval()
    x = torch.cat([sd.val.x, sd.test.x])
    y = torch.cat([sd.val.y, sd.test.y])
    with torch.no_grad():
        z = torch.cat([net(x[i:i + 64]) for i in range(0, len(x), 64)])
    p = torch.softmax(z.double(), 1)
    acc = float((p.argmax(1) == y)[y != sd.ignore_index].float().mean())
    lines += ["", f"Digit scenes: SmallUNet trained {time.perf_counter() - t:.0f} s, pixel accuracy {acc:.4f} on "
              f"{len(y)} val + test scenes; {splits} random halves (calibrate on one, risk on the other).", "",
              "| loss | α | achieved risk (mean ± sd) | mean set size per pixel | 1 − λ̂ |", "|---|---|---|---|---|"]
    for loss, target in (("miscoverage", None), ("fnr", 1)):
        for alpha in (0.1, 0.05):
            risks, sizes, ts = [], [], []
            for s in range(splits):
                perm = torch.from_numpy(np.random.default_rng(1000 + s).permutation(len(y)))
                cal, test = perm[: len(y) // 2], perm[len(y) // 2:]
                crc = ConformalRiskControl(loss=loss, alpha=alpha, target_class=target)
                crc.fit(p[cal], y[cal], ignore_index=sd.ignore_index, input="probs")
                risks.append(float(crc.risk(p[test], y[test], ignore_index=sd.ignore_index, input="probs").mean()))
                sets = crc.predict(p[test], input="probs")
                valid = y[test] != sd.ignore_index
                sizes.append(float(sets.sum(1)[valid].double().mean()))
                ts.append(crc.threshold_)
            name = loss if target is None else f"{loss} (class {target})"
            lines.append(f"| {name} | {alpha} | {np.mean(risks):.4f} ± {np.std(risks, ddof=1):.4f} | "
                         f"{np.mean(sizes):.3f} | {np.mean(ts):.4f} |")
            print(lines[-1], flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--splits", type=int, default=100)
    ap.add_argument("--out", default=None)
    ap.add_argument("--skip-segmentation", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    lines: list[str] = []
    classification(args.splits, lines)
    if not args.skip_segmentation:
        segmentation(args.splits, lines)
    text = "\n".join(lines)
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
