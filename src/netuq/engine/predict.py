"""``netuq.predict``: run any netuq method over any loader; predictions and labels on the CPU."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch

from ..prediction import Prediction
from ._batches import DEFAULT_KEYS, Batch, as_predictor, check_labels_shape, iter_batches, method_device

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
) -> Iterator[tuple[Batch, Prediction]]:
    """Yield ``(batch, prediction)`` per batch, both on the CPU; labels checked against the prediction."""
    run = predictor or as_predictor(method, seed=seed)
    dev = torch.device(device) if device is not None else method_device(method)
    for batch in iter_batches(_progress(loader, progress, name), keys, name=name):
        with torch.no_grad():
            pred = run(batch.x.to(dev))
        if not isinstance(pred, Prediction):
            raise TypeError(
                f"`method` must return a netuq.Prediction, got {type(pred).__name__} on {name} batch {batch.index}"
            )
        pred = pred.to("cpu")
        check_labels_shape(pred, batch, name)
        yield batch, pred


def predict(
    method: Any,
    loader: Iterable,
    *,
    device: torch.device | str | None = None,
    progress: bool = False,
    keys: Sequence[str] = DEFAULT_KEYS,
    seed: int = 0,
) -> tuple[Prediction, torch.Tensor | None]:
    """Run ``method`` over every batch of ``loader`` and concatenate: one Prediction, one label tensor.

    Args:
        method: ``MCDropout``, ``TTA``, ``Ensemble``, ``HeteroscedasticClassifier`` (its ``predict``
            with a generator seeded by ``seed``), ``ConfidenceClassifier``, any callable
            ``x -> Prediction``, or a plain ``nn.Module`` (its logits as a one-sample prediction,
            run in eval mode; the module's modes are restored).
        loader: any iterable of batches: a tensor ``x`` (N, ...), a tuple/list ``(x, y, ...)``, or a
            mapping with the names in ``keys``.
        device: where batches go (default: the device of the method's parameters, else the CPU).
        progress: show a tqdm bar.
        keys: mapping keys of the input, the labels and (for ``compare``) the anomaly mask.
        seed: seeds the noise of a ``HeteroscedasticClassifier``.

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
    for batch, pred in stream(method, loader, device=device, keys=keys, seed=seed, progress=progress):
        preds.append(pred)
        if batch.y is not None:
            labels.append(batch.y.cpu())
    return Prediction.cat(preds), (torch.cat(labels) if labels else None)
