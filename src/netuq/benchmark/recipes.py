"""How the benchmark builds, trains and wraps each method: one small recipe per method.

:data:`RECIPES` is the one map of benchmark methods (name -> :class:`Recipe`: build function,
scores it offers, whether its samples have an epistemic part, display label); ``METHODS`` is
derived from it, so adding a method touches this module (plus its tests) only.

Each recipe returns a *predictor* that :func:`netuq.compare` takes: a netuq method or a callable
``x -> netuq.Prediction`` on a batch of inputs.
The deterministic network is trained once and shared by the deterministic baseline and MC dropout
(they differ only at prediction time); TTA gets its own network, trained with the augmentations it
averages at test time (Wang et al. 2019). Weights are cached in the run folder so an
interrupted run does not retrain them. The ensemble keeps its members in the run folder too and
resumes member by member.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._files import atomic_write
from ..models import SmallCNN, SmallUNet
from ..prediction import Prediction
from ..scores import offered
from ..training import fit
from ..traits import Traits, family_label, with_traits

# The recipes take a ``netuq.benchmark.config.BenchmarkConfig``; config.py imports this module (for
# METHODS), so the type is not imported here (no import circle).
BenchmarkConfig = Any

__all__ = ["RECIPES", "Recipe", "IGNORE", "make_network", "train_base", "train_augmented", "tta_transforms",
           "augmenting_loader", "method_notes", "pooling_grid", "save_weights", "load_weights"]

#: dropout of the reference networks (the method notes say these numbers)
CNN_DROPOUT, UNET_DROPOUT = 0.3, 0.1

Predictor = Callable[[torch.Tensor], Prediction]

IGNORE = 255


def save_weights(state: dict, path: Path) -> None:
    """``torch.save`` through :func:`netuq._files.atomic_write` (no half-written checkpoint on a crash)."""
    atomic_write(path, lambda fh: torch.save(state, fh))


def load_weights(model: nn.Module, path: Path) -> None:
    """Load a checkpoint written by :func:`save_weights` (``weights_only``); any failure names the file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as err:  # unpickling, truncated file, wrong keys or shapes
        raise ValueError(
            f"model checkpoint {path} cannot be loaded ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
            "delete it (or the run folder) to retrain"
        ) from err


def make_network(config: BenchmarkConfig, num_classes: int, in_channels: int = 1) -> nn.Module:
    """The reference network of the task: SmallCNN (classification) or SmallUNet (digit scenes)."""
    if config.task == "segmentation":
        return SmallUNet(in_channels, num_classes, width=config.width, dropout=UNET_DROPOUT)
    return SmallCNN(in_channels, num_classes, width=config.width, dropout=CNN_DROPOUT, grid=pooling_grid(config))


def pooling_grid(config: BenchmarkConfig) -> int:
    """SmallCNN's final pooling grid: global average pooling on 8 × 8 digits; a 4 × 4 grid of region
    averages on the 28 × 28 / 32 × 32 data sets, whose classes differ by shape (global pooling keeps
    Fashion-MNIST at ~0.75 accuracy, the grid reaches ~0.86)."""
    return 1 if config.dataset == "digits" else 4


def _loss(config: BenchmarkConfig):
    if config.task == "segmentation":
        return lambda out, y: nn.functional.cross_entropy(out, y, ignore_index=IGNORE)
    return nn.functional.cross_entropy


def _fit_kwargs(config: BenchmarkConfig, seed_offset: int = 0) -> dict:
    return {
        "epochs": config.epochs,
        "lr": config.lr,
        "batch_size": config.batch_size,
        "device": config.device,
        "seed": config.seed + seed_offset,
        "patience": config.patience,
    }


def train_base(config: BenchmarkConfig, data, cache: Path) -> nn.Module:
    """Train (or load from ``cache``) the deterministic network shared by three methods."""
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        model = make_network(config, data.num_classes, data.in_channels)
    if cache.exists():
        load_weights(model, cache)
    else:
        fit(model, data.train, val_data=data.val, loss=_loss(config), **_fit_kwargs(config))
        save_weights(model.state_dict(), cache)
    return model.to(config.device).eval()


def deterministic(model: nn.Module) -> Predictor:
    def predict(x: torch.Tensor) -> Prediction:
        with torch.no_grad():
            return Prediction.from_logits(model(x))

    return with_traits(predict, RECIPES["deterministic"].traits)


def mc_dropout(model: nn.Module, config: BenchmarkConfig) -> Predictor:
    from ..methods.mc_dropout import MCDropout

    if config.task == "classification":
        # SmallCNN's dropout sits before the classifier: run the `features` trunk once, not S times.
        return MCDropout(model, samples=config.mc_samples, seed=config.seed, trunk="features", head="head")
    return MCDropout(model, samples=config.mc_samples, seed=config.seed)


def tta_transforms(config: BenchmarkConfig):
    """The TTA views of the task (:class:`netuq.tta.Compose`), used at training and at test time."""
    from .. import tta as T

    if config.task == "segmentation":
        return T.Compose([T.HorizontalFlip(), T.Shift([(2, 2), (-2, -2)])])
    if config.dataset == "fashionmnist":
        # Clothes are left-right symmetric classes: flips, as Wang et al. and Ashukha et al. use on images.
        return T.Compose([T.HorizontalFlip(), T.Shift([(0, 1), (1, 0), (0, -1), (-1, 0)], mode="zeros")])
    # 8x8 digits are not flip-invariant; one-pixel translations and contrast changes are.
    return T.Compose([T.Shift([(0, 1), (1, 0), (0, -1), (-1, 0)], mode="zeros"), T.Multiply([0.9, 1.1])])


def augmenting_loader(data: tuple[torch.Tensor, torch.Tensor], transforms, *, batch_size: int, seed: int,
                      segmentation: bool = False) -> torch.utils.data.DataLoader:
    """Shuffled training batches in which each image is replaced by one of ``transforms``' views drawn
    uniformly at random (the identity included), reproducibly from ``seed``.

    Segmentation labels (N, H, W) get the same view as their image; that needs views that only move
    pixels (flips, circular shifts).
    """
    from torch.utils.data import DataLoader, TensorDataset

    from .. import tta as T

    views = list(transforms)
    moves = (T.HorizontalFlip, T.VerticalFlip, T.Rotate90)
    if segmentation and not all(isinstance(t, moves) or (isinstance(t, T.Shift) and t.mode == "circular")
                                for t in transforms.transforms):
        raise ValueError("segmentation training augmentations must only move pixels (flips, 90° rotations, "
                         f"circular shifts), got {[type(t).__name__ for t in transforms.transforms]}")
    gen = torch.Generator().manual_seed(seed)
    pick = torch.Generator().manual_seed(seed + 1)

    def collate(items):
        x = torch.stack([it[0] for it in items])
        y = torch.stack([it[1] for it in items])
        which = torch.randint(len(views), (len(x),), generator=pick)
        x_out, y_out = x.clone(), y.clone()
        for v in which.unique().tolist():
            mask = which == v
            x_out[mask] = views[v].augment(x[mask])
            if segmentation:
                y_out[mask] = views[v].augment(y[mask].unsqueeze(1)).squeeze(1)
        return x_out, y_out

    return DataLoader(TensorDataset(*data), batch_size=batch_size, shuffle=True, generator=gen, collate_fn=collate)


def train_augmented(config: BenchmarkConfig, data, cache: Path) -> nn.Module:
    """Train (or load from ``cache``) TTA's network: as the deterministic one, on augmented batches."""
    with torch.random.fork_rng():
        torch.manual_seed(config.seed + 3)
        model = make_network(config, data.num_classes, data.in_channels)
    if cache.exists():
        load_weights(model, cache)
    else:
        kwargs = _fit_kwargs(config, 3)
        loader = augmenting_loader(tuple(data.train), tta_transforms(config), batch_size=kwargs.pop("batch_size"),
                                   seed=kwargs["seed"], segmentation=config.task == "segmentation")
        fit(model, loader, val_data=data.val, loss=_loss(config), **kwargs)
        save_weights(model.state_dict(), cache)
    return model.to(config.device).eval()


def tta(model: nn.Module, config: BenchmarkConfig) -> Predictor:
    from ..methods.tta import TTA

    return TTA(model, tta_transforms(config), task=config.task)


def ensemble(config: BenchmarkConfig, data, folder: Path) -> Predictor:
    """Deep ensemble: stratified k-fold over the training set, one member per fold.

    Each member keeps the checkpoint with the lowest NLL on its own held-out fold; the
    validation set stays unseen, as for every other method, so post-hoc calibration fitted on it
    is honest.
    """
    from ..methods.ensemble import train_ensemble

    strata = data.train_strata if config.task == "segmentation" else None
    kwargs = _fit_kwargs(config)
    seed = kwargs.pop("seed")
    device = kwargs.pop("device")
    ens = train_ensemble(
        lambda: make_network(config, data.num_classes, data.in_channels),
        tuple(data.train),
        members=config.members,
        split="kfold",
        labels=strata,
        checkpoint_dir=folder,
        seed=seed,
        device=device,
        loss=_loss(config),
        **kwargs,
    )
    return ens


class _HeadNet(nn.Module):
    """A reference network's ``embed`` trunk followed by one or two heads."""

    def __init__(self, body: nn.Module, *heads: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.heads = nn.ModuleList(heads)

    def forward(self, x: torch.Tensor):
        feats = self.body.embed(x)
        outs = [h(feats) for h in self.heads]
        if len(outs) == 1:
            return outs[0]
        flat = []
        for o in outs:
            flat.extend(o if isinstance(o, tuple) else (o,))
        return tuple(flat)


def heteroscedastic(config: BenchmarkConfig, data, cache: Path) -> Predictor:
    """Kendall & Gal (2017) head trained with the MC-sampled softmax loss."""
    from ..methods.heteroscedastic import (
        HeteroscedasticHead,
        heteroscedastic_loss,
        heteroscedastic_nll,
        heteroscedastic_predict,
    )

    spatial = config.task == "segmentation"
    with torch.random.fork_rng():
        torch.manual_seed(config.seed + 1)
        body = make_network(config, data.num_classes, data.in_channels)
        net = _HeadNet(body, HeteroscedasticHead(body.feature_dim, data.num_classes, spatial=spatial))
    ignore = IGNORE if spatial else None
    if cache.exists():
        load_weights(net, cache)
    else:

        def loss(out, y):
            mu, sigma = out
            return heteroscedastic_loss(mu, sigma, y, samples=config.het_samples, ignore_index=ignore)

        def val_loss(out, y):
            # Select the checkpoint on the NLL of the predictive mean that is reported, not of mu alone.
            mu, sigma = out
            return heteroscedastic_nll(mu, sigma, y, samples=config.het_predict_samples, seed=config.seed,
                                       ignore_index=ignore)

        fit(net, data.train, val_data=data.val, loss=loss, val_loss=val_loss, **_fit_kwargs(config, 1))
        save_weights(net.state_dict(), cache)
    net.to(config.device).eval()
    gen = torch.Generator(device=config.device)
    gen.manual_seed(config.seed)  # seeded once: fresh noise for every batch, reproducible per run

    def predict(x: torch.Tensor) -> Prediction:
        with torch.no_grad():
            mu, sigma = net(x)
            return heteroscedastic_predict(mu, sigma, samples=config.het_predict_samples, generator=gen)

    # logit noise: the samples' disagreement is aleatoric (Kendall & Gal 2017)
    return with_traits(predict, RECIPES["heteroscedastic"].traits)


def confidence(config: BenchmarkConfig, data, cache: Path) -> Predictor:
    """DeVries & Taylor (2018) learned confidence with the hint budget.

    The "confidence" score (1 − c) is c of the input perturbed by ε = ``DEVRIES_TAYLOR_EPSILON``
    toward higher confidence (their OOD detector; probabilities come from the unperturbed input).
    """
    from ..methods.confidence import (
        DEVRIES_TAYLOR_EPSILON,
        ConfidenceBudget,
        ConfidenceHead,
        confidence_model_predict,
    )

    spatial = config.task == "segmentation"
    with torch.random.fork_rng():
        torch.manual_seed(config.seed + 2)
        body = make_network(config, data.num_classes, data.in_channels)
        width, classes = body.feature_dim, data.num_classes
        classifier = nn.Conv2d(width, classes, 1) if spatial else nn.Linear(width, classes)
        net = _HeadNet(body, classifier, ConfidenceHead(width, spatial=spatial))
    ignore = IGNORE if spatial else None
    if cache.exists():
        load_weights(net, cache)
    else:
        budget = ConfidenceBudget(beta=0.3, lmbda=0.1, ignore_index=ignore)
        fit(net, data.train, val_data=data.val, loss=budget.loss, val_loss=budget.val_loss, callbacks=[budget],
            **_fit_kwargs(config, 2))
        save_weights(net.state_dict(), cache)
    net.to(config.device).eval()

    def predict(x: torch.Tensor) -> Prediction:
        return confidence_model_predict(net, x, epsilon=DEVRIES_TAYLOR_EPSILON)

    return with_traits(predict, RECIPES["confidence"].traits)


@dataclass(frozen=True)
class Recipe:
    """One benchmark method.

    Attributes:
        build: ``(config, data, models_dir, base) -> predictor``; ``base()`` returns the shared
            deterministic network (trained on first use, cached in ``models_dir / "base.pt"``).
            TTA trains its own (``models_dir / "tta.pt"``).
        traits: the method's :class:`netuq.traits.Traits` (family, epistemic, ...); the recipe's
            key is its family name, whose label the report shows.
        sampled: whether its predictions hold several samples (S > 1).
        provides: what its predictions carry beyond probabilities, as score needs
            (``"score:sigma"``, ``"logits"``, ...; see :mod:`netuq.scores`).
    """

    build: Callable[[Any, Any, Path, Callable[[], nn.Module]], Any]
    traits: Traits
    sampled: bool = False
    provides: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """Display name in the report (the family's, :data:`netuq.traits.FAMILIES`)."""
        return family_label(self.traits.family)

    @property
    def epistemic(self) -> bool:
        """Whether its samples carry an epistemic part (mutual information is reported)."""
        return self.traits.epistemic

    @property
    def scores(self) -> tuple[str, ...]:
        """The uncertainty scores its predictions offer, read from :data:`netuq.scores.SCORES` now."""
        return offered(samples=self.sampled, epistemic=self.epistemic, provides=self.provides)


RECIPES: dict[str, Recipe] = {
    "deterministic": Recipe(lambda c, d, m, base: deterministic(base()), Traits("deterministic", epistemic=False),
                            provides=("logits",)),
    "mc_dropout": Recipe(lambda c, d, m, base: mc_dropout(base(), c), Traits("mc_dropout"), sampled=True,
                         provides=("logits",)),
    "ensemble": Recipe(lambda c, d, m, base: ensemble(c, d, m / "ensemble"), Traits("ensemble"), sampled=True,
                       provides=("logits",)),
    "tta": Recipe(lambda c, d, m, base: tta(train_augmented(c, d, m / "tta.pt"), c), Traits("tta"), sampled=True),
    "heteroscedastic": Recipe(lambda c, d, m, base: heteroscedastic(c, d, m / "heteroscedastic.pt"),
                              Traits("heteroscedastic", epistemic=False, seeded=True), sampled=True,
                              provides=("score:sigma", "logits")),
    "confidence": Recipe(lambda c, d, m, base: confidence(c, d, m / "confidence.pt"),
                         Traits("confidence", epistemic=False), provides=("score:confidence", "logits")),
}


def method_notes(config: BenchmarkConfig) -> list[str]:
    """How the run sized and configured its methods, in words (``results["notes"]``, shown by the report)."""
    from ..methods.confidence import DEVRIES_TAYLOR_EPSILON

    stop = f", early stopping after {config.patience} epochs without a lower validation loss" if config.patience else ""
    sub = ""
    if config.dataset != "digits" and config.task == "classification":
        sub = f"; train+validation subsample {config.max_train or 'all'}, test subsample {config.max_test or 'all'}"
    seeds = ", ".join(map(str, config.seed_list))
    notes = [
        f"Sizes: {config.seeds} seed{'s' if config.seeds > 1 else ''} ({seeds}), each with its own data split, "
        f"training and sampling; {config.epochs} epochs per network{stop} (the epoch with the lowest validation "
        f"loss is kept){sub}; calibration by 2-fold cross-validation on the test set within each seed, "
        + ("once (2 folds)." if config.cv_repeats == 1 else f"repeated {config.cv_repeats} times "
                                                             f"({2 * config.cv_repeats} folds)."),
    ]
    if config.task == "classification":
        grid = pooling_grid(config)
        pool = "global average pooling" if grid == 1 else f"average pooling over a {grid} × {grid} grid"
        notes.append(f"Networks: SmallCNN of width {config.width} (three 3 × 3 conv blocks, {pool}, "
                     f"dropout p = {CNN_DROPOUT:g}, linear), Adam lr {config.lr:g}, batch {config.batch_size}.")
    else:
        notes.append(f"Networks: SmallUNet of width {config.width} (two levels, Dropout2d p = {UNET_DROPOUT:g} in "
                     f"every block), Adam lr {config.lr:g}, batch {config.batch_size}.")
    m = set(config.methods)
    if "tta" in m:
        notes.append(f"TTA: its network is trained with the augmentations it averages at test time "
                     f"({len(tta_transforms(config))} views: {_views_words(config)}; each training image replaced "
                     "by a view drawn at random), as Wang et al. 2019 do; not the deterministic baseline's network.")
    if "ensemble" in m:
        notes.append(f"Deep ensemble: {config.members} members, each trained on a different fold of a stratified "
                     f"{config.members}-fold split of the training set (checkpoint chosen on its own held-out fold); "
                     "no adversarial training (Lakshminarayanan et al. 2017 find it optional).")
    if "confidence" in m:
        notes.append(f"Learned confidence (DeVries & Taylor 2018): hint budget β = 0.3; the score 1 − c is computed "
                     f"on the input perturbed by ε = {DEVRIES_TAYLOR_EPSILON:g} toward higher confidence (their OOD "
                     "detector, ε of their code; class probabilities from the unperturbed input); cutout was not "
                     "used.")
    if "heteroscedastic" in m:
        notes.append("Heteroscedastic head (Kendall & Gal 2017): σ models aleatoric noise, so it is reported but not "
                     "ranked as an OOD detector.")
    if "mc_dropout" in m:
        where = (f"of the dropout layer before the classifier (p = {CNN_DROPOUT:g})"
                 if config.task == "classification" else
                 f"of the U-Net's Dropout2d layers (p = {UNET_DROPOUT:g} in every block)")
        notes.append(f"MC dropout (Gal & Ghahramani 2016): {config.mc_samples} samples {where}.")
    cals = [c for c in config.calibrators if c != "none"]
    if {"vector", "matrix"} & set(cals):
        notes.append("Calibrators as netuq.calibration.CALIBRATORS recommends: vector scaling with an L2 penalty "
                     "toward the temperature solution, matrix scaling with ODIR (Kull et al. 2019), penalties "
                     "chosen by inner cross-validation on the fit half; temperature scaling bounded to "
                     "[0.01, 100] with error-free halves fitted to Laplace-smoothed targets.")
    return notes


def _views_words(config: BenchmarkConfig) -> str:
    words = {"HorizontalFlip": "horizontal flip", "Shift": "shifts", "Multiply": "contrast ×"}
    parts = []
    for t in tta_transforms(config).transforms:
        name = type(t).__name__
        params = [p for p in t.params if p != t.identity]
        parts.append(f"{words.get(name, name)} {', '.join(map(str, params))}" if name != "HorizontalFlip"
                     else words[name])
    return "; ".join(parts) + " and their combinations, identity included"
