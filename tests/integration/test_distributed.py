"""netuq.distributed: EvalSampler, and predict / compare / streaming metrics under torchrun (2 gloo processes).

The torchrun test runs ``tests/scripts/dist_torchrun_script.py`` once in this process (no process group:
the one-process reference) and once as a subprocess under
``python -m torch.distributed.run --nproc_per_node=2``; every rank must return exactly the
reference (data sets of 45, 9, 7 and 5 examples: never a multiple of 2), and DataLoader batching
(``drop_last``, batch samplers, pre-batched data sets: tests/scripts/torchrun_loaders.py) as one process.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

import netuq
from netuq.distributed import EvalSampler, is_distributed

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "dist_torchrun_script.py"


# ------------------------------------------------------------------------------- EvalSampler
@given(n=st.integers(0, 60), world=st.integers(1, 5), batch=st.one_of(st.none(), st.integers(1, 7)))
def test_eval_sampler_covers_every_index_exactly_once_without_padding(n, world, batch):
    shards = [list(EvalSampler(range(n), num_replicas=world, rank=r, batch_size=batch)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))  # no padding, no index twice, none missing
    for r, shard in enumerate(shards):
        sampler = EvalSampler(range(n), num_replicas=world, rank=r, batch_size=batch)
        assert len(sampler) == len(shard)
        # The order restoration used by the gathering: rank r's j-th example is dataset index position(r, j).
        assert [sampler.position(r, j) for j in range(len(shard))] == shard
    b = batch or 1
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= b


def test_eval_sampler_interleaves_and_shards_whole_batches():
    assert [list(EvalSampler(range(5), num_replicas=2, rank=r)) for r in range(2)] == [[0, 2, 4], [1, 3]]
    assert [list(EvalSampler(range(7), num_replicas=2, rank=r, batch_size=3)) for r in range(2)] == \
        [[0, 1, 2, 6], [3, 4, 5]]
    assert list(EvalSampler(range(4))) == [0, 1, 2, 3]  # no process group: every index
    sampler = EvalSampler(range(4), num_replicas=2, rank=1)
    sampler.set_epoch(3)  # a no-op, for drop-in use where a DistributedSampler was
    assert list(sampler) == [1, 3]


def test_distributed_sampler_pads_where_eval_sampler_does_not():
    dist = [list(torch.utils.data.DistributedSampler(range(5), num_replicas=2, rank=r, shuffle=False)) for r in (0, 1)]
    assert sum(map(len, dist)) == 6  # one example counted twice
    assert sum(len(EvalSampler(range(5), num_replicas=2, rank=r)) for r in (0, 1)) == 5


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_replicas": 0}, ValueError, "num_replicas"),
        ({"num_replicas": 2, "rank": 2}, ValueError, r"`rank` must be an integer in \[0, 2\)"),
        ({"num_replicas": 2, "rank": -1}, ValueError, "rank"),
        ({"batch_size": 0}, ValueError, "batch_size"),
    ],
)
def test_eval_sampler_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        EvalSampler(range(4), **kwargs)


def test_eval_sampler_needs_a_sized_dataset():
    with pytest.raises(TypeError, match="`dataset` must have a length"):
        EvalSampler(iter(range(3)))


def test_distributed_argument_is_checked_and_one_process_is_unchanged():
    assert is_distributed() is False and is_distributed(False) is False
    with pytest.raises(ValueError, match="needs an initialised process group"):
        is_distributed(True)
    net = torch.nn.Linear(4, 3)
    data = TensorDataset(torch.randn(11, 4), torch.arange(11) % 3)
    with pytest.raises(TypeError, match="`distributed` must be True, False or None"):
        netuq.predict(net, DataLoader(data, batch_size=4), distributed="yes")
    with pytest.raises(ValueError, match="needs an initialised process group"):
        netuq.compare({"plain": net}, DataLoader(data, batch_size=4), distributed=True)
    plain, labels = netuq.predict(net, DataLoader(data, batch_size=4))
    sharded, labels2 = netuq.predict(net, DataLoader(data, batch_size=4, sampler=EvalSampler(data)))
    assert torch.equal(plain.probs, sharded.probs) and torch.equal(labels, labels2)


# ------------------------------------------------------------------------------- torchrun
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _close(a, b, path: str = "") -> None:
    """Equal up to float64 rounding (the streaming metrics' summed states): ints and bins exactly."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _close(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b)):
            _close(u, v, f"{path}[{i}]")
    elif isinstance(a, float):
        assert math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15), (path, a, b)
    else:
        assert a == b, path


@pytest.mark.slow  # ~25 s on 2 busy cores (two torchrun processes start, import torch and evaluate)
@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="needs torch.distributed with the gloo backend")
def test_torchrun_two_processes_return_the_one_process_results_on_every_rank(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    spec = importlib.util.spec_from_file_location("dist_torchrun_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with warnings.catch_warnings():  # the calibrators' warnings on tiny data (the subprocess ignores them too)
        warnings.simplefilter("ignore")
        module.record(one)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           str(SCRIPT), str(two)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"

    ref = json.loads((one / "rank0.json").read_text())
    assert ref["world_size"] == 1
    cls, seg = ref["classification"], ref["segmentation"]
    # The reference is the whole set, and the pixel sample really is a sample.
    assert len(cls["predict_plain"]["labels"]) == 45 and len(seg["predict"]["labels"]) == 9
    assert cls["compare"]["methods"]["plain"]["counts"]["test"] == 45
    assert cls["compare_batches"]["data"]["ood"]["far"] == 5
    pixels = seg["compare"]["methods"]["plain"]["counts"]["test"]
    assert pixels == seg["compare"]["data"]["pixels"] > seg["compare"]["config"]["max_pixels"]
    # DataLoader batching (tests/scripts/torchrun_loaders.py): each label is its example's dataset index
    loaders = ref["loaders"]
    assert loaders["drop_last_whole_batches"]["labels"] == list(range(9))
    assert loaders["drop_last_whole_batches"]["batches"] == [3, 3, 3]
    assert loaders["pre_batched"]["labels"] == list(range(15)) and loaders["pre_batched"]["batches"] == [3, 1, 4, 2, 5]
    for rank in (0, 1):
        got = json.loads((two / f"rank{rank}.json").read_text())
        assert got["world_size"] == 2
        for case in ("classification", "segmentation"):  # predictions, order, metrics, samples: bit for bit
            for key, value in ref[case].items():
                assert got[case][key] == value, f"rank {rank}: {case}/{key} differs from one process"
        _close(ref["streaming"], got["streaming"], f"rank {rank}: streaming")
        # drop_last honoured as one process would, and pre-batched items in dataset order (issue 22.4, 22.5)
        for case in ("drop_last_whole_batches", "drop_last_interleaved_exact", "batch_sampler", "pre_batched",
                     "pre_batched_blocks"):
            assert got["loaders"][case] == loaders[case], f"rank {rank}: {case} differs from one process"
        error = got["loaders"]["drop_last_interleaved"]["error"]  # the ranks would keep 6 of 10 rows, one process 9
        assert error.startswith("`loader` has drop_last=True: each rank drops its own last incomplete batch, so the "
                                "ranks would evaluate 6 of 10 examples where one process evaluates 9")
        assert "EvalSampler(dataset, batch_size=3)" in error and "drop_last=False" in error
        misuse = got["misuse"]
        assert misuse["warned"] and misuse["n"] == 46  # DistributedSampler: 45 examples counted as 46
        assert misuse["whole"] == 45  # a loader that does not shard is each rank's whole set, not gathered
        assert "batch_size is 4" in misuse["mismatch_error"]
        # a failure on one rank stops both (the test's timeout would catch a hang)
        want = "ValueError: bad batch on this rank" if rank == 1 else "RuntimeError: `test_loader`: rank 1 failed"
        assert misuse["failure"].startswith(want), misuse["failure"]

