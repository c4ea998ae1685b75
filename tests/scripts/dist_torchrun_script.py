"""Helper of tests/test_distributed.py (not a test): evaluate on sharded loaders and record the results.

Run under ``python -m torch.distributed.run --nproc_per_node=2 tests/scripts/dist_torchrun_script.py OUT``
(gloo on the CPU): every rank's loaders use ``netuq.distributed.EvalSampler`` and each rank writes
``OUT/rank<r>.json``. Called as :func:`record` in one process (no process group, EvalSampler then
yields every index), it writes the one-process reference ``OUT/rank0.json``. The data set sizes
(45, 9, 7, 5) are not multiples of 2.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from torchrun_loaders import loader_cases  # tests/scripts: beside this script (and on the tests' path)

import netuq
from netuq.distributed import EvalSampler
from netuq.metrics.streaming import CalibrationError, UncertaintyMetrics


def _plain(obj):
    if isinstance(obj, torch.Tensor):
        return _plain(obj.tolist())
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items() if k != "runtime_s"}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _fit(net: nn.Module, x: torch.Tensor, y: torch.Tensor, ignore_index: int = -100) -> nn.Module:
    """A few seeded full-batch steps (the same weights in every process), so the logits mean something."""
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(30):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y, ignore_index=ignore_index).backward()
        opt.step()
    return net.eval()


def _loader(dataset, batch_size: int, whole_batches: bool = False) -> DataLoader:
    sampler = EvalSampler(dataset, batch_size=batch_size if whole_batches else None)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler)


def _classification() -> dict:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(45) % 3
    x = 1.5 * torch.randn(3, 4, generator=g)[y] + torch.randn(45, 4, generator=g)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
    _fit(net, x, y)
    members = [_fit(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), x, y) for _ in range(2)]
    ens = netuq.Ensemble(members)
    mc = netuq.MCDropout(net, samples=4, seed=3)
    data = TensorDataset(x, y)
    cal = TensorDataset(x[:25] + 0.1, y[:25])
    ood = TensorDataset(3.0 * torch.randn(5, 4, generator=g))
    out = {}
    pred, labels = netuq.predict(net, _loader(data, 8))
    out["predict_plain"] = {"probs": pred.probs, "entropy": pred.entropy, "labels": labels}
    # The ensemble's mixture (logsumexp over members) rounds some rows by their position in the batch, and a
    # seeded MCDropout draws one mask per row position: exact with whole batches sharded (or batch_size=1).
    pred, _ = netuq.predict(ens, _loader(data, 8, whole_batches=True))
    out["predict_ensemble"] = {"probs": pred.probs, "aleatoric": pred.aleatoric}
    pred, labels = netuq.predict(mc, _loader(data, 1))
    out["predict_mc"] = {"probs": pred.probs, "mi": pred.epistemic, "labels": labels}
    pred, labels = netuq.predict(mc, _loader(data, 8, whole_batches=True))
    out["predict_mc_batches"] = {"probs": pred.probs, "mi": pred.epistemic, "labels": labels}
    out["compare"] = netuq.compare({"plain": net}, _loader(data, 8), ood=_loader(ood, 2), repeats=2)
    out["compare_batches"] = netuq.compare({"ensemble": ens, "mc": mc}, _loader(data, 8, whole_batches=True),
                                           ood={"far": _loader(ood, 2, whole_batches=True)}, repeats=2)
    out["compare_calibration"] = netuq.compare({"plain": net}, _loader(data, 8), calibration=_loader(cal, 4),
                                               calibrators=("none", "temperature", "vector"),
                                               shifts={"noise": {1: _loader(cal, 4)}})
    return out


def _segmentation() -> dict:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(9, 2, 8, 8, generator=g)  # 64 pixels: no SIMD tail, a pixel's rounding is position-free
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    y[:, 0, :2] = 255
    anomaly = torch.zeros(9, 8, 8, dtype=torch.bool)
    anomaly[::3, 3:, 3:] = True
    torch.manual_seed(1)
    net = _fit(nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1)), x, y, 255)
    data = TensorDataset(x, y, anomaly)
    cal = TensorDataset(x[:7] * 0.9, y[:7])
    out = {}
    pred, labels = netuq.predict(net, _loader(data, 2))
    out["predict"] = {"probs": pred.probs, "labels": labels}
    # max_pixels far below the 9 * 64 pixels: the seeded pixel sample is really a sample.
    out["compare"] = netuq.compare({"plain": net}, _loader(data, 2), ignore_index=255, max_pixels=60, repeats=2,
                                   examples=3)
    out["compare_calibration"] = netuq.compare({"plain": net}, _loader(data, 2), calibration=_loader(cal, 3),
                                               ignore_index=255, max_pixels=50, calibration_samples=40)
    return out


def _streaming() -> dict:
    """The torchmetrics path alone: each rank updates on its shard; compute() syncs the summed states."""
    g = torch.Generator().manual_seed(2)
    probs = torch.softmax(2.0 * torch.randn(45, 4, 3, 3, generator=g), 1)
    labels = torch.randint(0, 4, (45, 3, 3), generator=g)
    labels[::4, 0] = -1
    shard = list(EvalSampler(range(45)))
    um = UncertaintyMetrics(4, n_bins=10, ignore_index=-1, classwise=True)
    ce = CalibrationError(n_bins=10, ignore_index=-1)
    for i in range(0, len(shard), 4):
        idx = torch.tensor(shard[i:i + 4])
        um.update(probs[idx], labels[idx])
        ce.update(probs[idx], labels[idx])
    return {"uncertainty": um.compute(), "reliability": um.reliability().to_dict(), "ece": ce.compute()}


def _misuse() -> dict:
    """A DistributedSampler pads the ranks: netuq warns and gathers 46 of 45; a batch size mismatch raises."""
    x = torch.randn(45, 4, generator=torch.Generator().manual_seed(3))
    data = TensorDataset(x, torch.arange(45) % 3)
    sampler = DistributedSampler(data, shuffle=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pred, labels = netuq.predict(nn.Linear(4, 3), DataLoader(data, batch_size=8, sampler=sampler))
    mismatch = DataLoader(data, batch_size=4, sampler=EvalSampler(data, batch_size=8))
    try:
        netuq.predict(nn.Linear(4, 3), mismatch)
        error = ""
    except ValueError as err:
        error = str(err)
    whole, _ = netuq.predict(nn.Linear(4, 3), DataLoader(data, batch_size=8))  # not sharded: not gathered
    warned = any("DistributedSampler" in str(w.message) for w in caught)

    class FailsOnRankOne(nn.Module):  # a model that fails on rank 1's third batch only
        def __init__(self):
            super().__init__()
            self.calls, self.lin = 0, nn.Linear(4, 3)

        def forward(self, x):
            self.calls += 1
            if torch.distributed.get_rank() == 1 and self.calls == 3:
                raise ValueError("bad batch on this rank")
            return self.lin(x)

    try:
        netuq.compare({"plain": FailsOnRankOne()}, DataLoader(data, batch_size=4, sampler=EvalSampler(data)))
        failure = ""
    except (ValueError, RuntimeError) as err:
        failure = f"{type(err).__name__}: {err}"
    return {"n": len(labels), "whole": len(whole), "warned": warned, "mismatch_error": error, "failure": failure}


def record(out: Path) -> None:
    """Run every case on one thread (the same arithmetic in every process) and write this rank's JSON."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        distributed = torch.distributed.is_initialized()
        rank = torch.distributed.get_rank() if distributed else 0
        result = {"world_size": torch.distributed.get_world_size() if distributed else 1,
                  "classification": _classification(), "segmentation": _segmentation(), "streaming": _streaming(),
                  "loaders": loader_cases()}
        if distributed:
            result["misuse"] = _misuse()
        (out / f"rank{rank}.json").write_text(json.dumps(_plain(result)))
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    assert "WORLD_SIZE" in os.environ, "run me under torchrun"
    torch.distributed.init_process_group("gloo")
    try:
        record(Path(sys.argv[1]))
    finally:
        torch.distributed.destroy_process_group()
