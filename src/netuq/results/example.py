"""A small, realistic results dict for tests and documentation (:func:`example_results`).

Synthetic predictions scored with ``netuq.metrics`` (the numbers are what compare would report for
them); nothing in the report computes a metric.
"""

from __future__ import annotations

from typing import Any

from .aggregate import aggregate_seeds
from .schema import SCHEMA_VERSION, TASKS, protocol_record

__all__ = ["example_results"]


def example_results(
    task: str = "classification",
    *,
    methods=("deterministic", "mc_dropout", "ensemble"),
    seed: int = 0,
    seeds: int | None = None,
):
    """A small, realistic results dict following the schema, computed with ``netuq.metrics`` on
    synthetic predictions (better methods are made better calibrated). For tests and docs.

    Args:
        task: ``"classification"`` or ``"segmentation"``.
        methods: method keys, in display order.
        seed: seed of the synthetic data (the first seed with ``seeds``).
        seeds: build this many seeds (``seed``, ``seed + 1``, ...) and return their
            :func:`netuq.report.aggregate_seeds` aggregate; ``None`` = one plain result.

    Example:
        >>> r = example_results()
        >>> sorted(r["methods"]), r["task"]
        (['deterministic', 'ensemble', 'mc_dropout'], 'classification')
        >>> sorted(example_results(seeds=3)["seeds"])
        ['0', '1', '2']
    """
    if task not in TASKS:
        raise ValueError(f"`task` must be one of {TASKS}, got {task!r}")
    if seeds is not None:
        if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
            raise ValueError(f"`seeds` must be a positive int or None, got {seeds!r}")
        return aggregate_seeds([example_results(task, methods=methods, seed=seed + i) for i in range(seeds)])
    return _example(task, tuple(methods), int(seed))


def _example(task: str, methods: tuple, seed: int) -> dict:
    import torch

    from .. import metrics as M

    gen = torch.Generator().manual_seed(seed)
    n, c = 400, 10
    y = torch.randint(0, c, (n,), generator=gen)
    base = torch.randn(n, c, generator=gen)
    base[torch.arange(n), y] += 3.0

    def down(t, k=51):
        idx = torch.linspace(0, t.numel() - 1, min(k, t.numel())).round().long()
        return t[idx].tolist()

    out: dict[str, Any] = {}
    for j, name in enumerate(methods):
        sharp = 2.2 - 0.4 * j  # over-confident first, better calibrated later
        noise = torch.randn(n, c, generator=gen) * 0.8
        raw = base + noise
        logits = raw * sharp
        probs = logits.softmax(1)
        ev = M.evaluate(probs, y)
        scales = torch.linspace(0.2, 2.0, 37)
        nlls = torch.stack([torch.nn.functional.cross_entropy(raw * s, y) for s in scales])
        t_probs = (raw * scales[int(nlls.argmin())]).softmax(1)  # "temperature scaling" on the test set
        ev_t = M.evaluate(t_probs, y)

        def stat(v, spread, j=j):
            return {"mean": float(v), "std": float(spread * (1.0 + 0.1 * j))}

        in_dist = {
            "none": {k: stat(ev[k], 0.01) for k in ("nll", "ece", "brier", "accuracy")},
            "temperature": {k: stat(ev_t[k], 0.008) for k in ("nll", "ece", "brier", "accuracy")},
        }
        ood_logits = torch.randn(200, c, generator=gen) * sharp * (0.8 + 0.1 * j)
        ood_probs = ood_logits.softmax(1)
        scores_in = {"max_prob": 1 - probs.max(1).values, "entropy": -(probs * probs.clamp_min(1e-12).log()).sum(1)}
        scores_out = {
            "max_prob": 1 - ood_probs.max(1).values,
            "entropy": -(ood_probs * ood_probs.clamp_min(1e-12).log()).sum(1),
        }
        ood, hist, roc, kinds = {}, {}, {}, {"noise": {}, "photos": {}}
        for s in scores_in:
            a, b = scores_in[s], scores_out[s]
            ood[s] = {"auroc": M.auroc(b, a), "aupr": M.aupr(b, a), "fpr95": M.fpr_at_tpr(-a, -b, tpr=0.95)}
            for kind, part in (("noise", b[:100]), ("photos", b[100:])):
                kinds[kind][s] = {"auroc": M.auroc(part, a), "aupr": M.aupr(part, a),
                                  "fpr95": M.fpr_at_tpr(-a, -part, tpr=0.95)}
            lo, hi = float(torch.minimum(a.min(), b.min())), float(torch.maximum(a.max(), b.max()))
            edges = torch.linspace(lo, hi, 21)
            hist[s] = {
                "edges": edges.tolist(),
                "in": (torch.histc(a, 20, lo, hi) / a.numel()).tolist(),
                "out": (torch.histc(b, 20, lo, hi) / b.numel()).tolist(),
            }
            fpr, tpr = M.roc_curve(b, a)
            roc[s] = {"fpr": down(fpr), "tpr": down(tpr)}
        cov, risk = M.risk_coverage_curve(probs, y)
        wrong = probs.argmax(1) != y
        shift = {}
        for i, kind in enumerate(("rotation", "gaussian_noise", "blur", "pixel_dropout")):
            rows = []
            for sev in (1, 2, 3, 4, 5):
                f = 1.0 + 0.15 * sev * (1 + 0.2 * i)
                acc = max(0.1, ev["accuracy"] - 0.08 * sev * (1 + 0.1 * i))
                rows.append({
                    "severity": sev,
                    "accuracy": acc,
                    "ece": ev["ece"] * f + 0.02 * sev / (1 + j),
                    "nll": ev["nll"] * f,
                    "brier": ev["brier"] * f,
                    "ece_temperature": ev_t["ece"] * f,
                    "entropy_mean": float(scores_in["entropy"].mean()) * f,
                })
            shift[kind] = rows
        out[name] = {
            "method": name,
            "metrics": ev,
            "in_distribution": in_dist,
            "temperature": float(sharp / scales[int(nlls.argmin())]),
            "reliability": {
                "uncalibrated": M.reliability_bins(probs, y).to_dict(),
                "temperature": M.reliability_bins(t_probs, y).to_dict(),
            },
            "risk_coverage": {"coverage": down(cov), "risk": down(risk)},
            "misclassification": {s: {"auroc": M.auroc(u[wrong], u[~wrong])} for s, u in scores_in.items()},
            "shift": shift,
            "ood": ood,
            "ood_kinds": kinds,
            "counts": {"test": n, "errors": int(wrong.sum())},
            "ood_hist": hist,
            "roc": roc,
            "runtime_s": {"train": 1.5 + j, "evaluate": 0.3 + 0.2 * j},
            "traits": {"family": name, "members": 5 if name == "ensemble" else None,
                       "epistemic": name in ("mc_dropout", "ensemble", "tta")},
        }
        if task == "segmentation":
            k, h = 2, 16
            image = torch.rand(k, h, h, generator=gen)
            label = (image * 4).long()
            label[:, :3, :3] = 255
            anomaly = torch.zeros(k, h, h, dtype=torch.long)
            anomaly[:, :3, :3] = 1
            ent = torch.rand(k, h, h, generator=gen)
            out[name]["segmentation_examples"] = {
                "image": image.tolist(),
                "label": label.tolist(),
                "prediction": (image * 4).long().clamp(max=3).tolist(),
                "entropy": ent.tolist(),
                "epistemic": (ent * 0.3).tolist() if name != "deterministic" else None,
                "anomaly": anomaly.tolist(),
            }
    return {
        "schema": SCHEMA_VERSION,
        "task": task,
        "config": {"task": task, "methods": list(methods), "seed": seed, "epochs": 3, "n_bins": 15},
        "data": {"dataset": "synthetic", "train": 988, "val": 270, "test": n, "num_classes": c},
        "protocol": protocol_record(source="benchmark", held_out=False, repeats=5,
                                    calibrators=("none", "temperature"),
                                    shifts={k: (1, 2, 3, 4, 5) for k in ("rotation", "gaussian_noise", "blur",
                                                                         "pixel_dropout")}),
        "runtime_s": {
            "total_this_run": float(sum(2.0 + 1.2 * j for j in range(len(methods)))),
            "methods": {m: out[m]["runtime_s"] for m in methods},
        },
        "methods": out,
    }
