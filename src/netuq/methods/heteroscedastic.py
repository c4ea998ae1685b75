"""Heteroscedastic (aleatoric) classification: a (μ, σ) head and the MC-sampled softmax loss.

Kendall & Gal, "What Uncertainties Do We Need in Bayesian Deep Learning for Computer Vision?",
NeurIPS 2017, §3.3: the network predicts mean logits μ and a scale σ; logits are corrupted with
Gaussian noise ``u_s = μ + σ ⊙ ε_s`` (ε_s ~ N(0, I), independent per sample, example, class and
pixel, reparameterised so gradients reach σ) and the loss is the negative log of the Monte Carlo
predictive probability of the label,

    L = −log (1/S) Σ_s softmax(u_s / τ)_y = log S − logsumexp_s log_softmax(u_s / τ)_y,

with τ = 1 as in Kendall & Gal (Collier et al. 2021 use τ ≈ 1.3–1.5). σ, averaged over classes,
is an aleatoric uncertainty map.

Noise contract (what ``generator`` fixes): one integer ``seed`` is drawn with
``torch.randint(0, 2**62, (1,), generator=generator, device=generator.device)`` (the global RNG
when ``generator`` is None); chunk ``i`` of ``k`` samples uses
``torch.randn((k, *mu.shape), generator=torch.Generator(mu.device).manual_seed(seed + i))``
in the compute dtype. Chunks keep memory bounded: S × N × C × H × W is never materialised, and
during training each chunk is recomputed in the backward pass (activation checkpointing) when
there is more than one chunk.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .._checks import _check_finite, _check_float, check_ignore_index, check_labels, check_log_values, float_dtype
from .._checks import check_positive_int as _check_positive_int
from .._modes import eval_mode
from .._random import generator as _generator
from ..prediction import Prediction
from ..traits import Traits

__all__ = [
    "HeteroscedasticHead",
    "HeteroscedasticOutput",
    "HeteroscedasticClassifier",
    "heteroscedastic_loss",
    "heteroscedastic_nll",
    "heteroscedastic_predict",
]

#: Elements of one noise chunk (k × N × C × ...) above which samples are split into chunks.
CHUNK_ELEMENTS = 2**22
_REDUCTIONS = ("mean", "sum", "none")


class HeteroscedasticOutput(NamedTuple):
    """What a heteroscedastic head returns: mean logits ``mu`` and scale ``sigma``, both (N, C, ...)."""

    mu: torch.Tensor
    sigma: torch.Tensor


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class HeteroscedasticHead(nn.Module):
    """Mean-logit and scale head: features → (μ, σ) with σ = softplus(s) + ``min_scale``.

    Kendall & Gal 2017, §3.3; the floor follows Google's edward2 (1e-3). The scale branch starts
    with zero weights and a bias giving σ = ``init_scale`` everywhere, so training starts close
    to a plain softmax classifier and σ grows where the labels are noisy.

    Shapes: (N, F) → (N, C), (N, C); with ``spatial=True`` a 1×1-convolution head,
    (N, F, H, W) → (N, C, H, W), (N, C, H, W).

    Args:
        in_features: feature channels F.
        num_classes: classes C.
        spatial: per-pixel head for segmentation feature maps.
        min_scale: floor added to σ (> 0).
        init_scale: σ at initialisation (> ``min_scale``).

    Example:
        >>> head = HeteroscedasticHead(8, 3)
        >>> mu, sigma = head(torch.randn(4, 8))
        >>> mu.shape, sigma.shape, bool((sigma - 0.1).abs().max() < 1e-6)
        (torch.Size([4, 3]), torch.Size([4, 3]), True)
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        spatial: bool = False,
        min_scale: float = 1e-3,
        init_scale: float = 0.1,
    ) -> None:
        super().__init__()
        in_features = _check_positive_int(in_features, "in_features")
        num_classes = _check_positive_int(num_classes, "num_classes")
        if num_classes < 2:
            raise ValueError(f"`num_classes` must be at least 2, got {num_classes}")
        if not min_scale > 0:
            raise ValueError(f"`min_scale` must be > 0, got {min_scale!r}")
        if not init_scale > min_scale:
            raise ValueError(f"`init_scale` must be > min_scale={min_scale}, got {init_scale!r}")
        self.spatial = bool(spatial)
        self.min_scale = float(min_scale)

        def layer() -> nn.Module:
            return nn.Conv2d(in_features, num_classes, 1) if self.spatial else nn.Linear(in_features, num_classes)

        self.loc = layer()
        self.scale = layer()
        nn.init.zeros_(self.scale.weight)
        nn.init.constant_(self.scale.bias, _inverse_softplus(init_scale - min_scale))

    def forward(self, features: torch.Tensor) -> HeteroscedasticOutput:
        want = 4 if self.spatial else 2
        if features.ndim != want:
            shape = "(N, F, H, W)" if self.spatial else "(N, F)"
            raise ValueError(f"`features` must have shape {shape}, got shape {tuple(features.shape)}")
        return HeteroscedasticOutput(self.loc(features), F.softplus(self.scale(features)) + self.min_scale)


# ---------------------------------------------------------------------------------------------- checks
def _check_temperature(temperature: float) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"`temperature` must be a positive number, got {temperature!r}")
    return float(temperature)


def _check_mu_sigma(mu: torch.Tensor, sigma: torch.Tensor, validate_args: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(mu, torch.Tensor) or not isinstance(sigma, torch.Tensor):
        bad = "mu" if not isinstance(mu, torch.Tensor) else "sigma"
        raise TypeError(f"`{bad}` must be a tensor, got {type(mu if bad == 'mu' else sigma).__name__}")
    if validate_args:
        mu = check_log_values(mu, "mu")
        _check_float(sigma, "sigma")
    full = tuple(mu.shape)
    single = (full[0], 1, *full[2:])
    if tuple(sigma.shape) not in (full, single):
        raise ValueError(
            f"`sigma` must have shape (N, C, ...) = {full} or (N, 1, ...) = {single} like `mu`, "
            f"got shape {tuple(sigma.shape)}"
        )
    if validate_args:
        _check_finite(sigma, "sigma")
        lo = float(sigma.detach().min())
        if lo < 0:
            raise ValueError(f"`sigma` must be non-negative, got values down to {lo:.4g}")
    dtype = float_dtype(mu)
    return mu.to(dtype), sigma.to(dtype)


def _chunks(samples: int, numel: int, chunk: int | None) -> list[int]:
    k = _check_positive_int(chunk, "chunk") if chunk is not None else max(1, CHUNK_ELEMENTS // max(numel, 1))
    k = min(k, samples)
    return [k] * (samples // k) + ([samples % k] if samples % k else [])


def _draw_seed(generator: torch.Generator | None) -> int:
    if generator is None:
        return int(torch.randint(0, 2**62, (1,)))
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"`generator` must be a torch.Generator or None, got {type(generator).__name__}")
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))


def _noise(seed: int, index: int, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    g = _generator(seed + index, like.device)
    return torch.randn(shape, generator=g, dtype=like.dtype, device=like.device)


def _target_logsumexp(
    mu: torch.Tensor, sigma: torch.Tensor, target: torch.Tensor, seed: int, index: int, k: int, tau: float
) -> torch.Tensor:
    """logsumexp over k noise draws of log_softmax(u_s / τ)_y → (N, ...); target is (N, 1, ...)."""
    u = (mu + sigma * _noise(seed, index, (k, *mu.shape), mu)) / tau  # (k, N, C, ...)
    u_y = u.gather(2, target.unsqueeze(0).expand(k, *target.shape)).squeeze(2)
    return torch.logsumexp(u_y - torch.logsumexp(u, dim=2), dim=0)


# ---------------------------------------------------------------------------------------------- loss
def heteroscedastic_loss(
    mu: torch.Tensor,
    sigma: torch.Tensor,
    labels: torch.Tensor,
    *,
    samples: int = 20,
    temperature: float = 1.0,
    ignore_index: int | None = None,
    generator: torch.Generator | None = None,
    reduction: str = "mean",
    chunk: int | None = None,
    validate_args: bool = True,
) -> torch.Tensor:
    """MC heteroscedastic softmax loss ``log S − logsumexp_s log_softmax((μ + σ ⊙ ε_s)/τ)_y``.

    Kendall & Gal 2017, §3.3 (eq. 12, in log space). The noise ε_s is independent per sample,
    example, class and pixel (see the module docstring for the exact draws); the loss is the
    negative log of the Monte Carlo predictive probability, not the mean of per-sample
    cross-entropies (that is a looser bound by Jensen's inequality). σ = 0 gives cross-entropy.

    Args:
        mu: (N, C) or (N, C, H, W) mean logits.
        sigma: scales, (N, C, ...) like ``mu`` or (N, 1, ...) (one scale per example/pixel), ≥ 0.
        labels: (N,) or (N, H, W) integer labels.
        samples: S noise draws (training: 10–100).
        temperature: τ > 0 applied to the noisy logits.
        ignore_index: label whose pixels drop out of the loss.
        generator: fixes the noise (any device); None uses the global RNG.
        reduction: ``"mean"`` over non-ignored elements, ``"sum"``, or ``"none"`` for the
            (N, ...) per-element losses (0 where ignored).
        chunk: samples per chunk; default keeps a chunk under ``CHUNK_ELEMENTS`` elements.
        validate_args: check shapes, finiteness and label range.

    Returns:
        The loss in float32 (float64 for float64 inputs): a scalar, or (N, ...) with
        ``reduction="none"``.

    Example:
        >>> mu, sigma = torch.tensor([[2.0, 0.0]]), torch.zeros(1, 2)
        >>> heteroscedastic_loss(mu, sigma, torch.tensor([0]), samples=5)  # σ = 0: cross-entropy
        tensor(0.1269)
    """
    samples = _check_positive_int(samples, "samples")
    tau = _check_temperature(temperature)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"`reduction` must be one of {list(_REDUCTIONS)}, got {reduction!r}")
    mu, sigma = _check_mu_sigma(mu, sigma, validate_args)
    expected = mu.shape[:1] + mu.shape[2:]
    if validate_args:
        labels = check_labels(labels, mu.shape[1], expected, ignore_index=ignore_index, probs_name="mu")
    labels = labels.to(mu.device)
    check_ignore_index(ignore_index, labels.dtype)  # even unvalidated: `labels != ignore_index` must not wrap
    valid = None if ignore_index is None else labels != ignore_index
    target = (labels if valid is None else labels.masked_fill(~valid, 0)).long().unsqueeze(1)  # (N, 1, ...)

    sizes = _chunks(samples, mu.numel(), chunk)
    seed = _draw_seed(generator)
    use_checkpoint = len(sizes) > 1 and torch.is_grad_enabled() and (mu.requires_grad or sigma.requires_grad)
    total: torch.Tensor | None = None
    for i, k in enumerate(sizes):
        if use_checkpoint:
            part = checkpoint(
                _target_logsumexp, mu, sigma, target, seed, i, k, tau, use_reentrant=False, preserve_rng_state=False
            )
        else:
            part = _target_logsumexp(mu, sigma, target, seed, i, k, tau)
        total = part if total is None else torch.logaddexp(total, part)
    per = math.log(samples) - total  # (N, ...)
    if valid is not None:
        per = per.masked_fill(~valid, 0.0)
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    return per.sum() / (per.numel() if valid is None else valid.sum())


def heteroscedastic_nll(
    mu: torch.Tensor,
    sigma: torch.Tensor,
    labels: torch.Tensor,
    *,
    samples: int = 100,
    seed: int = 0,
    temperature: float = 1.0,
    ignore_index: int | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Predictive NLL ``−log p̄_y`` of the Monte Carlo mean with fixed noise, for model selection.

    p̄ = (1/S) Σ_s softmax((μ + σ ⊙ ε_s)/τ) with the noise drawn from
    ``torch.Generator(device=mu.device).manual_seed(seed)`` (see the module docstring), so every
    call on the same (μ, σ) sees the same ε: comparing checkpoints or epochs uses common random
    numbers and the selection does not jump with the noise. This is
    :meth:`HeteroscedasticClassifier.val_loss` for any model that returns ``(mu, sigma)``
    (Kendall & Gal 2017, §3.3); it equals :func:`heteroscedastic_loss` with that generator.

    Args:
        mu: (N, C) or (N, C, H, W) mean logits.
        sigma: (N, C, ...) or (N, 1, ...) scales, ≥ 0.
        labels: (N,) or (N, H, W) integer labels.
        samples: S noise draws.
        seed: integer seed of the noise generator (on ``mu``'s device).
        temperature: τ > 0 (use the training value).
        ignore_index: label whose pixels drop out.
        reduction: ``"mean"`` over non-ignored elements, ``"sum"`` or ``"none"`` ((N, ...)).

    Returns:
        The NLL in float32 (float64 for float64 inputs): a scalar, or (N, ...) with ``reduction="none"``.

    Example:
        >>> mu, sigma = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.ones(2, 2)
        >>> a = heteroscedastic_nll(mu, sigma, torch.tensor([0, 1]), samples=50)
        >>> b = heteroscedastic_nll(mu, sigma, torch.tensor([0, 1]), samples=50)
        >>> bool(a == b), a.shape
        (True, torch.Size([]))
    """
    if not isinstance(mu, torch.Tensor):
        raise TypeError(f"`mu` must be a tensor, got {type(mu).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"`seed` must be an integer, got {type(seed).__name__}")
    gen = _generator(int(seed), mu.device)
    return heteroscedastic_loss(
        mu,
        sigma,
        labels,
        samples=samples,
        temperature=temperature,
        ignore_index=ignore_index,
        generator=gen,
        reduction=reduction,
    )


# ---------------------------------------------------------------------------------------------- predict
def heteroscedastic_predict(
    mu: torch.Tensor,
    sigma: torch.Tensor,
    *,
    samples: int = 100,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    keep_samples: bool = False,
    chunk: int | None = None,
    validate_args: bool = True,
) -> Prediction:
    """Predictive distribution (1/S) Σ_s softmax((μ + σ ⊙ ε_s)/τ) as a :class:`~netuq.Prediction`.

    Kendall & Gal 2017, §3.3. Samples are added in chunks (memory independent of S unless
    ``keep_samples``), so ``pred.aleatoric`` / ``pred.epistemic`` decompose the sampling spread.
    ``pred.scores["sigma"]`` is the aleatoric map: σ averaged over classes, shape (N, ...).

    Args:
        mu: (N, C) or (N, C, H, W) mean logits.
        sigma: (N, C, ...) or (N, 1, ...) scales, ≥ 0.
        samples: S noise draws (≥ 100 recommended).
        temperature: τ > 0 (use the training value).
        generator: fixes the noise (same draws as :func:`heteroscedastic_loss` for the same seed).
        keep_samples: keep the (S, N, C, ...) sampled probabilities.
        chunk: samples per chunk (default: automatic, bounded memory).
        validate_args: check shapes and values.

    Example:
        >>> mu, sigma = torch.tensor([[3.0, 0.0]]), torch.full((1, 2), 2.0)
        >>> pred = heteroscedastic_predict(mu, sigma, samples=200, generator=torch.Generator().manual_seed(0))
        >>> bool(pred.probs[0, 0] < torch.softmax(mu, 1)[0, 0]), pred.scores["sigma"]
        (True, tensor([2.]))
    """
    samples = _check_positive_int(samples, "samples")
    tau = _check_temperature(temperature)
    mu, sigma = _check_mu_sigma(mu, sigma, validate_args)
    mu, sigma = mu.detach(), sigma.detach()
    seed = _draw_seed(generator)
    pred = Prediction(keep_samples=keep_samples)
    for i, k in enumerate(_chunks(samples, mu.numel(), chunk)):
        u = (mu + sigma * _noise(seed, i, (k, *mu.shape), mu)) / tau
        pred.add_logits(u, stacked=True, validate_args=False)
    pred.scores["sigma"] = sigma.mean(1)
    return pred


# ---------------------------------------------------------------------------------------------- wrapper
class HeteroscedasticClassifier(nn.Module):
    """A backbone plus :class:`HeteroscedasticHead`, with the loss, model-selection loss and predictor.

    ``forward(x)`` returns :class:`HeteroscedasticOutput` ``(mu, sigma)``. A backbone with an
    ``embed`` method (``netuq.models.SmallCNN`` / ``SmallUNet``) is used through ``embed``
    (its own classifier head is then unused); any other module through ``forward``.

    Train with :func:`netuq.training.fit`::

        model = HeteroscedasticClassifier(backbone, HeteroscedasticHead(F, C), samples=20)
        fit(model, train, val_data=val, loss=model.loss, val_loss=model.val_loss)
        pred = model.predict(x)            # Prediction; pred.scores["sigma"] is (N, ...)

    ``loss`` is :func:`heteroscedastic_loss` with this model's ``samples``, ``temperature`` and
    ``ignore_index``; ``val_loss`` is the NLL of the predictive mean, −log p̄_y, with
    ``val_samples`` draws from a fixed seed (common random numbers: epochs are compared on the
    same noise), which is what model selection should use.

    Args:
        backbone: features (N, F) or (N, F, H, W) from inputs.
        head: the heteroscedastic head (``spatial=True`` for segmentation).
        samples: training samples S.
        temperature: τ for loss and prediction.
        ignore_index: label ignored by ``loss`` and ``val_loss``.
        val_samples: samples for ``val_loss``.

    Example:
        >>> net = HeteroscedasticClassifier(nn.Linear(2, 8), HeteroscedasticHead(8, 3))
        >>> out = net(torch.randn(5, 2))
        >>> out.mu.shape, net.predict(torch.randn(5, 2), samples=10).probs.shape
        (torch.Size([5, 3]), torch.Size([5, 3]))
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: HeteroscedasticHead,
        *,
        samples: int = 20,
        temperature: float = 1.0,
        ignore_index: int | None = None,
        val_samples: int = 100,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"`backbone` must be an nn.Module, got {type(backbone).__name__}")
        if not isinstance(head, nn.Module):
            raise TypeError(f"`head` must be an nn.Module, got {type(head).__name__}")
        self.backbone = backbone
        self.head = head
        self.samples = _check_positive_int(samples, "samples")
        self.temperature = _check_temperature(temperature)
        self.ignore_index = ignore_index
        self.val_samples = _check_positive_int(val_samples, "val_samples")

    def forward(self, x: torch.Tensor) -> HeteroscedasticOutput:
        embed = getattr(self.backbone, "embed", None)
        features = embed(x) if callable(embed) else self.backbone(x)
        return self.head(features)

    def loss(self, output: HeteroscedasticOutput, labels: torch.Tensor) -> torch.Tensor:
        """Training loss for ``fit``: :func:`heteroscedastic_loss` on ``output = (mu, sigma)``."""
        mu, sigma = output
        return heteroscedastic_loss(
            mu, sigma, labels, samples=self.samples, temperature=self.temperature, ignore_index=self.ignore_index
        )

    def val_loss(self, output: HeteroscedasticOutput, labels: torch.Tensor) -> torch.Tensor:
        """Model-selection loss for ``fit``: :func:`heteroscedastic_nll` (NLL of the predictive mean,
        ``val_samples`` draws, seed 0) with this model's ``temperature`` and ``ignore_index``."""
        mu, sigma = output
        return heteroscedastic_nll(
            mu, sigma, labels, samples=self.val_samples, temperature=self.temperature, ignore_index=self.ignore_index
        )

    def netuq_traits(self) -> Traits:
        """Traits (:mod:`netuq.traits`): logit noise is aleatoric (Kendall & Gal 2017); seeded noise."""
        return Traits("heteroscedastic", epistemic=False, seeded=True)

    def netuq_predictor(self, seed: int = 0):
        """``x -> Prediction`` with noise from a generator seeded once per device: fresh noise for
        every batch, the same numbers on every call of ``netuq.predict`` / ``compare``."""
        generators: dict[torch.device, torch.Generator] = {}

        def predict(x: torch.Tensor) -> Prediction:
            if x.device not in generators:
                generators[x.device] = torch.Generator(device=x.device).manual_seed(seed)
            return self.predict(x, generator=generators[x.device])

        return predict

    @torch.no_grad()
    def predict(
        self,
        x: torch.Tensor,
        *,
        samples: int = 100,
        generator: torch.Generator | None = None,
        keep_samples: bool = False,
    ) -> Prediction:
        """:func:`heteroscedastic_predict` on ``x`` in eval mode (the module's mode is restored)."""
        with eval_mode(self):  # every module's own flag restored (a frozen BatchNorm stays frozen)
            mu, sigma = self(x)
        return heteroscedastic_predict(
            mu, sigma, samples=samples, temperature=self.temperature, generator=generator, keep_samples=keep_samples
        )
