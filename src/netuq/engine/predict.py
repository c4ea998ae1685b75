"""``netuq.predict``: run any netuq method over any loader; predictions and labels on the CPU."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch

from ..prediction import Prediction
from ._batches import DEFAULT_KEYS, Batch, as_predictor, check_batch, iter_batches, method_device

__all__ = ["predict", "stream"]


def _progress(loader: Iterable, enabled: bool, desc: str):
    if not enabled:
        return loader
    from tqdm.auto import tqdm

    try:
        total = len(loader)  # type: ignore[arg-type]
    except TypeError:
        total = None
    return tqdm(loader, total=total, desc=desc, unit="batch", leave=False)


def _local(method, loader, *, device, keys, seed, progress, name, predictor, members, allow_empty, labels, anomaly,
           ignore_index):
    run = predictor or as_predictor(method, seed=seed)
    dev = torch.device(device) if device is not None else method_device(method)
    for batch in iter_batches(_progress(loader, progress, name), keys, name=name, allow_empty=allow_empty,
                              labels=labels != "unused", anomaly=anomaly):
        x = batch.x.to(dev)
        with torch.no_grad():
            pred = run(x)
        if not isinstance(pred, Prediction):
            raise TypeError(
                f"`method` must return a netuq.Prediction, got {type(pred).__name__} on {name} batch {batch.index}"
            )
        pred = pred.to("cpu")
        check_batch(pred, batch, name, classes=labels == "classes", ignore_index=ignore_index)
        with torch.no_grad():
            extra = [m(x).to("cpu") for m in members]
        yield batch, pred, extra


def stream(
    method: Any,
    loader: Iterable,
    *,
    device: torch.device | str | None = None,
    keys: Sequence[str] = DEFAULT_KEYS,
    seed: int = 0,
    progress: bool = False,
    name: str = "loader",
    predictor=None,
    members: Sequence = (),
    distributed: bool | None = None,
    labels: str = "shape",
    anomaly: bool = False,
    ignore_index: int | None = None,
) -> Iterator[tuple[Batch, Prediction, list[Prediction]]]:
    """Yield ``(batch, prediction, member_predictions)`` per batch, all on the CPU; labels checked.

    ``members``: predictors also run on every batch (an ensemble's members). What the consumer
    reads of each batch, and so checks: ``labels`` "unused" (not read), "shape" (the prediction's
    shape without C) or "classes" (scored: also values in [0, C) or ``ignore_index``, in a dtype
    that can hold it; :func:`~netuq.engine._batches.check_batch`); ``anomaly``: a bool anomaly
    mask (a tuple's bool third element, or the mapping's anomaly key). Under a process
    group (see :mod:`netuq.distributed`) every rank yields the gathered batches of the whole set,
    in dataset order and cut as one process would when the loader uses an ``EvalSampler``.
    """
    from ..distributed import gather_stream, is_distributed, shards

    gather = is_distributed(distributed) and (distributed is True or shards(loader))
    local = _local(method, loader, device=device, keys=keys, seed=seed, progress=progress, name=name,
                   predictor=predictor, members=list(members), allow_empty=gather, labels=labels, anomaly=anomaly,
                   ignore_index=ignore_index)
    if gather:
        yield from gather_stream(local, loader, name)
    else:
        yield from local


def predict(
    method: Any,
    loader: Iterable,
    *,
    device: torch.device | str | None = None,
    progress: bool = False,
    keys: Sequence[str] = DEFAULT_KEYS,
    seed: int = 0,
    distributed: bool | None = None,
) -> tuple[Prediction, torch.Tensor | None]:
    """Run ``method`` over every batch of ``loader`` and concatenate: one Prediction, one label tensor.

    Args:
        method: ``MCDropout``, ``TTA``, ``Ensemble``, ``HeteroscedasticClassifier`` (its ``predict``
            with a generator seeded by ``seed``), ``ConfidenceClassifier``, any callable
            ``x -> Prediction``, or a plain ``nn.Module`` (its logits as a one-sample prediction,
            run in eval mode; the module's modes are restored).
        loader: any iterable of batches: a tensor ``x`` (N, ...), a tuple/list ``(x, y, ...)``
            (elements after ``y`` are ignored), or a mapping with the names in ``keys``.
        device: where batches go (default: the device of the method's parameters, else the CPU).
        progress: show a tqdm bar.
        keys: mapping keys of the input, the labels and (read by ``compare`` only) the anomaly mask.
        seed: seeds the noise of a ``HeteroscedasticClassifier``.
        distributed: gather the whole set from every rank of the process group. None (auto): when
            one with world size > 1 is initialised and the loader's sampler shards the data (an
            ``EvalSampler`` or a ``DistributedSampler``); any other loader is taken as this rank's
            whole set. True: always gather (the loaders are per-rank shards). Give each rank's
            DataLoader a :class:`netuq.distributed.EvalSampler`: then every rank returns the
            one-process result, in dataset order (see :mod:`netuq.distributed`).

    Returns:
        ``(pred, labels)``: a Prediction (N, C, ...) on the CPU and the labels (N, ...) on the CPU,
        or None when the batches carry none.

    Raises:
        TypeError / ValueError: naming the batch index for a batch without an input tensor, labels
            whose shape does not match the prediction, or an empty loader.

    Example:
        >>> import torch, netuq
        >>> net = torch.nn.Linear(4, 3)
        >>> loader = [(torch.randn(5, 4), torch.randint(0, 3, (5,))) for _ in range(2)]
        >>> pred, labels = netuq.predict(net, loader)
        >>> pred.probs.shape, labels.shape
        (torch.Size([10, 3]), torch.Size([10]))
    """
    preds: list[Prediction] = []
    labels: list[torch.Tensor] = []
    for batch, pred, _ in stream(method, loader, device=device, keys=keys, seed=seed, progress=progress,
                                 distributed=distributed):
        preds.append(pred)
        if batch.y is not None:
            labels.append(batch.y.cpu())
    return Prediction.cat(preds), (torch.cat(labels) if labels else None)
