"""The scripts under examples/ run as a user would run them and write a report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["classification", "segmentation"])
def test_example_writes_a_report(name, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), MPLBACKEND="Agg")
    out = subprocess.run([sys.executable, str(ROOT / "examples" / f"{name}.py"), str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("report.html")
    html = (tmp_path / "out" / "report.html").read_text()
    assert "<table" in html and "MC dropout" in html
    assert (tmp_path / "out" / "results.csv").is_file()
