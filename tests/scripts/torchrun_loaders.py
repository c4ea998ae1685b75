"""Helper of tests/integration/test_distributed.py (not a test): DataLoader batching under torchrun.

:func:`loader_cases` runs inside ``tests/scripts/dist_torchrun_script.py`` (under torchrun with 2
gloo processes, and in one process for the reference; then EvalSampler yields every index). The cases:
``drop_last=True`` (whole batches sharded: exact; single indices: refused unless the ranks drop
exactly what one process drops), a batch sampler, and a pre-batched data set (``batch_size=None``).
Each example's label is its dataset index, so order and coverage show in the labels.
"""

from __future__ import annotations

import sys

import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, TensorDataset

import netuq
from netuq.distributed import EvalSampler

stream = sys.modules["netuq.engine.predict"].stream  # the module (netuq.engine.predict is the function)


class PreBatched(Dataset):
    """Item k is a whole batch (x, y) of SIZES[k] rows; labels number the rows in dataset order."""

    SIZES = (3, 1, 4, 2, 5)

    def __init__(self) -> None:
        starts = torch.tensor((0, *self.SIZES)).cumsum(0).tolist()
        g = torch.Generator().manual_seed(5)
        self.items = [(torch.randn(n, 4, generator=g), torch.arange(s, s + n)) for s, n in zip(starts, self.SIZES)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int):
        return self.items[k]


def _run(net: nn.Module, loader) -> dict:
    try:
        pred, labels = netuq.predict(net, loader)
    except ValueError as err:
        return {"error": str(err)}
    sizes = [len(b.y) for b, _, _ in stream(net, loader)]
    return {"labels": labels.tolist(), "probs": pred.probs.tolist(), "batches": sizes}


def loader_cases() -> dict:
    """Each case's labels, probabilities and batch sizes (or its error), as plain data."""
    torch.manual_seed(0)
    net = nn.Linear(4, 3).eval()
    g = torch.Generator().manual_seed(4)
    ten = TensorDataset(torch.randn(10, 4, generator=g), torch.arange(10))
    twelve = TensorDataset(torch.randn(12, 4, generator=g), torch.arange(12))
    pre = PreBatched()
    cases = {
        # N = 10, B = 3, W = 2: one process evaluates 9 rows in 3 batches
        "drop_last_whole_batches": DataLoader(ten, batch_size=3, drop_last=True,
                                              sampler=EvalSampler(ten, batch_size=3)),
        "drop_last_interleaved": DataLoader(ten, batch_size=3, drop_last=True, sampler=EvalSampler(ten)),
        # N = 12, B = 3: each rank's 6 rows are 2 whole batches, so the ranks drop nothing, like one process
        "drop_last_interleaved_exact": DataLoader(twelve, batch_size=3, drop_last=True, sampler=EvalSampler(twelve)),
        "batch_sampler": DataLoader(ten, batch_sampler=BatchSampler(EvalSampler(ten, batch_size=3), 3, drop_last=True)),
        "pre_batched": DataLoader(pre, batch_size=None, sampler=EvalSampler(pre)),
        "pre_batched_blocks": DataLoader(pre, batch_size=None, sampler=EvalSampler(pre, batch_size=2)),
    }
    return {name: _run(net, loader) for name, loader in cases.items()}
