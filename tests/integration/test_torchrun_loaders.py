"""DataLoader batching under torchrun (2 gloo processes): drop_last and pre-batched data sets as in one process.

``tests/scripts/torchrun_loaders.py`` runs once here (no process group: the one-process
reference) and once under ``python -m torch.distributed.run --nproc_per_node=2``. Each label is
its example's dataset index, so a lost row or a wrong order shows in the labels (issue 22.4/22.5:
``drop_last=True`` evaluated 6 rows where one process evaluates 9; pre-batched items came back
as [0, 3, 1, 4, ...]).
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "torchrun_loaders.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # ~10 s: two torchrun processes start and import torch
@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="needs torch.distributed with the gloo backend")
def test_drop_last_and_pre_batched_loaders_give_the_one_process_batches_on_every_rank(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    spec = importlib.util.spec_from_file_location("torchrun_loaders", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    try:
        module.record(one)
    finally:
        torch.set_num_threads(threads)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           str(SCRIPT), str(two)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"

    ref = json.loads((one / "rank0.json").read_text())
    assert ref["world_size"] == 1
    assert ref["drop_last_whole_batches"]["labels"] == list(range(9)) and ref["drop_last_whole_batches"]["batches"] == [
        3, 3, 3]
    assert ref["pre_batched"]["labels"] == list(range(15)) and ref["pre_batched"]["batches"] == [3, 1, 4, 2, 5]
    for rank in (0, 1):
        got = json.loads((two / f"rank{rank}.json").read_text())
        assert got["world_size"] == 2
        for case in ("drop_last_whole_batches", "drop_last_interleaved_exact", "batch_sampler", "pre_batched",
                     "pre_batched_blocks"):
            assert got[case] == ref[case], f"rank {rank}: {case} differs from one process"
        error = got["drop_last_interleaved"]["error"]  # 6 of 10 rows where one process evaluates 9: refused
        assert error.startswith("`loader` has drop_last=True: each rank drops its own last incomplete batch, so the "
                                "ranks would evaluate 6 of 10 examples where one process evaluates 9")
        assert "EvalSampler(dataset, batch_size=3)" in error and "drop_last=False" in error
