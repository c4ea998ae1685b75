"""Learned confidence estimates: a confidence head, the hint loss, the λ budget, the perturbation.

DeVries & Taylor, "Learning Confidence for Out-of-Distribution Detection in Neural Networks",
arXiv:1802.04865 (2018). Beside the class logits z the network outputs a confidence logit s,
c = sigmoid(s). During training a Bernoulli draw b picks the examples that may receive *hints*:
there the prediction is interpolated towards the label, ``p' = c·p + (1 − c)·onehot(y)``, and the
network pays ``λ·(−log c)`` for asking. Predictions still come from softmax(z); c is a score for
misclassification and out-of-distribution detection (higher = more confident).

Out-of-distribution scoring with input perturbation (the paper's §3.2, "confidence_scaling" in the
official code, uoguelph-mlrg/confidence_estimation ``out_of_distribution_detection.py``): each input
is moved by ``−ε·sign(∇ₓ mean(−log c))`` — towards higher confidence, which in-distribution inputs
gain more than OOD ones — and c is read on the moved input. ε = 0.001 in the model's input units
(normalised images) is the official code's default ``--epsilon`` and the value of its README examples
(:data:`DEVRIES_TAYLOR_EPSILON`); the paper tunes it on 1000 held-out OOD images (ODIN's protocol).
See :func:`confidence_model_predict` and :meth:`ConfidenceClassifier.ood_scores`.

Unlike the official code this module never clamps p or c at 1e-12 (which saturates the loss and
kills its gradient); it works in log space with logsigmoid / log_softmax / logaddexp.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import _check_finite, _check_float, check_ignore_index, check_labels, check_log_values, float_dtype
from .._checks import check_positive_int as _check_positive_int
from .._modes import eval_mode
from ..prediction import Prediction
from ..training import Callback
from ..traits import Traits

__all__ = [
    "ConfidenceHead",
    "ConfidenceOutput",
    "ConfidenceLossParts",
    "ConfidenceClassifier",
    "ConfidenceBudget",
    "confidence_loss",
    "confidence_predict",
    "confidence_perturbation",
    "confidence_model_predict",
    "DEVRIES_TAYLOR_EPSILON",
]

DEVRIES_TAYLOR_EPSILON = 0.001
"""ε of the official code (``--epsilon`` default, README examples) for the input perturbation."""

_REDUCTIONS = ("mean", "sum", "none")


class ConfidenceOutput(NamedTuple):
    """What a confidence model returns: class ``logits`` (N, C, ...) and ``confidence_logit`` s (N, ...)."""

    logits: torch.Tensor
    confidence_logit: torch.Tensor


class ConfidenceLossParts(NamedTuple):
    """:func:`confidence_loss` with ``return_parts=True``.

    ``loss = prediction + λ·confidence``; ``prediction`` is the hinted NLL −log p'_y,
    ``confidence`` the penalty −log c (what :class:`ConfidenceBudget` compares with β), each
    reduced like ``loss``; ``hints`` is the (N, ...) boolean Bernoulli draw b (True: c applies).
    """

    loss: torch.Tensor
    prediction: torch.Tensor
    confidence: torch.Tensor
    hints: torch.Tensor


class ConfidenceHead(nn.Module):
    """Confidence-logit head: features → s, with c = sigmoid(s) (DeVries & Taylor 2018, §3).

    Shapes: (N, F) → (N,); with ``spatial=True`` a 1×1 convolution, (N, F, H, W) → (N, H, W).

    Args:
        in_features: feature channels F (the penultimate features of the classifier).
        spatial: per-pixel head for segmentation feature maps.

    Example:
        >>> ConfidenceHead(8)(torch.randn(4, 8)).shape
        torch.Size([4])
        >>> ConfidenceHead(8, spatial=True)(torch.randn(2, 8, 5, 5)).shape
        torch.Size([2, 5, 5])
    """

    def __init__(self, in_features: int, *, spatial: bool = False) -> None:
        super().__init__()
        in_features = _check_positive_int(in_features, "in_features")
        self.spatial = bool(spatial)
        self.layer = nn.Conv2d(in_features, 1, 1) if self.spatial else nn.Linear(in_features, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        want = 4 if self.spatial else 2
        if features.ndim != want:
            shape = "(N, F, H, W)" if self.spatial else "(N, F)"
            raise ValueError(f"`features` must have shape {shape}, got shape {tuple(features.shape)}")
        return self.layer(features).squeeze(1)


# ---------------------------------------------------------------------------------------------- checks
def _check_confidence_logit(s: torch.Tensor, logits: torch.Tensor, validate_args: bool) -> torch.Tensor:
    """Return s as (N, ...) in the compute dtype; accepts (N, ...) or (N, 1, ...)."""
    if not isinstance(s, torch.Tensor):
        raise TypeError(f"`confidence_logit` must be a tensor, got {type(s).__name__}")
    want = tuple(logits.shape[:1] + logits.shape[2:])
    if s.ndim == logits.ndim and s.shape[1] == 1:
        s = s.squeeze(1)
    if tuple(s.shape) != want:
        raise ValueError(
            f"`confidence_logit` must have shape (N, ...) = {want} (or with a singleton class axis), "
            f"got shape {tuple(s.shape)}"
        )
    if validate_args:
        _check_float(s, "confidence_logit")
        _check_finite(s, "confidence_logit")
    return s.to(float_dtype(logits))


def _check_probability(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"`{name}` must be a probability in [0, 1], got {value!r}")
    return float(value)


def _check_nonnegative(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"`{name}` must be a non-negative number, got {value!r}")
    return float(value)


def _draw_hints(shape: torch.Size, hint_prob: float, generator: torch.Generator | None, device) -> torch.Tensor:
    if generator is None:
        u = torch.rand(shape, device=device)
    elif not isinstance(generator, torch.Generator):
        raise TypeError(f"`generator` must be a torch.Generator or None, got {type(generator).__name__}")
    else:
        u = torch.rand(shape, generator=generator, device=generator.device).to(device)
    return u < hint_prob


# ---------------------------------------------------------------------------------------------- loss
def confidence_loss(
    logits: torch.Tensor,
    confidence_logit: torch.Tensor,
    labels: torch.Tensor,
    *,
    lmbda: float,
    hint_prob: float = 0.5,
    ignore_index: int | None = None,
    generator: torch.Generator | None = None,
    reduction: str = "mean",
    return_parts: bool = False,
    validate_args: bool = True,
) -> torch.Tensor | ConfidenceLossParts:
    """Learned-confidence loss ``−log p'_y + λ·(−log c)`` (DeVries & Taylor 2018, eq. 2–5).

    ``b ~ Bernoulli(hint_prob)`` per example — per **pixel** for segmentation — gives
    ``c' = b·c + (1 − b)`` and ``p' = c'·p + (1 − c')·onehot(y)``. Computed stably:
    ``−log p'_y = −logaddexp(logsigmoid(s) + log_softmax(z)_y, logsigmoid(−s))`` where b = 1,
    cross-entropy where b = 0, and ``−log c = softplus(−s)`` over all (non-ignored) elements, as
    in the official code. Nothing is clamped.

    Args:
        logits: (N, C) or (N, C, H, W) class logits z.
        confidence_logit: (N,) or (N, H, W) confidence logits s (a singleton class axis is allowed).
        labels: (N,) or (N, H, W) integer labels.
        lmbda: weight λ ≥ 0 of the confidence penalty (:class:`ConfidenceBudget` adapts it).
        hint_prob: P(b = 1), the share of elements whose prediction may be hinted (paper: 0.5).
        ignore_index: label whose pixels drop out of both terms.
        generator: fixes the hint draws (``torch.rand`` of shape (N, ...) on the generator's device).
        reduction: ``"mean"`` over non-ignored elements, ``"sum"``, or ``"none"`` (N, ...) with 0
            where ignored.
        return_parts: also return the two terms and the hint mask (:class:`ConfidenceLossParts`).
        validate_args: check shapes, finiteness and label range.

    Returns:
        The loss (float32, or float64 for float64 inputs), or :class:`ConfidenceLossParts`.

    Example:
        >>> z, s, y = torch.tensor([[2.0, 0.0]]), torch.tensor([30.0]), torch.tensor([0])
        >>> confidence_loss(z, s, y, lmbda=0.1)  # c ≈ 1: plain cross-entropy
        tensor(0.1269)
    """
    lmbda = _check_nonnegative(lmbda, "lmbda")
    hint_prob = _check_probability(hint_prob, "hint_prob")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"`reduction` must be one of {list(_REDUCTIONS)}, got {reduction!r}")
    if validate_args:
        logits = check_log_values(logits, "logits")
    s = _check_confidence_logit(confidence_logit, logits, validate_args)
    z = logits.to(float_dtype(logits))
    if validate_args:
        labels = check_labels(labels, z.shape[1], s.shape, ignore_index=ignore_index, probs_name="logits")
    labels = labels.to(z.device)
    check_ignore_index(ignore_index, labels.dtype)  # even unvalidated: `labels != ignore_index` must not wrap
    valid = None if ignore_index is None else labels != ignore_index
    target = labels if valid is None else labels.masked_fill(~valid, 0)

    log_p_y = torch.log_softmax(z, dim=1).gather(1, target.long().unsqueeze(1)).squeeze(1)  # (N, ...)
    hints = _draw_hints(s.shape, hint_prob, generator, z.device)
    hinted = -torch.logaddexp(F.logsigmoid(s) + log_p_y, F.logsigmoid(-s))
    prediction = torch.where(hints, hinted, -log_p_y)
    penalty = F.softplus(-s)
    if valid is not None:
        prediction = prediction.masked_fill(~valid, 0.0)
        penalty = penalty.masked_fill(~valid, 0.0)
        hints = hints & valid

    if reduction == "none":
        pred_r, pen_r = prediction, penalty
    else:
        pred_r, pen_r = prediction.sum(), penalty.sum()
        if reduction == "mean":
            count = prediction.numel() if valid is None else valid.sum()
            pred_r, pen_r = pred_r / count, pen_r / count
    total = pred_r + lmbda * pen_r
    if return_parts:
        return ConfidenceLossParts(total, pred_r, pen_r, hints)
    return total


# ---------------------------------------------------------------------------------------------- budget
class ConfidenceBudget(Callback):
    """Adapts λ so the confidence penalty −log c stays near the budget β (DeVries & Taylor 2018, §3.1).

    After each optimiser step: ``λ ← λ / 1.01`` if ``L_c < β`` (the network asks for few hints:
    penalise less), else ``λ ← λ / 0.99`` (too many hints: penalise more), with L_c the batch mean
    of −log c. This is the rule of the official code (uoguelph-mlrg/confidence_estimation,
    ``train.py``: ``if budget > confidence_loss: lmbda /= 1.01 elif budget <= confidence_loss:
    lmbda /= 0.99``), starting from λ₀ = 0.1 with β = 0.3.

    It is a :class:`netuq.training.Callback` and carries the matching losses, so with
    :func:`netuq.training.fit`::

        budget = ConfidenceBudget(beta=0.3, lmbda=0.1)
        fit(model, train, val_data=val, loss=budget.loss, val_loss=budget.val_loss, callbacks=[budget])

    ``on_batch_end`` recomputes L_c from the step's output ``(logits, confidence_logit)``, so a
    hand-written loss closure reading ``budget.lmbda`` works too. ``update(L_c)`` applies one step
    by hand.

    Args:
        beta: budget β > 0 for the mean −log c.
        lmbda: initial λ > 0.
        hint_prob: P(b = 1) used by ``loss``.
        ignore_index: label ignored by ``loss``, ``val_loss`` and the budget.

    Example:
        >>> budget = ConfidenceBudget(beta=0.3, lmbda=0.1)
        >>> round(budget.update(0.1), 6)  # L_c < β, confident enough: λ decreases
        0.09901
        >>> round(budget.update(0.5), 6)  # L_c ≥ β: λ increases
        0.1
    """

    def __init__(
        self, beta: float = 0.3, lmbda: float = 0.1, *, hint_prob: float = 0.5, ignore_index: int | None = None
    ) -> None:
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta > 0:
            raise ValueError(f"`beta` must be a positive number, got {beta!r}")
        if isinstance(lmbda, bool) or not isinstance(lmbda, (int, float)) or not lmbda > 0:
            raise ValueError(f"`lmbda` must be a positive number, got {lmbda!r}")
        self.beta = float(beta)
        self.lmbda = float(lmbda)
        self.hint_prob = _check_probability(hint_prob, "hint_prob")
        self.ignore_index = check_ignore_index(ignore_index)

    def update(self, confidence_penalty: float) -> float:
        """One budget step from the batch mean of −log c; returns the new λ."""
        if float(confidence_penalty) < self.beta:
            self.lmbda /= 1.01
        else:
            self.lmbda /= 0.99
        return self.lmbda

    def on_batch_end(self, loss: float, output: Any, target: torch.Tensor) -> None:
        s = output[1].detach()
        if s.ndim == target.ndim + 1:
            s = s.squeeze(1)
        penalty = F.softplus(-s.to(float_dtype(s)))
        if self.ignore_index is not None:
            penalty = penalty[target.to(s.device).long() != self.ignore_index]  # int64: no wrap-around
        if penalty.numel():
            self.update(float(penalty.mean()))

    def loss(self, output: Any, labels: torch.Tensor) -> torch.Tensor:
        """Training loss for ``fit``: :func:`confidence_loss` with the current λ."""
        logits, s = output
        return confidence_loss(
            logits, s, labels, lmbda=self.lmbda, hint_prob=self.hint_prob, ignore_index=self.ignore_index
        )

    def val_loss(self, output: Any, labels: torch.Tensor) -> torch.Tensor:
        """Model-selection loss for ``fit``: cross-entropy of the logits (no hints, no penalty)."""
        logits, s = output
        return confidence_loss(logits, s, labels, lmbda=0.0, hint_prob=0.0, ignore_index=self.ignore_index)


# ---------------------------------------------------------------------------------------------- predict
def confidence_predict(
    logits: torch.Tensor, confidence_logit: torch.Tensor, *, validate_args: bool = True
) -> Prediction:
    """Prediction from softmax(logits) with the learned confidence c = sigmoid(s) as a score.

    DeVries & Taylor 2018: predictions come from the class logits; ``pred.scores["confidence"]``
    (N, ...) is c, higher = more confident, so ``1 - pred.scores["confidence"]`` is the
    uncertainty score, also ``pred.uncertainty("confidence")`` (the softmax baseline
    1 − max p̄ is ``pred.uncertainty("max_prob")``).

    Args:
        logits: (N, C) or (N, C, H, W) class logits.
        confidence_logit: (N,) or (N, H, W) confidence logits (or with a singleton class axis).
        validate_args: check shapes and finiteness.

    Example:
        >>> pred = confidence_predict(torch.tensor([[2.0, 0.0]]), torch.tensor([0.0]))
        >>> pred.prediction, pred.scores["confidence"]
        (tensor([0]), tensor([0.5000]))
    """
    if validate_args:
        logits = check_log_values(logits, "logits")
    s = _check_confidence_logit(confidence_logit, logits, validate_args)
    return Prediction.from_logits(logits.detach(), scores={"confidence": torch.sigmoid(s.detach())})


def confidence_perturbation(
    model: nn.Module, x: torch.Tensor, *, epsilon: float = DEVRIES_TAYLOR_EPSILON
) -> torch.Tensor:
    """Input preprocessing ``x̃ = x − ε·sign(∇ₓ Σ −log c)`` that raises in-distribution confidence.

    DeVries & Taylor 2018, §3.2 (after ODIN): a small step against the gradient of the
    confidence penalty separates in- from out-of-distribution inputs better. ``model(x)`` must
    return ``(logits, confidence_logit)``. The sum runs over the batch (and pixels), so each
    image's step uses its own gradient when the model treats images independently (call it in
    eval mode: BatchNorm in train mode couples them). Parameters' ``.grad`` are untouched; works
    under ``torch.no_grad()``.

    Args:
        model: returns ``(logits, confidence_logit)``.
        x: inputs (N, ...).
        epsilon: step size ε ≥ 0 in input units (official code: 0.001 on normalised images; the paper
            tunes it on held-out OOD data).

    Returns:
        The perturbed inputs, detached, shape and dtype of ``x``.

    Example:
        >>> net = ConfidenceClassifier(nn.Linear(2, 4), nn.Linear(4, 3), ConfidenceHead(4)).eval()
        >>> x = torch.randn(3, 2)
        >>> x2 = confidence_perturbation(net, x, epsilon=0.01)
        >>> bool(((x2 - x).abs() <= 0.01 + 1e-7).all())
        True
    """
    epsilon = _check_nonnegative(epsilon, "epsilon")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"`x` must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    with torch.enable_grad():
        x_ = x.detach().clone().requires_grad_(True)
        s = model(x_)[1]
        penalty = F.softplus(-s.float()).sum()
        (grad,) = torch.autograd.grad(penalty, x_)
    return (x.detach() - epsilon * grad.sign()).to(x.dtype)


def confidence_model_predict(model: nn.Module, x: torch.Tensor, *, epsilon: float = 0.0) -> Prediction:
    """Predict with a confidence model, scoring c on the perturbed input when ``epsilon > 0``.

    Class probabilities always come from the unperturbed ``x`` (the perturbation is an OOD scoring
    device: DeVries & Taylor apply it to the confidence only). ``pred.scores["confidence"]`` is
    c(x̃) with x̃ = :func:`confidence_perturbation` ``(model, x, epsilon)`` — so the benchmark's
    "confidence" score (1 − c) uses it unchanged — and, when ``epsilon > 0``,
    ``pred.scores["confidence_unperturbed"]`` keeps c(x) (e.g. for misclassification detection).
    With ``epsilon = 0`` this is exactly ``confidence_predict(*model(x))``. Runs in eval mode (every
    module's flag restored); no parameter gradient is touched.

    Args:
        model: returns ``(logits, confidence_logit)``: (N, C, ...) and (N, ...).
        x: inputs (N, ...), floating point.
        epsilon: perturbation size ε ≥ 0 (:data:`DEVRIES_TAYLOR_EPSILON` = 0.001 as the official code).

    Returns:
        Prediction with ``probs`` (N, C, ...) and ``scores["confidence"]`` (N, ...).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> net = ConfidenceClassifier(nn.Linear(2, 4), nn.Linear(4, 3), ConfidenceHead(4))
        >>> x = torch.randn(5, 2)
        >>> pred = confidence_model_predict(net, x, epsilon=DEVRIES_TAYLOR_EPSILON)
        >>> bool((pred.scores["confidence"] >= pred.scores["confidence_unperturbed"]).all())
        True
    """
    epsilon = _check_nonnegative(epsilon, "epsilon")
    if not isinstance(model, nn.Module):
        got = type(model).__name__
        raise TypeError(f"`model` must be an nn.Module returning (logits, confidence_logit), got {got}")
    with eval_mode(model):  # every module's own flag restored (a frozen BatchNorm stays frozen)
        with torch.no_grad():
            logits, s = model(x)[:2]
        if epsilon:
            x_moved = confidence_perturbation(model, x, epsilon=epsilon)
            with torch.no_grad():
                s_moved = model(x_moved)[1]
    pred = confidence_predict(logits, s)
    if epsilon:
        s_moved = _check_confidence_logit(s_moved, pred.probs, True)
        pred.scores["confidence_unperturbed"] = pred.scores["confidence"]
        pred.scores["confidence"] = torch.sigmoid(s_moved.detach())
    return pred


# ---------------------------------------------------------------------------------------------- wrapper
class ConfidenceClassifier(nn.Module):
    """Backbone + class head + :class:`ConfidenceHead` on the same features.

    ``forward(x)`` returns :class:`ConfidenceOutput` ``(logits, confidence_logit)``. A backbone with
    an ``embed`` method (``netuq.models.SmallCNN`` / ``SmallUNet``) is used through ``embed``; any
    other module through ``forward``. For a netuq model ``m``:
    ``ConfidenceClassifier(m, m.head, ConfidenceHead(m.feature_dim, spatial=...))``.

    Args:
        backbone: inputs → features (N, F) or (N, F, H, W).
        classifier: features → logits (N, C, ...).
        confidence_head: features → confidence logits (N, ...).

    Example:
        >>> net = ConfidenceClassifier(nn.Linear(2, 4), nn.Linear(4, 3), ConfidenceHead(4))
        >>> pred = net.predict(torch.randn(5, 2))
        >>> pred.probs.shape, pred.scores["confidence"].shape
        (torch.Size([5, 3]), torch.Size([5]))
    """

    def __init__(self, backbone: nn.Module, classifier: nn.Module, confidence_head: nn.Module) -> None:
        super().__init__()
        for name, mod in (("backbone", backbone), ("classifier", classifier), ("confidence_head", confidence_head)):
            if not isinstance(mod, nn.Module):
                raise TypeError(f"`{name}` must be an nn.Module, got {type(mod).__name__}")
        self.backbone = backbone
        self.classifier = classifier
        self.confidence_head = confidence_head

    def forward(self, x: torch.Tensor) -> ConfidenceOutput:
        embed = getattr(self.backbone, "embed", None)
        features = embed(x) if callable(embed) else self.backbone(x)
        return ConfidenceOutput(self.classifier(features), self.confidence_head(features))

    def netuq_traits(self) -> Traits:
        """Traits (:mod:`netuq.traits`): one sample, a learned confidence score."""
        return Traits("confidence", epistemic=False)

    def netuq_predictor(self, seed: int = 0):
        """``x -> Prediction`` (:meth:`predict`, ``epsilon=0``)."""
        return lambda x: self.predict(x)

    def predict(self, x: torch.Tensor, *, epsilon: float = 0.0) -> Prediction:
        """:func:`confidence_model_predict` of this model: eval mode (flags restored), probabilities
        from ``x``, ``scores["confidence"]`` = c of the perturbed input when ``epsilon > 0``
        (:data:`DEVRIES_TAYLOR_EPSILON` as the official code), c(x) otherwise."""
        return confidence_model_predict(self, x, epsilon=epsilon)

    def ood_scores(self, x: torch.Tensor, *, epsilon: float = DEVRIES_TAYLOR_EPSILON) -> torch.Tensor:
        """OOD score 1 − c(x̃) (N, ...) with DeVries & Taylor's input perturbation; higher = more
        likely out of distribution (the "confidence" uncertainty score). ``epsilon=0``: 1 − c(x)."""
        return 1.0 - self.predict(x, epsilon=epsilon).scores["confidence"]
