"""The benchmark runner: built-in data -> recipes (training) -> :func:`netuq.compare` -> report.

Every finished method is written atomically to ``parts/<method>.json`` in the run folder; a rerun
with the same folder and configuration skips finished methods (and reuses trained weights), so an
interrupted run continues where it stopped.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._checks import check_positive_int
from ..engine import compare
from ..results.schema import protocol_record
from . import recipes
from .config import BenchmarkConfig
from .results import RunDir, atomic_write_json

__all__ = ["run_benchmark", "BenchData", "prepare_data", "evaluate_method", "default_jobs"]


@dataclass
class BenchData:
    """Tensors the runner needs; ``shifted[kind][severity]`` is the corrupted test input."""

    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    num_classes: int
    shifted: dict[str, dict[int, torch.Tensor]]
    ood: tuple[torch.Tensor, list[str]] | None = None
    test_anomaly: torch.Tensor | None = None
    train_strata: torch.Tensor | None = None
    val_strata: torch.Tensor | None = None
    in_channels: int = 1
    info: dict[str, Any] = field(default_factory=dict)


def prepare_data(config: BenchmarkConfig) -> BenchData:
    """Load the embedded data set of the task and build its shifted and OOD versions."""
    from .. import data as D

    if config.task == "classification":
        if config.dataset == "digits":
            ds = D.load_digits(seed=config.seed)
        else:
            ds = D.load_torchvision(config.dataset, config.data_dir, seed=config.seed, max_train=config.max_train,
                                    max_test=config.max_test)
        test_x = ds.test[0]
        if config.dataset == "fashionmnist":  # near OOD (upscaled digits), photos, noise: n_ood split evenly
            sets = D.fashion_ood(max(1, config.n_ood // len(D.FASHION_OOD_KINDS)), seed=config.seed,
                                 size=tuple(test_x.shape[-2:]))
            ood_x = torch.cat(list(sets.values()))
            ood_kind = [k for k, v in sets.items() for _ in range(len(v))]
        else:
            ood_x, ood_kind = D.ood_images(config.n_ood, size=tuple(test_x.shape[-2:]), seed=config.seed,
                                           channels=test_x.shape[1])
        bench = BenchData(train=ds.train, val=ds.val, test=ds.test, num_classes=ds.num_classes,
                          shifted={}, ood=(ood_x, list(ood_kind)))
    else:
        sc = D.load_digit_scenes(config.n_scenes, size=config.scene_size, seed=config.seed)
        test_x = sc.test[0]
        bench = BenchData(train=sc.train, val=sc.val, test=sc.test, num_classes=sc.num_classes, shifted={},
                          test_anomaly=sc.test_anomaly, train_strata=sc.train_strata, val_strata=sc.val_strata)
    for i, kind in enumerate(D.SHIFTS):
        bench.shifted[kind] = {
            sev: D.corrupt(test_x, kind, sev, seed=config.seed + 100 * i + sev) for sev in config.severities
        }
    bench.in_channels = int(test_x.shape[1])
    bench.info = {"dataset": config.dataset if config.task == "classification" else "digit scenes",
                  "train": len(bench.train[1]), "val": len(bench.val[1]), "test": len(bench.test[1]),
                  "num_classes": bench.num_classes,
                  "class_names": [str(n) for n in (ds if config.task == "classification" else sc).class_names]}
    if bench.ood is not None:  # per kind, in the order they come (the report's data sentence lists them)
        bench.info["ood"] = dict(Counter(str(k) for k in bench.ood[1]))
    if config.task == "segmentation":
        y = bench.test[1]
        bench.info["pixels"] = int((y != recipes.IGNORE).sum())
        if bench.test_anomaly is not None:
            bench.info["ood"] = {"anomaly": int(torch.as_tensor(bench.test_anomaly).sum())}
    return bench


def _summarise_warnings(caught: list[warnings.WarningMessage]) -> list[dict[str, Any]]:
    """Unique warning messages (first line) with how often each was raised."""
    counts = Counter(f"{w.category.__name__}: {str(w.message).splitlines()[0]}" for w in caught)
    return [{"message": msg, "count": n} for msg, n in sorted(counts.items())]


def _batches(x: torch.Tensor, *rest: torch.Tensor | None, size: int) -> list[tuple[torch.Tensor, ...]]:
    parts = [t for t in rest if t is not None]
    return [(x[i : i + size], *(t[i : i + size] for t in parts)) for i in range(0, len(x), size)]


def evaluate_method(method: str, predictor, data: BenchData, config: BenchmarkConfig) -> dict:
    """Every number the report shows for one method: the benchmark data as loaders, through
    :func:`netuq.compare` (2-fold calibration protocol on the test set, shifts, OOD)."""
    seg = config.task == "segmentation"
    size = 32 if seg else 512
    x_test, y_test = data.test
    test = _batches(x_test, y_test, data.test_anomaly if seg else None, size=size)
    shifts = {kind: {sev: _batches(xs, y_test, size=size) for sev, xs in by_sev.items()}
              for kind, by_sev in data.shifted.items()}
    ood = None
    if data.ood is not None:
        ood_x, kinds = data.ood
        ood = {}
        for kind in dict.fromkeys(kinds):
            idx = torch.tensor([i for i, k in enumerate(kinds) if k == kind])
            ood[kind] = _batches(ood_x[idx], size=size)
    results = _compare(method, predictor, test, shifts, ood, config, seg)
    part = results["methods"][method]
    part["method"] = method
    part["label"] = recipes.RECIPES[method].label
    return part


def _compare(method, predictor, test, shifts, ood, config: BenchmarkConfig, seg: bool) -> dict:
    return compare(
        {method: predictor},
        test,
        calibration=None,
        calibrators=config.calibrators,
        ood=ood,
        shifts=shifts,
        ignore_index=recipes.IGNORE if seg else None,
        n_bins=config.n_bins,
        seed=config.seed,
        device=config.device,
        repeats=config.cv_repeats,
        calibration_samples=config.calibration_pixels if seg else None,
    )


def one_thread(config: BenchmarkConfig) -> bool:
    """Whether a seed runs on one thread: digits classification, whose tensors are tiny (8 x 8
    images, 539 x 10 logits): training is no faster on two threads and the calibrators' many small
    L-BFGS steps are several times slower on two contending ones. Its numbers therefore do not
    depend on the machine's cores or on ``jobs``."""
    return config.dataset == "digits" and config.task == "classification"


def _run_seed(config: BenchmarkConfig, run: RunDir, say: Callable[[str], None], bar, *, write: bool,
              data: BenchData | None = None) -> dict[str, Any]:
    """One seed's results (a single-seed results dict); finished parts in ``run`` are reused."""
    threads = torch.get_num_threads()
    if one_thread(config):
        torch.set_num_threads(1)
    try:
        return _run_seed_methods(config, run, say, bar, write=write, data=data)
    finally:
        torch.set_num_threads(threads)


def _seed_job(config: BenchmarkConfig, root: str, threads: int) -> dict[str, Any]:
    """One seed in a worker process (``jobs > 1``)."""
    torch.set_num_threads(threads)
    return _run_seed(config, RunDir(root), lambda _msg: None, None, write=True)


def default_jobs(config: BenchmarkConfig) -> int:
    """Seeds run at once when ``jobs`` is None: one per core (at most one per seed) for digits on
    the CPU, whose one-thread seeds leave the other cores idle; otherwise 1 (a seed's threads use
    the cores).

    Example:
        >>> from netuq.benchmark import load_config
        >>> default_jobs(load_config(seeds=1)), default_jobs(load_config(seeds=3)) == min(3, os.cpu_count() or 1)
        (1, True)
    """
    if config.seeds == 1 or config.device != "cpu" or not one_thread(config):
        return 1
    return max(1, min(config.seeds, os.cpu_count() or 1))


def _run_seed_methods(config: BenchmarkConfig, run: RunDir, say: Callable[[str], None], bar, *, write: bool,
                      data: BenchData | None = None) -> dict[str, Any]:
    run.root.mkdir(parents=True, exist_ok=True)
    run.check_config(config.to_dict())
    data = data if data is not None else prepare_data(config)
    say(f"seed {config.seed}: data {data.info}")

    base_model: list[torch.nn.Module] = []

    def base() -> torch.nn.Module:
        if not base_model:
            base_model.append(recipes.train_base(config, data, run.root / "models" / "base.pt"))
        return base_model[0]

    for method in config.methods:
        if run.has_part(method):
            say(f"seed {config.seed} {method}: done already, reusing {run.part_path(method)}")
            if bar is not None:
                bar.update(1)
            continue
        t0 = time.perf_counter()
        if bar is not None:
            bar.set_postfix_str(f"seed {config.seed} {method}: training")

        # Expected numerical warnings (e.g. a nearly separable half of the 2-fold protocol) are
        # recorded with the results instead of flooding the terminal.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            predictor = recipes.RECIPES[method].build(config, data, run.root / "models", base)
            t1 = time.perf_counter()
            if bar is not None:
                bar.set_postfix_str(f"seed {config.seed} {method}: evaluating")
            part = evaluate_method(method, predictor, data, config)
        part["runtime_s"] = {"train": t1 - t0, "evaluate": time.perf_counter() - t1}
        part["warnings"] = _summarise_warnings(caught)
        run.write_part(method, part)
        say(f"seed {config.seed} {method}: {part['runtime_s']['train']:.1f} s training, "
            f"{part['runtime_s']['evaluate']:.1f} s evaluation")
        if bar is not None:
            bar.update(1)
    methods = {m: run.read_part(m) for m in config.methods}
    results = {
        "schema": 1,
        "task": config.task,
        "config": config.to_dict(),
        "data": data.info,
        "protocol": protocol_record(source="benchmark", held_out=False, repeats=config.cv_repeats,
                                    calibrators=config.calibrators, shifts=data.shifted),
        "methods": methods,
        "runtime_s": {"methods": {m: p.get("runtime_s", {}) for m, p in methods.items()}},
    }
    if write:  # a seed of a multi-seed run: its own results.json beside its parts
        atomic_write_json(run.root / "results.json", results)
    return results


def seed_dir(out: str | Path, config: BenchmarkConfig, seed: int) -> Path:
    """The folder of one seed: the run folder itself for a one-seed run, ``out/seed-<seed>`` otherwise."""
    return Path(out) if config.seeds == 1 else Path(out) / f"seed-{seed}"


def run_benchmark(
    config: BenchmarkConfig,
    out: str | Path,
    *,
    progress: bool = False,
    render: bool = True,
    log: Callable[[str], None] | None = None,
    jobs: int | None = None,
) -> dict[str, Any]:
    """Run (or resume) the benchmark into ``out`` and return the results (aggregated over seeds).

    ``jobs`` seeds run at once, each in its own process (None: :func:`default_jobs`); a seed's
    results do not depend on it for digits (one thread per seed either way); elsewhere each
    process gets cores / jobs threads, and float rounding may then differ in the last digits.

    Each seed ``config.seed + i`` (``i < config.seeds``) is an independent repetition: its own data
    split, training and sampling, written to ``out/seed-<s>/`` (``parts/<method>.json`` as each
    method finishes, ``models/``, then that seed's ``results.json``); a one-seed run writes these
    into ``out`` itself. Finished parts and trained networks are reused, so an interrupted run
    resumes where it stopped. The seeds' results are merged by
    :func:`netuq.report.aggregate_seeds` (mean ± sd over seeds, every seed's numbers under
    ``"seeds"``) into ``out/results.json``, with ``"notes"`` saying how the methods were configured;
    then ``results.csv`` and, with ``render``, the figures and ``report.html``.
    """
    from ..report import aggregate_seeds

    say = log or (lambda _msg: None)
    run = RunDir(out)
    run.root.mkdir(parents=True, exist_ok=True)
    run.check_config(config.to_dict())
    start = time.perf_counter()
    first = prepare_data(config.for_seed(config.seed))  # a missing data set fails before the progress bar
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(config.methods) * config.seeds, desc="benchmark", unit="method")
    jobs = default_jobs(config) if jobs is None else check_positive_int(jobs, "jobs")
    try:
        if min(jobs, config.seeds) > 1:
            per_seed = _run_seeds_in_processes(config, out, min(jobs, config.seeds), say, bar)
        else:
            per_seed = [_run_seed(config.for_seed(s), RunDir(seed_dir(out, config, s)), say, bar,
                                  write=config.seeds > 1, data=first if s == config.seed else None)
                        for s in config.seed_list]
    finally:
        if bar is not None:
            bar.close()
    results = aggregate_seeds(per_seed)
    results["config"] = config.to_dict()
    results["notes"] = recipes.method_notes(config)
    runtime = results.setdefault("runtime_s", {})
    runtime["total_this_run"] = time.perf_counter() - start
    atomic_write_json(run.root / "results.json", results)
    if render:
        from ..report import render_report

        render_report(results, run.root)  # report.html, report.md, figures/, results.csv
    else:
        from ..report import write_csv

        write_csv(results, run.root / "results.csv")
    return results


def _run_seeds_in_processes(config: BenchmarkConfig, out, jobs: int, say, bar) -> list[dict[str, Any]]:
    """Every seed of ``config`` in a pool of ``jobs`` fresh (spawned) processes, in seed order.

    Each seed writes its own folder as in a sequential run (so an interrupted run resumes either
    way); a failing seed cancels the seeds not yet started and re-raises its error.
    """
    threads = max(1, (os.cpu_count() or 1) // jobs)
    done: dict[int, dict[str, Any]] = {}
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_seed_job, config.for_seed(s), str(seed_dir(out, config, s)), threads): s
                   for s in config.seed_list}
        try:
            for future in as_completed(futures):
                seed = futures[future]
                done[seed] = future.result()
                times = done[seed]["runtime_s"]["methods"]
                total = sum(sum(t.values()) for t in times.values())
                say(f"seed {seed}: done ({total:.1f} s of training and evaluation, {jobs} seeds at a time)")
                if bar is not None:
                    bar.update(len(config.methods))
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return [done[s] for s in config.seed_list]
