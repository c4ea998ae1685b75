"""Evaluation under ``torchrun``: shard the data without padding, return the whole-set result on every rank.

Under ``torch.distributed`` (gloo on the CPU, nccl on GPUs), give each rank's ``DataLoader`` an
:class:`EvalSampler`; :func:`netuq.predict` and :func:`netuq.compare` then gather every rank's
predictions step by step (sizes first, padded, gathered, trimmed), put the rows back in dataset
order and cut them into the batches a one-process loader with the same ``batch_size`` (and a
sequential sampler) would yield. Everything downstream (streaming metrics, the seeded pixel
sample, calibrators, the 2-fold protocol) therefore sees the batches of one process, and every
rank returns the same whole-set result.

How exact: with ``EvalSampler(dataset, batch_size=B)`` (whole batches sharded) every example is
computed in the same batch, at the same position, as in one process, so the result equals one
process bit for bit for any method that is deterministic given its batch: plain models,
ensembles, TTA, a seeded ``MCDropout``. With the default (single indices interleaved) an example
meets other batch-mates at another position: the result is bit for bit the one-process result
when the method's output for an example does not depend on that (a plain MLP, for instance), but
a seeded ``MCDropout`` draws one mask per row position, and some CPU kernels (an ensemble's
log-sum-exp, convolutions whose spatial size leaves a SIMD tail) round an example's last bit by
its position, so those agree with one process only to float32 rounding. A
``HeteroscedasticClassifier`` draws its noise in batch order on each rank: a valid evaluation,
the same on every rank, not the one-process draw. A ``DistributedSampler`` repeats examples to pad
the ranks: netuq warns, and those examples count twice.

The loader's batching is honoured as one process would: ``drop_last=True`` with a whole-batch
``EvalSampler`` drops exactly the one-process last batch (with single indices each rank would drop
its own shard's last rows, so that is refused unless the rows dropped are the same); a pre-batched
data set (``batch_size=None``: each item is a batch, the sampler numbers the items) comes back
item by item in dataset order; a ``batch_sampler`` gives its batch size and ``drop_last``.

With ``distributed=None`` (the default of ``predict`` / ``compare``) a loader is gathered only when
its sampler shards the data (``EvalSampler``, ``DistributedSampler``); any other loader (a list of
batches, a DataLoader without such a sampler) is taken as the whole set on each rank, so it is
never counted W times. ``distributed=True`` gathers every loader.

The ranks step together (one collective per step). An error raised on one rank only while it
reads a batch or predicts on it (a malformed batch, a model that fails) is sent to the others at
that step: the failing rank raises its own error, every other rank a ``RuntimeError`` naming the
rank and the error, so no rank is left waiting for the process group's timeout.

The streaming metrics (:mod:`netuq.metrics.streaming`) on their own sync through torchmetrics:
their states are sums (integer counts, float64 sums), so the synced counts equal one process
exactly and the float64 sums up to their rounding (~1e-16 relative).

Example:
    >>> import torch
    >>> from netuq.distributed import EvalSampler
    >>> list(EvalSampler(range(5), num_replicas=2, rank=1))  # no process group needed here
    [1, 3]
    >>> list(EvalSampler(range(5)))  # one process: every index
    [0, 1, 2, 3, 4]
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Sized
from typing import Any

import torch

from ._batch import Batch
from ._checks import check_positive_int
from .prediction import Prediction

__all__ = ["EvalSampler", "is_distributed", "shards", "world"]


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def is_distributed(distributed: bool | None = None) -> bool:
    """Whether to gather over ranks: ``None`` (auto) when a process group with world size > 1 is initialised.

    Raises:
        ValueError: ``distributed=True`` without an initialised process group.
    """
    if distributed is not None and not isinstance(distributed, bool):
        raise TypeError(f"`distributed` must be True, False or None (auto), got {distributed!r}")
    ready = torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed and not ready:
        raise ValueError("`distributed=True` needs an initialised process group (torch.distributed.init_process_group)"
                         ", got none")
    if distributed is False or not ready:
        return False
    return torch.distributed.get_world_size() > 1


class EvalSampler(torch.utils.data.Sampler[int]):
    """Shard a data set over the ranks without padding: rank r gets indices r, r + W, r + 2W, …

    ``torch.utils.data.DistributedSampler`` is meant for training: it pads every rank to the same
    length by repeating samples (or drops some with ``drop_last``), so an evaluation over it
    counts the repeated samples twice (or misses some) whenever ``len(dataset)`` is not a
    multiple of the world size. ``EvalSampler`` gives every index to exactly one rank; ranks may
    then hold one example more than others, which :func:`netuq.predict` and :func:`netuq.compare`
    handle, and which also lets them restore the dataset order (rank r's k-th example is index
    ``k * W + r``).

    With ``batch_size=B`` whole batches are sharded instead: rank r gets the one-process batches
    r, r + W, … (indices ``[kB, (k + 1)B)`` for k ≡ r mod W). Every example then sits in the same
    batch, at the same position, as in one process, so even a method whose output depends on the
    batch (a seeded ``MCDropout``'s masks, kernels that round by position) gives exactly the
    one-process result; the rank's DataLoader must use the same ``batch_size``.

    Args:
        dataset: anything with ``len()``.
        num_replicas: the world size W (default: that of the process group, else 1).
        rank: this rank (default: that of the process group, else 0).
        batch_size: shard whole batches of this size (None: single indices).

    Example:
        >>> [list(EvalSampler(range(7), num_replicas=3, rank=r)) for r in range(3)]
        [[0, 3, 6], [1, 4], [2, 5]]
        >>> [list(EvalSampler(range(7), num_replicas=2, rank=r, batch_size=2)) for r in range(2)]
        [[0, 1, 4, 5], [2, 3, 6]]
    """

    def __init__(self, dataset: Sized, num_replicas: int | None = None, rank: int | None = None, *,
                 batch_size: int | None = None) -> None:
        if not isinstance(dataset, Sized):
            raise TypeError(f"`dataset` must have a length (len(dataset)), got {type(dataset).__name__}")
        default_rank, default_world = world()
        self.num_replicas = default_world if num_replicas is None else check_positive_int(num_replicas,
                                                                                          "num_replicas")
        self.rank = default_rank if rank is None else rank
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"`rank` must be an integer in [0, {self.num_replicas}), got {self.rank!r}")
        self.dataset = dataset
        self.batch_size = None if batch_size is None else check_positive_int(batch_size, "batch_size")

    def __iter__(self) -> Iterator[int]:
        n, b, w = len(self.dataset), self.batch_size or 1, self.num_replicas
        return (i for k in range(self.rank, -(-n // b), w) for i in range(k * b, min((k + 1) * b, n)))

    def __len__(self) -> int:
        n, b, w = len(self.dataset), self.batch_size or 1, self.num_replicas
        return sum(min((k + 1) * b, n) - k * b for k in range(self.rank, -(-n // b), w))

    def position(self, rank: int, j: int) -> int:
        """The dataset index of rank ``rank``'s ``j``-th example (how the gathered rows go back in order)."""
        b, w = self.batch_size or 1, self.num_replicas
        return ((j // b) * w + rank) * b + j % b

    def set_epoch(self, epoch: int) -> None:
        """No-op (the order never changes): lets EvalSampler replace a DistributedSampler as is."""


# ------------------------------------------------------------------------------- gathering
def loader_sampler(loader: Any) -> Any:
    """The index sampler of a DataLoader (``loader.sampler``, else its batch sampler's), else None."""
    sampler = getattr(loader, "sampler", None)
    if sampler is None or isinstance(sampler, torch.utils.data.SequentialSampler):
        inner = getattr(getattr(loader, "batch_sampler", None), "sampler", None)
        sampler = inner if inner is not None else sampler
    return sampler


def shards(loader: Any) -> bool:
    """Whether the loader's sampler shards the data over the ranks (EvalSampler, DistributedSampler)."""
    return isinstance(loader_sampler(loader), (EvalSampler, torch.utils.data.DistributedSampler))


def _comm_device() -> torch.device:
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_gather_rows(t: torch.Tensor | None, spec: tuple, sizes: list[int], device: torch.device) -> list[torch.Tensor]:
    """Gather a tensor of ``sizes[r]`` rows (dim 0) from every rank: pad to the largest, gather, trim."""
    shape, dtype = spec
    most = max(sizes)
    buf = torch.zeros((most, *shape), dtype=dtype, device=device)
    if t is not None and t.shape[0]:
        buf[: t.shape[0]] = t.to(device)
    parts = [torch.empty_like(buf) for _ in sizes]
    if dtype == torch.bool:  # not every backend reduces/gathers bool
        wire = [p.to(torch.uint8) for p in parts]
        torch.distributed.all_gather(wire, buf.to(torch.uint8))
        parts = [w.bool() for w in wire]
    else:
        torch.distributed.all_gather(parts, buf)
    return [p[:n].cpu() for p, n in zip(parts, sizes)]


def _pack(batch, pred: Prediction, members: list[Prediction]) -> dict[str, torch.Tensor]:
    """Every row-indexed tensor of a step (dim 0 = the example)."""
    cols = {"x": batch.x.cpu()}
    if batch.y is not None:
        cols["y"] = batch.y.cpu()
    if batch.anomaly is not None:
        cols["anomaly"] = batch.anomaly.cpu()
    for tag, p in (("p", pred), *((f"m{i}", m) for i, m in enumerate(members))):
        st = p.statistics()
        cols[f"{tag}.log_sum"] = st.log_sum if st.log_sum is not None else torch.log(st.linear_sum)
        cols[f"{tag}.entropy_sum"], cols[f"{tag}.votes"] = st.entropy_sum, st.votes
        for key in ("energy_sum", "max_logit_sum", "features"):
            if getattr(st, key) is not None:
                cols[f"{tag}.{key}"] = getattr(st, key)
        if st.samples is not None:
            cols[f"{tag}.samples"] = st.samples.transpose(0, 1)  # rows first
        for k, v in p.scores.items():
            cols[f"{tag}.score.{k}"] = v
    return cols


def _unpack(cols: dict[str, torch.Tensor], meta: dict[str, tuple[int, bool]], index: int):
    preds = {}
    for tag, (count, _kept) in meta.items():  # samples travel iff kept
        prefix = f"{tag}.score."
        samples = cols[f"{tag}.samples"].transpose(0, 1) if f"{tag}.samples" in cols else None
        preds[tag] = Prediction.from_statistics(
            count=count, log_sum=cols[f"{tag}.log_sum"], entropy_sum=cols[f"{tag}.entropy_sum"],
            votes=cols[f"{tag}.votes"], samples=samples,
            scores={k[len(prefix):]: v for k, v in cols.items() if k.startswith(prefix)},
            energy_sum=cols.get(f"{tag}.energy_sum"), max_logit_sum=cols.get(f"{tag}.max_logit_sum"),
            features=cols.get(f"{tag}.features"))
    batch = Batch(index, cols["x"], cols.get("y"), cols.get("anomaly"))
    return batch, preds["p"], [preds[f"m{i}"] for i in range(len(meta) - 1)]


def _shard_len(n: int, b: int, w: int, r: int) -> int:
    """Examples of rank ``r`` when EvalSampler shards ``n`` indices in blocks of ``b`` over ``w`` ranks."""
    return sum(min((k + 1) * b, n) - k * b for k in range(r, -(-n // b), w))


def _batching(loader: Any) -> tuple[int | None, bool, bool]:
    """``(batch_size, drop_last, pre_batched)`` of a loader: its own, else its batch sampler's.

    ``pre_batched``: a DataLoader with automatic batching off (``batch_size=None``): each item of
    the data set is already a batch, and the sampler's indices number those batches.
    """
    batch_sampler = getattr(loader, "batch_sampler", False)
    if batch_sampler is None:
        return None, False, True
    size = getattr(loader, "batch_size", None) or getattr(batch_sampler, "batch_size", None)
    drop = bool(getattr(loader, "drop_last", False) or getattr(batch_sampler, "drop_last", False))
    return size, drop, False


def _setup_error(name: str, sampler: Any, size: int, chunk: int | None, drop_last: bool,
                 pre_batched: bool) -> ValueError | None:
    """Why this loader's shards cannot be put back into the one-process batches (None: they can)."""
    if sampler.num_replicas != size:
        return ValueError(f"`{name}`'s EvalSampler has num_replicas={sampler.num_replicas} but the world size "
                          f"is {size}; build it after init_process_group or pass num_replicas={size}")
    if pre_batched:
        return None
    if sampler.batch_size is not None and chunk != sampler.batch_size:
        return ValueError(f"`{name}`'s EvalSampler shards batches of {sampler.batch_size} but the DataLoader's "
                          f"batch_size is {chunk}; use the same batch size for both")
    if drop_last and chunk:
        # One process drops the set's last incomplete batch; each rank drops its own shard's.
        n, b, w = len(sampler.dataset), sampler.batch_size or 1, sampler.num_replicas
        whole = n - n % chunk
        kept = [_shard_len(n, b, w, r) // chunk * chunk for r in range(w)]
        if kept != [_shard_len(whole, b, w, r) for r in range(w)]:
            return ValueError(
                f"`{name}` has drop_last=True: each rank drops its own last incomplete batch, so the ranks would "
                f"evaluate {sum(kept)} of {n} examples where one process evaluates {whole}; shard whole batches "
                f"with EvalSampler(dataset, batch_size={chunk}) (then drop_last drops exactly the one-process last "
                "batch), or use drop_last=False")
    return None


def gather_stream(local: Iterable, loader: Any, name: str = "loader") -> Iterator[tuple[Any, Prediction, list]]:
    """Merge every rank's ``(batch, pred, member_preds)`` steps into the batches of one process.

    All ranks step together (a rank out of batches contributes none) until every rank is done. With
    an :class:`EvalSampler` the rows go back to dataset order and are cut into batches of the
    loader's ``batch_size`` (its ``drop_last`` honoured as one process would, or refused where the
    ranks cannot), as one process would yield them; a pre-batched data set (``batch_size=None``:
    each item is a batch) yields its items in dataset order, unchanged. Otherwise (no known
    sampler) each step's rows are concatenated in rank order.
    """
    rank, size = world()
    sampler = loader_sampler(loader)
    if isinstance(sampler, torch.utils.data.DistributedSampler):
        warnings.warn(
            f"`{name}` uses a DistributedSampler, which pads the ranks by repeating examples: the gathered "
            "result counts them twice and is not the one-process result; use netuq.distributed.EvalSampler",
            UserWarning, stacklevel=3)
    chunk, drop_last, pre_batched = _batching(loader)
    sharded = isinstance(sampler, EvalSampler)
    # raised at the first step, after the other ranks have heard of it
    setup = _setup_error(name, sampler, size, chunk, drop_last, pre_batched) if sharded else None
    ordered = sharded and setup is None
    items = ordered and pre_batched  # whole items in dataset order, else rows in dataset order
    device = _comm_device()
    it = iter(local)
    steps = 0  # collective steps so far (the batches emitted can be fewer or more)
    seen = [0] * size  # rows (items when pre-batched) received so far from each rank
    pos = torch.empty(0, dtype=torch.long)  # dataset positions of the rows waiting in `pending`, sorted
    pending: dict[str, torch.Tensor] = {}
    waiting: dict[int, dict[str, torch.Tensor]] = {}  # pre-batched: dataset position -> item
    next_pos, index, meta = 0, 0, None

    def emit(cols: dict[str, torch.Tensor]):
        nonlocal index
        out = _unpack(cols, meta, index)
        index += 1
        return out

    while True:
        info, failure = None, None
        try:  # a step that fails on this rank only must stop every rank, not leave them waiting
            if setup is not None:
                raise setup
            item = next(it, None)
            if item is not None:
                batch, pred, members = item
                cols = _pack(batch, pred, members)
                info = {"n": len(batch.x), "spec": {k: (tuple(v.shape[1:]), v.dtype) for k, v in cols.items()},
                        "meta": {"p": (pred.num_samples, pred.samples is not None),
                                 **{f"m{i}": (m.num_samples, m.samples is not None) for i, m in enumerate(members)}}}
        except Exception as err:  # re-raised below, after every rank has heard of it
            failure, info = err, {"error": f"{type(err).__name__}: {err}"}
        infos: list[Any] = [None] * size
        torch.distributed.all_gather_object(infos, info)
        if failure is not None:
            raise failure
        failed = [(r, i["error"]) for r, i in enumerate(infos) if i is not None and "error" in i]
        if failed:
            raise RuntimeError(f"`{name}`: rank {failed[0][0]} failed at step {steps}, so every rank stops: "
                               f"{failed[0][1]}")
        steps += 1
        present = [i for i in infos if i is not None]
        if not present:
            if index == 0 and not pos.numel() and not waiting:
                raise ValueError(f"`{name}` yielded no batches on any rank; it must yield at least one")
            break
        spec, meta = present[0]["spec"], present[0]["meta"]
        for r, i in enumerate(infos):
            if i is not None and i["spec"] != spec:
                raise ValueError(f"`{name}`: rank {r}'s batch holds {i['spec']} but another rank's {spec}; every rank "
                                 "must run the same method on batches of the same kind")
        sizes = [0 if i is None else i["n"] for i in infos]
        parts = {k: _all_gather_rows(cols.get(k) if item is not None else None, s, sizes, device)
                 for k, s in spec.items()}
        if items:  # each rank's step is one item of the data set: rank r's k-th is item position(r, k)
            for r in range(size):
                if infos[r] is not None:
                    waiting[sampler.position(r, seen[r])] = {k: v[r] for k, v in parts.items()}
                    seen[r] += 1
            while next_pos in waiting:
                yield emit(waiting.pop(next_pos))
                next_pos += 1
            continue
        gathered = {k: torch.cat(v) for k, v in parts.items()}
        if not ordered:  # each step's rows in rank order
            yield emit(gathered)
            continue
        new = torch.cat([sampler.position(r, torch.arange(seen[r], seen[r] + sizes[r])) for r in range(size)])
        seen = [a + b for a, b in zip(seen, sizes)]
        pos = torch.cat([pos, new])
        order = pos.argsort()
        pos = pos[order]
        pending = {k: torch.cat([pending[k], v]) if k in pending else v for k, v in gathered.items()}
        pending = {k: v[order] for k, v in pending.items()}
        # Emit every complete one-process batch of the contiguous prefix next_pos, next_pos + 1, ...
        step = chunk or max(sizes)
        ready = int((pos == torch.arange(next_pos, next_pos + len(pos))).cumprod(0).sum())
        done = ready - ready % step
        for a in range(0, done, step):
            yield emit({k: v[a:a + step] for k, v in pending.items()})
        pos, pending, next_pos = pos[done:], {k: v[done:] for k, v in pending.items()}, next_pos + done
    if waiting:
        raise ValueError(f"`{name}`: the ranks' items do not cover positions {next_pos}.. without gaps; each "
                         "rank's loader must use an EvalSampler over the same data set")
    if pos.numel():  # the last, shorter batch
        if not torch.equal(pos, torch.arange(next_pos, next_pos + len(pos))):
            raise ValueError(f"`{name}`: the ranks' examples do not cover positions {next_pos}.. without gaps; each "
                             "rank's loader must use an EvalSampler over the same data set")
        yield emit(pending)
