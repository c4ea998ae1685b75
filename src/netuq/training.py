"""One small, seeded training loop used by ensembles, the training-time heads and the benchmark.

:func:`fit` trains any ``nn.Module`` on ``(x, y)`` batches with a loss that receives the model's
whole output (a tensor, a tuple such as ``(mu, sigma)``, or anything else), keeps the weights
with the lowest validation loss, optionally stops early, and returns a :class:`History`. It is
quiet unless ``progress=True``, never touches the global RNG state (it forks it), and follows
the device you give it.

Speed (``perf/bench_training.py`` compares it with a plain PyTorch loop): in-memory data (an
``(x, y)`` tuple or a plain ``TensorDataset``) is batched by index slicing instead of a
``DataLoader`` (same shuffling order, same batches, no per-sample collation); on CUDA the losses
are summed on the device, so a step does not wait for the GPU unless a callback needs the loss;
the best weights are kept as an on-device copy.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ._layout import as_layout, check_channels_last
from ._modes import eval_mode, load_modes, save_modes
from ._random import forked_rng, generator

__all__ = ["fit", "History", "Callback", "make_loader", "as_dataset"]

Loss = Callable[[Any, torch.Tensor], torch.Tensor]


@dataclass
class History:
    """What :func:`fit` did: per-epoch losses, the best epoch and its validation loss."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    best_val_loss: float | None = None
    epochs_run: int = 0
    seconds: float = 0.0
    stopped_early: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Callback:
    """Hooks called by :func:`fit`; override the ones you need.

    ``on_batch_end(loss, output, target)`` runs after each optimiser step (the confidence
    budget uses it); ``on_epoch_end(epoch, logs)`` runs after each epoch and may return True to
    stop training.
    """

    def on_batch_end(self, loss: float, output: Any, target: torch.Tensor) -> None:  # noqa: B027
        pass

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> bool | None:  # noqa: B027
        return None


def as_dataset(data: Dataset | Sequence[torch.Tensor], name: str = "train_data", *, accepted: str = "") -> Dataset:
    """A Dataset from a Dataset (returned as is) or a tuple of equally long tensors ``(x, y, ...)``.

    ``name`` is the argument name used in error messages, ``accepted`` any other accepted type
    (e.g. ``"DataLoader"``) to list in them.

    Example:
        >>> len(as_dataset((torch.zeros(5, 2), torch.zeros(5))))
        5
    """
    if isinstance(data, (tuple, list)):
        if len(data) < 2 or not all(isinstance(t, torch.Tensor) for t in data):
            kinds = [type(t).__name__ for t in data]
            raise TypeError(f"`{name}` given as a tuple must be (x, y, ...) tensors, got {kinds}")
        if len({len(t) for t in data}) != 1:
            raise ValueError(f"`{name}` tensors must have the same length, got lengths {[len(t) for t in data]}")
        data = TensorDataset(*data)
    if not isinstance(data, Dataset):
        also = f", {accepted}" if accepted else ""
        raise TypeError(f"`{name}` must be a Dataset{also} or an (x, y) tuple of tensors, got {type(data).__name__}")
    return data


def make_loader(
    data: Dataset | DataLoader | Sequence[torch.Tensor],
    *,
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator | None = None,
    name: str = "train_data",
) -> DataLoader:
    """A DataLoader from a Dataset, a DataLoader (returned as is) or a tuple of tensors ``(x, y)``.

    ``name`` is the argument name used in error messages.

    Example:
        >>> loader = make_loader((torch.zeros(5, 2), torch.zeros(5)), batch_size=2, shuffle=False)
        >>> [len(y) for _, y in loader]
        [2, 2, 1]
    """
    if isinstance(data, DataLoader):
        return data
    data = as_dataset(data, name, accepted="DataLoader")
    if len(data) == 0:  # type: ignore[arg-type]
        raise ValueError(f"`{name}` must not be empty, got 0 samples")
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator)


class _TensorBatches:
    """Batches of in-memory tensors by index slicing: what ``DataLoader(TensorDataset(*tensors),
    batch_size, shuffle, generator)`` yields, without collating sample by sample.

    Random numbers are drawn exactly as the DataLoader draws them (one int64 for its worker seed,
    from ``generator`` or else the global RNG; when shuffling, ``randperm(n)`` and a second
    ``randperm(n)`` when the RandomSampler is exhausted), so training on a tuple gives the same
    batches, in the same order, and the same dropout masks as before this fast path.
    """

    def __init__(
        self, tensors: Sequence[torch.Tensor], batch_size: int, shuffle: bool, generator: torch.Generator | None
    ) -> None:
        self.tensors = tuple(tensors)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.generator = generator
        self.n = len(self.tensors[0])

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        n, bs = self.n, self.batch_size
        # the DataLoader's worker base seed, drawn from its generator or else from the global RNG
        # (which the next epoch's dropout uses): drawn here too, so the results stay the same
        torch.empty((), dtype=torch.int64).random_(generator=self.generator)
        if not self.shuffle:
            for start in range(0, n, bs):
                yield tuple(t[start : start + bs] for t in self.tensors)
            return
        gen = self.generator
        if gen is None:  # as RandomSampler: a generator seeded from the global RNG
            gen = torch.Generator().manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, bs):
            idx = order[start : start + bs]
            yield tuple(t[idx] for t in self.tensors)
        torch.randperm(n, generator=gen)  # drawn by RandomSampler when it runs out


def _batches(
    data: Dataset | DataLoader | Sequence[torch.Tensor],
    *,
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator | None = None,
    name: str = "train_data",
) -> Iterable:
    """:func:`make_loader`, with in-memory tensors (a tuple or a plain ``TensorDataset``) batched by slicing."""
    if isinstance(data, (tuple, list)) or type(data) is TensorDataset:
        dataset = as_dataset(data, name, accepted="DataLoader")
        if len(dataset) == 0:  # type: ignore[arg-type]
            raise ValueError(f"`{name}` must not be empty, got 0 samples")
        return _TensorBatches(dataset.tensors, batch_size, shuffle, generator)  # type: ignore[attr-defined]
    return make_loader(data, batch_size=batch_size, shuffle=shuffle, generator=generator, name=name)


def _to(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to(o, device) for o in obj)
    return obj


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def evaluate_loss(
    model: nn.Module, loader: Iterable, loss: Loss, device: torch.device, *, channels_last: bool = False
) -> float:
    """Mean loss over a loader in eval mode (weighted by batch size); ``channels_last``: 4-d inputs
    are fed channels-last (:mod:`netuq._layout`).

    Every module's own ``training`` flag is restored afterwards (a frozen BatchNorm stays frozen).
    """
    total: float | torch.Tensor = 0.0
    count = 0
    on_device = _sums_on_device(device)
    with eval_mode(model), torch.no_grad():
        for batch in loader:
            x, y = _to(batch[0], device), _to(batch[1], device)
            n = len(y)
            value = loss(model(as_layout(x, channels_last)), y)
            # float64 on the device: the same sums as Python floats, without a sync per batch
            total += value.detach().double() * n if on_device else float(value) * n
            count += n
    return float(total) / max(count, 1)


def _sums_on_device(device: torch.device) -> bool:
    """Whether to sum losses on ``device`` (CUDA: avoids a host sync per step) rather than in Python."""
    return device.type == "cuda"


def fit(
    model: nn.Module,
    train_data: Dataset | DataLoader | Sequence[torch.Tensor],
    *,
    val_data: Dataset | DataLoader | Sequence[torch.Tensor] | None = None,
    loss: Loss | None = None,
    val_loss: Loss | None = None,
    epochs: int = 10,
    optimizer: torch.optim.Optimizer | Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    seed: int | None = 0,
    callbacks: Sequence[Callback] = (),
    patience: int | None = None,
    restore_best: bool = True,
    grad_clip: float | None = None,
    progress: bool = False,
    channels_last: bool | None = False,
) -> History:
    """Train ``model`` in place and return its :class:`History`.

    Modes: a model given in train mode is trained with its modules' flags as they are (a
    BatchNorm frozen with ``bn.eval()`` keeps its running statistics); a model given in eval mode
    is switched to ``model.train()``. Validation runs in eval mode. At the end, even on error,
    every module's ``training`` flag is what it was before the call.

    Args:
        model: any module; its output is passed whole to ``loss``.
        train_data: a Dataset yielding ``(x, y, ...)``, a DataLoader, or an ``(x, y)`` tuple.
        val_data: optional validation data; with it, the weights of the epoch with the lowest
            validation loss are restored at the end (``restore_best``), and ``patience`` epochs
            without improvement stop training.
        loss: ``loss(output, y) -> scalar``; default cross-entropy.
        val_loss: the loss used for model selection (default: ``loss``). Use the NLL here when
            the training loss has regularisers or noise.
        epochs: number of passes over ``train_data``.
        optimizer: an optimizer instance, or a factory ``params -> optimizer``; default Adam(lr).
        batch_size: used when ``train_data``/``val_data`` are not loaders.
        device: where to train (default: where the model's parameters are).
        seed: seeds shuffling, dropout and any noise in the loss; the global RNG state is
            restored afterwards. ``None`` uses the current global state.
        callbacks: :class:`Callback` objects.
        grad_clip: clip the gradient norm to this value.
        progress: show a tqdm progress bar.
        channels_last: opt-in: True feeds 4-d input batches channels-last (:mod:`netuq._layout`;
            no check). A SmallCNN training step ran 0.97-1.45x as fast so on the CPU here (width
            8: no gain; width 16 on 64-256 images: 1.4x); the losses then differ by float
            rounding, and element-wise dropout draws its masks in the layout's memory order (the
            same seed gives another, equally distributed, run). False or None (default): as given.
    Returns:
        The history: per-epoch train/validation losses, best epoch, run time.

    Raises:
        ValueError: ``epochs`` or ``patience`` below 1, empty data, tensors of different lengths.
        TypeError: data that is neither a Dataset, a DataLoader nor a tuple of tensors.
        FloatingPointError: the training loss became NaN or infinite (the model's mode is
            restored; its weights are those of the failing step on the CPU; on CUDA the check
            runs once per epoch, so they are those of the epoch's end).

    Example:
        >>> x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
        >>> net = torch.nn.Linear(4, 3)
        >>> h = fit(net, (x, y), val_data=(x, y), epochs=3, lr=0.1)
        >>> h.epochs_run, len(h.val_loss)
        (3, 3)
    """
    if epochs < 1:
        raise ValueError(f"`epochs` must be a positive integer, got {epochs!r}")
    if patience is not None and patience < 1:
        raise ValueError(f"`patience` must be a positive integer or None, got {patience!r}")
    loss_fn: Loss = loss if loss is not None else nn.functional.cross_entropy
    select_fn: Loss = val_loss if val_loss is not None else loss_fn
    dev = torch.device(device) if device is not None else _model_device(model)
    use_cl = check_channels_last(channels_last)
    model.to(dev)

    with forked_rng(dev if dev.type == "cuda" else None, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        gen = torch.Generator() if seed is None else generator(seed)
        train_loader = _batches(train_data, batch_size=batch_size, shuffle=True, generator=gen)
        val_loader = (
            None if val_data is None else _batches(val_data, batch_size=batch_size, shuffle=False, name="val_data")
        )
        if optimizer is None:
            opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        elif isinstance(optimizer, torch.optim.Optimizer):
            opt = optimizer
        else:
            opt = optimizer(model.parameters())
        history = History()
        best_state: dict[str, torch.Tensor] | None = None
        bad_epochs = 0
        start = time.perf_counter()
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=epochs, desc="training", leave=False)
        saved_modes = save_modes(model)
        if not model.training:
            model.train()
        train_modes = save_modes(model)  # re-applied every epoch: respects modules the user froze
        lazy = _sums_on_device(dev) and not callbacks
        try:
            for epoch in range(epochs):
                load_modes(train_modes)
                total: float | torch.Tensor = 0.0
                count = 0
                for batch in train_loader:
                    x, y = _to(batch[0], dev), _to(batch[1], dev)
                    out = model(as_layout(x, use_cl))
                    value = loss_fn(out, y)
                    n = len(y)
                    if lazy:  # CUDA without per-step callbacks: no host sync; finiteness checked per epoch
                        total += value.detach().double() * n
                    else:  # one sync per step (cheap on the CPU), exact Python float sums
                        step_loss = float(value.detach())
                        if not math.isfinite(step_loss):
                            raise FloatingPointError(f"training loss became {step_loss} at epoch {epoch}")
                        total += step_loss * n
                    opt.zero_grad(set_to_none=True)
                    value.backward()
                    if grad_clip is not None:
                        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                    opt.step()
                    count += n
                    for cb in callbacks:
                        cb.on_batch_end(step_loss, out, y)
                total = float(total)
                if not math.isfinite(total):
                    raise FloatingPointError(f"training loss became {total} at epoch {epoch}")
                logs = {"train_loss": total / max(count, 1)}
                history.train_loss.append(logs["train_loss"])
                if val_loader is not None:
                    v = evaluate_loss(model, val_loader, select_fn, dev, channels_last=use_cl)
                    logs["val_loss"] = v
                    history.val_loss.append(v)
                    if history.best_val_loss is None or v < history.best_val_loss or math.isnan(history.best_val_loss):
                        history.best_val_loss, history.best_epoch = v, epoch
                        # an on-device copy (no host transfer); restored with load_state_dict at the end
                        best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
                        bad_epochs = 0
                    else:
                        bad_epochs += 1
                history.epochs_run = epoch + 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items()})
                # every callback sees every epoch, even when an earlier one asks to stop
                stop = any([bool(cb.on_epoch_end(epoch, logs)) for cb in callbacks])
                if patience is not None and bad_epochs >= patience:
                    stop = True
                if stop:
                    history.stopped_early = epoch + 1 < epochs
                    break
        finally:
            if bar is not None:
                bar.close()
            load_modes(saved_modes)
        if restore_best and best_state is not None:
            model.load_state_dict(best_state)
        history.seconds = time.perf_counter() - start
    return history
