"""MC dropout speed: netuq.MCDropout with default arguments vs the naive loop, for several dropout placements.

The naive loop is what a user writes by hand: ``model.eval()``, the dropout modules switched to
train mode (or ``F.dropout(..., training=True)`` in forward), S forward passes, softmax averaged.
netuq computes more (entropy, aleatoric and epistemic parts) and must still be at least as fast:
issue 14 asks ≥ 1.0× for every placement (trunk caching gives far more where it applies). By
default netuq runs the input in the layout given, as the naive loop does (a default never changes
what the model computes); each placement also has an opt-in ``channels_last=True`` row
(netuq._layout: inputs fed channels-last, faster CPU convolutions, no check), timed interleaved
with the default and the naive loop.

Placements (S = 50): dropout before the classifier (trunk cached), dropout after every block,
functional ``F.dropout`` in a custom forward, dropout on the input, a segmentation U-Net with
dropout in every block, and real networks (random weights): torchvision ResNet-18 after
``netuq.nn.add_dropout`` (default arguments — the stochastic tail found from the model's own
execution, issue 23: target >= 10x — a declared trunk, the naive loop) and a timm ViT-Tiny with
head dropout (``python perf/bench_mc_dropout.py pretrained`` runs only those). The script exits
non-zero when a target is missed. ``NETUQ_BENCH_THREADS``, ``NETUQ_BENCH_ROUNDS`` change the thread
count and the rounds. netuq and the naive loop are timed interleaved in the same process (medians
of the per-round ratios), after warm-up calls. Then a sweep of the rows per forward for "every
block" (why the default caps the largest activation, not the input) and the cost curves: time
against S and against N with the fitted log-log slope (≈ 1 = linear).

Run: ``.venv/bin/python perf/bench_mc_dropout.py`` (or ``make bench``); ~30-60 s on 2 cores.
"""

from __future__ import annotations

import math
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.dropout import _DropoutNd

import netuq
from netuq.models import SmallCNN, SmallUNet

S = 50
ROUNDS = int(os.environ.get("NETUQ_BENCH_ROUNDS", "5"))


class FunctionalCNN(nn.Module):
    """SmallCNN features + F.dropout(training=...) in a custom forward (nothing netuq can cache)."""

    def __init__(self, always: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        base = SmallCNN(1, 10, width=32, dropout=0.0)
        self.features, self.fc = base.features, base.head[1]
        self.always = always  # the hand-written naive version: training=True

    def forward(self, x):
        return self.fc(F.dropout(self.features(x), 0.3, training=True if self.always else self.training))


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def naive(model: nn.Module, x: torch.Tensor, samples: int = S) -> torch.Tensor:
    """The textbook loop, by hand: eval mode, dropout modules on, S passes, mean softmax."""
    model.eval()
    drops = [m for m in model.modules() if isinstance(m, _DropoutNd)]
    for m in drops:
        m.train()
    try:
        with torch.no_grad():
            return torch.stack([model(x).softmax(1) for _ in range(samples)]).mean(0)
    finally:
        for m in drops:
            m.eval()


def compare(name: str, mc, x: torch.Tensor, naive_model: nn.Module, mc_cl=None) -> float:
    """Time netuq (and its opt-in channels-last twin ``mc_cl``) against the naive loop, interleaved;
    print one row each; return the default's ratio (naive / netuq, median of the per-round ratios)."""
    runs = {"netuq": mc} if mc_cl is None else {"netuq": mc, "channels_last=True": mc_cl}
    for _ in range(2):  # warm-up all (allocator, oneDNN primitives, netuq's one dry run per shape)
        for run in runs.values():
            run(x)
        naive(naive_model, x)
    t_naive, t_mc = [], {k: [] for k in runs}
    for _ in range(ROUNDS):
        t_naive.append(_timed(lambda: naive(naive_model, x)))
        for k, run in runs.items():
            t_mc[k].append(_timed(lambda run=run: run(x)))
    ratios = {k: statistics.median(a / b for a, b in zip(t_naive, t)) for k, t in t_mc.items()}
    for k, t in t_mc.items():
        label = name if k == "netuq" else f"  same, opt-in {k}"
        print(
            f"  {label:<44} netuq {statistics.median(t) * 1e3:8.1f} ms   "
            f"naive {statistics.median(t_naive) * 1e3:8.1f} ms   {ratios[k]:5.2f}x",
            flush=True,
        )
    return ratios["netuq"]


def slope(xs: list[float], ys: list[float]) -> float:
    lx, ly = [math.log(v) for v in xs], [math.log(v) for v in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def curve(name: str, sizes: list[int], times: list[float]) -> None:
    points = "  ".join(f"{v:>4}: {t * 1e3:7.1f} ms" for v, t in zip(sizes, times))
    print(f"  {name}  {points}   log-log slope {slope(sizes, times):.2f}")


def main(only_pretrained: bool = False) -> None:
    if "NETUQ_BENCH_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["NETUQ_BENCH_THREADS"]))
    start = time.perf_counter()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, S = {S}, {ROUNDS} interleaved rounds")
    if only_pretrained:  # python perf/bench_mc_dropout.py pretrained
        pretrained_rows()
        return
    print("\n1. default arguments (and the opt-in channels_last=True) vs the naive loop (ratio = naive / netuq,")
    print("   >= 1 means netuq is faster; the targets apply to the default rows)")
    ratios = {}
    torch.manual_seed(0)
    cnn = SmallCNN(1, 10, width=32, dropout=0.3).eval()
    ratios["before classifier"] = compare(
        "before the classifier (trunk cached), 64x28x28",
        netuq.MCDropout(cnn, S, trunk="features", head="head"),
        torch.randn(64, 1, 28, 28),
        cnn,
        netuq.MCDropout(cnn, S, trunk="features", head="head", channels_last=True),
    )
    torch.manual_seed(0)
    block = SmallCNN(1, 10, width=32, dropout=0.3, block_dropout=True).eval()
    x8 = torch.randn(8, 1, 28, 28)
    ratios["every block"] = compare("after every block, 8x28x28", netuq.MCDropout(block, S), x8, block,
                                     netuq.MCDropout(block, S, channels_last=True))
    functional = FunctionalCNN().eval()
    ratios["functional"] = compare(
        "functional F.dropout in forward, 8x28x28", netuq.MCDropout(functional, S), x8, FunctionalCNN(always=True),
        netuq.MCDropout(functional, S, channels_last=True),
    )
    torch.manual_seed(0)
    inp = nn.Sequential(nn.Dropout(0.1), SmallCNN(1, 10, width=32, dropout=0.0)).eval()
    ratios["input"] = compare("on the input (whole net sampled), 8x28x28", netuq.MCDropout(inp, S), x8, inp,
                               netuq.MCDropout(inp, S, channels_last=True))
    torch.manual_seed(0)
    unet = SmallUNet(1, 5, width=8, dropout=0.1).eval()
    ratios["segmentation"] = compare(
        "SmallUNet, every block, 2x32x32", netuq.MCDropout(unet, S), torch.randn(2, 1, 32, 32), unet,
        netuq.MCDropout(unet, S, channels_last=True),
    )

    print("\n2. 'after every block', rows per forward (max_batch) vs the naive loop")
    for rows in (8, 40, 80, 400):
        compare(f"max_batch={rows}", netuq.MCDropout(block, S, max_batch=rows), x8, block)

    print("\n3. cost curves ('after every block', default arguments; slope of log time vs log size)")
    mc = netuq.MCDropout(block, S)
    sizes, times = [10, 20, 40], []
    for s in sizes:
        m = netuq.MCDropout(block, s)
        m(x8)
        times.append(statistics.median(_timed(lambda m=m: m(x8)) for _ in range(3)))
    curve("S", sizes, times)
    ns, times = [4, 8, 16], []
    for n in ns:
        xn = torch.randn(n, 1, 28, 28)
        mc(xn)
        times.append(statistics.median(_timed(lambda xn=xn: mc(xn)) for _ in range(3)))
    curve("N", ns, times)

    pretrained = pretrained_rows()
    ratios.update(pretrained)

    worst = min(ratios, key=ratios.get)
    print("\nsummary")
    print(f"  trunk cached : {ratios['before classifier']:6.1f}x the naive loop (target >= 10x)")
    resnet = pretrained.get("resnet18 add_dropout")
    if resnet is not None:
        print(f"  ResNet-18 after add_dropout, default arguments: {resnet:6.1f}x the naive loop (target >= 10x)")
    print(f"  slowest placement: {worst} at {ratios[worst]:.2f}x (target >= 1.0x for every placement)")
    print(f"  total {time.perf_counter() - start:.0f} s")
    missed = [k for k, v in ratios.items() if v < 1.0]
    if resnet is not None and resnet < 10:
        missed.append("resnet18 add_dropout < 10x")
    if missed:
        raise SystemExit(f"MC dropout targets missed: {', '.join(missed)}")


def pretrained_rows() -> dict[str, float]:
    """Real third-party networks (random weights), as the README's recipe uses them: torchvision
    ResNet-18 after ``add_dropout`` (default arguments: the tail found from the model's execution;
    a declared trunk; the naive loop) and a timm ViT-Tiny with head dropout (``drop_rate``)."""
    ratios: dict[str, float] = {}
    try:
        import torchvision
    except ImportError:
        print("\n4. pretrained networks: torchvision not installed, skipped")
        return ratios
    print("\n4. pretrained networks, random weights (README recipe: add_dropout then MCDropout)")
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None).eval()
    netuq.nn.add_dropout(resnet, 0.2, before="fc")
    x = torch.randn(8, 3, 64, 64)
    ratios["resnet18 add_dropout"] = compare(
        "ResNet-18 + add_dropout, default, 8x3x64x64", netuq.MCDropout(resnet, S), x, resnet
    )
    trunk = nn.Sequential(*list(resnet.children())[:-1], nn.Flatten())  # everything before fc
    declared = netuq.MCDropout(resnet, S, trunk=trunk, head=resnet.fc)
    compare("ResNet-18 + add_dropout, declared trunk", declared, x, resnet)
    try:
        import timm
    except ImportError:
        print("  timm not installed: ViT row skipped")
        return ratios
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, drop_rate=0.1).eval()
    ratios["vit_tiny head dropout"] = compare(
        "timm ViT-Tiny, drop_rate=0.1, default, 8x3x64x64", netuq.MCDropout(vit, S), x, vit
    )
    return ratios


if __name__ == "__main__":
    import sys

    main(only_pretrained=sys.argv[1:] == ["pretrained"])
