"""The prepared GPU check (``make bench-gpu``, perf/gpu_check.py) keeps working without a GPU.

It runs only when a GPU is lent, so nothing else would notice it breaking: here it runs as a user
runs it (a subprocess), on the CPU with ``--quick``, and must measure every comparison and write
its table.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "perf" / "gpu_check.py"
CASES = ("temperature scaling", "MC dropout", "TTA", "ensemble", "streaming", "training")


def test_gpu_check_runs_every_comparison_on_cpu(tmp_path):
    out = tmp_path / "gpu-table.md"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "failed" not in proc.stdout
    table = out.read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| case")]
    for case in CASES:
        assert any(case.lower() in r.lower() for r in rows), (case, table)
    for r in rows:  # every row has a measured ratio
        ratio = r.rstrip(" |").rsplit("|", 1)[-1].strip()
        assert ratio.endswith("x") and float(ratio[:-1]) > 0, r


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the script measures instead")
def test_gpu_check_without_cuda_says_so_and_succeeds():
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0
    assert "no CUDA device" in proc.stdout
