"""`netuq calibrate` / `netuq evaluate` as a user runs them: `python -m netuq` in a subprocess.

Reference numbers are computed here independently (numpy and scikit-learn from the saved JSON's
parameters), not with the code under test.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cli_run import assert_one_line_error, netuq_cli
from sklearn.metrics import log_loss

from netuq.cli import main  # noqa: E402
from netuq.io import save_arrays


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _ece(p: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """Equal-width ECE (Guo et al. 2017), bins (lo, hi] as netuq documents them."""
    conf, pred = p.max(1), p.argmax(1)
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            total += m.sum() / len(y) * abs((pred[m] == y[m]).mean() - conf[m].mean())
    return float(total)


@pytest.fixture(scope="module")
def preds():
    g = torch.Generator().manual_seed(0)
    z = 2.0 * torch.randn(400, 5, generator=g, dtype=torch.float64)
    y = torch.multinomial(z.softmax(1), 1, generator=g).squeeze(1)
    return 3.0 * z, y  # overconfident logits


def _cli(capsys, *argv):
    """netuq.cli.main in this process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("method", ["temperature", "vector"])
def test_calibrate_save_then_evaluate_applies_it(tmp_path, capsys, preds, method):
    z, y = preds
    path = save_arrays(tmp_path / "preds.npz", y, logits=z)
    argv = ["calibrate", path, "--method", method, "--repeats", 1, "--save", tmp_path / "cal.json"]
    if method == "temperature":  # the real client; the vector case runs the same code in this process
        proc = netuq_cli(*argv)
        code, err = proc.returncode, proc.stderr
    else:
        code, _, err = _cli(capsys, *argv)
    assert code == 0 and err == "", err
    saved = json.loads((tmp_path / "cal.json").read_text())
    zn = z.numpy()
    if method == "temperature":
        calibrated = zn / saved["fitted"]["temperature"]
    else:
        calibrated = zn * np.asarray(saved["fitted"]["weight"]) + np.asarray(saved["fitted"]["bias"])
    p, yn = _softmax(calibrated), y.numpy()
    argv = ["evaluate", path, "--calibrator", tmp_path / "cal.json", "--json"]
    if method == "temperature":
        proc = netuq_cli(*argv)
        code, stdout, err = proc.returncode, proc.stdout, proc.stderr
    else:
        code, stdout, err = _cli(capsys, *argv)
    assert code == 0 and err == "", err
    out = json.loads(stdout)
    assert out["calibrator"] == str(tmp_path / "cal.json") and out["input"] == "logits"
    assert out["nll"] == pytest.approx(log_loss(yn, p, labels=range(5)), rel=1e-5)
    assert out["accuracy"] == pytest.approx((p.argmax(1) == yn).mean())
    assert out["brier"] == pytest.approx(((p - np.eye(5)[yn]) ** 2).sum(1).mean(), rel=1e-5)
    assert out["ece"] == pytest.approx(_ece(p, yn), abs=1e-6)
    _, raw, _ = _cli(capsys, "evaluate", path, "--json")
    assert out["nll"] < json.loads(raw)["nll"]  # the fitted calibrator helps overconfident logits on its own data
    _, table, _ = _cli(capsys, "evaluate", path, "--calibrator", tmp_path / "cal.json")
    assert f"calibrated by {saved['class']} from {tmp_path / 'cal.json'}" in table and f"{out['nll']:.6f}" in table


def test_probabilities_stored_as_logits_are_refused_by_both_commands(tmp_path, capsys, preds):
    """The issue's case: softmaxing probabilities gave ECE 0.733 for a true 0.21, exit 0."""
    z, y = preds
    probs = _softmax(z.numpy() / 3.0)  # roughly calibrated probabilities
    path = save_arrays(tmp_path / "p.npz", y, logits=torch.from_numpy(probs))
    line = assert_one_line_error(netuq_cli("evaluate", path), names=str(path))
    assert "array 'logits' looks like probabilities" in line
    code, _, err = _cli(capsys, "calibrate", path)
    assert assert_one_line_error(err, code) == line  # one rule, one message
    code, out, err = _cli(capsys, "evaluate", path, "--input", "probs", "--probs-key", "logits", "--json")
    assert code == 0, err
    assert json.loads(out)["ece"] == pytest.approx(_ece(probs, y.numpy()), abs=1e-6)
    code, out, err = _cli(capsys, "evaluate", path, "--input", "logits", "--json")  # the user insists: allowed
    assert code == 0 and json.loads(out)["ece"] == pytest.approx(_ece(_softmax(probs), y.numpy()), abs=1e-6)


def test_npy_needs_input_and_labels(tmp_path, capsys, preds):
    z, y = preds
    np.save(tmp_path / "z.npy", z.numpy())
    np.save(tmp_path / "y.npy", y.numpy())
    for command in ("evaluate", "calibrate"):
        code, _, err = _cli(capsys, command, tmp_path / "z.npy", "--labels", tmp_path / "y.npy")
        assert_one_line_error(err, code, names="--input logits or --input probs")
    code, _, err = _cli(capsys, "evaluate", tmp_path / "z.npy", "--input", "logits")
    assert "pass the labels file (--labels FILE)" in assert_one_line_error(err, code)
    code, out, _ = _cli(capsys, "evaluate", tmp_path / "z.npy", "--input", "logits", "--labels", tmp_path / "y.npy")
    assert code == 0 and "(logits)" in out


def test_huge_n_bins_is_a_flag_error(tmp_path, capsys, preds):
    z, y = preds
    path = save_arrays(tmp_path / "p.npz", y, logits=z)
    expected = "argument --n-bins: must be an integer in [1, 100000], got 10000000000"
    assert expected in assert_one_line_error(netuq_cli("calibrate", path, "--n-bins", "10000000000"))
    code, _, err = _cli(capsys, "evaluate", path, "--n-bins", "10000000000")
    assert expected in assert_one_line_error(err, code)


def test_a_foreign_pickle_is_refused_without_unpickling(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "p.pt").write_bytes(pickle.dumps({"logits": Evil(), "labels": [0]}, protocol=2))
    proc = netuq_cli("evaluate", tmp_path / "p.pt")
    assert "pwned" not in proc.stdout
    line = assert_one_line_error(proc, names=str(tmp_path / "p.pt"))
    assert "refused: it holds Python objects other than tensors" in line and "GLOBAL" in line and "print" in line


def _help(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", [None, "benchmark", "report", "calibrate", "evaluate"])
def test_help_is_plain_text(capsys, command):
    text = _help(capsys, *([command] if command else []))
    assert text.startswith("usage: netuq")
    for markup in ("``", "`", ":func:", ":class:", ":mod:", ":meth:", ".. "):
        assert markup not in text, (markup, text)
    if command in ("calibrate", "evaluate"):
        assert "--n-bins" in text and ".npy FILE needs --input and --labels" in text


@pytest.mark.parametrize(
    "argv, names",
    [
        (["evaluate", "{d}/p.npz", "--calibrator", "{d}/missing.json"], "--calibrator {d}/missing.json: no such file"),
        (["evaluate", "{d}/p.npz", "--calibrator", "{d}/broken.json"], "{d}/broken.json"),
        (["evaluate", "{d}/p.npz", "--calibrator", "{d}/deep.json"], "{d}/deep.json"),
        (["evaluate", "{d}/p.npz", "--calibrator", "{d}/c3.json"], "was fitted on 3 classes, {d}/p.npz has 5"),
        (["evaluate", "{d}/truncated.pt"], "{d}/truncated.pt"),
        (["evaluate", "{d}/empty.pt"], "{d}/empty.pt"),
        (["evaluate", "{d}/list.pt"], "{d}/list.pt"),
        (["evaluate", "{d}/truncated.npz"], "{d}/truncated.npz"),
        (["evaluate", "{d}/nan.npz"], "{d}/nan.npz: array 'logits': `logits` must not contain NaN"),
        (["calibrate", "{d}/bad_probs.npz"], "{d}/bad_probs.npz: array 'probs' read as probabilities"),
        (["calibrate", "{d}/p.npz", "--n-bins", "many"], "argument --n-bins: must be an integer"),
    ],
)
def test_bad_input_files_one_line_exit_2(tmp_path, capsys, preds, argv, names):
    z, y = preds
    save_arrays(tmp_path / "p.npz", y, logits=z)
    (tmp_path / "broken.json").write_text('{"format": "netuq-calibrator", ')
    (tmp_path / "deep.json").write_text("[" * 100000 + "]" * 100000)
    from netuq.calibration import TemperatureScaling

    TemperatureScaling().fit(torch.randn(30, 3), torch.arange(30) % 3).save(tmp_path / "c3.json")
    save_arrays(tmp_path / "full.pt", y, logits=z)
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    torch.save([1, 2], tmp_path / "list.pt")
    npz = save_arrays(tmp_path / "full.npz", y, logits=z).read_bytes()
    (tmp_path / "truncated.npz").write_bytes(npz[: len(npz) // 3])
    bad = z.clone()
    bad[3, 1] = float("nan")
    save_arrays(tmp_path / "nan.npz", y, logits=bad)
    save_arrays(tmp_path / "bad_probs.npz", y, probs=z)
    code = main([a.format(d=tmp_path) for a in argv])
    assert_one_line_error(capsys.readouterr().err, code, names=names.format(d=tmp_path))
