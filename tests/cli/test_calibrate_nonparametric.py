"""`netuq calibrate --method histogram|isotonic` through netuq.cli.main: the protocol table, --save, --plot."""

from __future__ import annotations

import pytest
import torch

from netuq.calibration import CALIBRATORS, cross_validate, load
from netuq.cli import main
from netuq.io import save_arrays


@pytest.mark.parametrize("method,title", [("histogram", "top-label histogram binning"),
                                          ("isotonic", "isotonic regression")])
def test_calibrate_nonparametric_table_save_and_plot(tmp_path, capsys, method, title):
    g = torch.Generator().manual_seed(0)
    z = 2.0 * torch.randn(1200, 3, generator=g)
    y = torch.multinomial(z.softmax(1), 1, generator=g).squeeze(1)
    z = 3.0 * z  # overconfident
    path = save_arrays(tmp_path / "preds.npz", y, logits=z)
    png = tmp_path / "rel.png"
    code = main(["calibrate", str(path), "--method", method, "--repeats", "2", "--seed", "1",
                 "--save", str(tmp_path / "c.json"), "--plot", str(png)])
    out, err = capsys.readouterr()
    assert code == 0 and err == "", err
    assert out.startswith(f"{title} on ")
    cv = cross_validate(CALIBRATORS[method], z, y, repeats=2, seed=1)
    ece_line = next(line for line in out.splitlines() if line.startswith("ece"))
    assert f"{cv['ece']['mean']:.4f} ± {cv['ece']['std']:.4f}" in ece_line
    saved = load(tmp_path / "c.json")
    assert type(saved) is CALIBRATORS[method]
    assert torch.equal(saved(z), CALIBRATORS[method]().fit(z, y, seed=1)(z))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
