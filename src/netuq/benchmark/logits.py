"""``netuq benchmark --logits DIR``: every registered calibrator on a folder of saved logits.

The folder holds pairs ``NAME_val.npz`` / ``NAME_test.npz`` (arrays ``logits`` (N, C) float and
``labels`` (N,) int; any other file is ignored). For each NAME (a network):

* the uncalibrated test metrics (:func:`netuq.metrics.evaluate`) and reliability bins;
* every calibrator of the registry (read at call time, so a user's registration is included)
  fitted on the validation file and scored on the test file (NLL, ECE, Brier, accuracy, fit
  seconds; reliability bins with their ECE) — the ``logits_held_out`` result section;
* the repeated 2-fold protocol on the test file (Ashukha et al. 2020) through
  :func:`netuq.calibration.cross_validate`: mean ± sd over folds × repeats, in
  ``in_distribution`` (the report's main table);
* a recommendation: the calibrator with the lowest protocol NLL, named only when its lead over
  every other calibrator exceeds the larger of the two sds; otherwise "tied" with those within it.

The results follow :mod:`netuq.results.schema` (each network is a "method") and are drawn by
the same report as the other benchmarks.

Example:
    >>> import tempfile, numpy as np, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()); g = np.random.default_rng(0)
    >>> for part, n in (("val", 200), ("test", 200)):
    ...     y = g.integers(0, 3, n); z = 3 * g.normal(size=(n, 3)); z[np.arange(n), y] += 2
    ...     np.savez(d / f"toy_{part}.npz", logits=z.astype("float32"), labels=y)
    >>> res = run_logits_benchmark(d, calibrators=["temperature"], repeats=1)
    >>> sorted(res["methods"]["toy"]["in_distribution"])
    ['none', 'temperature']
"""

from __future__ import annotations

import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import metrics as M
from ..calibration import cross_validate, registry
from ..results.schema import protocol_record, validate_results
from . import _logits_section  # noqa: F401  (registers the result section)

__all__ = ["load_logits_dir", "run_logits_benchmark", "recommend"]

PROTOCOL_METRICS = ("nll", "ece", "brier", "accuracy")


def _load(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One npz file's (logits (N, C) float, labels (N,) int64); ValueError naming the file."""
    try:
        f = np.load(path, allow_pickle=False)
        if not isinstance(f, np.lib.npyio.NpzFile):
            raise ValueError("a single array, not an .npz archive")
        with f:
            files = list(f.files)
            arrays = {k: f[k] for k in ("logits", "labels") if k in files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise ValueError(f"`{path}` must be a readable .npz file (no pickles), got: {err}") from None
    missing = [k for k in ("logits", "labels") if k not in arrays]
    if missing:
        raise ValueError(f"`{path}` must hold arrays 'logits' and 'labels', missing {missing} (found {sorted(files)})")
    z, y = arrays["logits"], arrays["labels"]
    if z.ndim != 2 or z.shape[1] < 2 or not np.issubdtype(z.dtype, np.floating):
        raise ValueError(f"`{path}`: 'logits' must be a float array (N, C) with C >= 2, "
                         f"got {z.dtype} of shape {z.shape}")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"`{path}`: 'labels' must be an integer array (N,), got {y.dtype} of shape {y.shape}")
    if len(y) != len(z) or len(y) < 2:
        raise ValueError(f"`{path}`: 'labels' must have one entry per row of 'logits' (N >= 2), "
                         f"got {len(y)} labels for {len(z)} rows")
    if not np.isfinite(z).all():
        raise ValueError(f"`{path}`: 'logits' must be finite, got {int((~np.isfinite(z)).sum())} NaN/inf values")
    if y.min() < 0 or y.max() >= z.shape[1]:
        raise ValueError(f"`{path}`: 'labels' must be in [0, {z.shape[1] - 1}], got values in [{y.min()}, {y.max()}]")
    return torch.from_numpy(np.ascontiguousarray(z)), torch.from_numpy(y.astype(np.int64))


def load_logits_dir(directory: str | Path) -> dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Every ``NAME_val.npz`` / ``NAME_test.npz`` pair of ``directory``, validated, by NAME (sorted).

    Returns:
        ``{NAME: {"val": (logits (N, C), labels (N,)), "test": (logits (M, C), labels (M,))}}``.

    Raises:
        ValueError: one line naming the folder or the file at fault (not a folder, no pair, a
            file without its partner, unreadable, wrong arrays, val/test with different C).
    """
    d = Path(directory)
    if not d.is_dir():
        raise ValueError(f"`--logits` must be a folder of NAME_val.npz / NAME_test.npz files, got {str(d)!r}")
    names = sorted({p.name[:-len(s)] for s in ("_val.npz", "_test.npz") for p in d.glob("*" + s)})
    if not names:
        raise ValueError(f"`--logits` folder {str(d)!r} holds no NAME_val.npz / NAME_test.npz file")
    out = {}
    for name in names:
        parts = {}
        for part in ("val", "test"):
            path = d / f"{name}_{part}.npz"
            if not path.is_file():
                raise ValueError(f"`{path}` is missing: each NAME_val.npz needs its NAME_test.npz and back")
            parts[part] = _load(path)
        if parts["val"][0].shape[1] != parts["test"][0].shape[1]:
            raise ValueError(f"`{d / (name + '_test.npz')}`: 'logits' must have as many classes as the validation "
                             f"file ({parts['val'][0].shape[1]}), got {parts['test'][0].shape[1]}")
        out[name] = parts
    return out


def recommend(in_distribution: dict[str, dict[str, dict[str, float]]], metric: str = "nll") -> dict[str, Any]:
    """The calibrator whose protocol ``metric`` (lower is better) leads beyond the spread, else a tie.

    The best mean wins only when, for every other calibrator, the gap exceeds the larger of the two
    sds; otherwise the result is ``"tied"`` with every calibrator whose gap does not.

    Example:
        >>> s = lambda m, sd: {"nll": {"mean": m, "std": sd}}
        >>> recommend({"none": s(1.0, .01), "a": s(0.5, .01), "b": s(0.9, .01)})["recommended"]
        'a'
        >>> recommend({"a": s(0.50, .02), "b": s(0.51, .02)})
        {'metric': 'nll', 'recommended': 'tied', 'best': 'a', 'tied_with': ['b']}
    """
    stats = {k: v[metric] for k, v in in_distribution.items() if v.get(metric, {}).get("mean") is not None}
    best = min(stats, key=lambda k: stats[k]["mean"])
    b = stats[best]
    tied = [k for k, s in stats.items() if k != best
            and s["mean"] - b["mean"] <= max(s.get("std") or 0.0, b.get("std") or 0.0)]
    return {"metric": metric, "recommended": best if not tied else "tied", "best": best, "tied_with": tied}


def _bins(p: torch.Tensor, y: torch.Tensor, n_bins: int) -> dict[str, Any]:
    bins = M.reliability_bins(p, y, n_bins=n_bins, validate_args=False).to_dict()
    bins["ece"] = M.ece(p, y, n_bins=n_bins, validate_args=False)
    return bins


def _network(name, parts, cals, *, repeats, seed, n_bins, log) -> dict[str, Any]:
    (zv, yv), (zt, yt) = parts["val"], parts["test"]
    p_raw = torch.softmax(zt.double(), 1)
    held = {registry.NONE: {**{k: float(v) for k, v in M.evaluate(p_raw, yt, n_bins=n_bins).items()
                               if k in PROTOCOL_METRICS}, "fit_s": 0.0}}
    reliability = {"uncalibrated": _bins(p_raw, yt, n_bins)}
    in_dist: dict[str, dict[str, dict[str, float]]] = {}
    runtime = {}
    for cal in cals:
        log(f"{name}: {cal}")
        t0 = time.perf_counter()
        fitted = registry.make(cal).fit(zv, yv, seed=seed)
        fit_s = time.perf_counter() - t0
        p = torch.softmax(fitted(zt).double(), 1)
        held[cal] = {"nll": M.nll(p, yt, validate_args=False), "ece": M.ece(p, yt, n_bins=n_bins, validate_args=False),
                     "brier": M.brier(p, yt, validate_args=False), "accuracy": M.accuracy(p, yt, validate_args=False),
                     "fit_s": fit_s}
        reliability[cal] = _bins(p, yt, n_bins)
        t0 = time.perf_counter()
        cv = cross_validate(registry.make(cal), zt, yt, repeats=repeats, seed=seed, n_bins=n_bins)
        runtime[f"fit {cal}"] = fit_s
        runtime[f"2-fold {cal}"] = time.perf_counter() - t0
        if registry.NONE not in in_dist:
            in_dist[registry.NONE] = {k: {"mean": cv["uncalibrated"][k]["mean"], "std": cv["uncalibrated"][k]["std"]}
                                      for k in PROTOCOL_METRICS}
        in_dist[cal] = {k: {"mean": cv[k]["mean"], "std": cv[k]["std"]} for k in PROTOCOL_METRICS}
    metrics = {k: float(v) for k, v in M.evaluate(p_raw, yt, n_bins=n_bins).items()}
    wrong = int((p_raw.argmax(1) != yt).sum())
    out = {"label": name, "metrics": metrics, "reliability": reliability, "runtime_s": runtime,
           "counts": {"test": int(len(yt)), "errors": wrong},
           "logits_held_out": {"val": int(len(yv)), "test": int(len(yt)), "classes": int(zt.shape[1]),
                               "rows": held}}
    if in_dist:
        out["in_distribution"] = in_dist
        out["logits_held_out"]["recommendation"] = recommend({k: v for k, v in in_dist.items() if k != registry.NONE})
    return out


def run_logits_benchmark(directory: str | Path, *, calibrators: Sequence[str] | None = None, repeats: int = 5,
                         seed: int = 0, n_bins: int = 15,
                         log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Every calibrator (default: the whole registry at call time) on every network of ``directory``.

    Args:
        directory: folder of ``NAME_val.npz`` / ``NAME_test.npz`` (see :func:`load_logits_dir`).
        calibrators: registry names (default all; ``"none"`` is always reported).
        repeats: repeats R of the 2-fold protocol on the test file (2R fits per calibrator).
        seed: seed of the protocol's splits and the fits.
        n_bins: equal-width bins of the ECE (15, (lo, hi]) and the reliability diagrams.
        log: progress messages.

    Returns:
        A results dict (:mod:`netuq.results.schema`, validated): one "method" per NAME.
    """
    cals = [c for c in (registry.names(none=False) if calibrators is None else calibrators) if c != registry.NONE]
    for c in cals:
        registry.make(c)  # an unknown name: one line listing the registered ones, before any work
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"`--repeats` must be an integer >= 1, got {repeats!r}")
    data = load_logits_dir(directory)
    t0 = time.perf_counter()
    methods = {name: _network(name, parts, cals, repeats=repeats, seed=seed, n_bins=n_bins, log=log)
               for name, parts in data.items()}
    first = next(iter(data.values()))
    results = {
        "schema": 1,
        "task": "classification",
        "config": {"logits": str(directory), "calibrators": list(cals), "repeats": repeats, "seed": seed,
                   "n_bins": n_bins},
        "data": {"dataset": f"saved logits ({Path(directory).name})", "networks": len(data),
                 "val": int(len(first["val"][1])), "test": int(len(first["test"][1]))},
        "runtime_s": {"total_this_run": time.perf_counter() - t0},
        "methods": methods,
        "notes": ["Each network is one row: its logits were saved, nothing was trained. Calibrators are fitted on "
                  "NAME_val.npz and scored on NAME_test.npz (held-out table); the main table is the repeated "
                  f"2-fold protocol on the test file ({repeats} repeats)."],
        "vocabulary": {"calibrators": registry.describe([registry.NONE, *cals])},
        "protocol": protocol_record(source="benchmark --logits", held_out=False, repeats=repeats, calibrators=cals),
    }
    return validate_results(results)
