"""``netuq.compare``: score several methods on the same loaders; plain results for ``render_report``.

Each method runs through small, typed passes (one stream per loader; nothing of size
(N, C, H, W) is held for a whole set):

* **calibrate** (:mod:`._calibrate`): with a calibration loader, a seeded bounded sample of its
  valid rows, on which every calibrator of the registry asked for is fitted (and every fitted
  score);
* **predict** (:mod:`._test_pass`): one stream over the test loader feeding the streaming
  metrics (:class:`netuq.metrics.UncertaintyMetrics`, uncalibrated, calibrated, per member), a
  seeded uniform sample of at most ``max_pixels`` valid rows (every row for classification:
  every number is then exact) holding log-probabilities, labels, image index and scores, the
  anomaly pixels' scores, the registered result sections and a few segmentation examples;
* **calibration results**: the calibrated metrics, or the repeated 2-fold protocol on the sample;
* **score**: misclassification detection and the risk-coverage curve;
* **shift** (:mod:`._shift`) and **detect** (:mod:`._detect`): the shifted sets and OOD data.

The results follow :mod:`netuq.results.schema`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from .. import metrics as M
from .. import scores as vocabulary
from .._checks import check_positive_int
from ..calibration import registry
from ..detectors.features import find_module
from ..distributed import is_distributed
from ..results import sections as result_sections
from ..results.plain import to_plain
from ..results.schema import REFERENCE_CALIBRATOR, SCHEMA_VERSION, protocol_record, validate_results
from ._batches import DEFAULT_KEYS, check_reiterable
from ._calibrate import PROTOCOL_KEYS, Fitted, calibrate, fit_on, protocol
from ._detect import detect
from ._run import MethodRun, Options
from ._scoring import downsample, metric_values, reliability_dict
from ._shift import shift
from ._test_pass import TestPass
from ._views import per_class

__all__ = ["compare"]

METRIC_KEYS = ("accuracy", "nll", "brier", "ece", "mce", "adaptive_ece", "classwise_ece", "aurc")


def _metrics(test: TestPass) -> dict[str, Any]:
    """The uncalibrated metrics: streamed, or exact from every row in memory for classification."""
    values = metric_values(test.metrics)
    if test.task == "classification":
        values = M.evaluate(test.sample.get("logits").exp(), test.sample.get("y"), n_bins=test.run.options.n_bins,
                            validate_args=False)
    return values


def _calibration_results(test: TestPass, fitted: Fitted | None, values: dict) -> tuple[dict, Fitted]:
    """``in_distribution``, the reference calibrator's parameter and reliability bins; returns the
    fit the shift pass uses (fitted on the calibration loader, else on the test sample)."""
    o = test.run.options
    z, y = test.sample.get("logits"), test.sample.get("y")
    part: dict[str, Any] = {}
    if fitted is None:
        part["in_distribution"], rel = protocol(test.sample, test.images, o)
        fitted = fit_on(z, y, (REFERENCE_CALIBRATOR,), o.calibration_samples, o.seed)
    else:
        part["in_distribution"] = {registry.NONE: {k: {"mean": values[k], "std": None} for k in PROTOCOL_KEYS}}
        rel = {}
        for k in o.calibrators:
            if k != registry.NONE:
                v = metric_values(test.calibrated[k])
                part["in_distribution"][k] = {m: {"mean": v[m], "std": None} for m in PROTOCOL_KEYS}
                rel[k] = {**reliability_dict(test.calibrated[k]), "ece": v["ece"]}
    part[REFERENCE_CALIBRATOR] = float(getattr(fitted.reference, f"{REFERENCE_CALIBRATOR}_"))
    # One diagram per calibrator that ran, each with its ECE (held out: the calibration loader's fit
    # on the test set; protocol: repeat 0's cross-fitted halves).
    part["reliability"] = {"uncalibrated": {**reliability_dict(test.metrics), "ece": values["ece"]}, **rel}
    return part, fitted


def _score(test: TestPass) -> dict[str, Any]:
    """Risk-coverage curve and misclassification AUROC of every sampled score."""
    z, y = test.sample.get("logits"), test.sample.get("y")
    cov, risk = M.risk_coverage_curve(torch.softmax(z.double(), 1), y, validate_args=False)
    c_, r_ = downsample(cov, risk)
    wrong = z.argmax(1) != y
    both = bool(wrong.any()) and bool((~wrong).any())
    return {"risk_coverage": {"coverage": c_, "risk": r_},
            "misclassification": {k: {"auroc": M.auroc(u[wrong], u[~wrong]) if both else None}
                                  for k, u in test.scores().items()}}


def _evaluate(run: MethodRun, test_loader, calibration, ood: dict, shifts: Mapping) -> tuple[dict, dict]:
    """One method through every pass: ``(MethodResults, data info)``."""
    t0 = time.perf_counter()
    info: dict[str, Any] = {}
    fitted = None
    if calibration is not None:
        fitted = calibrate(run, calibration)
        info["calibration"] = fitted.rows
    test = TestPass(run, fitted).run_over(test_loader)
    part: dict[str, Any] = {"label": run.name, "traits": run.traits.to_dict()}
    values = _metrics(test)
    part["metrics"] = {k: values[k] for k in METRIC_KEYS if k in values}
    part["per_class"] = per_class(test.class_counts, test.metrics)
    if test.members:
        part["members"] = [{k: metric_values(m)[k] for k in ("accuracy", "nll", "brier", "ece")}
                           for m in test.members]
    calibrated, fitted = _calibration_results(test, fitted, values)
    part.update(calibrated)
    part.update(_score(test))
    rows = shift(run, shifts, fitted)
    if rows:
        part["shift"] = rows
    detected, info["ood"] = detect(run, test, ood)
    part.update(detected)
    part["counts"] = {"test": test.n_valid, "errors": test.errors}
    examples = test.examples.result()
    if examples is not None:
        part["segmentation_examples"] = examples
    for key, p in test.sections.items():
        value = p.finish(part)
        if value is not None:
            part[key] = value
    part["runtime_s"] = {"evaluate": time.perf_counter() - t0}
    info.update(task=test.task, test=test.images, num_classes=test.num_classes,
                pixels=test.n_valid if test.task == "segmentation" else None)
    return part, info


def _vocabulary(parts: Mapping[str, Any], calibrators: Sequence[str]) -> dict[str, Any]:
    """Labels and traits of the scores and calibrators in the results, so that the report
    renders them without the classes that produced them (a user's script)."""
    used: list[str] = []
    for part in parts.values():
        for key in ("misclassification", "ood"):
            used += [s for s in part.get(key, {}) if s not in used]
    score_info = {}
    for s in used:
        score = vocabulary.SCORES.get(s)
        if score is not None:
            score_info[s] = {"label": score.label, "kind": score.kind}
    return {"scores": score_info, "calibrators": registry.describe(calibrators)}


def _loaders(value: Any, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        if not value:
            raise ValueError(f"`{name}` must be a loader or a non-empty dict kind -> loader, got an empty dict")
        return {str(k): v for k, v in value.items()}
    return {"ood": value}


def _with_conformal(chosen: dict[str, Mapping[str, Any]], conformal: Any, calibration: Any) -> dict:
    """``compare(conformal=...)`` as the ``conformal`` section's options, with compare's calibration loader.

    The section (registered by :mod:`netuq.conformal`) validates its options when it starts.
    """
    if conformal is None or conformal is False:
        if "conformal" not in chosen:
            return chosen
        conformal = chosen["conformal"]
    if conformal is not True and not isinstance(conformal, Mapping):
        raise TypeError(f"`conformal` must be True, None or a dict of options, got {type(conformal).__name__}")
    if "conformal" not in result_sections.SECTIONS:
        raise ValueError("`conformal` needs the 'conformal' result section: import netuq.conformal")
    options = {} if conformal is True else dict(conformal)
    if calibration is not None:
        options.setdefault("calibration", calibration)
    return {**chosen, "conformal": options}


def compare(
    methods: Mapping[str, Any],
    test_loader: Iterable,
    *,
    calibration: Iterable | None = None,
    calibrators: Sequence[str] = ("none", "temperature"),
    ood: Iterable | Mapping[str, Iterable] | None = None,
    shifts: Mapping[str, Mapping[int, Iterable]] | None = None,
    ignore_index: int | None = None,
    n_bins: int = 15,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = False,
    keys: Sequence[str] = DEFAULT_KEYS,
    repeats: int = 5,
    max_pixels: int = 250_000,
    calibration_samples: int | None = None,
    examples: int = 4,
    distributed: bool | None = None,
    scores: Sequence[str] | None = None,
    sections: Sequence[str] | Mapping[str, Mapping[str, Any]] | None = None,
    class_names: Sequence[str] | None = None,
    conformal: bool | Mapping[str, Any] | None = None,
    features: str | None = None,
) -> dict[str, Any]:
    """Score every method on the same data; the results ``netuq.report.render_report`` draws.

    Each method gets: the uncalibrated metrics; ``in_distribution`` (calibrated NLL, ECE, Brier,
    accuracy per calibrator: fitted on ``calibration`` and scored on the test set, or, with
    ``calibration=None``, the repeated 2-fold protocol on the test set, split by image, as
    :func:`netuq.calibration.cross_validate`); reliability bins before and after temperature
    scaling; the risk-coverage curve; misclassification AUROC and OOD detection (per kind and
    pooled) for every score it offers (``max_prob``, ``entropy``, ``mutual_information`` with
    samples and an epistemic part, ``sigma``, ``confidence``); accuracy/ECE/NLL/entropy under each
    shift; an ensemble's members alone; ``counts`` of test examples (pixels) and errors.

    Args:
        methods: display name -> method (any kind :func:`netuq.predict` takes).
        test_loader: labelled batches ``(x, y, ...)``: a third element that is a **bool**
            (N, ...) tensor is a mask of anomaly (OOD) pixels (or examples); any other extra
            element (an index, a path) is ignored. Every loader is iterated once per method, so
            with several methods a one-shot iterator (a generator) is refused before any work:
            pass a DataLoader or a list.
        calibration: labelled loader to fit the calibrators on; None: 2-fold protocol on the test set.
        calibrators: subset of ``"none"`` and the names of ``netuq.calibration.CALIBRATORS`` (read
            at call time: a Calibrator subclass defined after ``import netuq`` is accepted).
        ood: an OOD loader, or kind -> loader (labels not needed; every row/pixel is OOD).
        shifts: shift name -> {severity: labelled loader}.
        ignore_index: label of pixels left out.
        n_bins: ECE / reliability bins.
        seed: seeds the protocol's splits, the pixel sample and heteroscedastic noise.
        device: where batches go (default: each method's device).
        progress: tqdm bars per loader.
        keys: mapping keys (input, labels, anomaly) for dict batches.
        repeats: repeats of the 2-fold protocol.
        max_pixels: segmentation: size of the seeded pixel sample per set (classification keeps all).
        calibration_samples: fit each calibrator on at most this many sampled rows (None: all).
        examples: segmentation: images kept for the report's example figure.
        distributed: gather every loader's batches from all ranks of the process group (None: when
            one with world size > 1 is initialised, for the loaders whose sampler shards the data,
            an ``EvalSampler`` or a ``DistributedSampler``; True: for every loader). With an
            :class:`netuq.distributed.EvalSampler` in every rank's loaders, every rank returns the
            one-process results (see :mod:`netuq.distributed` for the methods this is exact for).
        scores: the scores to report, names of :data:`netuq.scores.SCORES` (default: every score
            marked ``compared`` that the method offers). A key of ``pred.scores`` that no
            registered score reads is not reported, with a warning.
        sections: the extra result sections (:mod:`netuq.results.sections`) to compute: a list of
            keys or a dict key -> options (default: every registered section marked ``default``).
        class_names: one display name per class (C), recorded for the report's per-class view.
        conformal: prediction sets for every method (the ``conformal`` section,
            :mod:`netuq.conformal`): True for the defaults or a dict of options (``alpha``,
            ``scores``, ``randomized``, ``splits``, ``loss``, ``target_class``, ``grid_size``);
            fitted on ``calibration`` when given, else by the repeated split protocol on the test set.
        features: classification: the name of a layer (``model.named_modules()``) whose features
            feed the feature scores (``"mahalanobis"``, Lee et al. 2018). Each method whose network
            (the method itself, or its ``model``) has that layer gets its eval-mode features from
            one more forward per batch; the Mahalanobis score is fitted on the ``calibration``
            loader (held-out in-distribution data, so no test example is both fitted on and
            scored; required with ``features``) and scored on the test set and each OOD kind.

    Returns:
        Plain data (schema 1 of :mod:`netuq.results.schema`): ``task``, ``config``, ``data``,
        ``runtime_s`` and ``methods`` {name: MethodResults}.

    Example:
        >>> import torch, netuq
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(64, 4, generator=g); y = (x[:, 0] > 0).long()
        >>> net = torch.nn.Linear(4, 2)
        >>> _ = net.weight.data.copy_(torch.tensor([[-2.0, 0, 0, 0], [2.0, 0, 0, 0]]))
        >>> test = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
        >>> res = netuq.compare({"plain": net}, test, repeats=1)
        >>> sorted(res["methods"]["plain"]["in_distribution"])
        ['none', 'temperature']
        >>> _ = netuq.results.validate_results(res)
    """
    if not isinstance(methods, Mapping) or not methods:
        raise TypeError(f"`methods` must be a non-empty dict name -> method, got {type(methods).__name__}"
                        if not isinstance(methods, Mapping) else "`methods` must be a non-empty dict, got {}")
    if isinstance(calibrators, str) or not isinstance(calibrators, Sequence):
        raise TypeError(f"`calibrators` must be a sequence of names, got {calibrators!r}")
    known = registry.names()  # read now: calibrators defined after import count
    bad = [c for c in calibrators if c not in known]
    if bad or not calibrators:
        raise ValueError(f"`calibrators` must be a non-empty subset of {known}, got {list(calibrators)}")
    if scores is not None:
        if isinstance(scores, str) or not isinstance(scores, Sequence) or not scores:
            raise TypeError(f"`scores` must be a non-empty sequence of score names or None, got {scores!r}")
        unknown = [s for s in scores if s not in vocabulary.SCORES]
        if unknown:
            raise ValueError(f"`scores` must name registered scores, one of {list(vocabulary.SCORES)}, "
                             f"got {unknown}")
        scores = tuple(scores)
    if shifts is not None and (not isinstance(shifts, Mapping)
                               or not all(isinstance(v, Mapping) for v in shifts.values())):
        raise TypeError("`shifts` must be a dict name -> {severity: loader}")
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
        raise ValueError(f"`ignore_index` must be an integer or None, got {ignore_index!r}")
    if features is not None:
        if not isinstance(features, str):
            raise TypeError(f"`features` must be a layer name (str) or None, got {type(features).__name__}")
        if calibration is None:
            raise ValueError("`features` needs `calibration`: the feature scores (Mahalanobis) are fitted on "
                             "held-out in-distribution data, the calibration loader")
        if not any(find_module(m, features) is not None for m in methods.values()):
            raise ValueError(f"`features` must name a layer of some method's network, got {features!r}")
    options = Options(
        calibrators=tuple(calibrators), ignore_index=ignore_index, n_bins=check_positive_int(n_bins, "n_bins"),
        seed=int(seed), device=device, progress=bool(progress), keys=keys,
        repeats=check_positive_int(repeats, "repeats"), max_pixels=check_positive_int(max_pixels, "max_pixels"),
        calibration_samples=None if calibration_samples is None else check_positive_int(
            calibration_samples, "calibration_samples"),
        examples=int(examples), distributed=distributed, scores=scores,
        sections=_with_conformal(result_sections.selected(sections), conformal, calibration), features=features)
    ood_loaders = _loaders(ood, "ood")
    if class_names is not None and (isinstance(class_names, str) or not isinstance(class_names, Sequence)):
        raise TypeError(f"`class_names` must be a sequence of names, got {type(class_names).__name__}")
    is_distributed(distributed)  # checks the argument before any pass
    loaders = {"test_loader": test_loader, "calibration": calibration,
               **{f"ood[{k!r}]": v for k, v in ood_loaders.items()},
               **{f"shifts[{k!r}][{v!r}]": d for k, by in (shifts or {}).items() for v, d in by.items()}}
    for where, loader in loaders.items():
        check_reiterable(loader, where, len(methods), f"once per method: {len(methods)} methods")
    start = time.perf_counter()
    parts, info = {}, {}
    for name, method in methods.items():
        run = MethodRun(str(name), method, options)
        parts[str(name)], info = _evaluate(run, test_loader, calibration, ood_loaders, shifts or {})
    results = {
        "schema": SCHEMA_VERSION,
        "task": info["task"],
        "config": options.config()
        | {"calibration": "2-fold protocol on the test set" if calibration is None else "calibration loader",
           "methods": list(parts)},
        "data": {k: v for k, v in info.items() if k != "task" and v is not None},
        "vocabulary": _vocabulary(parts, options.calibrators),
        # How the numbers were made, for the report's sentences (netuq.results.schema: "protocol").
        "protocol": protocol_record(source="compare", held_out=calibration is not None, repeats=options.repeats,
                                    calibrators=options.calibrators,
                                    shifts={k: list(v) for k, v in (shifts or {}).items()}),
        "methods": parts,
        "runtime_s": {"total_this_run": time.perf_counter() - start,
                      "methods": {k: p["runtime_s"] for k, p in parts.items()}},
    }
    if class_names is not None:
        if len(class_names) != info["num_classes"]:
            raise ValueError(f"`class_names` must have one name per class ({info['num_classes']}), "
                             f"got {len(class_names)}")
        results["data"]["class_names"] = [str(n) for n in class_names]
    return validate_results(to_plain(results))
