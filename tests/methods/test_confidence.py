"""Learned confidence estimates (DeVries & Taylor 2018): head, hint loss, λ budget, predictor, perturbation.

References: the paper's formulas recomputed directly in float64 numpy (p' = c'·p + (1 − c')·onehot(y))
with the same hint draws, cross-entropy from torch for the no-hint limits, the binomial law for
the hint count, and the official code's budget rule.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

import netuq
from netuq import ConfidenceBudget, ConfidenceClassifier, ConfidenceHead, confidence_loss, confidence_predict
from netuq.methods.confidence import (
    DEVRIES_TAYLOR_EPSILON,
    ConfidenceLossParts,
    confidence_model_predict,
    confidence_perturbation,
)
from netuq.models import SmallCNN, SmallUNet
from netuq.training import fit


def by_hand(z, s, y, hints, lmbda) -> tuple[np.ndarray, np.ndarray]:
    """Per-example (−log p'_y, −log c) straight from the paper's definitions, float64 numpy."""
    z, s = np.asarray(z, np.float64), np.asarray(s, np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    c = 1.0 / (1.0 + np.exp(-s))
    b = np.asarray(hints, np.float64)
    c_prime = b * c + (1 - b)
    onehot = np.eye(z.shape[1])[y]
    p_prime = c_prime[:, None] * p + (1 - c_prime[:, None]) * onehot
    return -np.log(p_prime[np.arange(len(y)), y]), -np.log(c)


# ------------------------------------------------------------------------------------------ head
def test_head_shapes_and_errors():
    assert ConfidenceHead(5)(torch.randn(3, 5)).shape == (3,)
    assert ConfidenceHead(5, spatial=True)(torch.randn(2, 5, 4, 6)).shape == (2, 4, 6)
    with pytest.raises(ValueError, match=r"`features` must have shape \(N, F\), got shape \(2, 5, 4, 6\)"):
        ConfidenceHead(5)(torch.randn(2, 5, 4, 6))
    with pytest.raises(ValueError, match=r"`features` must have shape \(N, F, H, W\), got shape \(3, 5\)"):
        ConfidenceHead(5, spatial=True)(torch.randn(3, 5))
    with pytest.raises(ValueError, match="`in_features` must be a positive integer, got 0"):
        ConfidenceHead(0)


# ------------------------------------------------------------------------------------------ loss
def test_hand_derived_case_float64():
    z = torch.tensor([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0], [1.0, -2.0, 0.0], [-1.0, 1.0, 0.5]], dtype=torch.float64)
    s = torch.tensor([0.3, -1.2, 2.0, -0.4], dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1])
    hints = torch.rand(4, generator=torch.Generator().manual_seed(0)) < 0.5  # the documented draw
    assert 0 < int(hints.sum()) < 4  # the case mixes hinted and plain examples
    nll, pen = by_hand(z, s, y.numpy(), hints.numpy(), 0.25)
    parts = confidence_loss(
        z, s, y, lmbda=0.25, generator=torch.Generator().manual_seed(0), reduction="none", return_parts=True
    )
    assert isinstance(parts, ConfidenceLossParts)
    assert torch.equal(parts.hints, hints)
    np.testing.assert_allclose(parts.prediction.numpy(), nll, rtol=1e-12)
    np.testing.assert_allclose(parts.confidence.numpy(), pen, rtol=1e-12)
    np.testing.assert_allclose(parts.loss.numpy(), nll + 0.25 * pen, rtol=1e-12)
    mean = confidence_loss(z, s, y, lmbda=0.25, generator=torch.Generator().manual_seed(0))
    assert float(mean) == pytest.approx(float(np.mean(nll + 0.25 * pen)), rel=1e-12)


def test_gradients_match_the_direct_formula():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    s = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 4, (6,), generator=g)
    b = (torch.rand(6, generator=torch.Generator().manual_seed(9)) < 0.5).double()
    c = torch.sigmoid(s)
    cp = b * c + (1 - b)
    p_prime = cp[:, None] * torch.softmax(z, 1) + (1 - cp[:, None]) * F.one_hot(y, 4)
    ref = (-torch.log(p_prime[torch.arange(6), y]) - 0.3 * torch.log(c)).mean()
    got = confidence_loss(z, s, y, lmbda=0.3, generator=torch.Generator().manual_seed(9))
    for a, r in zip(torch.autograd.grad(got, (z, s)), torch.autograd.grad(ref, (z, s))):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("hint_prob", [0.0, 0.5, 1.0])
def test_full_confidence_is_cross_entropy(hint_prob):
    g = torch.Generator().manual_seed(1)
    z, y = torch.randn(20, 5, generator=g, dtype=torch.float64), torch.randint(0, 5, (20,), generator=g)
    s = torch.full((20,), 60.0, dtype=torch.float64)  # c = 1 − 9e-27
    loss = confidence_loss(z, s, y, lmbda=0.1, hint_prob=hint_prob, reduction="none")
    torch.testing.assert_close(loss, F.cross_entropy(z, y, reduction="none"), rtol=1e-12, atol=1e-20)


def test_no_hints_is_cross_entropy_plus_penalty():
    g = torch.Generator().manual_seed(2)
    z, y = torch.randn(30, 4, generator=g), torch.randint(0, 4, (30,), generator=g)
    s = torch.randn(30, generator=g) * 3
    parts = confidence_loss(z, s, y, lmbda=0.7, hint_prob=0.0, return_parts=True)
    torch.testing.assert_close(parts.prediction, F.cross_entropy(z, y))
    torch.testing.assert_close(parts.confidence, F.softplus(-s).mean())
    torch.testing.assert_close(parts.loss, F.cross_entropy(z, y) + 0.7 * F.softplus(-s).mean())
    assert not bool(parts.hints.any())


def test_hints_hit_about_half_the_batch_and_act_where_drawn():
    n = 4000
    g = torch.Generator().manual_seed(4)
    z, y = torch.randn(n, 3, generator=g), torch.randint(0, 3, (n,), generator=g)
    s = torch.full((n,), -40.0)  # c ≈ 0: a hinted example is told the label and loses nothing
    parts = confidence_loss(z, s, y, lmbda=0.0, reduction="none", return_parts=True, generator=g)
    k = int(parts.hints.sum())
    lo, hi = stats.binom.ppf([1e-6, 1 - 1e-6], n, 0.5)
    assert lo <= k <= hi
    assert float(parts.prediction[parts.hints].max()) < 1e-12
    torch.testing.assert_close(parts.prediction[~parts.hints], F.cross_entropy(z, y, reduction="none")[~parts.hints])
    # other rates
    k3 = int(confidence_loss(z, s, y, lmbda=0.0, hint_prob=0.3, return_parts=True, generator=g).hints.sum())
    lo3, hi3 = stats.binom.ppf([1e-6, 1 - 1e-6], n, 0.3)
    assert lo3 <= k3 <= hi3


def test_stable_for_extreme_logits_where_clamping_saturates():
    z = torch.tensor([[1e4, -1e4, 0.0], [-80.0, 80.0, 0.0]], requires_grad=True)
    s = torch.tensor([100.0, -100.0], requires_grad=True)
    y = torch.tensor([1, 0])
    # hinted: p'_y ≥ 1 − c = sigmoid(−s), so the loss is ≈ −logsigmoid(−s) = 100 for example 0
    hinted = confidence_loss(z, s, y, lmbda=0.5, hint_prob=1.0, reduction="none", return_parts=True)
    torch.testing.assert_close(hinted.prediction.detach(), torch.tensor([100.0, 0.0]), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(hinted.confidence.detach(), torch.tensor([0.0, 100.0]), rtol=1e-6, atol=1e-6)
    hinted.loss.sum().backward()
    assert torch.isfinite(z.grad).all() and torch.isfinite(s.grad).all()
    # plain cross-entropy part: a huge but finite loss with a full-size gradient
    z.grad = None
    plain = confidence_loss(z, s, y, lmbda=0.5, hint_prob=0.0, reduction="none")
    plain.sum().backward()
    assert float(plain[0].detach()) == pytest.approx(2e4, rel=1e-6)
    torch.testing.assert_close(z.grad[0], torch.tensor([1.0, -1.0, 0.0]))
    # the official code's clamp at 1e-12 caps that loss at −log 1e-12 ≈ 27.6 and kills the gradient
    z2 = z.detach().clone().requires_grad_(True)
    p = torch.softmax(z2, 1).clamp(1e-12, 1 - 1e-12)
    (-torch.log(p[0, 1])).backward()
    assert float(z2.grad.abs().max()) == 0.0


def test_segmentation_per_pixel_hints_and_ignore_index():
    g = torch.Generator().manual_seed(5)
    z = torch.randn(2, 3, 16, 16, generator=g)
    s = torch.randn(2, 16, 16, generator=g)
    y = torch.randint(0, 3, (2, 16, 16), generator=g)
    y[0, :4] = 255
    valid = y != 255
    parts = confidence_loss(z, s, y, lmbda=0.2, ignore_index=255, reduction="none", return_parts=True, generator=g)
    assert parts.loss.shape == (2, 16, 16)
    assert bool((parts.loss[~valid] == 0).all()) and not bool(parts.hints[~valid].any())
    # hints are per pixel: both values occur inside one image
    assert 0 < int(parts.hints[1].sum()) < 256
    mean = confidence_loss(z, s, y, lmbda=0.2, ignore_index=255, hint_prob=0.0)
    ce = F.cross_entropy(z, y, ignore_index=255)
    torch.testing.assert_close(mean, ce + 0.2 * F.softplus(-s)[valid].mean())
    # a (N, 1, H, W) confidence map is accepted
    same = confidence_loss(z, s.unsqueeze(1), y, lmbda=0.2, ignore_index=255, hint_prob=0.0)
    torch.testing.assert_close(same, mean)
    total = confidence_loss(z, s, y, lmbda=0.2, ignore_index=255, hint_prob=0.0, reduction="sum")
    torch.testing.assert_close(total, mean * valid.sum(), rtol=1e-5, atol=1e-4)


def test_half_precision_computed_in_float32():
    z, s, y = torch.randn(4, 3).half(), torch.randn(4).half(), torch.tensor([0, 1, 2, 0])
    assert confidence_loss(z, s, y, lmbda=0.1).dtype == torch.float32


def test_loss_errors():
    z, s, y = torch.zeros(2, 3), torch.zeros(2), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="`lmbda` must be a non-negative number, got -0.1"):
        confidence_loss(z, s, y, lmbda=-0.1)
    with pytest.raises(ValueError, match=r"`hint_prob` must be a probability in \[0, 1\], got 1.5"):
        confidence_loss(z, s, y, lmbda=0.1, hint_prob=1.5)
    with pytest.raises(ValueError, match=r"`reduction` must be one of \['mean', 'sum', 'none'\], got 'all'"):
        confidence_loss(z, s, y, lmbda=0.1, reduction="all")
    with pytest.raises(ValueError, match=r"`confidence_logit` must have shape \(N, \.\.\.\) = \(2,\)"):
        confidence_loss(z, torch.zeros(3), y, lmbda=0.1)
    with pytest.raises(ValueError, match="`confidence_logit` must be finite, got 1 NaN"):
        confidence_loss(z, torch.tensor([0.0, float("nan")]), y, lmbda=0.1)
    with pytest.raises(TypeError, match="`confidence_logit` must be a tensor, got list"):
        confidence_loss(z, [0.0, 0.0], y, lmbda=0.1)
    with pytest.raises(ValueError, match=r"`labels` must be integers in \[0, 3\), got values in \[0, 3\]"):
        confidence_loss(z, s, torch.tensor([0, 3]), lmbda=0.1)
    with pytest.raises(ValueError, match="`logits` must be finite"):
        confidence_loss(torch.full((2, 3), float("inf")), s, y, lmbda=0.1)
    with pytest.raises(TypeError, match="`generator` must be a torch.Generator or None, got int"):
        confidence_loss(z, s, y, lmbda=0.1, generator=1)


# ------------------------------------------------------------------------------------------ budget
def test_budget_rule_follows_the_official_code():
    budget = ConfidenceBudget(beta=0.3, lmbda=0.1)
    assert budget.update(0.29) == pytest.approx(0.1 / 1.01)  # L_c < β: fewer hints than allowed, λ down
    budget.lmbda = 0.1
    assert budget.update(0.31) == pytest.approx(0.1 / 0.99)  # L_c > β: too many hints, λ up
    budget.lmbda = 0.1
    assert budget.update(0.3) == pytest.approx(0.1 / 0.99)  # equality counts as over budget
    for _ in range(100):
        budget.update(1.0)
    assert budget.lmbda == pytest.approx(0.1 / 0.99**101)


def test_budget_callback_reads_the_step_output_with_ignore_index():
    budget = ConfidenceBudget(beta=0.3, lmbda=0.1, ignore_index=255)
    z = torch.zeros(1, 2, 2, 2)
    s = torch.tensor([[[5.0, 5.0], [-5.0, -5.0]]])  # confident on the valid row, not on the ignored one
    y = torch.tensor([[[0, 1], [255, 255]]])
    budget.on_batch_end(0.0, (z, s), y)
    assert budget.lmbda == pytest.approx(0.1 / 1.01)
    budget.on_batch_end(0.0, (z, -s), y)
    assert budget.lmbda == pytest.approx(0.1 / 1.01 / 0.99)
    plain = ConfidenceBudget(beta=0.3, lmbda=0.1)  # without ignore_index the unconfident row counts
    plain.on_batch_end(0.0, (z, s), torch.zeros(1, 2, 2, dtype=torch.long))
    assert plain.lmbda == pytest.approx(0.1 / 0.99)


def test_budget_errors():
    with pytest.raises(ValueError, match="`beta` must be a positive number, got 0"):
        ConfidenceBudget(beta=0)
    with pytest.raises(ValueError, match="`lmbda` must be a positive number, got -1"):
        ConfidenceBudget(lmbda=-1)
    with pytest.raises(ValueError, match=r"`hint_prob` must be a probability in \[0, 1\], got -0.5"):
        ConfidenceBudget(hint_prob=-0.5)


# ------------------------------------------------------------------------------------------ predict / perturb
def test_predict_classification_and_segmentation():
    z, s = torch.randn(4, 3), torch.randn(4)
    pred = confidence_predict(z, s)
    torch.testing.assert_close(pred.probs, torch.softmax(z, 1))
    torch.testing.assert_close(pred.scores["confidence"], torch.sigmoid(s))
    zs, ss = torch.randn(2, 3, 5, 6), torch.randn(2, 1, 5, 6)
    pred = confidence_predict(zs, ss)
    assert pred.probs.shape == (2, 3, 5, 6) and pred.scores["confidence"].shape == (2, 5, 6)
    torch.testing.assert_close(pred.scores["confidence"], torch.sigmoid(ss[:, 0]))
    with pytest.raises(ValueError, match=r"`confidence_logit` must have shape \(N, \.\.\.\) = \(2, 5, 6\)"):
        confidence_predict(zs, torch.randn(2, 5))


def test_perturbation_steps_against_the_confidence_penalty():
    torch.manual_seed(0)
    model = ConfidenceClassifier(nn.Linear(3, 8), nn.Linear(8, 4), ConfidenceHead(8)).eval()
    x = torch.randn(5, 3)
    with torch.no_grad():  # works under no_grad, leaves parameter gradients alone
        x2 = confidence_perturbation(model, x, epsilon=0.01)
    assert all(p.grad is None for p in model.parameters())
    # closed form for this model: the sign of the input gradient of Σ softplus(−s)
    w = (model.confidence_head.layer.weight @ model.backbone.weight).detach()  # (1, 3), s is linear in x
    c = torch.sigmoid(model(x).confidence_logit.detach())
    grad = -(1 - c)[:, None] * w
    torch.testing.assert_close(x2, x - 0.01 * grad.sign())
    with torch.no_grad():
        assert bool((model(x2).confidence_logit > model(x).confidence_logit).all())  # confidence goes up
    assert torch.equal(confidence_perturbation(model, x, epsilon=0.0), x)
    with pytest.raises(ValueError, match="`epsilon` must be a non-negative number, got -1"):
        confidence_perturbation(model, x, epsilon=-1)
    with pytest.raises(TypeError, match="`x` must be a floating-point tensor, got torch.int64"):
        confidence_perturbation(model, torch.zeros(2, 3, dtype=torch.long))


def test_ood_perturbation_raises_confidence_and_epsilon_zero_is_unchanged():
    """DeVries & Taylor's OOD scoring: c read on x − ε·sign(∇ₓ −log c) goes up; ε = 0 is plain c(x)."""
    torch.manual_seed(0)
    cnn = SmallCNN(1, 3, width=4)
    model = ConfidenceClassifier(cnn, cnn.head, ConfidenceHead(cnn.feature_dim)).eval()
    x = torch.randn(6, 1, 8, 8)
    with torch.no_grad():
        logits, s = model(x)
    plain = confidence_predict(logits, s)
    for pred in (model.predict(x), confidence_model_predict(model, x, epsilon=0.0)):  # ε = 0: as before
        assert torch.equal(pred.probs, plain.probs)
        assert torch.equal(pred.scores["confidence"], plain.scores["confidence"])
        assert set(pred.scores) == {"confidence"}
    assert DEVRIES_TAYLOR_EPSILON == 0.001  # official code's --epsilon default
    pred = model.predict(x, epsilon=0.01)
    # the class probabilities are those of the unperturbed input; c(x) is kept beside c(x̃)
    assert torch.equal(pred.probs, plain.probs)
    assert torch.equal(pred.scores["confidence_unperturbed"], plain.scores["confidence"])
    # by hand: the moved input and its confidence
    x_moved = confidence_perturbation(model, x, epsilon=0.01)
    with torch.no_grad():
        c_moved = torch.sigmoid(model(x_moved).confidence_logit)
    torch.testing.assert_close(pred.scores["confidence"], c_moved)
    assert bool((pred.scores["confidence"] > plain.scores["confidence"]).all())  # a step towards confidence
    torch.testing.assert_close(model.ood_scores(x, epsilon=0.01), 1 - c_moved)
    torch.testing.assert_close(model.ood_scores(x, epsilon=0.0), 1 - plain.scores["confidence"])
    # first-order check: the rise of s is about ε·‖∇ₓ s‖₁ per image
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(xg).confidence_logit.sum(), xg)
    with torch.no_grad():
        rise = model(x_moved).confidence_logit - s
    torch.testing.assert_close(rise, 0.01 * grad.abs().flatten(1).sum(1), rtol=0.2, atol=1e-4)
    with pytest.raises(ValueError, match="`epsilon` must be a non-negative number, got -0.1"):
        model.predict(x, epsilon=-0.1)
    with pytest.raises(TypeError, match="`model` must be an nn.Module returning"):
        confidence_model_predict(lambda t: t, x)


def test_ood_perturbation_segmentation_keeps_flags():
    torch.manual_seed(0)
    unet = SmallUNet(1, 3, width=4)
    model = ConfidenceClassifier(unet, unet.head, ConfidenceHead(unet.feature_dim, spatial=True)).train()
    unet.enc1[1].eval()  # a frozen BatchNorm stays frozen
    x = torch.randn(2, 1, 8, 8)
    pred = confidence_model_predict(model, x, epsilon=DEVRIES_TAYLOR_EPSILON)
    assert pred.scores["confidence"].shape == pred.scores["confidence_unperturbed"].shape == (2, 8, 8)
    assert float((pred.scores["confidence"] - pred.scores["confidence_unperturbed"]).mean()) > 0
    assert model.training and not unet.enc1[1].training
    assert all(p.grad is None for p in model.parameters())


# ------------------------------------------------------------------------------------------ training with fit
def test_trains_with_fit_classification_budget_and_predict():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 1, 8, 8, generator=g), torch.randint(0, 3, (64,), generator=g)
    torch.manual_seed(0)
    cnn = SmallCNN(1, 3, width=4)
    model = ConfidenceClassifier(cnn, cnn.head, ConfidenceHead(cnn.feature_dim))
    budget = ConfidenceBudget(beta=0.3, lmbda=0.1)
    h = fit(
        model,
        (x, y),
        val_data=(x, y),
        loss=budget.loss,
        val_loss=budget.val_loss,
        callbacks=[budget],
        epochs=2,
        batch_size=16,
    )
    assert all(math.isfinite(v) for v in h.train_loss + h.val_loss)
    # exactly one update per optimiser step: 8 steps, each a factor 1/1.01 (down) or 1/0.99 (up)
    reachable = [0.1 / 1.01**d / 0.99 ** (8 - d) for d in range(9)]
    assert min(abs(budget.lmbda - r) for r in reachable) < 1e-12
    with torch.no_grad():
        out = model.eval()(x)
    # the best weights are restored; their validation loss is the plain cross-entropy
    assert h.best_val_loss == pytest.approx(float(F.cross_entropy(out.logits, y)), rel=1e-5)
    model.train()
    pred = model.predict(x[:4], epsilon=0.001)
    assert model.training and pred.scores["confidence"].shape == (4,)


@pytest.mark.parametrize("epsilon", [0.0, 0.01])
def test_predict_restores_each_module_flag_exactly(epsilon):
    """Regression: predict restored with self.train(was), unfreezing a BatchNorm the user froze."""
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8))
    model = ConfidenceClassifier(backbone, nn.Linear(8, 4), ConfidenceHead(8)).train()
    backbone[1].eval()
    stats_before = backbone[1].running_mean.clone()
    model.predict(torch.randn(4, 3), epsilon=epsilon)
    assert model.training and backbone[0].training and not backbone[1].training
    assert torch.equal(backbone[1].running_mean, stats_before)


def test_trains_with_fit_segmentation_ignore_index():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 1, 8, 8, generator=g)
    y = torch.randint(0, 3, (8, 8, 8), generator=g)
    y[:, -2:] = 255
    torch.manual_seed(0)
    unet = SmallUNet(1, 3, width=4)
    model = ConfidenceClassifier(unet, unet.head, ConfidenceHead(unet.feature_dim, spatial=True))
    budget = ConfidenceBudget(ignore_index=255)
    h = fit(
        model,
        (x, y),
        val_data=(x, y),
        loss=budget.loss,
        val_loss=budget.val_loss,
        callbacks=[budget],
        epochs=2,
        batch_size=4,
    )
    assert all(math.isfinite(v) for v in h.train_loss + h.val_loss)
    pred = model.predict(x[:2])
    assert pred.probs.shape == (2, 3, 8, 8) and pred.scores["confidence"].shape == (2, 8, 8)
    # a hand-written closure reading budget.lmbda works the same way
    lam = []

    def loss(out, t):
        lam.append(budget.lmbda)
        return confidence_loss(*out, t, lmbda=budget.lmbda, ignore_index=255)

    fit(model, (x, y), loss=loss, callbacks=[budget], epochs=1, batch_size=4)
    assert len(set(lam)) == 2  # λ changed between the two steps


def test_wrapper_errors_and_exports():
    with pytest.raises(TypeError, match="`confidence_head` must be an nn.Module, got int"):
        ConfidenceClassifier(nn.Identity(), nn.Identity(), 3)
    for name in (
        "ConfidenceHead",
        "ConfidenceClassifier",
        "ConfidenceBudget",
        "confidence_loss",
        "confidence_predict",
        "confidence_perturbation",
    ):
        assert name in netuq.__all__ and hasattr(netuq, name)


def test_a_masked_class_follows_the_rule_of_prediction_from_logits():
    """-inf for a masked class is accepted (as by Prediction.from_logits): probability 0, a finite loss."""
    z = torch.tensor([[2.0, 0.0, -math.inf], [0.0, 1.0, -math.inf]], requires_grad=True)
    s = torch.tensor([0.3, -0.2], requires_grad=True)
    pred = confidence_predict(z, s)
    torch.testing.assert_close(pred.probs, netuq.Prediction.from_logits(z.detach()).probs)
    assert bool((pred.probs[:, 2] == 0).all())
    loss = confidence_loss(z, s, torch.tensor([0, 1]), lmbda=0.1)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all() and torch.isfinite(s.grad).all()
    with pytest.raises(ValueError, match="NaN"):
        confidence_predict(torch.tensor([[0.0, math.nan]]), torch.tensor([0.0]))
