"""Streaming metrics under torch.distributed: two CPU processes (gloo over loopback, FileStore rendezvous)
each see half the data; compute() on every rank equals the single-process result."""

from __future__ import annotations

import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from netuq.metrics.streaming import CalibrationError, UncertaintyMetrics

WORLD = 2
SCALARS = ("accuracy", "nll", "brier", "ece", "mce", "classwise_ece", "adaptive_ece", "misclassification_auroc",
           "aurc", "n")

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")


def _data():
    g = torch.Generator().manual_seed(0)
    probs = (torch.randn(6, 5, 8, 9, generator=g) * 2).softmax(1)
    labels = torch.randint(0, 5, (6, 8, 9), generator=g)
    labels[torch.rand(6, 8, 9, generator=g) < 0.1] = 255
    labels[5] = 255  # rank 1's last batch is all ignored
    return probs, labels


# Uneven shards: rank 0 gets images 0-1 in two batches, rank 1 images 2-5 in three.
SHARDS = {0: [slice(0, 1), slice(1, 2)], 1: [slice(2, 3), slice(3, 5), slice(5, 6)]}


def _metrics():
    return CalibrationError(n_bins=10, ignore_index=255), UncertaintyMetrics(
        5, n_bins=10, ignore_index=255, classwise=True, fine_bins=500
    )


def _summary(ce, um):
    out = um.compute()
    rel = um.reliability()  # synced like compute(): the whole-set table on every rank
    return {"calibration_error": float(ce.compute()), **{k: float(out[k]) for k in SCALARS}, "counts": rel.counts,
            "ce_counts": ce.reliability().counts, "accuracy_bins": rel.accuracy}


def _loopback_interface() -> str | None:
    names = [name for _, name in socket.if_nameindex()] if hasattr(socket, "if_nameindex") else []
    return next((n for n in ("lo", "lo0") if n in names), None)


def _worker(rank: int, store_path: str, out_dir: str) -> None:
    iface = _loopback_interface()
    if iface:
        os.environ["GLOO_SOCKET_IFNAME"] = iface  # loopback only
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=WORLD)
    try:
        probs, labels = _data()
        ce, um = _metrics()
        for s in SHARDS[rank]:
            ce.update(probs[s], labels[s])
            um.update(probs[s], labels[s])
        local_counts = um.counts.clone()
        result = _summary(ce, um)
        result["local_counts_kept"] = bool(torch.equal(um.counts, local_counts))  # unsynced after compute
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one(tmp_path):
    # fork (where available) skips re-importing torch in the children: seconds on a busy machine.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    ctx = mp.start_processes(
        _worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD, join=False, start_method=method
    )
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail("distributed workers did not finish within 120 s")

    probs, labels = _data()
    ce, um = _metrics()
    for s in [*SHARDS[0], *SHARDS[1]]:
        ce.update(probs[s], labels[s])
        um.update(probs[s], labels[s])
    expected = _summary(ce, um)
    assert expected["n"] == int((labels != 255).sum())
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["local_counts_kept"]
        assert torch.equal(got["counts"], expected["counts"])
        assert torch.equal(got["ce_counts"], expected["counts"])
        torch.testing.assert_close(got["accuracy_bins"], expected["accuracy_bins"], equal_nan=True, rtol=0, atol=1e-15)
        for key in ("calibration_error", *SCALARS):
            assert got[key] == pytest.approx(expected[key], abs=1e-12), (rank, key)
