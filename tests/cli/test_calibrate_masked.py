"""`netuq calibrate` / `evaluate` / `conformal` on a file whose logits mask a class to -inf: ``python -m netuq``.

The masked class obeys the rule of ``Prediction.from_logits`` (-inf where every row keeps a finite
entry). The reference temperature is a scipy minimisation of the numpy NLL over the unmasked classes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cli_run import assert_one_line_error, netuq_cli
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

from netuq.io import save_arrays


@pytest.fixture(scope="module")
def masked(tmp_path_factory):
    g = torch.Generator().manual_seed(0)
    z = 3.0 * torch.randn(300, 4, generator=g)
    y = torch.multinomial((z[:, :3] / 3.0).softmax(1), 1, generator=g).squeeze(1)
    z[:, 3] = float("-inf")
    path = save_arrays(tmp_path_factory.mktemp("masked") / "preds.npz", y, logits=z)
    return path, z.numpy().astype(np.float64), y.numpy()


def _reference_temperature(z, y):
    def nll(log_t):
        s = z / np.exp(log_t)
        return float(np.mean(logsumexp(s, axis=1) - s[np.arange(len(y)), y]))

    with np.errstate(invalid="ignore"):
        return float(np.exp(minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded",
                                            options={"xatol": 1e-10}).x))


def test_calibrate_a_masked_class(masked, tmp_path):
    path, z, y = masked
    proc = netuq_cli("calibrate", path, "--repeats", 1, "--save", tmp_path / "ts.json")
    assert proc.returncode == 0, proc.stderr
    t = json.loads((tmp_path / "ts.json").read_text())["fitted"]["temperature"]
    assert t == pytest.approx(_reference_temperature(z, y), rel=1e-4)
    assert "nan" not in proc.stdout.lower()


@pytest.mark.parametrize("argv", [["calibrate", "--method", "vector"], ["calibrate", "--method", "matrix"],
                                  ["calibrate", "--method", "histogram"], ["calibrate", "--method", "isotonic"],
                                  ["evaluate"]])
def test_other_methods_and_evaluate_on_a_masked_class(masked, capsys, argv):
    """In process (the subprocess path is the one above): the same file reading and the same fits."""
    from netuq.cli import main

    code = main([argv[0], str(masked[0]), *argv[1:], *(["--repeats", "1"] if argv[0] == "calibrate" else [])])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "nan" not in out.lower()


def test_nan_and_plus_inf_stay_one_line_errors(tmp_path):
    z = torch.zeros(4, 3)
    z[0, 1] = float("inf")
    path = save_arrays(tmp_path / "bad.npz", torch.tensor([0, 1, 2, 0]), logits=z)
    assert_one_line_error(netuq_cli("calibrate", path), names="+Inf")
    z[0, 1] = float("-inf")
    z[1] = float("-inf")
    path = save_arrays(tmp_path / "row.npz", torch.tensor([0, 1, 2, 0]), logits=z)
    assert_one_line_error(netuq_cli("calibrate", path), names="all -inf")
