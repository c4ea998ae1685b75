"""What compare records for the report's views: protocol, class names, per-class numbers, per-kind
OOD curves and one reliability diagram (with its ECE) per calibrator — against independent references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix, recall_score

import netuq
from netuq import metrics as M
from netuq.engine._views import ClassCounts, per_class
from netuq.metrics.streaming import UncertaintyMetrics

C = 4


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, :C].argmax(1) + (torch.rand(n, generator=g) < 0.25).long()) % C
    return x, y


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = torch.nn.Linear(6, C)
    with torch.no_grad():
        net.weight.zero_()
        net.weight[:, :C] = 2.5 * torch.eye(C)
    return net


def _classwise_reference(p: np.ndarray, y: np.ndarray, n_bins: int) -> list[float]:
    """Class-wise ECE of each class (Kull et al. 2019), binned on (lo, hi] like netuq."""
    out = []
    for c in range(p.shape[1]):
        b = np.clip(np.ceil(p[:, c] * n_bins).astype(int) - 1, 0, n_bins - 1)
        gap = sum(abs((y[b == k] == c).sum() - p[b == k, c].sum()) for k in range(n_bins))
        out.append(gap / len(y))
    return out


def test_class_counts_and_per_class_match_sklearn_and_a_reference():
    g = torch.Generator().manual_seed(3)
    probs = torch.softmax(torch.randn(300, C, generator=g) * 2, 1)
    y = torch.randint(0, C, (300,), generator=g)
    y[:5] = 0  # every class present
    valid = torch.rand(300, generator=g) > 0.1
    cc, um = ClassCounts(C), UncertaintyMetrics(C, classwise=True)
    for i in range(0, 300, 70):  # streamed in uneven batches
        sl = slice(i, i + 70)
        cc.update(probs[sl].argmax(1), y[sl], valid[sl])
        um.update(probs[sl][valid[sl]], y[sl][valid[sl]])
    pred, yv = probs.argmax(1)[valid].numpy(), y[valid].numpy()
    assert cc.confusion.tolist() == confusion_matrix(yv, pred, labels=range(C)).tolist()
    pc = per_class(cc, um)
    assert pc["support"] == np.bincount(yv, minlength=C).tolist()
    np.testing.assert_allclose(pc["accuracy"], recall_score(yv, pred, average=None, labels=range(C)))
    ref = _classwise_reference(probs[valid].double().numpy(), yv, 15)
    np.testing.assert_allclose(pc["ece"], ref, atol=1e-12)
    assert np.mean(pc["ece"]) == pytest.approx(M.classwise_ece(probs[valid], y[valid]), abs=1e-12)


def test_compare_records_what_the_report_says(model):
    x, y = _data(240, 0)
    xc, yc = _data(160, 1)
    test = [(x[:120], y[:120]), (x[120:], y[120:])]
    shifted = {s: [(x + 0.3 * s * torch.randn_like(x), y)] for s in (4, 2)}
    g = torch.Generator().manual_seed(5)
    res = netuq.compare({"m": model}, test, calibration=[(xc, yc)], calibrators=("none", "temperature", "vector"),
                        ood={"far": [(torch.randn(50, 6, generator=g) * 6,)],
                             "near": [(torch.randn(40, 6, generator=g),)]},
                        shifts={"noise": shifted}, class_names=["a", "b", "c", "d"])
    assert res["protocol"] == {"source": "compare", "calibration": "held_out",
                               "calibrators": ["none", "temperature", "vector"], "temperature": "calibration",
                               "shifts": {"noise": [2, 4]}}
    assert res["data"]["class_names"] == ["a", "b", "c", "d"] and res["data"]["calibration"] == 160
    m = res["methods"]["m"]
    pc = m["per_class"]
    assert sum(pc["support"]) == 240 == m["counts"]["test"]
    acc = sum(s * a for s, a in zip(pc["support"], pc["accuracy"])) / 240
    assert acc == pytest.approx(m["metrics"]["accuracy"], abs=1e-12)
    assert np.mean(pc["ece"]) == pytest.approx(m["metrics"]["classwise_ece"], abs=1e-9)
    assert np.trace(np.array(pc["confusion"])) == 240 - m["counts"]["errors"]
    # One reliability diagram per calibrator that ran, each with the ECE the table shows.
    assert list(m["reliability"]) == ["uncalibrated", "temperature", "vector"]
    assert m["reliability"]["uncalibrated"]["ece"] == pytest.approx(m["metrics"]["ece"], abs=1e-9)
    for cal in ("temperature", "vector"):
        assert m["reliability"][cal]["ece"] == pytest.approx(m["in_distribution"][cal]["ece"]["mean"], abs=1e-9)
        assert sum(m["reliability"][cal]["counts"]) == 240
    # Per-kind curves: the same detection numbers as the per-kind table.
    assert set(m["ood_kinds_hist"]) == set(m["ood_kinds_roc"]) == {"far", "near"}
    for kind in ("far", "near"):
        roc = m["ood_kinds_roc"][kind]["entropy"]
        auc = np.trapezoid(roc["tpr"], roc["fpr"])
        assert auc == pytest.approx(m["ood_kinds"][kind]["entropy"]["auroc"], abs=0.02)  # downsampled curve
        h = m["ood_kinds_hist"][kind]["max_prob"]
        assert sum(h["in"]) == pytest.approx(1) and sum(h["out"]) == pytest.approx(1)
    netuq.report.validate_results(res)


def test_protocol_mode_records_cross_validation_and_every_calibrators_diagram(model):
    x, y = _data(200, 2)
    res = netuq.compare({"m": model}, [(x, y)], calibrators=("none", "temperature", "vector"), repeats=2)
    assert res["protocol"]["calibration"] == "cross_validation"
    assert (res["protocol"]["folds"], res["protocol"]["repeats"], res["protocol"]["temperature"]) == (2, 2, "test")
    assert res["protocol"]["shifts"] == {} and "class_names" not in res["data"]
    rel = res["methods"]["m"]["reliability"]
    assert list(rel) == ["uncalibrated", "temperature", "vector"]
    for cal in ("temperature", "vector"):  # repeat 0's two cross-fitted halves: every example once
        assert sum(rel[cal]["counts"]) == 200 and 0 <= rel[cal]["ece"] < 1


def test_class_names_are_checked(model):
    x, y = _data(40, 3)
    with pytest.raises(ValueError, match=r"`class_names` must have one name per class \(4\), got 3"):
        netuq.compare({"m": model}, [(x, y)], class_names=["a", "b", "c"], repeats=1)
    with pytest.raises(TypeError, match="`class_names` must be a sequence of names"):
        netuq.compare({"m": model}, [(x, y)], class_names="abcd", repeats=1)


def test_segmentation_per_class_counts_valid_pixels_only():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 8, 8, generator=g)
    y = x.argmax(1)
    y[:, :2, :2] = 255
    net = torch.nn.Conv2d(3, 3, 1)
    with torch.no_grad():
        net.weight.copy_(2 * torch.eye(3).view(3, 3, 1, 1))
        net.bias.zero_()
    res = netuq.compare({"seg": net}, [(x[:3], y[:3]), (x[3:], y[3:])], ignore_index=255, repeats=1)
    pc = res["methods"]["seg"]["per_class"]
    valid = y[y != 255]
    assert pc["support"] == torch.bincount(valid, minlength=3).tolist()
    assert sum(pc["support"]) == res["methods"]["seg"]["counts"]["test"] == 6 * 64 - 6 * 4
