"""MC dropout speed: netuq's batched sampling with trunk caching vs a Python loop of S passes.

1. SmallCNN (width 32, 28x28, batch 64), dropout only before the last linear layer, S = 50:
   netuq (trunk runs once) vs a naive loop of S forward passes (dropout modules on, BatchNorm in
   eval, via ``netuq.methods.mc_dropout.dropout_active``) vs TorchUncertainty's ``mc_dropout``
   (batch repeated S times through the whole network) when importable. Target: >= 10x naive.
2. SmallCNN(block_dropout=True) (dropout after every block, nothing to cache), batch 8, S = 50:
   batched sampling vs the naive loop. Target: >= 1.5x on CPU.

Times use torch's default thread count (``NETUQ_BENCH_THREADS`` to change); case 2 is repeated
on one thread, where batching has little to amortise (the convolutions cost the same per row) —
its gain on CPU comes from multi-threaded kernels working on bigger tensors. The naive loop is
timed once (it is S passes already), the others as the median of a few calls after a warm-up.

Run: ``.venv/bin/python benchmarks/bench_mc_dropout.py`` (or ``make bench``).
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import time
from pathlib import Path

import torch

import netuq
from netuq.methods.mc_dropout import dropout_active
from netuq.models import SmallCNN

S = 50


def timeit(fn, repeat: int = 3, warmup=None) -> float:
    """Median wall time of ``repeat`` calls after one warm-up call (of ``warmup`` if given)."""
    (warmup or fn)()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def naive(model, x):
    """The textbook loop: S forward passes with dropout on, softmax averaged."""
    with torch.no_grad(), dropout_active(model):
        return torch.stack([model(x).softmax(1) for _ in range(S)]).mean(0)


def load_torch_uncertainty():
    """TorchUncertainty's ``mc_dropout``, or (None, reason)."""
    try:
        from torch_uncertainty.methods import mc_dropout

        return mc_dropout, "torch_uncertainty.methods.mc_dropout"
    except Exception as err:  # its package __init__ pulls in lightning and more
        reason = f"{type(err).__name__}: {err}"
    spec = importlib.util.find_spec("torch_uncertainty")
    if spec is None or not spec.submodule_search_locations:
        return None, reason
    path = Path(next(iter(spec.submodule_search_locations))) / "methods" / "mc_dropout.py"
    try:  # the method itself needs only torch and einops: load its file alone
        mod_spec = importlib.util.spec_from_file_location("_tu_mc_dropout", path)
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
        return module.mc_dropout, f"{path.name} loaded directly (package import failed: {reason})"
    except Exception as err2:
        return None, f"{reason}; direct load: {type(err2).__name__}: {err2}"


def row(name: str, seconds: float, base: float) -> None:
    print(f"  {name:<44} {seconds * 1e3:9.1f} ms   {base / seconds:6.1f}x vs naive", flush=True)


def main() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("NETUQ_BENCH_THREADS", str(threads))))
    try:
        run()
    finally:
        torch.set_num_threads(threads)


def run() -> None:
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, S = {S}")

    # 1. dropout only before the classifier: the trunk is cached
    model = SmallCNN(1, 10, width=32, dropout=0.3).eval()
    x = torch.randn(64, 1, 28, 28)
    print("\n1. SmallCNN(width=32), dropout before the last Linear, batch 64 x 1 x 28 x 28")
    t_naive = timeit(lambda: naive(model, x), repeat=1, warmup=lambda: model(x))
    row("naive loop of S forward passes", t_naive, t_naive)
    mc = netuq.MCDropout(model, S, trunk="features", head="head")
    t_netuq = timeit(lambda: mc(x))
    row("netuq.MCDropout (trunk cached, seed=None)", t_netuq, t_naive)
    mc_seeded = netuq.MCDropout(model, S, trunk="features", head="head", seed=0)
    t_seeded = timeit(lambda: mc_seeded(x))
    row("netuq.MCDropout (trunk cached, seed=0)", t_seeded, t_naive)

    tu, how = load_torch_uncertainty()
    if tu is None:
        print(f"  TorchUncertainty mc_dropout: skipped ({how})")
    else:
        wrapped = tu(model, num_estimators=S, on_batch=True).eval()
        t_tu = timeit(lambda: _tu_probs(wrapped, x), repeat=1, warmup=lambda: model(x))
        row("TorchUncertainty mc_dropout(on_batch=True)", t_tu, t_naive)
        print(f"  ({how}); netuq is {t_tu / t_netuq:.1f}x faster than TorchUncertainty")
        model.eval()  # its .eval() left the dropout module in train mode

    # 2. dropout after every block: nothing to cache, batching alone
    torch.manual_seed(0)
    model = SmallCNN(1, 10, width=32, dropout=0.3, block_dropout=True).eval()
    x = torch.randn(8, 1, 28, 28)
    print("\n2. SmallCNN(width=32, block_dropout=True), batch 8 x 1 x 28 x 28")
    t_naive2 = timeit(lambda: naive(model, x), repeat=1, warmup=lambda: model(x))
    row("naive loop of S forward passes", t_naive2, t_naive2)
    t_batched = timeit(lambda: netuq.MCDropout(model, S)(x), repeat=2)
    row("netuq.MCDropout (batched, seed=None)", t_batched, t_naive2)
    t_batched_seed = timeit(lambda: netuq.MCDropout(model, S, seed=0)(x), repeat=2)
    row("netuq.MCDropout (batched, seed=0)", t_batched_seed, t_naive2)
    t_chunked = timeit(lambda: netuq.MCDropout(model, S, max_batch=80)(x), repeat=2)
    row("netuq.MCDropout (max_batch=80 rows)", t_chunked, t_naive2)
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
        t_naive1 = timeit(lambda: naive(model, x), repeat=1, warmup=lambda: model(x))
        row("one thread: naive loop", t_naive1, t_naive1)
        row("one thread: netuq.MCDropout (batched)", timeit(lambda: netuq.MCDropout(model, S)(x), 2), t_naive1)
        row(
            "one thread: netuq.MCDropout (max_batch=16)",
            timeit(lambda: netuq.MCDropout(model, S, max_batch=16)(x), 2),
            t_naive1,
        )
        torch.set_num_threads(threads)

    print("\nsummary")
    print(f"  trunk cached : {t_naive / t_netuq:6.1f}x faster than naive (target >= 10x)")
    print(f"  block dropout: {t_naive2 / t_batched:6.1f}x faster than naive (target >= 1.5x on CPU)")


def _tu_probs(wrapped, x):
    with torch.no_grad():
        out = wrapped(x)
    return out.reshape(S, x.shape[0], -1).softmax(2).mean(0)


if __name__ == "__main__":
    main()
