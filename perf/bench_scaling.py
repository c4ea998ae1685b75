"""Vector and matrix scaling as the number of classes grows: netuq against TorchUncertainty and scikit-learn.

Every case fits on one set of logits and scores the negative log-likelihood (NLL) on a held-out
set: synthetic logits (seeded, overconfident, ~75 % accuracy, every class equally often; N fit
+ N held-out rows) at C = 10 and 100 with N = 5,000, and the real CIFAR-100 ResNet-110 logits
(validation file: fit, test file: score) when the folder of shared real logits is found
(``--logits DIR`` or the ``NETUQ_REAL_LOGITS`` variable; default ``../shared/real-logits`` beside
the repository). ``--big`` adds C = 1,000 at N = 5,000 and N = 50,000 at C = 10, 100, 1,000
(minutes to hours for the peers); ``--sizes 5000x1000,50000x100`` runs just those. A size whose
fit the machine cannot hold is refused by netuq before any work (``NotEnoughMemoryError``): the
row says so.

Compared, on the same float32 logits, on one thread (torch and every BLAS / OpenMP pool, through
threadpoolctl):

* netuq ``VectorScaling()`` and ``MatrixScaling()`` — the defaults: L2 / ODIR penalty chosen by
  3-fold inner cross-validation, then a final fit;
* TorchUncertainty ``VectorScaler``, ``MatrixScaler``, ``DirichletScaler`` (their defaults:
  torch LBFGS, lr 0.1, 100 / 200 / 200 iterations, unregularised);
* scikit-learn ``LogisticRegression`` with its defaults (multinomial, lbfgs, L2 with C = 1,
  max_iter 100: it stops there unconverged at C = 100, as a user running it would see) on the
  logits as features.

Each row prints fit seconds (best of ``--repeats``; one run for fits over 3 s) and held-out
NLL; the ratio columns compare each peer with its netuq counterpart (vector ↔ VectorScaler, matrix default ↔ the rest):
``speed x`` = peer time / netuq time (>= 1: netuq at least as fast) and ``ΔNLL`` = netuq − peer
(<= 0: netuq no worse). A last table gives netuq's fit time against C (N = 5,000) with the
log-log slope (2 would mean time ∝ C², the cost of one pass of matrix scaling over the data).

The script exits with an error listing the rows where netuq is slower than a peer or its
held-out NLL worse by more than 1e-4 (so ``make bench`` shows a missed target).

Run: ``.venv/bin/python perf/bench_scaling.py [--big] [--sizes NxC,...] [--repeats R] [--logits DIR]``
(or ``make bench``).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from netuq.calibration import MatrixScaling, VectorScaling
from netuq.exceptions import NotEnoughMemoryError

HERE = Path(__file__).resolve().parent


def make_logits(n: int, c: int, *, seed: int, scale: float = 4.0):
    """Seeded overconfident logits with ~75 % accuracy (balanced labels: every class n/c times, shuffled;
    Gaussian scores + a class margin)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, c, generator=g)
    y = torch.arange(n)[torch.randperm(n, generator=g)] % c
    margin = {10: 2.3, 100: 3.05, 1000: 3.9}.get(c, 3.0)
    base[torch.arange(n), y] += margin
    return (scale * base).contiguous(), y


def real_logits_dir(arg: str | None) -> Path | None:
    for cand in (arg, os.environ.get("NETUQ_REAL_LOGITS"), HERE.parent.parent / "shared" / "real-logits",
                 "/work/shared/real-logits"):
        if cand and (Path(cand) / "cifar100_resnet110_val.npz").is_file():
            return Path(cand)
    return None


# ----------------------------------------------------------------------------- the contenders
def netuq(make):
    def fit(z, y):
        cal = make().fit(z, y)
        return cal
    return fit


def tu(cls_name: str):
    def fit(z, y):
        from torch.utils.data import DataLoader, TensorDataset
        from torch_uncertainty import post_processing

        scaler = getattr(post_processing, cls_name)(num_classes=z.shape[1])
        scaler.fit(DataLoader(TensorDataset(z, y), batch_size=len(y)), progress=False)
        return scaler
    return fit


def sklearn_lr(z, y):
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression().fit(z.double().numpy(), y.numpy())

    def log_proba(q):  # a class absent from the fit data has no column: probability 0
        out = torch.full((q.shape[0], z.shape[1]), -math.inf, dtype=torch.float64)
        out[:, torch.from_numpy(model.classes_)] = torch.from_numpy(model.predict_log_proba(q.double().numpy()))
        return out
    return log_proba


ROWS = [  # (label, fit, netuq counterpart label or None)
    ("netuq VectorScaling() [L2 auto]", netuq(VectorScaling), None),
    ("netuq MatrixScaling() [ODIR auto]", netuq(MatrixScaling), None),
    ("TorchUncertainty VectorScaler", tu("VectorScaler"), "netuq VectorScaling() [L2 auto]"),
    ("TorchUncertainty MatrixScaler", tu("MatrixScaler"), "netuq MatrixScaling() [ODIR auto]"),
    ("TorchUncertainty DirichletScaler", tu("DirichletScaler"), "netuq MatrixScaling() [ODIR auto]"),
    ("sklearn LogisticRegression", sklearn_lr, "netuq MatrixScaling() [ODIR auto]"),
]


def tu_problem() -> str | None:
    try:
        from torch_uncertainty.post_processing import DirichletScaler, MatrixScaler, VectorScaler  # noqa: F401
    except Exception as err:  # noqa: BLE001 - say exactly why, whatever it is
        return f"{type(err).__name__}: {err}".splitlines()[0]
    return None


def held_out_nll(model, z, y) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(model(z).double(), y))


def run_case(title, ztr, ytr, zte, yte, repeats, skip_tu, netuq_only=False):
    print(f"\n{title}: fit {tuple(ztr.shape)}, held-out {tuple(zte.shape)}, "
          f"accuracy {float((zte.argmax(1) == yte).float().mean()):.3f}, "
          f"uncalibrated held-out NLL {float(F.cross_entropy(zte.double(), yte)):.4f}")
    out, refused = {}, {}
    for label, fit, _ in ROWS:
        if (skip_tu and label.startswith("TorchUncertainty")) or (netuq_only and not label.startswith("netuq")):
            continue
        best, model = math.inf, None
        try:
            for _ in range(repeats):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    t0 = time.perf_counter()
                    model = fit(ztr, ytr)
                    best = min(best, time.perf_counter() - t0)
                if best > 3.0:  # a slow fit's timing is stable enough: no second run
                    break
        except NotEnoughMemoryError as err:  # refused before any work: the row says why
            refused[label] = str(err)
            continue
        out[label] = (best, held_out_nll(model, zte, yte))
    print(f"{'':<36}{'fit s':>9}{'held-out NLL':>14}{'speed x':>9}{'ΔNLL':>9}  verdict")
    missed = []
    for label, _, ref in ROWS:
        if label in refused:
            print(f"{label:<36}  refused: {refused[label]}")
            continue
        if label not in out:
            continue
        secs, nll = out[label]
        tail = ""
        if ref is not None and ref in out:
            r_secs, r_nll = out[ref]
            speed, d = secs / r_secs, r_nll - nll
            verdict = "ok" if speed >= 1.0 and d <= 1e-4 else ("SLOWER" if speed < 1.0 else "") + (
                " WORSE NLL" if d > 1e-4 else "")
            if verdict != "ok":
                missed.append(f"{title}: {label} vs {ref}: {verdict.strip()} (speed x {speed:.2f}, ΔNLL {d:+.4f})")
            tail = f"{speed:>9.2f}{d:>+9.4f}  {verdict.strip()} (vs {ref.split(' [')[0].replace('netuq ', '')})"
        print(f"{label:<36}{secs:>9.3f}{nll:>14.5f}{tail}")
    return missed


def curve(cs, n, repeats):
    print(f"\nnetuq fit time against C (synthetic, N = {n:,}, best of {repeats}); slope of log time on log C")
    times = {"vector": [], "matrix": []}
    print(f"{'C':>6}{'vector s':>10}{'matrix s':>10}{'C² x N / 1e9':>14}")
    for c in cs:
        z, y = make_logits(n, c, seed=3)
        row = []
        for key, make in (("vector", VectorScaling), ("matrix", MatrixScaling)):
            best = math.inf
            for _ in range(repeats):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    t0 = time.perf_counter()
                    make().fit(z, y)
                    best = min(best, time.perf_counter() - t0)
            times[key].append(best)
            row.append(best)
        print(f"{c:>6}{row[0]:>10.3f}{row[1]:>10.3f}{c * c * n / 1e9:>14.3f}")
    for key, ts in times.items():
        slope = np.polyfit(np.log(cs), np.log(ts), 1)[0]
        print(f"{key}: time ~ C^{slope:.2f}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--big", action="store_true", help="add C = 1,000 and N = 50,000 (long)")
    p.add_argument("--repeats", type=int, default=2, help="fits per contender, best time kept (default 2)")
    p.add_argument("--logits", default=None, help="folder of the shared real logits (NAME_val.npz / NAME_test.npz)")
    p.add_argument("--sizes", default=None, help="only these synthetic sizes, e.g. 5000x1000,50000x100 (no curve)")
    p.add_argument("--netuq-only", action="store_true", help="no peers (sizes where they take hours)")
    args, _ = p.parse_known_args(argv)  # under perf/run_all.py the arguments are its own
    threads = int(os.environ.get("NETUQ_BENCH_THREADS", "1"))
    torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn depends on it
        print("threadpoolctl missing: numpy / scikit-learn may use several threads")
    else:
        threadpool_limits(threads)
    logging.disable(logging.WARNING)  # TorchUncertainty logs a warning per fit without a model
    start = time.perf_counter()
    problem = tu_problem()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    if problem:
        print(f"TorchUncertainty: not run: `from torch_uncertainty.post_processing import VectorScaler, "
              f"MatrixScaler, DirichletScaler` fails with {problem}")
    MatrixScaling().fit(*make_logits(60, 4, seed=9))  # warm-up: first-call overheads
    big = [(5000, 1000), (50_000, 10), (50_000, 100), (50_000, 1000)]
    sizes = [(5000, 10), (5000, 100)] + (big if args.big else [])
    if args.sizes:
        sizes = [tuple(int(v) for v in item.lower().split("x")) for item in args.sizes.split(",")]
    missed = []
    for n, c in sizes:
        (zf, yf), (zh, yh) = make_logits(n, c, seed=1), make_logits(n, c, seed=2)
        missed += run_case(f"synthetic N = {n:,}, C = {c:,}", zf, yf, zh, yh, args.repeats, bool(problem),
                           args.netuq_only)
    folder = real_logits_dir(args.logits)
    if args.sizes:
        folder = None  # just the sizes asked for
    elif folder is None:
        print("\nreal CIFAR-100 logits: not found (pass --logits DIR or set NETUQ_REAL_LOGITS); skipped")
    if folder is not None:
        val, test = (np.load(folder / f"cifar100_resnet110_{part}.npz") for part in ("val", "test"))
        missed += run_case(f"real CIFAR-100 ResNet-110 ({folder})", torch.from_numpy(val["logits"]),
                           torch.from_numpy(val["labels"]), torch.from_numpy(test["logits"]),
                           torch.from_numpy(test["labels"]), args.repeats, bool(problem))
    if not args.sizes:
        curve([10, 30, 100, 300] + ([1000] if args.big else []), 5000, 1)
    print(f"\ntotal {time.perf_counter() - start:.1f} s")
    if missed:
        sys.exit("netuq missed a target in bench_scaling:\n  " + "\n  ".join(missed))


if __name__ == "__main__":
    main(sys.argv[1:])
