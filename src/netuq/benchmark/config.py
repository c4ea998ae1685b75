"""Benchmark configuration: a frozen dataclass built from defaults, a TOML file and flags."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BenchmarkConfig", "METHODS", "load_config"]  # and CALIBRATORS (module __getattr__)

from ..calibration import registry
from ..data.vision import DEFAULT_DIRS
from .recipes import RECIPES

METHODS = tuple(RECIPES)  # one entry per recipe, in the report's order
TASKS = ("classification", "segmentation")
DATASETS = ("digits", "mnist", "fashionmnist", "cifar10")


@dataclass(frozen=True)
class BenchmarkConfig:
    """Everything that defines a benchmark run; stored with the results.

    Attributes:
        task: "classification" or "segmentation" (digit scenes).
        dataset: classification data: "digits" (embedded) or "mnist", "fashionmnist", "cifar10"
            read from ``data_dir`` (torchvision's folder layout; torchvision itself is optional).
        data_dir: folder of a real data set (``dataset`` other than "digits").
        max_train, max_test: stratified subsample of a real data set's train+validation / test images,
            to keep a CPU run short (None: all).
        methods: which methods to run, a subset of ``METHODS``.
        calibrators: post-hoc calibrations evaluated by the repeated 2-fold protocol.
        seed: the base seed: seed ``seed + i`` (i < ``seeds``) draws the data split, initialisation,
            training and sampling of the i-th independent repetition.
        seeds: number of independent repetitions (data split, training, sampling); the report shows
            mean ± sd over them and keeps every seed's numbers.
        patience: early stopping: stop a network's training after this many epochs without a lower
            validation loss (the best epoch's weights are kept); None trains every epoch.
        epochs: training epochs for each network (ensemble members included).
        width: channel width of the reference networks.
        mc_samples: MC dropout samples.
        het_samples: heteroscedastic samples in the training loss.
        het_predict_samples: heteroscedastic samples at prediction (and for checkpoint selection).
        members: ensemble members (= k of the stratified k-fold).
        cv_repeats: repeats of the 2-fold calibration protocol within each seed (default 1: the seeds
            repeat the whole run; the regularised vector / matrix fits cost ~1 s each).
        n_bins: ECE bins.
        severities: corruption severities evaluated (1..5).
        n_ood: number of out-of-distribution images.
        n_scenes: number of digit scenes (segmentation).
        scene_size: scene height and width (segmentation).
        calibration_pixels: segmentation only: each calibrator of the 2-fold protocol is fitted on a
            seeded subsample of at most this many valid pixels of its half (scored on every pixel).
        device: torch device string.
        quick: a tiny run for smoke tests.
    """

    task: str = "classification"
    dataset: str = "digits"
    data_dir: str | None = None
    max_train: int | None = 10000
    max_test: int | None = 2000
    methods: tuple[str, ...] = METHODS
    calibrators: tuple[str, ...] = field(default_factory=registry.names)  # read when a config is made
    seed: int = 0
    seeds: int = 3
    epochs: int = 30
    patience: int | None = None
    width: int = 16
    batch_size: int = 64
    lr: float = 3e-3
    mc_samples: int = 50
    het_samples: int = 25
    het_predict_samples: int = 100
    members: int = 5
    cv_repeats: int = 1
    n_bins: int = 15
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    n_ood: int = 500
    n_scenes: int = 1200
    scene_size: int = 32
    calibration_pixels: int = 20000
    device: str = "cpu"
    quick: bool = False

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"`task` must be one of {TASKS}, got {self.task!r}")
        if self.dataset not in DATASETS:
            raise ValueError(f"`dataset` must be one of {DATASETS}, got {self.dataset!r}")
        if self.dataset != "digits" and self.task != "classification":
            raise ValueError(f"`dataset` {self.dataset!r} is a classification data set, got task={self.task!r}")
        if self.dataset != "digits" and not self.data_dir and not _default_dir(self.dataset):
            looked = DEFAULT_DIRS.get(self.dataset, ())
            known = f" (looked in {', '.join(map(str, looked))})" if looked else ""
            raise ValueError(f"`data_dir` must name the folder holding {self.dataset!r} (torchvision layout), "
                             f"got none{known}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"`seed` must be a non-negative integer, got {self.seed!r}")
        if self.patience is not None and (isinstance(self.patience, bool) or not isinstance(self.patience, int)
                                          or self.patience < 1):
            raise ValueError(f"`patience` must be a positive integer or None, got {self.patience!r}")
        for name in ("max_train", "max_test"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 10):
                raise ValueError(f"`{name}` must be an integer >= 10 or None, got {value!r}")
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ValueError(f"`methods` must be a non-empty subset of {METHODS}, got {list(self.methods)}")
        known = registry.names()
        badc = [c for c in self.calibrators if c not in known]
        if badc:
            raise ValueError(f"`calibrators` must be a subset of {known}, got {list(self.calibrators)}")
        for name in ("seeds", "epochs", "width", "batch_size", "mc_samples", "het_samples", "het_predict_samples",
                     "cv_repeats", "n_bins", "n_ood", "calibration_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
        if self.members < 2:
            raise ValueError(f"`members` must be at least 2, got {self.members!r}")
        if any(s not in (1, 2, 3, 4, 5) for s in self.severities):
            raise ValueError(f"`severities` must be values in 1..5, got {list(self.severities)}")
        if self.scene_size % 4:
            raise ValueError(f"`scene_size` must be divisible by 4, got {self.scene_size}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def replace(self, **changes: Any) -> BenchmarkConfig:
        return dataclasses.replace(self, **changes)

    @property
    def seed_list(self) -> tuple[int, ...]:
        """The seeds of the run: ``seed, seed + 1, ..., seed + seeds - 1``."""
        return tuple(range(self.seed, self.seed + self.seeds))

    def for_seed(self, seed: int) -> BenchmarkConfig:
        """The one-seed configuration of repetition ``seed`` (what each seed's results store)."""
        return dataclasses.replace(self, seed=seed, seeds=1)


def __getattr__(name: str) -> Any:
    """``CALIBRATORS``: "none" plus netuq.calibration's registry, read at each access."""
    if name == "CALIBRATORS":
        return registry.names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _default_dir(dataset: str) -> Path | None:
    return next((d for d in DEFAULT_DIRS.get(dataset, ()) if d.is_dir()), None)


# Smoke test (< 30 s): tiny sizes, one seed, and only the closed-form-cheap calibrators (the
# regularised vector / matrix scalings choose their penalty by inner cross-validation, ~1 s per fit).
QUICK = {
    "classification": {"epochs": 3, "mc_samples": 8, "het_samples": 8, "het_predict_samples": 16, "members": 2,
                       "cv_repeats": 1, "severities": (1, 5), "n_ood": 100, "width": 8, "seeds": 1,
                       "max_train": 600, "max_test": 300, "patience": None, "calibrators": ("none", "temperature")},
    "segmentation": {"epochs": 2, "mc_samples": 4, "het_samples": 4, "het_predict_samples": 8, "members": 2,
                     "cv_repeats": 1, "severities": (1, 5), "n_ood": 50, "n_scenes": 96, "width": 8, "seeds": 1,
                     "calibrators": ("none", "temperature")},
}
# Sized for < 5 minutes on 2 CPU cores: fewer scenes, samples and severities than classification.
SEGMENTATION_DEFAULTS = {"epochs": 14, "batch_size": 16, "mc_samples": 8, "het_samples": 8, "het_predict_samples": 16,
                         "members": 3, "cv_repeats": 2, "n_scenes": 640, "severities": (1, 3, 5),
                         "calibration_pixels": 5000, "seeds": 1}

# Fashion-MNIST on 2 CPU cores: one seed (9 trained networks) in < 10 minutes, three in < 30. The
# shifted test sets (4 kinds x severities x max_test images) dominate the evaluation: severities
# 1, 3, 5 span the range at 3/5 of the cost.
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "fashionmnist": {"max_train": 5000, "max_test": 1500, "epochs": 12, "patience": 3, "cv_repeats": 1,
                     "mc_samples": 30, "het_predict_samples": 50, "severities": (1, 3, 5)},
}


def _read_toml(path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError as err:
        raise ValueError(f"`--config` file {path} does not exist") from err
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"`--config` file {path} is not valid TOML: {err}") from err
    data = data.get("benchmark", data)
    fields = {f.name for f in dataclasses.fields(BenchmarkConfig)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ValueError(f"`--config` file {path} has unknown keys {unknown}; known keys: {sorted(fields)}")
    return data


def load_config(path: str | Path | None = None, **overrides: Any) -> BenchmarkConfig:
    """Defaults, then the TOML file (a ``[benchmark]`` table or top-level keys), then ``overrides``.

    ``quick=True`` shrinks the run to a smoke test (one seed); ``task="segmentation"`` (one seed)
    and ``dataset="fashionmnist"`` (:data:`DATASET_DEFAULTS`: subsamples, fewer epochs with early
    stopping) apply their own defaults unless the file or the overrides set the value.

    Example:
        >>> load_config(task="classification", quick=True).members
        2
    """
    values: dict[str, Any] = {}
    if path is not None:
        values.update(_read_toml(Path(path)))
    values.update({k: v for k, v in overrides.items() if v is not None})
    task = values.get("task", "classification")
    base: dict[str, Any] = {}
    if task == "segmentation":
        base.update(SEGMENTATION_DEFAULTS)
    base.update(DATASET_DEFAULTS.get(values.get("dataset", "digits"), {}))
    if values.get("quick"):
        base.update(QUICK.get(task, QUICK["classification"]))
    base.update(values)
    for key in ("methods", "calibrators", "severities"):
        if key in base and isinstance(base[key], (list, str)):
            base[key] = tuple(base[key].split(",")) if isinstance(base[key], str) else tuple(base[key])
    try:
        return BenchmarkConfig(**base)
    except TypeError as err:
        raise ValueError(f"bad benchmark configuration: {err}") from err
