"""`netuq calibrate` and `netuq evaluate` through netuq.cli.main, with files in tmp_path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import netuq.calibration as _calibration
from netuq import metrics
from netuq.calibration import TemperatureScaling, cross_validate, load

if not hasattr(_calibration, "CALIBRATORS"):  # until the calibrator registry (contract 1) is merged
    _calibration.CALIBRATORS = {"temperature": _calibration.TemperatureScaling,
                                "vector": _calibration.VectorScaling, "matrix": _calibration.MatrixScaling}

from netuq.cli import main  # noqa: E402
from netuq.io import save_arrays


@pytest.fixture(scope="module")
def preds():
    g = torch.Generator().manual_seed(0)
    z = 2.0 * torch.randn(300, 4, generator=g)
    y = torch.multinomial(z.softmax(1), 1, generator=g).squeeze(1)
    return 3.0 * z, y  # overconfident


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_calibrate_prints_protocol_table_and_saves(tmp_path, capsys, preds):
    z, y = preds
    path = save_arrays(tmp_path / "preds.npz", y, logits=z)
    code, out, err = run(capsys, "calibrate", path, "--repeats", 2, "--seed", 3, "--save", tmp_path / "ts.json")
    assert code == 0 and err == ""
    cv = cross_validate(TemperatureScaling, z, y, repeats=2, seed=3)
    nll_line = next(line for line in out.splitlines() if line.startswith("nll"))
    assert f"{cv['uncalibrated']['nll']['mean']:.4f} ± {cv['uncalibrated']['nll']['std']:.4f}" in nll_line
    assert f"{cv['nll']['mean']:.4f} ± {cv['nll']['std']:.4f}" in nll_line
    assert "2-fold x 2 repeats (seed 3)" in out and "temperature per fold" in out
    saved = load(tmp_path / "ts.json")
    assert saved.temperature_ == TemperatureScaling().fit(z, y).temperature_
    assert f"T = {saved.temperature_:.4f}" in out


def test_calibrate_matrix_odir_and_plot(tmp_path, capsys, preds):
    z, y = preds
    path = save_arrays(tmp_path / "preds.pt", y, logits=z)
    png = tmp_path / "rel.png"
    code, out, err = run(
        capsys,
        "calibrate",
        path,
        "--method",
        "matrix",
        "--odir",
        "1,1",
        "--repeats",
        1,
        "--plot",
        png,
        "--save",
        tmp_path / "ms.json",
    )
    assert code == 0, err
    assert "matrix scaling on" in out and f"wrote {png}" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load(tmp_path / "ms.json").odir_ == (1.0, 1.0)


def test_calibrate_segmentation_npy_with_ignore_index(tmp_path, capsys):
    g = torch.Generator().manual_seed(1)
    z = 3 * torch.randn(6, 3, 4, 4, generator=g)
    y = torch.randint(0, 3, (6, 4, 4), generator=g)
    y[:, 0] = 255
    np.save(tmp_path / "seg.npy", z.numpy())
    np.save(tmp_path / "gt.npy", y.numpy())
    code, out, err = run(
        capsys,
        "calibrate",
        tmp_path / "seg.npy",
        "--input",
        "logits",
        "--labels",
        tmp_path / "gt.npy",
        "--ignore-index",
        255,
        "--method",
        "vector",
        "--repeats",
        1,
    )
    assert code == 0, err
    assert "[6x3x4x4]" in out


def test_calibrate_probs_file_calibrates_their_log(tmp_path, capsys, preds):
    z, y = preds
    path = save_arrays(tmp_path / "p.npz", y, probs=z.softmax(1))
    code, out, _ = run(capsys, "calibrate", path, "--repeats", 1)
    assert code == 0 and "probabilities: calibrating their log" in out
    np.save(tmp_path / "probs.npy", z.softmax(1).numpy())
    np.save(tmp_path / "probs_labels.npy", y.numpy())
    code, _, err = run(capsys, "calibrate", tmp_path / "probs.npy")
    assert code == 2 and "a .npy file holds one array: say what it is with --input logits or --input probs" in err
    save_arrays(tmp_path / "mislabelled.npz", y, logits=z.softmax(1))
    code, _, err = run(capsys, "calibrate", tmp_path / "mislabelled.npz")
    assert code == 2 and "array 'logits' looks like probabilities (values in [0, 1] summing to 1)" in err
    code, out, _ = run(capsys, "calibrate", tmp_path / "probs.npy", "--input", "probs", "--repeats", 1)
    assert code == 0


@pytest.mark.parametrize("kind", ["probs", "logits"])
def test_evaluate_prints_every_metric(tmp_path, capsys, preds, kind):
    z, y = preds
    probs = z.softmax(1)
    path = save_arrays(tmp_path / "e.npz", y, **{kind: probs if kind == "probs" else z})
    code, out, err = run(capsys, "evaluate", path, "--json")
    assert code == 0 and err == ""
    result = json.loads(out)
    expected = metrics.evaluate(probs, y)
    assert result["input"] == kind
    for name, value in expected.items():
        assert result[name] == pytest.approx(value, rel=1e-6)
    code, out, _ = run(capsys, "evaluate", path)
    assert code == 0 and f"{expected['nll']:.6f}" in out and "classwise_ece" in out


def test_evaluate_npy_needs_input_kind(tmp_path, capsys, preds):
    z, y = preds
    save_arrays(tmp_path / "z.npy", y, logits=z)
    code, _, err = run(capsys, "evaluate", tmp_path / "z.npy")
    assert code == 2 and "--input logits or --input probs" in err
    code, out, _ = run(capsys, "evaluate", tmp_path / "z.npy", "--input", "logits")
    assert code == 0 and "(logits)" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["calibrate", "{d}/missing.npz"], "no such file"),
        (["calibrate", "{d}/p.npz", "--logits-key", "out"], "no array named 'out' or 'probs'"),
        (["calibrate", "{d}/p.npz", "--odir", "auto"], "--odir applies to --method matrix only"),
        (["calibrate", "{d}/p.npz", "--method", "matrix", "--odir", "x,1"], "--odir must be 'auto' or two numbers"),
        (["calibrate", "{d}/p.npz", "--folds", "1"], "`folds` must be an integer >= 2"),
        (["calibrate", "{d}/p.npz", "--method", "platt"], "invalid choice: 'platt'"),
        (["calibrate", "{d}/p.npz", "--repeats", "1", "--plot", "{d}/x.unknownext"], "--plot"),
        (["evaluate", "{d}/p.npz", "--labels-key", "gt"], "no array named 'gt'"),
        (["evaluate", "{d}/p.npz", "--n-bins", "0"], "argument --n-bins: must be an integer in [1, 100000], got 0"),
    ],
)
def test_errors_are_one_line_exit_2(tmp_path, capsys, preds, argv, message):
    z, y = preds
    save_arrays(tmp_path / "p.npz", y, logits=z)
    code, _, err = run(capsys, *[a.format(d=tmp_path) for a in argv])
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
