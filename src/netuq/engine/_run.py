"""What every pass of ``compare`` shares: the options (typed) and one method's run.

:class:`Options` replaces an options dict: every argument of ``compare`` that steers a pass,
validated once. :class:`MethodRun` is one method being scored: its traits, predictor, members
and a ``stream`` that runs it over any loader the way every pass does (device, keys, seed,
progress, ranks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..detectors.features import FeatureTap, find_module
from ..traits import Traits, traits_of
from ._batches import as_predictor, method_device
from .predict import stream as _stream

__all__ = ["Options", "MethodRun"]


@dataclass(frozen=True)
class Options:
    """``compare``'s options, validated (see :func:`netuq.compare` for each)."""

    calibrators: tuple[str, ...]
    ignore_index: int | None
    n_bins: int
    seed: int
    device: torch.device | str | None
    progress: bool
    keys: Sequence[str]
    repeats: int
    max_pixels: int
    calibration_samples: int | None
    examples: int
    distributed: bool | None
    scores: tuple[str, ...] | None
    sections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    features: str | None = None

    def cap(self, task: str) -> int | None:
        """Rows a sample keeps: every row for classification, ``max_pixels`` for segmentation."""
        return None if task == "classification" else self.max_pixels

    def config(self) -> dict[str, Any]:
        """The options recorded in ``results["config"]``."""
        return {"calibrators": self.calibrators, "ignore_index": self.ignore_index, "n_bins": self.n_bins,
                "seed": self.seed, "repeats": self.repeats, "max_pixels": self.max_pixels,
                "calibration_samples": self.calibration_samples}


@dataclass
class MethodRun:
    """One method being scored by ``compare``."""

    name: str
    method: Any
    options: Options
    traits: Traits = field(init=False)
    predictor: Callable[[torch.Tensor], Any] = field(init=False)
    members: list[Callable] = field(init=False)
    device: Any = field(init=False)

    def __post_init__(self) -> None:
        where = f"methods[{self.name!r}]"
        self.traits = traits_of(self.method)
        self.predictor = as_predictor(self.method, seed=self.options.seed, name=where)
        layer = self.options.features
        network = None if layer is None else find_module(self.method, layer)
        if network is not None:  # the network's eval features for the feature scores: one more forward per batch
            self.predictor = FeatureTap(network, layer).wrap(self.predictor)
        own = getattr(self.method, "netuq_members", None)
        self.members = [as_predictor(m, name=f"{where}.members[{i}]") for i, m in enumerate(own())] \
            if callable(own) else []
        self.device = self.options.device if self.options.device is not None else method_device(self.method)

    @property
    def where(self) -> str:
        return f"methods[{self.name!r}]"

    def stream(self, loader: Iterable, name: str, *, members: bool = False, labels: str = "shape",
               anomaly: bool = False) -> Iterator[tuple[Any, Any, list]]:
        """``(batch, prediction, member predictions)`` per batch of ``loader`` (all on the CPU).

        ``labels`` / ``anomaly``: what the consumer reads of each batch, and so checks
        (:func:`netuq.engine.predict.stream`): "unused", "shape" or "classes" (scored labels).
        """
        o = self.options
        return _stream(self.method, loader, device=self.device, keys=o.keys, seed=o.seed, progress=o.progress,
                       name=name, predictor=self.predictor, members=self.members if members else (),
                       distributed=o.distributed, labels=labels, anomaly=anomaly, ignore_index=o.ignore_index)

    def labelled(self, loader: Iterable, name: str, why: str) -> Iterator[tuple[Any, torch.Tensor]]:
        """``(prediction, labels on the CPU)`` per batch; a batch without labels raises (``why``)."""
        for batch, pred, _ in self.stream(loader, name, labels="classes"):
            if batch.y is None:
                raise ValueError(f"`{name}` batch {batch.index} has no labels; {why}")
            yield pred, batch.y.cpu()
