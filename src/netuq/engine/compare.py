"""``netuq.compare``: score several methods on the same loaders; plain results for ``render_report``.

One pass per loader and method; nothing of size (N, C, H, W) is held for a whole set:

* the uncalibrated (and, with a calibration loader, the calibrated) metrics stream through
  :class:`netuq.metrics.UncertaintyMetrics` over every valid pixel;
* a seeded uniform sample of at most ``max_pixels`` valid rows (every row for classification) is
  drawn while streaming (:class:`~netuq.engine._sample.Reservoir`): it holds the log-probabilities,
  labels, image index and scores that the 2-fold calibration protocol, misclassification
  detection and the risk-coverage curve need;
* OOD scores (whole OOD images, or the pixels of an anomaly mask that the test loader yields as a
  third element) are sampled the same way, per kind.

For classification (predictions (N, C)) the sample is the whole set, so every number is exact.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from .. import metrics as M
from .._checks import check_positive_int
from .._outputs import OutputRule, check_output_rule
from ..distributed import is_distributed
from ._batches import DEFAULT_KEYS, as_predictor, method_device, offers_epistemic
from ._sample import Reservoir
from ._scoring import (
    CALIBRATOR_NAMES,
    SCORE_ORDER,
    detection,
    downsample,
    held_out_scores,
    histogram,
    make_calibrator,
    metric_values,
    reliability_dict,
    uncertainty_scores,
)
from .predict import stream

__all__ = ["compare"]

METRIC_KEYS = ("accuracy", "nll", "brier", "ece", "mce", "adaptive_ece", "classwise_ece", "aurc")
PROTOCOL_KEYS = ("nll", "ece", "brier", "accuracy")


def _streaming(num_classes: int, n_bins: int, ignore_index: int | None, *, full: bool = False, validate: bool = False):
    from ..metrics.streaming import UncertaintyMetrics

    kw = {"classwise": True} if full else {"fine_bins": 64}
    # Every rank streams the gathered whole set (netuq.distributed): a torchmetrics sync would count it W times.
    return UncertaintyMetrics(num_classes, n_bins=n_bins, ignore_index=ignore_index, validate_args=validate,
                              sync_on_compute=False, **kw)


def _flat_rows(pred, y: torch.Tensor | None, mask: torch.Tensor | None):
    """Index helpers for the rows (pixels) of a batch: ``(positions, log_probs (N, C, L), L)``."""
    lp = pred.log_probs
    n, c = lp.shape[:2]
    flat = lp.reshape(n, c, -1)
    positions = torch.arange(flat.shape[0] * flat.shape[2]) if mask is None else mask.reshape(-1).nonzero().squeeze(1)
    return positions, flat, flat.shape[2]


def _take_rows(flat, L, positions, scores, y=None, anomaly=None, offset=0, logits=True):
    def take(idx: torch.Tensor) -> dict[str, torch.Tensor]:
        pos = positions[idx]
        n, l_ = pos // L, pos % L
        cols = {f"s:{k}": v.reshape(-1)[pos] for k, v in scores.items()}
        if logits:
            cols["logits"] = flat[n, :, l_]
            cols["group"] = n + offset
        if y is not None:
            cols["y"] = y.reshape(-1)[pos]
        if anomaly is not None:
            cols["anomaly"] = anomaly.reshape(-1)[pos]
        return cols

    return take


def _check_scores(scores: dict[str, torch.Tensor], want: int) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in scores.items() if v.numel() == want}


def _image(x: torch.Tensor) -> torch.Tensor:
    img = x.detach().float().cpu()
    img = img.permute(0, 2, 3, 1) if img.shape[1] == 3 else img[:, 0]
    lo = img.reshape(len(img), -1).amin(1).view(-1, *[1] * (img.ndim - 1))
    hi = img.reshape(len(img), -1).amax(1).view(-1, *[1] * (img.ndim - 1))
    if bool((lo >= 0).all()) and bool((hi <= 1).all()):
        return img
    return (img - lo) / (hi - lo).clamp_min(1e-12)


class _Fitted:
    """The calibrators fitted on a calibration loader (or on the test sample) for one method."""

    def __init__(self) -> None:
        self.by_name: dict[str, Any] = {}
        self.reference = None  # temperature scaling: reliability, temperature, shift ECE


def _fit_on(z: torch.Tensor, y: torch.Tensor, names: Sequence[str], samples: int | None, seed: int) -> _Fitted:
    fitted = _Fitted()
    for name in names:
        if name != "none":
            fitted.by_name[name] = make_calibrator(name).fit(z, y, max_samples=samples, seed=seed)
    ts = fitted.by_name.get("temperature")
    fitted.reference = ts if ts is not None else make_calibrator("temperature").fit(z, y, max_samples=samples,
                                                                                    seed=seed)
    return fitted


def _protocol(sample: Reservoir, groups: int, names: Sequence[str], repeats: int, seed: int, n_bins: int,
              samples: int | None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The repeated 2-fold protocol on the test sample, split by image (Ashukha et al. 2020).

    Same splits, fit seeds and scores as :func:`netuq.calibration.cross_validate`; for
    classification (the sample is every example, in order) its numbers are identical.
    Also returns the reliability bins of repeat 0's cross-fitted temperature scaling.
    """
    from ..calibration.crossval import split_indices

    z, y, g = sample.get("logits"), sample.get("y"), sample.get("group")
    if groups < 2:
        raise ValueError(f"`test_loader` must hold at least 2 examples (images) for the 2-fold protocol, got {groups}")
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    rows["none"] = []
    cross_p, cross_y = [], []
    for r, k, held in split_indices(groups, folds=2, repeats=repeats, seed=seed):
        in_held = torch.isin(g, held)
        z_fit, y_fit, z_eval, y_eval = z[~in_held], y[~in_held], z[in_held], y[in_held]
        if y_eval.numel() == 0 or y_fit.numel() == 0:
            raise ValueError(f"the 2-fold protocol: repeat {r}, fold {k} has no valid pixel on one side")
        rows["none"].append(held_out_scores(torch.softmax(z_eval, 1), y_eval, n_bins))
        for name in names:
            if name == "none":
                continue
            cal = make_calibrator(name)
            try:
                cal.fit(z_fit, y_fit, max_samples=samples, seed=seed + 1000 * r + k)
            except ValueError as err:
                raise ValueError(f"the 2-fold protocol: repeat {r}, fold {k}: {err}") from err
            p = torch.softmax(cal(z_eval), 1)
            rows[name].append(held_out_scores(p, y_eval, n_bins))
            if name == "temperature" and r == 0:
                cross_p.append(p)
                cross_y.append(y_eval)
    summary = {}
    for name, values in rows.items():
        if name == "none" or name in names:
            summary[name] = {}
            for key in PROTOCOL_KEYS:
                v = torch.tensor([row[key] for row in values], dtype=torch.float64)
                summary[name][key] = {"mean": float(v.mean()), "std": float(v.std(unbiased=False))}
    rel = None
    if cross_p:
        rel = M.reliability_bins(torch.cat(cross_p), torch.cat(cross_y), n_bins=n_bins, validate_args=False).to_dict()
    order = ["none", *[n for n in CALIBRATOR_NAMES if n in summary and n != "none"]]
    return {n: summary[n] for n in order}, rel


def _labelled(method, loader, predictor, why: str, *, name: str, **kw):
    """``(pred, labels on the CPU)`` per batch of ``loader``; a batch without labels raises (``why``)."""
    for batch, pred, _ in stream(method, loader, predictor=predictor, name=name, **kw):
        if batch.y is None:
            raise ValueError(f"`{name}` batch {batch.index} has no labels; {why}")
        yield pred, batch.y.cpu()


def _sample_pass(method, loader, predictor, *, device, keys, seed, progress, name, ignore_index, max_pixels,
                 distributed):
    """Calibration loader: a bounded sample of (log-probs, label) over its valid rows."""
    sample: Reservoir | None = None
    n = 0
    for pred, y in _labelled(method, loader, predictor, "calibration needs labels", device=device, keys=keys,
                             seed=seed, progress=progress, name=name, distributed=distributed):
        if sample is None:
            sample = Reservoir(None if pred.log_probs.ndim == 2 else max_pixels, seed)
        valid = None if ignore_index is None else y != ignore_index
        positions, flat, L = _flat_rows(pred, y, valid)
        sample.offer(positions.numel(), _take_rows(flat, L, positions, {}, y=y, offset=n))
        n += len(y)
    if sample is None or len(sample) == 0:
        raise ValueError(f"`{name}` has no valid label to fit a calibrator on")
    return sample.get("logits"), sample.get("y"), n


def _score_loader(method, loader, predictor, *, device, keys, seed, progress, name, cap, epistemic, distributed):
    """OOD loader: a bounded sample of every score over all its rows (pixels)."""
    sample = Reservoir(cap, seed)
    images = 0
    for _batch, pred, _ in stream(method, loader, device=device, keys=keys, seed=seed, progress=progress, name=name,
                               predictor=predictor, distributed=distributed):
        scores = uncertainty_scores(pred, epistemic)
        positions, flat, L = _flat_rows(pred, None, None)
        scores = _check_scores(scores, positions.numel())
        sample.offer(positions.numel(), _take_rows(flat, L, positions, scores, logits=False))
        images += len(pred)
    return {k: sample.get(f"s:{k}") for k in SCORE_ORDER if sample.get(f"s:{k}") is not None}, images


def _shift_row(method, loader, predictor, severity, fitted, *, device, keys, seed, progress, name, n_bins,
               ignore_index, distributed):
    um, um_ts = None, None
    ent_sum, count = 0.0, 0
    for pred, y in _labelled(method, loader, predictor, "shifted data needs labels", device=device, keys=keys,
                             seed=seed, progress=progress, name=name, distributed=distributed):
        if um is None:
            c = pred.log_probs.shape[1]
            um, um_ts = _streaming(c, n_bins, ignore_index), _streaming(c, n_bins, ignore_index)
        um.update(pred.probs, y)
        um_ts.update(torch.softmax(fitted.reference(pred.log_probs), 1), y)
        ent = pred.entropy
        valid = torch.ones_like(y, dtype=torch.bool) if ignore_index is None else y != ignore_index
        ent_sum += float(ent[valid].double().sum())
        count += int(valid.sum())
    v, vt = metric_values(um), metric_values(um_ts)
    return {"severity": int(severity), "accuracy": v["accuracy"], "ece": v["ece"], "nll": v["nll"],
            "brier": v["brier"], "ece_temperature": vt["ece"], "entropy_mean": ent_sum / max(count, 1)}


def _evaluate(name: str, method: Any, test_loader, opts: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    from ..methods.ensemble import Ensemble

    t0 = time.perf_counter()
    seed, n_bins, ignore = opts["seed"], opts["n_bins"], opts["ignore_index"]
    where = f"methods[{name!r}]"
    predictor = as_predictor(method, seed=seed, name=where, output=opts["output"])
    device = opts["device"] if opts["device"] is not None else method_device(method)
    epistemic = offers_epistemic(method)
    common = {"device": device, "keys": opts["keys"], "seed": seed, "progress": opts["progress"],
              "distributed": opts["distributed"]}
    cals = opts["calibrators"]
    fitted: _Fitted | None = None
    info: dict[str, Any] = {}
    if opts["calibration"] is not None:
        z, y, info["calibration"] = _sample_pass(method, opts["calibration"], predictor, name="calibration",
                                                 ignore_index=ignore, max_pixels=opts["max_pixels"], **common)
        fitted = _fit_on(z, y, cals, opts["calibration_samples"], seed)
    members = [as_predictor(m, name=f"{where}.members[{i}]", output=method.output)
               for i, m in enumerate(method.members)] \
        if isinstance(method, Ensemble) else []

    um = um_members = None
    um_cal: dict[str, Any] = {}
    sample = anomaly_sample = None
    images, n_valid, errors = 0, 0, 0
    examples: dict[str, list[torch.Tensor]] = {}
    task = None
    for batch, pred, member_preds in stream(method, test_loader, name="test_loader", predictor=predictor,
                                            members=members, **common):
        if batch.y is None:
            raise ValueError(f"`test_loader` batch {batch.index} has no labels; compare needs labelled test data")
        y = batch.y.cpu()
        lp = pred.log_probs
        if task is None:
            task = "classification" if lp.ndim == 2 else "segmentation"
            c = lp.shape[1]
            cap = None if task == "classification" else opts["max_pixels"]
            um = _streaming(c, n_bins, ignore, full=True, validate=True)
            um_members = [_streaming(c, n_bins, ignore) for _ in members]
            if fitted is not None:
                um_cal = {k: _streaming(c, n_bins, ignore, full=True) for k in fitted.by_name}
                um_cal.setdefault("temperature", _streaming(c, n_bins, ignore))
            sample, anomaly_sample = Reservoir(cap, seed), Reservoir(cap, seed + 1)
        elif lp.shape[1] != c or (lp.ndim == 2) != (task == "classification"):
            raise ValueError(f"`test_loader` batch {batch.index}: prediction shape {tuple(lp.shape)} does not match "
                             f"the first batch's (·, {c}, ...)")
        probs = lp.exp()
        um.update(probs, y)
        if fitted is not None:
            for k, cal in fitted.by_name.items():
                um_cal[k].update(torch.softmax(cal(lp), 1), y)
            if "temperature" not in fitted.by_name:
                um_cal["temperature"].update(torch.softmax(fitted.reference(lp), 1), y)
        for member_pred, m in zip(member_preds, um_members):
            m.update(member_pred.probs, y)
        valid = torch.ones_like(y, dtype=torch.bool) if ignore is None else y != ignore
        wrong = (pred.prediction != y) & valid
        n_valid += int(valid.sum())
        errors += int(wrong.sum())
        scores = uncertainty_scores(pred, epistemic)
        positions, flat, L = _flat_rows(pred, y, valid)
        scores = _check_scores(scores, flat.shape[0] * L)
        anomaly = None if batch.anomaly is None else batch.anomaly.cpu()
        sample.offer(positions.numel(), _take_rows(flat, L, positions, scores, y=y, anomaly=anomaly, offset=images))
        if anomaly is not None:
            apos = anomaly.reshape(-1).nonzero().squeeze(1)
            anomaly_sample.offer(apos.numel(), _take_rows(flat, L, apos, scores, logits=False))
        kept = sum(len(t) for t in examples.get("label", []))
        if task == "segmentation" and kept < opts["examples"] and \
                batch.x.ndim == 4 and tuple(batch.x.shape[-2:]) == tuple(y.shape[-2:]):
            k = opts["examples"] - kept
            ex = {"image": _image(batch.x[:k]), "label": y[:k], "prediction": pred.prediction[:k],
                  "entropy": pred.entropy[:k], "anomaly": None if anomaly is None else anomaly[:k].to(torch.int64)}
            if epistemic and pred.num_samples > 1:
                ex["epistemic"] = pred.epistemic[:k]
            for key, t in ex.items():
                if t is not None:
                    examples.setdefault(key, []).append(t)
        images += len(y)
    if len(sample) == 0:
        raise ValueError("`test_loader` has no valid label (every label equals ignore_index)")

    part: dict[str, Any] = {"label": name}
    values = metric_values(um)
    z, yy = sample.get("logits"), sample.get("y")
    if task == "classification":  # every row is in memory: the exact functional metrics
        values = M.evaluate(z.exp(), yy, n_bins=n_bins, validate_args=False)
    part["metrics"] = {k: values[k] for k in METRIC_KEYS if k in values}
    if members:
        part["members"] = [{k: metric_values(m)[k] for k in ("accuracy", "nll", "brier", "ece")} for m in um_members]
    samples = opts["calibration_samples"]
    if fitted is None:
        part["in_distribution"], rel_ts = _protocol(sample, images, cals, opts["repeats"], seed, n_bins, samples)
        fitted = _fit_on(z, yy, ("temperature",), samples, seed)
        if rel_ts is None:
            p = torch.softmax(fitted.reference(z).double(), 1)
            rel_ts = M.reliability_bins(p, yy, n_bins=n_bins, validate_args=False).to_dict()
    else:
        part["in_distribution"] = {"none": {k: {"mean": values[k], "std": None} for k in PROTOCOL_KEYS}}
        for k in cals:
            if k != "none":
                v = metric_values(um_cal[k])
                part["in_distribution"][k] = {m: {"mean": v[m], "std": None} for m in PROTOCOL_KEYS}
        rel_ts = reliability_dict(um_cal["temperature"])
    part["temperature"] = float(fitted.reference.temperature_)
    part["reliability"] = {"uncalibrated": reliability_dict(um), "temperature": rel_ts}
    cov, risk = M.risk_coverage_curve(torch.softmax(z.double(), 1), yy, validate_args=False)
    c_, r_ = downsample(cov, risk)
    part["risk_coverage"] = {"coverage": c_, "risk": r_}

    wrong_s = z.argmax(1) != yy
    in_scores = {k: sample.get(f"s:{k}") for k in SCORE_ORDER if sample.get(f"s:{k}") is not None}
    both = bool(wrong_s.any()) and bool((~wrong_s).any())
    part["misclassification"] = {k: {"auroc": M.auroc(u[wrong_s], u[~wrong_s]) if both else None}
                                 for k, u in in_scores.items()}

    shift: dict[str, list[dict[str, float]]] = {}
    for kind, by_sev in (opts["shifts"] or {}).items():
        shift[kind] = [_shift_row(method, loader, predictor, sev, fitted, name=f"shifts[{kind!r}][{sev!r}]",
                                  n_bins=n_bins, ignore_index=ignore, **common) for sev, loader in by_sev.items()]
    if shift:
        part["shift"] = shift

    cap = None if task == "classification" else opts["max_pixels"]
    out_by_kind: dict[str, dict[str, torch.Tensor]] = {}
    info["ood"] = {}
    for kind, loader in (opts["ood"] or {}).items():
        out_by_kind[kind], info["ood"][kind] = _score_loader(
            method, loader, predictor, name=f"ood[{kind!r}]", cap=cap, epistemic=epistemic, **common)
    if anomaly_sample is not None and len(anomaly_sample):
        out_by_kind["anomaly"] = {k: anomaly_sample.get(f"s:{k}") for k in in_scores}
        info["ood"]["anomaly"] = anomaly_sample.seen
    if out_by_kind:
        a = sample.get("anomaly")
        in_ood = in_scores if a is None else {k: u[~a] for k, u in in_scores.items()}
        part["ood"], part["ood_hist"], part["roc"], part["ood_kinds"] = {}, {}, {}, {}
        for kind, outs in out_by_kind.items():
            part["ood_kinds"][kind] = {k: detection(in_ood[k], outs[k]) for k in in_ood if outs.get(k) is not None}
        for k, u_in in in_ood.items():
            pooled = [outs[k] for outs in out_by_kind.values() if outs.get(k) is not None and outs[k].numel()]
            if not pooled or not u_in.numel():
                continue
            u_out = torch.cat(pooled)
            part["ood"][k] = detection(u_in, u_out)
            part["ood_hist"][k] = histogram(u_in, u_out)
            fpr, tpr = M.roc_curve(u_out, u_in)
            f, t = downsample(fpr, tpr)
            part["roc"][k] = {"fpr": f, "tpr": t}
    part["counts"] = {"test": n_valid, "errors": errors}
    if examples:
        part["segmentation_examples"] = {k: torch.cat(v) for k, v in examples.items()}
        part["segmentation_examples"].setdefault("epistemic", None)
        part["segmentation_examples"].setdefault("anomaly", None)
    part["runtime_s"] = {"evaluate": time.perf_counter() - t0}
    info.update(task=task, test=images, num_classes=c, pixels=n_valid if task == "segmentation" else None)
    return part, info


def _loaders(value: Any, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        if not value:
            raise ValueError(f"`{name}` must be a loader or a non-empty dict kind -> loader, got an empty dict")
        return {str(k): v for k, v in value.items()}
    return {"ood": value}


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
    output: OutputRule = None,
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
        test_loader: labelled batches ``(x, y)`` or ``(x, y, anomaly)``: for segmentation the
            optional third element is a bool (N, H, W) mask of anomaly (OOD) pixels. Every loader
            is iterated once per method, so pass re-iterable loaders (a DataLoader, a list), not
            one-shot generators, when comparing several methods.
        calibration: labelled loader to fit the calibrators on; None: 2-fold protocol on the test set.
        calibrators: subset of ``"none"`` and the names of ``netuq.calibration.CALIBRATORS``.
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
        output: for methods that are plain ``nn.Module``s, where the logits are in their output (a
            key or attribute name, a tuple index, a callable; None: tensor, ``.logits``, or a
            mapping's ``"logits"`` / ``"out"``, see :mod:`netuq._outputs`).

    Returns:
        Plain data (schema 1 of :mod:`netuq.report.schema`): ``task``, ``config``, ``data``,
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
        >>> _ = netuq.report.validate_results(res)
    """
    from ..benchmark.results import to_plain
    from ..report import validate_results

    if not isinstance(methods, Mapping) or not methods:
        raise TypeError(f"`methods` must be a non-empty dict name -> method, got {type(methods).__name__}"
                        if not isinstance(methods, Mapping) else "`methods` must be a non-empty dict, got {}")
    if isinstance(calibrators, str) or not isinstance(calibrators, Sequence):
        raise TypeError(f"`calibrators` must be a sequence of names, got {calibrators!r}")
    bad = [c for c in calibrators if c not in CALIBRATOR_NAMES]
    if bad or not calibrators:
        raise ValueError(f"`calibrators` must be a non-empty subset of {CALIBRATOR_NAMES}, got {list(calibrators)}")
    if shifts is not None and (not isinstance(shifts, Mapping)
                               or not all(isinstance(v, Mapping) for v in shifts.values())):
        raise TypeError("`shifts` must be a dict name -> {severity: loader}")
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
        raise ValueError(f"`ignore_index` must be an integer or None, got {ignore_index!r}")
    opts = {
        "calibration": calibration, "calibrators": tuple(calibrators), "ood": _loaders(ood, "ood"),
        "shifts": shifts, "ignore_index": ignore_index, "n_bins": check_positive_int(n_bins, "n_bins"),
        "seed": int(seed), "device": device, "progress": bool(progress), "keys": keys,
        "repeats": check_positive_int(repeats, "repeats"), "max_pixels": check_positive_int(max_pixels, "max_pixels"),
        "calibration_samples": None if calibration_samples is None else check_positive_int(
            calibration_samples, "calibration_samples"),
        "examples": int(examples), "distributed": distributed, "output": check_output_rule(output),
    }
    is_distributed(distributed)  # checks the argument before any pass
    start = time.perf_counter()
    parts, info = {}, {}
    for name, method in methods.items():
        parts[str(name)], info = _evaluate(str(name), method, test_loader, opts)
    results = {
        "schema": 1,
        "task": info["task"],
        "config": {k: v for k, v in opts.items() if k in ("calibrators", "ignore_index", "n_bins", "seed", "repeats",
                                                          "max_pixels", "calibration_samples")}
        | {"calibration": "2-fold protocol on the test set" if calibration is None else "calibration loader",
           "methods": list(parts)},
        "data": {k: v for k, v in info.items() if k != "task" and v is not None},
        "methods": parts,
        "runtime_s": {"total_this_run": time.perf_counter() - start,
                      "methods": {k: p["runtime_s"] for k, p in parts.items()}},
    }
    return validate_results(to_plain(results))
