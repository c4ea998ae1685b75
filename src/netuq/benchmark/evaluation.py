"""Evaluate one method's predictor on the benchmark data; returns plain data for ``results.json``.

Only metric *computation* happens here (through netuq.metrics and netuq.calibration); the
report draws what this returns and never recomputes a metric.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import metrics as M
from ..prediction import Prediction
from .config import BenchmarkConfig
from .recipes import IGNORE, Predictor

CURVE_POINTS = 101


def predict_all(predictor: Predictor, x: torch.Tensor, batch: int, device: str = "cpu") -> Prediction:
    """Run the predictor over ``x`` in batches on ``device``; the concatenated prediction is on the CPU."""
    with torch.no_grad():
        preds = [predictor(x[i : i + batch].to(device)).to("cpu") for i in range(0, len(x), batch)]
    return Prediction.cat(preds)


def _downsample(*arrays: torch.Tensor, points: int = CURVE_POINTS) -> list[list[float]]:
    n = arrays[0].numel()
    idx = torch.linspace(0, n - 1, min(points, n)).round().long()
    return [a[idx].tolist() for a in arrays]


def uncertainty_scores(pred: Prediction, method: str) -> dict[str, torch.Tensor]:
    """The method's natural uncertainty scores (higher = less sure), each (N, ...)."""
    scores = {"max_prob": 1.0 - pred.confidence, "entropy": pred.entropy}
    if pred.num_samples > 1 and method != "heteroscedastic":
        # Heteroscedastic samples spread by logit noise: their disagreement is aleatoric by
        # construction (Kendall & Gal 2017), not epistemic, so no mutual information for it.
        scores["mutual_information"] = pred.epistemic
    if "confidence" in pred.scores:
        scores["confidence"] = 1.0 - pred.scores["confidence"]
    if "sigma" in pred.scores:
        scores["sigma"] = pred.scores["sigma"]
    return scores


def _detection(u_in: torch.Tensor, u_out: torch.Tensor) -> dict[str, float]:
    """OOD is the positive class for AUROC/AUPR; FPR@95 keeps 95% of in-distribution inputs."""
    return {
        "auroc": M.auroc(u_out, u_in),
        "aupr": M.aupr(u_out, u_in),
        "fpr95": M.fpr_at_tpr(-u_in, -u_out, tpr=0.95),
    }


def _histogram(u_in: torch.Tensor, u_out: torch.Tensor, bins: int = 30) -> dict[str, Any]:
    lo = float(torch.minimum(u_in.min(), u_out.min()))
    hi = float(torch.maximum(u_in.max(), u_out.max()))
    hi = hi if hi > lo else lo + 1e-6
    edges = torch.linspace(lo, hi, bins + 1)
    h_in = torch.histc(u_in.double(), bins, lo, hi) / u_in.numel()
    h_out = torch.histc(u_out.double(), bins, lo, hi) / u_out.numel()
    return {"edges": edges.tolist(), "in": h_in.tolist(), "out": h_out.tolist()}


def _calibrator(name: str):
    from ..calibration import CALIBRATORS

    return CALIBRATORS[name]


def evaluate_method(
    method: str, predictor: Predictor, data, config: BenchmarkConfig, *, progress=None
) -> dict[str, Any]:
    """Every number the report shows for one method."""
    from ..calibration import cross_validate

    seg = config.task == "segmentation"
    ignore = IGNORE if seg else None
    batch = 32 if seg else 512
    tick = progress or (lambda *_: None)
    x_test, y_test = data.test
    test = predict_all(predictor, x_test, batch, config.device)
    val = predict_all(predictor, data.val[0], batch, config.device)
    tick("test")
    part: dict[str, Any] = {"method": method}
    part["metrics"] = M.evaluate(test.probs, y_test, n_bins=config.n_bins, ignore_index=ignore, validate_args=False)

    # A deep ensemble's members, each alone: the ensemble should beat every one of them.
    members = getattr(predictor, "members", None)
    if members is not None:
        part["members"] = []
        for member in members:
            single = predict_all(lambda x, member=member: Prediction.from_logits(member.eval()(x)), x_test, batch,
                                 config.device)
            ev = M.evaluate(single.probs, y_test, n_bins=config.n_bins, ignore_index=ignore, validate_args=False)
            part["members"].append({k: ev[k] for k in ("accuracy", "nll", "brier", "ece")})

    # Post-hoc calibration by the repeated 2-fold protocol on the test set (Ashukha et al. 2020).
    logits = test.log_probs
    in_dist: dict[str, Any] = {}
    for cal in config.calibrators:
        if cal == "none":
            continue
        cv = cross_validate(_calibrator(cal), logits, y_test, folds=2, repeats=config.cv_repeats,
                            seed=config.seed, n_bins=config.n_bins, ignore_index=ignore,
                            max_samples=config.calibration_pixels if seg else None)
        in_dist[cal] = {k: cv[k] for k in ("nll", "ece", "brier", "accuracy")}
        in_dist.setdefault("none", {k: cv["uncalibrated"][k] for k in ("nll", "ece", "brier", "accuracy")})
    if "none" not in in_dist:
        in_dist["none"] = {k: {"mean": v, "std": 0.0} for k, v in part["metrics"].items()
                           if k in ("nll", "ece", "brier", "accuracy")}
    part["in_distribution"] = in_dist
    tick("calibration")

    # Reliability before/after temperature scaling fitted on the validation set.
    from ..calibration import TemperatureScaling

    ts = TemperatureScaling().fit(val.log_probs, data.val[1], ignore_index=ignore)
    part["temperature"] = float(ts.temperature_)
    ts_probs = ts.predict_proba(logits)
    part["reliability"] = {
        "uncalibrated": M.reliability_bins(test.probs, y_test, n_bins=config.n_bins, ignore_index=ignore,
                                           validate_args=False).to_dict(),
        "temperature": M.reliability_bins(ts_probs, y_test, n_bins=config.n_bins, ignore_index=ignore,
                                          validate_args=False).to_dict(),
    }
    cov, risk = M.risk_coverage_curve(test.probs, y_test, ignore_index=ignore, validate_args=False)
    c, r = _downsample(cov, risk)
    part["risk_coverage"] = {"coverage": c, "risk": r}

    # Misclassification detection: wrong predictions should be the uncertain ones.
    valid = (y_test != IGNORE) if seg else torch.ones_like(y_test, dtype=torch.bool)
    wrong = (test.prediction != y_test) & valid
    right = (test.prediction == y_test) & valid
    scores_in = uncertainty_scores(test, method)
    part["misclassification"] = {
        name: {"auroc": M.auroc(u[wrong], u[right]) if bool(wrong.any()) else None} for name, u in scores_in.items()
    }

    # Distribution shift: accuracy, ECE, NLL and mean entropy per corruption and severity.
    shift: dict[str, list[dict[str, float]]] = {}
    for kind, by_sev in data.shifted.items():
        rows = []
        for sev, x_shift in by_sev.items():
            p = predict_all(predictor, x_shift, batch, config.device)
            ev = M.evaluate(p.probs, y_test, n_bins=config.n_bins, ignore_index=ignore, validate_args=False)
            ts_p = ts.predict_proba(p.log_probs)
            rows.append({
                "severity": sev,
                "accuracy": ev["accuracy"],
                "ece": ev["ece"],
                "nll": ev["nll"],
                "brier": ev["brier"],
                "ece_temperature": M.ece(ts_p, y_test, n_bins=config.n_bins, ignore_index=ignore,
                                         validate_args=False),
                "entropy_mean": float(p.entropy[valid].mean()),
            })
        shift[kind] = rows
        tick(f"shift {kind}")
    part["shift"] = shift

    # Out of distribution: whole OOD images (classification) or anomaly pixels (segmentation).
    if seg:
        anomaly = data.test_anomaly
        ood_scores = {name: (u[valid], u[anomaly]) for name, u in scores_in.items()}
    else:
        ood = predict_all(predictor, data.ood[0], batch, config.device)
        scores_out = uncertainty_scores(ood, method)
        ood_scores = {name: (scores_in[name].reshape(-1), scores_out[name].reshape(-1)) for name in scores_in}
    part["ood"] = {}
    part["ood_hist"] = {}
    part["roc"] = {}
    for name, (u_in, u_out) in ood_scores.items():
        if u_out.numel() == 0:
            continue
        part["ood"][name] = _detection(u_in, u_out)
        part["ood_hist"][name] = _histogram(u_in, u_out)
        fpr, tpr = M.roc_curve(u_out, u_in)
        f, t = _downsample(fpr, tpr)
        part["roc"][name] = {"fpr": f, "tpr": t}
    tick("ood")

    if seg:
        k = min(4, len(x_test))
        part["segmentation_examples"] = {
            "image": x_test[:k, 0],
            "label": y_test[:k],
            "prediction": test.prediction[:k],
            "entropy": test.entropy[:k],
            "epistemic": None if method == "heteroscedastic" or test.num_samples == 1 else test.epistemic[:k],
            "anomaly": data.test_anomaly[:k].to(torch.int64),
        }
    return part
