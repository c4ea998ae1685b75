"""``netuq benchmark``: train and compare every method, write results and report.html."""

from __future__ import annotations

import argparse
import sys
import time


def _csv(value: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list, got an empty value")
    return items


def register(sub) -> None:
    p = sub.add_parser(
        "benchmark",
        help="train and compare all methods on embedded data; write results.json and report.html",
        description="Train and compare MC dropout, deep ensembles, TTA, heteroscedastic and confidence heads "
        "(with none/temperature/vector/matrix scaling) in distribution, under shift and on OOD inputs.",
    )
    p.add_argument("--task", choices=("classification", "segmentation"), default=None)
    p.add_argument("--dataset", choices=("digits", "mnist", "fashionmnist", "cifar10"), default=None,
                   help="classification data (default: the embedded digits); others need --data-dir")
    p.add_argument("--data-dir", default=None,
                   help="local folder of MNIST / Fashion-MNIST (IDX files, .gz or not, flat or in raw/) or CIFAR-10 "
                   "(cifar-10-batches-py/); Fashion-MNIST is found by itself where the Debian package "
                   "dataset-fashion-mnist puts it")
    p.add_argument("--methods", type=_csv, default=None, help="comma-separated subset of methods")
    p.add_argument("--calibrators", type=_csv, default=None, help="comma-separated subset of calibrators")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda")
    p.add_argument("--seed", type=int, default=None, help="base seed: the seeds run are S, S+1 and so on (default 0)")
    p.add_argument("--seeds", type=int, default=None,
                   help="independent repetitions (data split, training, sampling); the report shows mean ± sd "
                   "over them (default 3; 1 for --quick and segmentation)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--out", default="netuq-run", help="run folder (reused to resume an interrupted run)")
    p.add_argument("--config", default=None, help="TOML file with benchmark settings ([benchmark] table)")
    p.add_argument("--quick", action="store_true", default=None, help="tiny smoke-test run (< 30 s)")
    p.add_argument("--logits", default=None,
                   help="folder of saved logits NAME_val.npz / NAME_test.npz (arrays logits, labels): every "
                   "calibrator fitted on val, scored on test, and the repeated 2-fold protocol on test; "
                   "no training (--calibrators, --seed, --repeats, --out apply)")
    p.add_argument("--repeats", type=int, default=None, help="--logits: repeats of the 2-fold protocol (default 5)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--jobs", type=int, default=None,
                   help="seeds run at once, one process each (default: one per core for digits, else 1)")
    p.set_defaults(run=run)


def run_logits(args, echo=print) -> int:
    """``--logits DIR``: no training; the results and report of every calibrator on saved logits."""
    from pathlib import Path

    from ..benchmark.logits import run_logits_benchmark
    from ..report.render import render_report

    start = time.perf_counter()
    results = run_logits_benchmark(args.logits, calibrators=args.calibrators,
                                   repeats=5 if args.repeats is None else args.repeats,
                                   seed=0 if args.seed is None else args.seed,
                                   log=(lambda m: None) if args.no_progress else (lambda m: print(m, file=sys.stderr)))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import json

    (out / "results.json").write_text(json.dumps(results, indent=1))
    render_report(results, out)
    for name, m in results["methods"].items():
        rec = m["logits_held_out"].get("recommendation")
        if rec is not None:
            tied = "" if rec["recommended"] != "tied" else f" ({', '.join([rec['best'], *rec['tied_with']])})"
            echo(f"{name}: error {1 - m['metrics']['accuracy']:.2%}, ECE {m['metrics']['ece']:.2%}; "
                 f"recommended: {rec['recommended']}{tied}")
    echo(f"wrote {out}/report.html, report.md, results.json, results.csv in {time.perf_counter() - start:.1f} s")
    return 0


def run(args, echo=print) -> int:
    if getattr(args, "logits", None) is not None:
        return run_logits(args, echo)
    from ..benchmark import load_config, run_benchmark
    from ..benchmark.results import RunDir

    config = load_config(
        args.config,
        task=args.task,
        dataset=args.dataset,
        data_dir=args.data_dir,
        methods=args.methods,
        calibrators=args.calibrators,
        device=args.device,
        seed=args.seed,
        seeds=args.seeds,
        epochs=args.epochs,
        quick=args.quick,
    )
    if config.device != "cpu":
        import torch

        try:
            torch.empty(1, device=config.device)
        except (RuntimeError, AssertionError) as err:
            raise ValueError(f"`--device` {config.device!r} is not available here ({err})") from None
    RunDir(args.out).check_files()  # a corrupt config.json or models/*.pt: one line naming it, before any work
    start = time.perf_counter()
    if args.jobs is not None and args.jobs < 1:
        raise ValueError(f"`--jobs` must be a positive integer, got {args.jobs}")
    results = run_benchmark(config, args.out, progress=not args.no_progress,
                            log=lambda m: print(m, file=sys.stderr), jobs=args.jobs)
    from ..report.render import summary_lines

    for line in summary_lines(results):
        echo(line)
    echo(f"wrote {args.out}/report.html, results.json, results.csv in {time.perf_counter() - start:.1f} s")
    return 0
