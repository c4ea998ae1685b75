"""`netuq conformal` through netuq.cli.main, with files in tmp_path."""

from __future__ import annotations

import json

import pytest
import torch

from netuq import metrics
from netuq.cli import main
from netuq.conformal import ConformalRiskControl, SplitConformal
from netuq.io import save_arrays


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _preds(n, seed):
    g = torch.Generator().manual_seed(seed)
    z = 2.0 * torch.randn(n, 4, generator=g)
    return z, torch.multinomial(z.softmax(1), 1, generator=g).squeeze(1)


def test_classification_with_calibration_file_equals_the_library(tmp_path, capsys):
    z, y = _preds(300, 0)
    zc, yc = _preds(200, 1)
    test = save_arrays(tmp_path / "test.npz", y, logits=z)
    cal = save_arrays(tmp_path / "cal.npz", yc, logits=zc)
    code, out, err = run(capsys, "conformal", test, "--calibration", cal, "--alpha", 0.1, "--alpha", 0.2, "--json")
    assert code == 0 and err == ""
    res = json.loads(out)
    assert res["task"] == "classification" and len(res["rows"]) == 6
    for row in res["rows"]:
        sets = SplitConformal(score=row["score"], alpha=row["alpha"]).fit(zc, yc).predict(z)
        assert row["coverage"] == pytest.approx(metrics.coverage(sets, y), abs=1e-12)
        assert row["set_size"] == pytest.approx(metrics.set_size(sets), abs=1e-12)
    code, out, _ = run(capsys, "conformal", test, "--splits", 3, "--score", "aps", "--randomized")
    assert code == 0 and "aps-rand" in out and "±" in out and "3 random halves" in out


def test_segmentation_risk_control(tmp_path, capsys):
    g = torch.Generator().manual_seed(2)
    y = torch.randint(0, 3, (20, 6, 6), generator=g)
    z = 2 * torch.nn.functional.one_hot(y, 3).permute(0, 3, 1, 2).float() + torch.randn(20, 3, 6, 6, generator=g)
    test = save_arrays(tmp_path / "t.npz", y[:10], logits=z[:10])
    cal = save_arrays(tmp_path / "c.npz", y[10:], logits=z[10:])
    code, out, err = run(capsys, "conformal", test, "--calibration", cal, "--alpha", 0.2, "--loss", "fnr",
                         "--target-class", 1, "--grid-size", 200, "--json")
    assert code == 0, err
    row = json.loads(out)["rows"][0]
    crc = ConformalRiskControl(loss="fnr", target_class=1, alpha=0.2, grid_size=200).fit(z[10:], y[10:])
    assert row["threshold"] == crc.threshold_
    assert row["risk"] == pytest.approx(float(crc.risk(z[:10], y[:10]).mean()), abs=1e-9)


@pytest.mark.parametrize("argv, message", [
    (["--alpha", "1.5"], "argument --alpha: must be a number in (0, 1)"),
    (["--score", "thr"], "argument --score: invalid choice"),
    (["--splits", "0"], "argument --splits: must be a positive integer"),
    (["--calibration", "missing.npz"], "no such file"),
])
def test_errors_are_one_line_exit_2(tmp_path, capsys, argv, message):
    z, y = _preds(50, 3)
    path = save_arrays(tmp_path / "p.npz", y, logits=z)
    code, out, err = run(capsys, "conformal", path, *[a.replace("missing.npz", str(tmp_path / "missing.npz"))
                                                      for a in argv])
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_fnr_without_target_class_is_refused(tmp_path, capsys):
    y = torch.zeros(4, 3, 3, dtype=torch.long)
    path = save_arrays(tmp_path / "s.npz", y, logits=torch.randn(4, 2, 3, 3))
    code, _, err = run(capsys, "conformal", path, "--loss", "fnr")
    assert code == 2 and "--loss fnr needs --target-class" in err
