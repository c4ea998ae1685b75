"""The results schema: what ``netuq.compare`` returns, ``netuq benchmark`` writes to ``results.json``
and the report reads — the contract between the three, owned by none of them.

Plain JSON data only (dicts, lists, str, int, float, bool, null); no NaN or Infinity (write
``null``). Mappings keep their insertion order, which is the display order. Everything marked
*optional* may be left out: the report skips what is missing.

Top level::

    {
      "schema": 1,                               # int, this layout's version
      "task": "classification" | "segmentation",
      "config": {KEY: JSON, ...},                # the run configuration (BenchmarkConfig.to_dict())
      "data": {KEY: JSON, ...},                  # optional: e.g. {"train": 988, "val": 270, "test": 539}
      "runtime_s": {                             # optional
        "total_this_run": float,                 #   any number here is listed as a run total
        "methods": {METHOD: {PHASE: float}}      #   e.g. {"train": 12.3, "evaluate": 1.4}
      },
      "methods": {METHOD: MethodResults, ...},   # at least one
      "seeds": {SEED: SeedResults, ...},         # optional: a multi-seed run (see below)
      "notes": [str, ...],                       # optional: how the run sized and configured its
                                                 #   methods (listed under the report's header)
      "vocabulary": {                            # optional: labels and traits of the names used
        "scores": {SCORE: {"label": str, "kind": "total"|"aleatoric"|"epistemic"}},
        "calibrators": {CAL: {"label": str, "changes_prediction": bool|null}}
      },                                         #   (netuq.compare writes it; else the registries)
      "protocol": Protocol                       # optional: how the numbers were made (below)
    }

    Protocol = {"source": "compare" | "benchmark" | str,   # what produced the results
                "calibration": "cross_validation"          # in_distribution's calibrated numbers: the
                             | "held_out",                 #   repeated 2-fold protocol on the test set, or
                                                           #   calibrators fitted on a calibration set
                "folds"?: int, "repeats"?: int,            # cross_validation: 2 folds x repeats
                "calibrators"?: [CAL, ...],                # what was asked for
                "temperature"?: "test" | "calibration",    # where `temperature` (and the shifts'
                                                           #   ece_temperature) was fitted
                "shifts"?: {KIND: [severity, ...]}}        # the severities each shift ran at

``data`` keys the report reads when present: ``dataset`` (str), ``train``, ``val``, ``test``,
``calibration`` (examples), ``pixels`` (valid test pixels), ``num_classes``, ``ood`` (an int or
``{KIND: examples}``), ``class_names`` ([C] str); any other key is listed as it is.

``METHOD`` is a method key (``"deterministic"``, ``"mc_dropout"``, ``"ensemble"``, ``"tta"``,
``"heteroscedastic"``, ``"confidence"`` or anything else). ``MethodResults``::

    {
      "label": str,                              # optional display name (default: from the traits)
      "traits": {"family": str, "epistemic": bool,  # optional: netuq.traits.Traits.to_dict(); the
                 "members": int|null, "seeded": bool},  # report reads the family, never the name
      "metrics": {NAME: float|null},             # uncalibrated, whole test set: netuq.metrics.evaluate()
                                                 #   accuracy, nll, brier, ece, mce, adaptive_ece,
                                                 #   classwise_ece, aurc
      "in_distribution": {                       # the main table (protocol.calibration says how:
        CAL: {METRIC: Stat}                      #   repeated 2-fold CV on the test set, or held out);
      },                                         #   CAL "none" or a calibrator registry name;
                                                 #   METRIC at least nll, ece, brier, accuracy
      "temperature": float,                      # optional: T of temperature scaling (protocol.temperature)
      "reliability": {NAME: Bins},               # optional: one per calibrator that ran, NAME
                                                 #   "uncalibrated" or a registry name; each with its
                                                 #   "ece" (held out: on the test set; 2-fold protocol:
                                                 #   repeat 0's cross-fitted halves). Stable: read by
                                                 #   the report and by `netuq benchmark --logits`
      "risk_coverage": {"coverage": [float], "risk": [float]},            # optional, downsampled
      "misclassification": {SCORE: {"auroc": float|null, "aupr"?: float|null}},  # optional
      "shift": {KIND: [ShiftRow, ...]},          # optional: KIND in netuq.data.SHIFTS
      "ood": {SCORE: {"auroc": float, "aupr": float, "fpr95": float}},    # optional
      "ood_hist": {SCORE: {"edges": [B + 1 floats], "in": [B], "out": [B]}},  # optional
      "roc": {SCORE: {"fpr": [float], "tpr": [float]}},                   # optional, downsampled
      "segmentation_examples": SegExamples,      # optional (segmentation)
      "runtime_s": {PHASE: float},               # optional
      "ood_kinds": {KIND: {SCORE: {"auroc": float, "aupr": float, "fpr95": float}}},  # optional: one
                                                 #   entry per kind of OOD input; "ood" pools all kinds
      "counts": {"test": int, "errors": int},    # optional: test size and wrong predictions (pixels
                                                 #   for segmentation); totals over seeds in an aggregate
      "seed_values": SeedValues,                 # optional: per-seed numbers of an aggregate
      "warnings": [{"message": str, "count": int}],  # optional: warnings raised during the run
      "members": [{METRIC: float|null}],         # optional: an ensemble's members alone (compare)
      "per_class": {"support": [C] ints,         # optional: valid test rows (pixels) per true class,
                    "accuracy": [C] float|null,  #   the share of them predicted right (recall),
                    "ece"?: [C] float|null,      #   class-wise ECE of p_c (Kull et al. 2019; mean = classwise_ece),
                    "confusion"?: C x C ints},   #   counts [true][predicted]
      "ood_kinds_hist": {KIND: {SCORE: Hist}},   # optional: as ood_hist, per kind of OOD input
      "ood_kinds_roc": {KIND: {SCORE: {"fpr": [float], "tpr": [float]}}},  # optional: per kind
      KEY: ...                                   # optional: a registered result section
    }                                            #   (netuq.results.sections validates it)

    Stat     = {"mean": float|null, "std": float|null,          # std null when not repeated
                "values"?: [float|null],          # per-seed means (aggregates: one per seed)
                "fold_std"?: float|null}          # mean over seeds of the within-seed fold sd
    Bins     = netuq.metrics.ReliabilityBins.to_dict():
               {"edges": [n_bins + 1], "counts": [n_bins] ints,
                "confidence": [n_bins] float|null, "accuracy": [n_bins] float|null}
               (+ optional "ece": float, shown in the diagram's title)
    ShiftRow = {"severity": int (0 = clean, 1..5), "accuracy": float, "ece": float, "nll": float,
                "entropy_mean": float, optional "brier", "ece_temperature" (ECE after the
                temperature scaling fitted on clean validation data), any other float}
    SegExamples = {"image": K x H x W floats in [0, 1] (or K x H x W x 3),
                   "label": K x H x W ints (255 = ignore), "prediction": K x H x W ints,
                   "entropy": K x H x W floats, "epistemic": K x H x W floats | null,
                   "anomaly": K x H x W 0/1 | null}

Several seeds (:func:`netuq.results.aggregate.aggregate_seeds`): each seed's run is a results dict as
above; the aggregate keeps them all under ``"seeds"`` and its top-level ``"methods"`` hold the
mean over seeds, so every table and figure works unchanged::

    SeedResults = {"methods": {METHOD: MethodResults}, "config"?: {...}, "data"?: {...},
                   "runtime_s"?: {...}}               # one seed's full numbers, keyed by str(seed)
    SeedValues  = {"seeds": [SEED],                    # order of every list below
                   "metrics": {NAME: [float|null]},
                   "ood": {SCORE: {METRIC: [float|null]}},
                   "misclassification": {SCORE: {METRIC: [float|null]}},
                   "ood_kinds": {KIND: {SCORE: {METRIC: [float|null]}}},
                   "temperature": [float|null],
                   "counts": {"test": [int|null], "errors": [int|null]}}   # every key optional

In an aggregate, ``Stat["mean"]`` is the mean over seeds of each seed's mean, ``Stat["std"]``
the sample standard deviation (n − 1) over seeds and ``Stat["values"]`` the per-seed means;
scalars (``metrics``, ``ood``, ``misclassification``, ``ood_kinds``, ``temperature``, shift
rows) are means over the seeds that have them, with the per-seed values in ``seed_values``;
curves, histograms, reliability bins, per-class numbers and segmentation examples are seed 0's
(the first seed).

Conventions:

* ``SCORE`` names an uncertainty score where *higher means less sure*: ``"max_prob"``
  (1 − max probability), ``"entropy"``, ``"mutual_information"``, ``"confidence"`` (1 − the
  learned confidence), ``"sigma"``. OOD inputs (or anomaly pixels) are the positive class of
  AUROC/AUPR; ``fpr95`` is the fraction of OOD inputs accepted when 95% of in-distribution
  inputs are (lower is better). ``misclassification`` scores wrong predictions as positives.
* ``ood_hist`` holds binned scores of in-distribution (``in``) and OOD (``out``) inputs on
  shared ``edges``, as fractions (each sums to 1) or counts.
* Lower is better for nll, ece, mce, adaptive_ece, classwise_ece, brier, aurc and fpr95; higher
  for accuracy, auroc and aupr.

:func:`validate_results` checks this layout; :func:`netuq.results.example.example_results`
builds a small, realistic example (used by the tests and the documentation).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from . import sections as result_sections

__all__ = [
    "SCHEMA_VERSION",
    "TASKS",
    "LOWER_IS_BETTER",
    "HIGHER_IS_BETTER",
    "validate_results",
    "REFERENCE_CALIBRATOR",
    "protocol_record",
]

SCHEMA_VERSION = 1
TASKS = ("classification", "segmentation")
LOWER_IS_BETTER = frozenset(
    {"nll", "ece", "mce", "adaptive_ece", "classwise_ece", "brier", "aurc", "fpr95", "ece_temperature"}
)
HIGHER_IS_BETTER = frozenset({"accuracy", "auroc", "aupr"})
#: The calibrator the schema reports in detail: its parameter (``MethodResults["temperature"]``),
#: its reliability bins (``reliability["temperature"]``) and its ECE under shift
#: (``ShiftRow["ece_temperature"]``). The one place netuq.compare takes that name from.
REFERENCE_CALIBRATOR = "temperature"


def _fail(path: str, expected: str, value: Any) -> None:
    found = type(value).__name__ if not isinstance(value, (int, float, str)) else repr(value)
    raise ValueError(f"`{path}` must be {expected}, got {found}")


def _mapping(value: Any, path: str) -> Mapping:
    if not isinstance(value, Mapping):
        _fail(path, "a mapping", value)
    return value


def _number(value: Any, path: str, *, nullable: bool = True) -> None:
    if value is None and nullable:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _fail(path, "a finite number" + (" or null" if nullable else ""), value)


def _numbers(value: Any, path: str, length: int | None = None) -> int:
    if not isinstance(value, (list, tuple)):
        _fail(path, "a list of numbers", value)
    for i, v in enumerate(value):
        _number(v, f"{path}[{i}]")
    if length is not None and len(value) != length:
        raise ValueError(f"`{path}` must have {length} values, got {len(value)}")
    return len(value)


def _no_nan(value: Any, path: str) -> None:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"`{path}` must be finite or null (JSON has no NaN), got {value}")
    elif isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                _fail(f"{path} key", "a string", k)
            _no_nan(v, f"{path}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _no_nan(v, f"{path}[{i}]")
    elif not (value is None or isinstance(value, (str, int, bool))):
        _fail(path, "plain JSON data (dict, list, str, number, bool, null)", value)


def validate_results(results: Any) -> dict:
    """Check that ``results`` follows the schema of this module; return it unchanged.

    Raises:
        ValueError: naming the first offending entry, e.g. ``"`results['methods']['ens']['ood']
            ['entropy']['auroc']` must be a finite number or null, got nan"``.

    Example:
        >>> validate_results({"task": "classification", "methods": {}})
        Traceback (most recent call last):
        ...
        ValueError: `results['methods']` must have at least one method, got 0
    """
    _mapping(results, "results")
    task = results.get("task")
    if task not in TASKS:
        raise ValueError(f"`results['task']` must be one of {TASKS}, got {task!r}")
    methods = _mapping(results.get("methods"), "results['methods']")
    if not methods:
        raise ValueError("`results['methods']` must have at least one method, got 0")
    for key in ("config", "data", "runtime_s"):
        if key in results:
            _mapping(results[key], f"results[{key!r}]")
    if "vocabulary" in results:
        _vocabulary(results["vocabulary"], "results['vocabulary']")
    _validate_methods(methods, "results['methods']")
    if "protocol" in results:
        _protocol(results["protocol"])
    if "data" in results:
        _class_names(results["data"])
    if "seeds" in results:
        seeds = _mapping(results["seeds"], "results['seeds']")
        if not seeds:
            raise ValueError("`results['seeds']` must hold at least one seed, got 0")
        for seed, entry in seeds.items():
            p = f"results['seeds'][{seed!r}]"
            _mapping(entry, p)
            seed_methods = _mapping(entry.get("methods"), p + "['methods']")
            if not seed_methods:
                raise ValueError(f"`{p}['methods']` must have at least one method, got 0")
            _validate_methods(seed_methods, p + "['methods']")
            for key in ("config", "data", "runtime_s"):
                if key in entry:
                    _mapping(entry[key], f"{p}[{key!r}]")
    _no_nan(results, "results")
    return results  # type: ignore[return-value]


def _traits(value: Any, path: str) -> None:
    """``{"family": str, "epistemic": bool, "members": int|null, "seeded": bool}`` (every key optional)."""
    _mapping(value, path)
    if "family" in value and (not isinstance(value["family"], str) or not value["family"]):
        _fail(f"{path}['family']", "a non-empty string", value["family"])
    for key in ("epistemic", "seeded"):
        if key in value and not isinstance(value[key], bool):
            _fail(f"{path}[{key!r}]", "true or false", value[key])
    if value.get("members") is not None:
        _count(value["members"], f"{path}['members']")


def _vocabulary(value: Any, path: str) -> None:
    """``{"scores": {SCORE: {"label": str, "kind": str}}, "calibrators": {CAL: {"label": str,
    "changes_prediction": bool|null}}}``."""
    _mapping(value, path)
    for kind in ("scores", "calibrators"):
        for name, entry in _mapping(value.get(kind, {}), f"{path}[{kind!r}]").items():
            p = f"{path}[{kind!r}][{name!r}]"
            _mapping(entry, p)
            if "label" in entry and not isinstance(entry["label"], str):
                _fail(p + "['label']", "a string", entry["label"])
            flag = entry.get("changes_prediction")
            if flag is not None and not isinstance(flag, bool):
                _fail(p + "['changes_prediction']", "true, false or null", flag)


def _scores(value: Any, path: str) -> None:
    """``{SCORE: {METRIC: number|null}}``."""
    for score, vals in _mapping(value, path).items():
        for metric, v in _mapping(vals, f"{path}[{score!r}]").items():
            _number(v, f"{path}[{score!r}][{metric!r}]")


def _count(value: Any, path: str, *, nullable: bool = False) -> None:
    if value is None and nullable:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        _fail(path, "a non-negative integer" + (" or null" if nullable else ""), value)


def _seed_values(sv: Any, path: str) -> None:
    _mapping(sv, path)
    n = None
    if "seeds" in sv:
        if not isinstance(sv["seeds"], (list, tuple)):
            _fail(path + "['seeds']", "a list of seed names", sv["seeds"])
        n = len(sv["seeds"])

    def lists(value: Any, p: str, depth: int) -> None:
        if depth == 0:
            _numbers(value, p, n)
            return
        for k, v in _mapping(value, p).items():
            lists(v, f"{p}[{k!r}]", depth - 1)

    for key, depth in (("metrics", 1), ("ood", 2), ("misclassification", 2), ("ood_kinds", 3), ("temperature", 0)):
        if key in sv:
            lists(sv[key], f"{path}[{key!r}]", depth)
    if "counts" in sv:
        for key, v in _mapping(sv["counts"], path + "['counts']").items():
            p = f"{path}['counts'][{key!r}]"
            if not isinstance(v, (list, tuple)) or (n is not None and len(v) != n):
                _fail(p, "a list with one count per seed", v)
            for i, c in enumerate(v):
                _count(c, f"{p}[{i}]", nullable=True)


def protocol_record(*, source: str, held_out: bool, repeats: int | None = None, calibrators=(),
                    shifts: Mapping[str, Any] | None = None) -> dict:
    """The ``protocol`` entry of a results dict (written by ``netuq.compare`` and the benchmark).

    Example:
        >>> protocol_record(source="compare", held_out=False, repeats=5, shifts={"blur": [4, 2]})["shifts"]
        {'blur': [2, 4]}
    """
    out: dict[str, Any] = {"source": str(source), "calibration": "held_out" if held_out else "cross_validation",
                           "calibrators": [str(c) for c in calibrators],
                           "temperature": "calibration" if held_out else "test"}
    if not held_out:
        out.update(folds=2, repeats=int(repeats or 1))
    out["shifts"] = {str(k): sorted(int(s) for s in v) for k, v in (shifts or {}).items()}
    return out


def _per_class(pc: Any, path: str) -> None:
    _mapping(pc, path)
    support = pc.get("support")
    if not isinstance(support, (list, tuple)):
        _fail(path + "['support']", "a list of counts, one per class", support)
    for i, c in enumerate(support):
        _count(c, f"{path}['support'][{i}]")
    for key in ("accuracy", "ece"):
        if key in pc:
            _numbers(pc[key], f"{path}[{key!r}]", len(support))
    if "confusion" in pc:
        conf = pc["confusion"]
        if not isinstance(conf, (list, tuple)) or len(conf) != len(support):
            _fail(path + "['confusion']", f"{len(support)} rows of counts (C x C)", conf)
        for i, row in enumerate(conf):
            if not isinstance(row, (list, tuple)) or len(row) != len(support):
                _fail(f"{path}['confusion'][{i}]", f"a row of {len(support)} counts", row)
            for j, c in enumerate(row):
                _count(c, f"{path}['confusion'][{i}][{j}]")


def _protocol(pr: Any) -> None:
    _mapping(pr, "results['protocol']")
    cal = pr.get("calibration")
    if cal is not None and cal not in ("cross_validation", "held_out"):
        raise ValueError(f"`results['protocol']['calibration']` must be 'cross_validation' or 'held_out', got {cal!r}")
    for key in ("folds", "repeats"):
        if key in pr:
            _count(pr[key], f"results['protocol'][{key!r}]")
    for kind, sev in _mapping(pr.get("shifts", {}), "results['protocol']['shifts']").items():
        if not isinstance(sev, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, int) for v in sev):
            _fail(f"results['protocol']['shifts'][{kind!r}]", "a list of integer severities", sev)


def _class_names(data: Mapping) -> None:
    names = data.get("class_names")
    if names is None:
        return
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        _fail("results['data']['class_names']", "a list of strings", names)
    c = data.get("num_classes")
    if isinstance(c, int) and not isinstance(c, bool) and len(names) != c:
        raise ValueError(f"`results['data']['class_names']` must have num_classes = {c} names, got {len(names)}")


def _validate_methods(methods: Mapping, where: str) -> None:
    for name, m in methods.items():
        base = f"{where}[{name!r}]"
        _mapping(m, base)
        for cal, stats in _mapping(m.get("in_distribution", {}), f"{base}['in_distribution']").items():
            for metric, stat in _mapping(stats, f"{base}['in_distribution'][{cal!r}]").items():
                p = f"{base}['in_distribution'][{cal!r}][{metric!r}]"
                _mapping(stat, p)
                if "mean" not in stat:
                    raise ValueError(f"`{p}` must have a 'mean' entry, got keys {sorted(stat)}")
                _number(stat["mean"], p + "['mean']")
                _number(stat.get("std"), p + "['std']")
                _number(stat.get("fold_std"), p + "['fold_std']")
                if "values" in stat:
                    _numbers(stat["values"], p + "['values']")
        if "traits" in m:
            _traits(m["traits"], f"{base}['traits']")
        for key, section in list(result_sections.SECTIONS.items()):  # registered sections check their own
            if key in m and section.validate is not None:
                section.validate(m[key], f"{base}[{key!r}]")
        if "temperature" in m:
            _number(m["temperature"], f"{base}['temperature']")
        if "counts" in m:
            for key, v in _mapping(m["counts"], f"{base}['counts']").items():
                _count(v, f"{base}['counts'][{key!r}]")
        if "ood_kinds" in m:
            for kind, scores in _mapping(m["ood_kinds"], f"{base}['ood_kinds']").items():
                _scores(scores, f"{base}['ood_kinds'][{kind!r}]")
        if "seed_values" in m:
            _seed_values(m["seed_values"], f"{base}['seed_values']")
        if "warnings" in m:
            if not isinstance(m["warnings"], (list, tuple)):
                _fail(f"{base}['warnings']", "a list of {'message', 'count'} entries", m["warnings"])
            for i, w in enumerate(m["warnings"]):
                _mapping(w, f"{base}['warnings'][{i}]")
        for metric, v in _mapping(m.get("metrics", {}), f"{base}['metrics']").items():
            _number(v, f"{base}['metrics'][{metric!r}]")
        for cal, bins in _mapping(m.get("reliability", {}), f"{base}['reliability']").items():
            p = f"{base}['reliability'][{cal!r}]"
            _mapping(bins, p)
            n = _numbers(bins.get("edges"), p + "['edges']") - 1
            for key in ("counts", "confidence", "accuracy"):
                _numbers(bins.get(key), f"{p}[{key!r}]", n)
        curves = [("risk_coverage", ("coverage", "risk"), False)]
        curves += [("roc", ("fpr", "tpr"), True), ("ood_hist", ("in", "out"), True)]
        for key, (a, b), per_score in curves:
            if key not in m:
                continue
            items = _mapping(m[key], f"{base}[{key!r}]").items() if per_score else [(None, m[key])]
            for score, curve in items:
                p = f"{base}[{key!r}]" + ("" if score is None else f"[{score!r}]")
                _mapping(curve, p)
                n = _numbers(curve.get(a), f"{p}[{a!r}]")
                _numbers(curve.get(b), f"{p}[{b!r}]", n)
                if key == "ood_hist":
                    _numbers(curve.get("edges"), f"{p}['edges']", n + 1)
        for key in ("ood", "misclassification"):
            _scores(m.get(key, {}), f"{base}[{key!r}]")
        for key, (a, b) in (("ood_kinds_hist", ("in", "out")), ("ood_kinds_roc", ("fpr", "tpr"))):
            for kind, per_score in _mapping(m.get(key, {}), f"{base}[{key!r}]").items():
                for score, curve in _mapping(per_score, f"{base}[{key!r}][{kind!r}]").items():
                    p = f"{base}[{key!r}][{kind!r}][{score!r}]"
                    n = _numbers(_mapping(curve, p).get(a), f"{p}[{a!r}]")
                    _numbers(curve.get(b), f"{p}[{b!r}]", n)
        if "per_class" in m:
            _per_class(m["per_class"], f"{base}['per_class']")
        for kind, rows in _mapping(m.get("shift", {}), f"{base}['shift']").items():
            if not isinstance(rows, (list, tuple)):
                _fail(f"{base}['shift'][{kind!r}]", "a list of rows", rows)
            for i, row in enumerate(rows):
                p = f"{base}['shift'][{kind!r}][{i}]"
                _mapping(row, p)
                sev = row.get("severity")
                if isinstance(sev, bool) or not isinstance(sev, int):
                    _fail(p + "['severity']", "an integer", sev)
                for metric, v in row.items():
                    if metric != "severity":
                        _number(v, f"{p}[{metric!r}]")
