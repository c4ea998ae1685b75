"""train_ensemble under torchrun (2 gloo processes on the CPU) against a one-process run.

The helper script ``tests/scripts/ensemble_torchrun_script.py`` runs once in this process (the reference)
and once as a subprocess under ``python -m torch.distributed.run --nproc_per_node=2``. Member k must be trained on rank
k % 2 only, the checkpoint folder must hold the same files (manifest byte for byte, member files
with the same weights and metadata), and every rank must return the whole ensemble, equal to the
one-process ensemble.
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

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ensemble_torchrun_script.py"

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torch.distributed with the gloo backend",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args: list[str], out: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, *args, str(SCRIPT), str(out)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def _reference(out: Path) -> None:
    spec = importlib.util.spec_from_file_location("ensemble_torchrun_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.train_and_record(out)


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(u, v) for u, v in zip(a, b))
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and torch.equal(a, b)
    return a == b


def _member(path: Path) -> dict:
    payload = torch.load(path, weights_only=True)
    payload["meta"]["history"].pop("seconds")  # wall time: the only thing allowed to differ
    return payload


def test_torchrun_with_two_processes_trains_each_member_once_and_matches_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    _reference(one)
    port = _free_port()
    _run(["-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}"], two)

    ref = torch.load(one / "rank0.pt", weights_only=False)
    ranks = [torch.load(two / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and ref["world_size"] == 1
    # rank 0 trains members 0 and 2, rank 1 member 1: 2 epochs each, in both runs
    assert ref["epochs_trained"] == (6, 6)
    assert ranks[0]["epochs_trained"] == (4, 4) and ranks[1]["epochs_trained"] == (2, 2)
    for r in ranks:  # every rank ends with the full ensemble, the one-process one, members in eval mode
        for name in ("files", "memory"):
            assert _same(r[name], ref[name]), (r["rank"], name)
        assert r["modes"] == [False] * 6
    assert _same(ref["files"], ref["memory"])

    files = sorted(p.name for p in (one / "ckpt").iterdir())
    assert (
        files
        == sorted(p.name for p in (two / "ckpt").iterdir())
        == ["manifest.json"] + [f"member_{k}.pt" for k in range(3)]
    )
    assert (one / "ckpt" / "manifest.json").read_bytes() == (two / "ckpt" / "manifest.json").read_bytes()
    assert json.loads((two / "ckpt" / "manifest.json").read_text())["members"] == 3
    for k in range(3):
        assert _same(_member(one / "ckpt" / f"member_{k}.pt"), _member(two / "ckpt" / f"member_{k}.pt")), k
