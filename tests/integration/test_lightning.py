"""Streaming metrics logged through a real ``lightning.Trainer``: ``self.log`` / ``self.log_dict`` in
``validation_step`` (and the dict of ``UncertaintyMetrics.compute()`` at the epoch's end), on one
process and with ``strategy="ddp"`` on 2 CPU processes (gloo); the logged values equal the functional
metrics computed in one process on the whole validation set.

The DDP case runs this file as a script (``python tests/test_lightning.py OUT.json``): Lightning's
``ddp`` launcher re-runs the script for rank 1, so pytest itself is never re-launched. Each rank
validates a disjoint, unpadded shard (rank r gets samples r, r + 2, ...; 45 samples: 23 and 22).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

L = pytest.importorskip("lightning") if __name__ != "__main__" else __import__("lightning")

from torchmetrics import MetricCollection  # noqa: E402

from netuq import metrics  # noqa: E402
from netuq.metrics import CalibrationError, UncertaintyMetrics  # noqa: E402

N, D, C, BATCH, N_BINS = 45, 4, 3, 6, 10
UM_KEYS = ("accuracy", "nll", "brier", "ece", "mce", "classwise_ece", "n")


def _dataset() -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (N,), generator=g)
    return torch.utils.data.TensorDataset(x, y)


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(D, C).double()


class _Shard(torch.utils.data.Sampler):
    """Rank r of w gets indices r, r + w, ... (no padding, unlike DistributedSampler)."""

    def __init__(self, n: int, rank: int, world: int) -> None:
        self.indices = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class LitClassifier(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = _net()
        self.val_ece = CalibrationError(n_bins=N_BINS)
        self.val_metrics = MetricCollection({"val_rmsce": CalibrationError(n_bins=N_BINS, norm="l2"),
                                             "val_mce": CalibrationError(n_bins=N_BINS, norm="max")})
        self.val_um = UncertaintyMetrics(C, n_bins=N_BINS, classwise=True)
        self.batch_um = UncertaintyMetrics(C, n_bins=N_BINS)

    def val_dataloader(self):
        rank, world = self.trainer.global_rank, self.trainer.world_size
        return torch.utils.data.DataLoader(_dataset(), batch_size=BATCH, sampler=_Shard(N, rank, world))

    def validation_step(self, batch, batch_idx):
        x, y = batch
        probs = self.net(x).softmax(1)
        self.val_ece.update(probs, y)
        self.log("val_ece", self.val_ece)  # a Metric: computed (synced) once at the epoch's end
        self.val_metrics.update(probs, y)
        self.log_dict(self.val_metrics)
        self.val_um.update(probs, y)
        # compute() is a dict of 0-dim tensors, so a batch's values (torchmetrics forward) log directly.
        self.last_batch = {f"batch_{k}": v for k, v in self.batch_um(probs, y).items()}
        self.log_dict(self.last_batch, on_step=True, on_epoch=False)

    def on_validation_epoch_end(self):
        self.log_dict({f"val_um_{k}": v for k, v in self.val_um.compute().items()})
        self.val_um.reset()


def _trainer(**kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, use_distributed_sampler=False, **kwargs)


def _logged(trainer: L.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if not k.startswith("batch_")}


def _expected() -> dict[str, float]:
    """The functional metrics on the whole validation set in one process (the reference)."""
    x, y = _dataset().tensors
    with torch.no_grad():
        probs = _net()(x).softmax(1)
    out = {"val_ece": metrics.ece(probs, y, n_bins=N_BINS), "val_mce": metrics.mce(probs, y, n_bins=N_BINS),
           "val_rmsce": metrics.ece(probs, y, n_bins=N_BINS, norm="l2")}
    for key in UM_KEYS[:-1]:
        fn = getattr(metrics, key)
        out[f"val_um_{key}"] = fn(probs, y, n_bins=N_BINS) if key.endswith("ce") else fn(probs, y)
    out["val_um_n"] = float(N)
    return out


def _check(logged: dict[str, float], expected: dict[str, float]) -> None:
    assert set(expected) <= set(logged), sorted(set(expected) - set(logged))
    for key, value in expected.items():
        assert logged[key] == pytest.approx(value, abs=1e-9), key


def test_log_and_log_dict_in_one_process():
    trainer = _trainer(devices=1)
    model = LitClassifier()
    trainer.validate(model, verbose=False)
    _check(_logged(trainer), _expected())
    assert model.val_ece.update_count == 0  # Lightning reset the logged Metric objects after the epoch
    last = model.last_batch["batch_ece"]  # the last batch's value, logged on_step
    x, y = _dataset().tensors
    with torch.no_grad():
        probs = _net()(x[-(N % BATCH):]).softmax(1)
    assert float(last) == pytest.approx(metrics.ece(probs, y[-(N % BATCH):], n_bins=N_BINS), abs=1e-9)


@pytest.mark.slow  # two fresh interpreters importing torch + lightning: 30-60 s on a busy machine
@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="needs torch.distributed with gloo")
def test_ddp_two_cpu_processes_equal_one(tmp_path):
    out = tmp_path / "rank0.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    for key in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only
    proc = subprocess.run([sys.executable, __file__, str(out)], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["world_size"] == 2 and result["shard_sizes"] == [23, 22]
    _check(result["logged"], _expected())


def _ddp_main(out_path: str) -> None:
    torch.set_num_threads(1)
    trainer = _trainer(devices=2, strategy="ddp")
    model = LitClassifier()
    trainer.validate(model, verbose=False)
    if trainer.global_rank == 0:
        shard_sizes = [len(_Shard(N, r, trainer.world_size)) for r in range(trainer.world_size)]
        result = {"world_size": trainer.world_size, "shard_sizes": shard_sizes, "logged": _logged(trainer)}
        Path(out_path).write_text(json.dumps(result))


if __name__ == "__main__":
    _ddp_main(sys.argv[1])
