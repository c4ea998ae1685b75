"""compare(conformal=...): the conformal section equals SplitConformal / risk control run by hand on
the same predictions, validates, aggregates over seeds and renders."""

from __future__ import annotations

import pytest
import torch

import netuq
from netuq.conformal import ConformalRiskControl, SplitConformal
from netuq.report import aggregate_seeds, validate_results
from netuq.report.build import build_report


def _classification():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 6, generator=g)
    y = (x[:, :4] + 0.7 * torch.randn(400, 4, generator=g)).argmax(1)
    torch.manual_seed(0)
    net = torch.nn.Linear(6, 4)
    with torch.no_grad():
        net.weight[:, :4] += 2 * torch.eye(4)
    test = [(x[i:i + 50], y[i:i + 50]) for i in range(0, 200, 50)]
    cal = [(x[i:i + 50], y[i:i + 50]) for i in range(200, 400, 50)]
    return net, test, cal, x, y


def test_classification_with_a_calibration_loader_equals_split_conformal():
    net, test, cal, x, y = _classification()
    res = netuq.compare({"net": net}, test, calibration=cal, repeats=1, conformal={"alpha": [0.1, 0.2]})
    sec = res["methods"]["net"]["conformal"]
    assert sec["protocol"] == "calibration loader" and len(sec["rows"]) == 6
    with torch.no_grad():
        z = torch.log_softmax(net(x), 1)
    for row in sec["rows"]:
        cp = SplitConformal(score=row["score"], alpha=row["alpha"]).fit(z[200:], y[200:])
        sets = cp.predict(z[:200])
        assert row["coverage"] == pytest.approx(netuq.metrics.coverage(sets, y[:200]), abs=1e-12)
        assert row["set_size"] == pytest.approx(netuq.metrics.set_size(sets), abs=1e-12)
        assert row["worst_class_coverage"] == pytest.approx(netuq.metrics.worst_class_coverage(sets, y[:200]))
    validate_results(res)
    report = build_report(res)
    block = next(s for s in report.sections if s.id == "conformal").blocks
    assert block[1].header[0] == "method" and len(block[1].rows) == 6


def test_classification_protocol_seeds_and_validation():
    net, test, _, _, _ = _classification()
    a = netuq.compare({"net": net}, test, repeats=1, conformal={"splits": 5, "scores": ["lac"]}, seed=0)
    b = netuq.compare({"net": net}, test, repeats=1, conformal={"splits": 5, "scores": ["lac"]}, seed=1)
    row = a["methods"]["net"]["conformal"]["rows"][0]
    assert a["methods"]["net"]["conformal"]["protocol"] == "5 random halves of the test set"
    assert 0 < row["coverage_sd"] and 0.7 < row["coverage"] <= 1
    agg = aggregate_seeds([a, b])
    want = (row["coverage"] + b["methods"]["net"]["conformal"]["rows"][0]["coverage"]) / 2
    assert agg["methods"]["net"]["conformal"]["rows"][0]["coverage"] == pytest.approx(want)
    bad = {**a, "methods": {"net": {**a["methods"]["net"], "conformal": {"task": "classification", "rows": [{}]}}}}
    with pytest.raises(ValueError, match=r"\['conformal'\]\['rows'\]\[0\]` must hold numbers"):
        validate_results(bad)
    with pytest.raises(ValueError, match="`conformal` options must be among"):
        netuq.compare({"net": net}, test, conformal={"alfa": 0.1})
    assert "conformal" not in netuq.compare({"net": net}, test, repeats=1)["methods"]["net"]


def test_segmentation_risk_equals_risk_control_by_hand():
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 3, (24, 8, 8), generator=g)
    x = torch.nn.functional.one_hot(y, 3).permute(0, 3, 1, 2).float() + 0.8 * torch.randn(24, 3, 8, 8, generator=g)
    net = torch.nn.Conv2d(3, 3, 1)
    with torch.no_grad():
        net.weight.copy_(2 * torch.eye(3).view(3, 3, 1, 1))
        net.bias.zero_()
    test = [(x[i:i + 6], y[i:i + 6]) for i in range(0, 12, 6)]
    cal = [(x[i:i + 6], y[i:i + 6]) for i in range(12, 24, 6)]
    res = netuq.compare({"net": net}, test, calibration=cal, repeats=1, max_pixels=500,
                        conformal={"alpha": 0.2, "grid_size": 100})
    row = res["methods"]["net"]["conformal"]["rows"][0]
    with torch.no_grad():
        z = net(x)
    crc = ConformalRiskControl(loss="miscoverage", alpha=0.2, grid_size=100).fit(z[12:], y[12:])
    assert row["threshold"] == crc.threshold_
    assert row["risk"] == pytest.approx(float(crc.risk(z[:12], y[:12]).mean()), abs=1e-6)
    sets = crc.predict(z[:12])
    assert row["set_size"] == pytest.approx(float(sets.sum(1).double().mean()), abs=1e-6)
    validate_results(res)
    proto = netuq.compare({"net": net}, test, repeats=1, max_pixels=500, conformal={"alpha": 0.3, "splits": 4})
    assert proto["methods"]["net"]["conformal"]["rows"][0]["n_calibration"] == 6


def test_rendered_text_names_the_calibration_source_and_the_scores():
    from netuq.conformal._section import _render

    row = {"score": "aps", "alpha": 0.1, "coverage": 0.9, "set_size": 2.0, "worst_class_coverage": 0.8}
    held = {"methods": {"net": {"conformal": {"task": "classification", "protocol": "calibration loader",
                                              "rows": [row]}}}}
    halves = {"methods": {"net": {"conformal": {"task": "classification",
                                                "protocol": "5 random halves of the test set", "rows": [row]}}}}
    text, table = _render(held)
    assert "calibrated on the calibration loader." in text.text and table.rows[0][1] == "APS"
    assert "calibrated on 5 random halves of the test set." in _render(halves)[0].text
