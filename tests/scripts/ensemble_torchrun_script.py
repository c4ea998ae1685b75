"""Helper of tests/test_ensemble_torchrun.py (not a test): train one small ensemble and record it.

Run under ``python -m torch.distributed.run --nproc_per_node=2 tests/scripts/ensemble_torchrun_script.py OUT``
(gloo on the CPU), or call :func:`train_and_record` in one process for the reference. Trains 3
members (rank 0 gets members 0 and 2, rank 1 member 1) twice, with and without a checkpoint_dir,
and writes ``OUT/rank<r>.pt``: every member's weights, out-of-fold predictions, histories, and
the epochs this rank trained.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch import nn

import netuq


class _Epochs(netuq.training.Callback):
    def __init__(self) -> None:
        self.count = 0

    def on_epoch_end(self, epoch, logs):
        self.count += 1


def make_member() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))


def train_and_record(out: Path) -> None:
    """Train the two ensembles (on one thread: the same arithmetic in every process) and save the record."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _train_and_record(out)
    finally:
        torch.set_num_threads(threads)


def _train_and_record(out: Path) -> None:
    distributed = torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if distributed else 0
    g = torch.Generator().manual_seed(0)
    y = torch.arange(90) % 3
    x = 2.0 * torch.randn(3, 4, generator=g)[y] + torch.randn(90, 4, generator=g)
    kwargs = {"members": 3, "epochs": 2, "seed": 7, "batch_size": 16, "lr": 0.05}
    counter = _Epochs()
    with_files = netuq.train_ensemble(make_member, (x, y), checkpoint_dir=out / "ckpt", callbacks=[counter], **kwargs)
    epochs_with_files = counter.count
    counter.count = 0
    in_memory = netuq.train_ensemble(make_member, (x, y), callbacks=[counter], **kwargs)
    record = {
        "rank": rank,
        "world_size": torch.distributed.get_world_size() if distributed else 1,
        "epochs_trained": (epochs_with_files, counter.count),
        "modes": [m.training for e in (with_files, in_memory) for m in e.members],
    }
    for name, ens in (("files", with_files), ("memory", in_memory)):
        record[name] = {
            "state_dicts": [m.state_dict() for m in ens.members],
            "oof_probs": ens.oof_probs_,
            "val_loss": [h.val_loss for h in ens.histories_],
            "train_loss": [h.train_loss for h in ens.histories_],
            "probs": ens(x[:10]).probs,
        }
    torch.save(record, out / f"rank{rank}.pt")


if __name__ == "__main__":
    assert "WORLD_SIZE" in os.environ, "run me under torchrun"
    torch.distributed.init_process_group("gloo")
    try:
        train_and_record(Path(sys.argv[1]))
    finally:
        torch.distributed.destroy_process_group()
