"""The prepared GPU check (``make bench-gpu``): the CPU benchmarks' comparisons, on CUDA, as one table.

Run it whenever a GPU is lent; it takes about 2-4 minutes on one H100/H200 and writes the table
to stdout and, if given, to ``--out FILE`` (Markdown). Without CUDA it says so and exits 0, so
``make bench-gpu`` is safe anywhere. Each row times netuq's default against what a user would
write by hand (or a peer library when it is installed), in the same process, as the median of
several CUDA-synchronised calls after a warm-up:

* temperature scaling, N = 50,000 × C = 1,000: netuq's Newton solver vs a 50-step LBFGS loop;
* MC dropout, S = 50: dropout before the classifier (trunk cached) and in every block, vs a loop;
* TTA d4 on SmallUNet 16 × 1 × 128 × 128: netuq vs ttach (when importable) vs a plain loop, and
  ``channels_last=True`` vs the default (the default keeps the input's layout; these rows
  say whether the opt-in pays there too);
* ensemble of 5 SmallCNN, batch 1024: ``Ensemble`` default ("auto") vs a loop over members, and
  the loop with ``channels_last=True`` vs the default;
* streaming ECE + NLL + Brier on 20 × (4, 19, 512, 512): UncertaintyMetrics vs torchmetrics;
* training throughput of ``netuq.training.fit`` vs a plain PyTorch loop (images/s).

Run: ``.venv/bin/python perf/gpu_check.py [--out table.md] [--quick]``; ``--device cpu --quick`` checks
the script itself on a machine without a GPU (the test suite does that).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch

import netuq
from netuq.models import SmallCNN, SmallUNet

ON_CUDA = False


def _sync() -> None:
    if ON_CUDA:
        torch.cuda.synchronize()


def cuda_time(fn: Callable[[], object], repeat: int = 5) -> float:
    """Median seconds of ``repeat`` synchronised calls after one warm-up call."""
    fn()
    _sync()
    times = []
    for _ in range(repeat):
        _sync()
        start = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_mib(fn: Callable[[], object]) -> float:
    if not ON_CUDA:
        return float("nan")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


ROWS: list[tuple[str, str, str, str]] = []


def row(case: str, ours: float, theirs: float, baseline: str, extra: str = "") -> None:
    ratio = theirs / ours if ours > 0 else float("nan")
    ROWS.append((case, f"{ours * 1e3:.2f} ms{extra}", f"{baseline}: {theirs * 1e3:.2f} ms", f"{ratio:.2f}x"))
    print(f"{case:55s} netuq {ours * 1e3:9.2f} ms | {baseline} {theirs * 1e3:9.2f} ms | {ratio:6.2f}x", flush=True)


def bench_temperature(dev: torch.device, quick: bool) -> None:
    from netuq.calibration import TemperatureScaling

    n, c = (2_000, 10) if quick else (50_000, 1_000)
    g = torch.Generator(device=dev).manual_seed(0)
    labels = torch.randint(0, c, (n,), device=dev, generator=g)
    logits = torch.randn(n, c, device=dev, generator=g) * 3
    logits[torch.arange(n, device=dev), labels] += 4

    def lbfgs():
        t = torch.ones(1, device=dev, requires_grad=True)
        opt = torch.optim.LBFGS([t], lr=0.01, max_iter=50)

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(logits / t, labels)
            loss.backward()
            return loss

        opt.step(closure)
        return t.detach()

    ours = cuda_time(lambda: TemperatureScaling().fit(logits, labels), repeat=3)
    theirs = cuda_time(lbfgs, repeat=3)
    row(f"temperature scaling N={n:,} C={c:,}", ours, theirs, "LBFGS x50")


def bench_mc_dropout(dev: torch.device, quick: bool) -> None:
    from netuq.methods.mc_dropout import dropout_active

    s = 5 if quick else 50
    n1, n2 = (8, 4) if quick else (256, 64)
    for name, model, x in (
        (f"MC dropout S={s}, dropout before classifier, {n1}x28x28", SmallCNN(dropout=0.5), torch.randn(n1, 1, 28, 28)),
        (f"MC dropout S={s}, dropout in every block, {n2}x28x28", SmallCNN(block_dropout=True),
         torch.randn(n2, 1, 28, 28)),
    ):
        model = model.to(dev).eval()
        x = x.to(dev)
        mc = netuq.MCDropout(model, samples=s, seed=0)

        def naive(model=model, x=x):
            with torch.no_grad(), dropout_active(model):
                return torch.stack([model(x).softmax(1) for _ in range(s)]).mean(0)

        row(name, cuda_time(lambda mc=mc, x=x: mc(x)), cuda_time(naive), "loop of S forwards")


def bench_tta(dev: torch.device, quick: bool) -> None:
    model = SmallUNet(in_channels=1, num_classes=11).to(dev).eval()
    x = torch.randn(1, 1, 32, 32, device=dev) if quick else torch.randn(16, 1, 128, 128, device=dev)
    tta = netuq.TTA(model, netuq.tta.d4(), task="segmentation")
    ours = cuda_time(lambda: tta(x))
    mem = peak_mib(lambda: tta(x))
    try:
        import ttach

        wrapper = ttach.SegmentationTTAWrapper(model, ttach.aliases.d4_transform(), merge_mode="mean")

        def theirs_fn():
            with torch.no_grad():
                return wrapper(x)

        label = "ttach"
    except Exception:  # ttach missing: the plain loop a user would write

        def theirs_fn():
            with torch.no_grad():
                outs = []
                for k in range(4):
                    for flip in (False, True):
                        v = torch.rot90(x, k, (2, 3))
                        v = v.flip(3) if flip else v
                        o = model(v).softmax(1)
                        o = o.flip(3) if flip else o
                        outs.append(torch.rot90(o, -k, (2, 3)))
                return torch.stack(outs).mean(0)

        label = "plain loop"
    theirs = cuda_time(theirs_fn)
    row(f"TTA d4 SmallUNet {tuple(x.shape)}", ours, theirs, label, f", {mem:.0f} MiB vs {peak_mib(theirs_fn):.0f}")
    # the layout the CPU default picks, forced here: should the CUDA default feed channels-last too?
    cl = netuq.TTA(model, netuq.tta.d4(), task="segmentation", channels_last=True)
    row(f"TTA d4 SmallUNet {tuple(x.shape)}, channels_last=True", cuda_time(lambda: cl(x)), ours, "the default")


def bench_ensemble(dev: torch.device, quick: bool) -> None:
    torch.manual_seed(0)
    members = [SmallCNN().to(dev).eval() for _ in range(5)]
    x = torch.randn(16 if quick else 1024, 1, 28, 28, device=dev)
    ens = netuq.Ensemble(members)

    def loop():
        with torch.no_grad():
            return torch.stack([m(x).softmax(1) for m in members]).mean(0)

    ours = cuda_time(lambda: ens(x))
    row(f"ensemble of 5 SmallCNN, batch {len(x)} (default)", ours, cuda_time(loop), "loop")
    cl = netuq.Ensemble(members, vectorize=False, channels_last=True)
    case = f"ensemble of 5 SmallCNN, batch {len(x)}, loop, channels_last=True"
    row(case, cuda_time(lambda: cl(x)), ours, "the default")


def bench_streaming(dev: torch.device, quick: bool) -> None:
    from netuq.metrics import UncertaintyMetrics

    batches, side = (2, 32) if quick else (20, 512)
    g = torch.Generator(device=dev).manual_seed(0)
    data = [
        (
            torch.randn(4, 19, side, side, device=dev, generator=g).softmax(1),
            torch.randint(0, 19, (4, side, side), device=dev, generator=g),
        )
        for _ in range(batches)
    ]

    def ours():
        m = UncertaintyMetrics(num_classes=19).to(dev)
        for p, y in data:
            m.update(p, y)
        return m.compute()

    try:
        from torchmetrics.classification import MulticlassCalibrationError

        def theirs():
            m = MulticlassCalibrationError(num_classes=19, n_bins=15).to(dev)
            for p, y in data:
                m.update(p, y)
            return m.compute()

        case = f"streaming ECE/NLL/Brier {batches}x(4,19,{side},{side})"
        row(case, cuda_time(ours, 3), cuda_time(theirs, 3), "torchmetrics ECE")
    except Exception as err:  # pragma: no cover
        print(f"torchmetrics comparison skipped: {err}")


def bench_training(dev: torch.device, quick: bool) -> None:
    from netuq.training import fit

    n = 512 if quick else 32768
    x = torch.randn(n, 1, 28, 28)
    y = torch.randint(0, 10, (n,))
    epochs = 1 if quick else 2

    def ours():
        torch.manual_seed(0)
        model = SmallCNN().to(dev)
        fit(model, (x, y), epochs=epochs, batch_size=256, device=dev, seed=0)

    def plain():
        torch.manual_seed(0)
        model = SmallCNN().to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        xd, yd = x.to(dev), y.to(dev)
        for _ in range(epochs):
            perm = torch.randperm(n, device=dev)
            for i in range(0, n, 256):
                idx = perm[i : i + 256]
                opt.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(model(xd[idx]), yd[idx]).backward()
                opt.step()

    row(f"training SmallCNN {epochs} epochs x {n} images", cuda_time(ours, 2), cuda_time(plain, 2), "plain loop")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the table here (Markdown)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke test of the script)")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (to check the script itself)")
    args = parser.parse_args(argv)
    global ON_CUDA
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing measured (run it on a machine with a GPU)")
        return 0
    ON_CUDA = dev.type == "cuda"
    name = torch.cuda.get_device_name(dev) if ON_CUDA else "cpu"
    print(f"device: {name}, torch {torch.__version__}, netuq {netuq.__version__}")
    failed = []
    for bench in (bench_temperature, bench_mc_dropout, bench_tta, bench_ensemble, bench_streaming, bench_training):
        try:
            bench(dev, args.quick)
        except Exception as err:  # one broken comparison must not hide the others
            failed.append(bench.__name__)
            print(f"!! {bench.__name__} failed: {type(err).__name__}: {err}", flush=True)
    table = ["| case | netuq | compared with | ratio (higher: netuq faster) |", "|---|---|---|---|"]
    table += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in ROWS]
    text = f"device: {name}, torch {torch.__version__}\n\n" + "\n".join(table) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
