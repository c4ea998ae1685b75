"""Heteroscedastic classification (Kendall & Gal 2017, §3.3): head, MC softmax loss, predictor, wrapper.

References are independent: float64 numpy/torch recomputations with the same noise (the noise
contract is documented in the module), closed forms (σ = 0 is cross-entropy), a large-sample
Monte Carlo estimate of −log E[softmax(u)_y], and deliberately wrong implementations of the
known traps to show each test can tell them apart.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats
from torch import nn

import netuq
from netuq import (
    HeteroscedasticClassifier,
    HeteroscedasticHead,
    heteroscedastic_loss,
    heteroscedastic_nll,
    heteroscedastic_predict,
)
from netuq.models import SmallCNN, SmallUNet
from netuq.training import fit


def contract_noise(gen_seed: int, sizes: list[int], shape, dtype=torch.float64) -> list[torch.Tensor]:
    """The documented noise draws: one seed from the generator, chunk i from Generator(seed + i)."""
    g = torch.Generator().manual_seed(gen_seed)
    seed = int(torch.randint(0, 2**62, (1,), generator=g))
    return [
        torch.randn((k, *shape), generator=torch.Generator().manual_seed(seed + i), dtype=dtype)
        for i, k in enumerate(sizes)
    ]


def by_hand_loss(mu, sigma, labels, eps, tau=1.0) -> np.ndarray:
    """−log (1/S) Σ_s softmax((μ + σ ε_s)/τ)_y per example, plain numpy float64 loops, (N,)."""
    mu, sigma, eps = (np.asarray(t, dtype=np.float64) for t in (mu, sigma, eps))
    out = []
    for n in range(mu.shape[0]):
        probs = []
        for s in range(eps.shape[0]):
            u = (mu[n] + sigma[n] * eps[s, n]) / tau
            e = np.exp(u - u.max())
            probs.append(e[labels[n]] / e.sum())
        out.append(-math.log(sum(probs) / len(probs)))
    return np.array(out)


# ------------------------------------------------------------------------------------------ head
def test_head_shapes_init_and_floor():
    head = HeteroscedasticHead(6, 4, init_scale=0.2)
    mu, sigma = head(torch.randn(5, 6))
    assert mu.shape == sigma.shape == (5, 4)
    torch.testing.assert_close(sigma, torch.full((5, 4), 0.2))
    with torch.no_grad():
        head.scale.bias.fill_(-200.0)
    assert torch.equal(head(torch.randn(5, 6)).sigma, torch.full((5, 4), 1e-3))  # softplus → 0, floor stays

    spatial = HeteroscedasticHead(6, 4, spatial=True)
    out = spatial(torch.randn(2, 6, 3, 5))
    assert out.mu.shape == out.sigma.shape == (2, 4, 3, 5)
    assert bool((out.sigma > 0).all())


def test_head_errors():
    with pytest.raises(ValueError, match=r"`features` must have shape \(N, F\), got shape \(2, 6, 3\)"):
        HeteroscedasticHead(6, 4)(torch.randn(2, 6, 3))
    with pytest.raises(ValueError, match=r"`features` must have shape \(N, F, H, W\)"):
        HeteroscedasticHead(6, 4, spatial=True)(torch.randn(2, 6))
    with pytest.raises(ValueError, match="`num_classes` must be at least 2, got 1"):
        HeteroscedasticHead(6, 1)
    with pytest.raises(ValueError, match="`in_features` must be a positive integer, got 0"):
        HeteroscedasticHead(0, 3)
    with pytest.raises(ValueError, match="`min_scale` must be > 0"):
        HeteroscedasticHead(6, 3, min_scale=0.0)
    with pytest.raises(ValueError, match="`init_scale` must be > min_scale"):
        HeteroscedasticHead(6, 3, init_scale=1e-4)


# ------------------------------------------------------------------------------------------ loss: closed forms
@given(
    n=st.integers(1, 6),
    c=st.integers(2, 5),
    samples=st.integers(1, 64),
    scale=st.floats(0.1, 50.0),
    seed=st.integers(0, 2**16),
)
def test_zero_sigma_is_cross_entropy_for_any_number_of_samples(n, c, samples, scale, seed):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(n, c, generator=g, dtype=torch.float64) * scale
    y = torch.randint(0, c, (n,), generator=g)
    loss = heteroscedastic_loss(mu, torch.zeros_like(mu), y, samples=samples)
    torch.testing.assert_close(loss, F.cross_entropy(mu, y), rtol=1e-10, atol=1e-10)


def test_constant_samples_trap_is_not_cross_entropy():
    """The `S − logsumexp` trap (a constant instead of log S) breaks the σ = 0 identity the test above checks."""
    mu, y, S = torch.tensor([[1.0, -0.5, 2.0]]), torch.tensor([1]), 8
    lpy = torch.log_softmax(mu, 1)[0, 1].repeat(S)
    trap = S - torch.logsumexp(lpy, 0)
    assert abs(float(trap) - float(F.cross_entropy(mu, y))) > 1.0
    torch.testing.assert_close(heteroscedastic_loss(mu, torch.zeros(1, 3), y, samples=S), F.cross_entropy(mu, y))


def test_hand_derived_case_with_fixed_noise_float64():
    mu = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0], [2.0, 2.0, 2.0]], dtype=torch.float64)
    sigma = torch.tensor([[0.5, 1.5, 0.2], [2.0, 0.1, 1.0], [3.0, 0.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([2, 1, 0])
    (eps,) = contract_noise(7, [6], mu.shape)
    expected = by_hand_loss(mu, sigma, y.numpy(), eps)
    got = heteroscedastic_loss(mu, sigma, y, samples=6, generator=torch.Generator().manual_seed(7), reduction="none")
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    mean = heteroscedastic_loss(mu, sigma, y, samples=6, generator=torch.Generator().manual_seed(7))
    assert float(mean) == pytest.approx(expected.mean(), rel=1e-12)
    # temperature divides the noisy logits
    got_t = heteroscedastic_loss(
        mu, sigma, y, samples=6, temperature=1.5, generator=torch.Generator().manual_seed(7), reduction="none"
    )
    np.testing.assert_allclose(got_t.numpy(), by_hand_loss(mu, sigma, y.numpy(), eps, tau=1.5), rtol=1e-12)


def test_chunked_loss_and_gradients_match_reference_with_same_noise():
    """Chunks (with activation checkpointing) give the same value and gradients as the explicit formula."""
    g = torch.Generator().manual_seed(3)
    mu = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    sigma = (torch.rand(2, 3, 4, 5, generator=g, dtype=torch.float64) + 0.5).requires_grad_(True)
    y = torch.randint(0, 3, (2, 4, 5), generator=g)
    y[0, 0, :2] = 255
    sizes = [3, 3, 1]
    eps = torch.cat(contract_noise(11, sizes, mu.shape))  # (7, N, C, H, W)

    u = mu + sigma * eps
    lpy = torch.log_softmax(u, 2).gather(2, y.clamp_max(2).unsqueeze(0).unsqueeze(2).expand(7, -1, 1, -1, -1))
    per = math.log(7) - torch.logsumexp(lpy.squeeze(2), 0)
    valid = y != 255
    ref = per[valid].mean()
    ref_grads = torch.autograd.grad(ref, (mu, sigma))

    got = heteroscedastic_loss(
        mu, sigma, y, samples=7, chunk=3, ignore_index=255, generator=torch.Generator().manual_seed(11)
    )
    got_grads = torch.autograd.grad(got, (mu, sigma))
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(got_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # ignored pixels get no gradient
    assert float(got_grads[0][0, :, 0, :2].abs().max()) == 0.0
    assert float(got_grads[1][0, :, 0, :2].abs().max()) == 0.0


def test_finite_for_huge_logits_where_naive_exp_log_is_not():
    mu = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 5e3]], requires_grad=True)
    sigma = torch.ones(2, 3, requires_grad=True)
    y = torch.tensor([1, 0])
    loss = heteroscedastic_loss(mu, sigma, y, samples=10, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and float(loss.detach()) > 1e3
    assert torch.isfinite(mu.grad).all() and torch.isfinite(sigma.grad).all()
    # the trap: exp / mean / log without logsumexp is not finite here
    eps = torch.randn(10, 2, 3, generator=torch.Generator().manual_seed(0))
    naive = -torch.log(torch.softmax(mu.detach() + eps, 2)[:, torch.arange(2), y].mean(0)).mean()
    assert not torch.isfinite(naive)


def test_sigma_gets_gradient_but_not_with_shared_scalar_noise_trap():
    """One scale per example (Kendall & Gal's σ per pixel): with per-class noise σ learns; with one
    scalar ε shared by the batch and classes the softmax is shift-invariant and σ gets zero gradient."""
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(16, 4, generator=g)
    y = torch.randint(0, 4, (16,), generator=g)
    sigma = torch.full((16, 1), 1.0, requires_grad=True)
    heteroscedastic_loss(mu, sigma, y, samples=30, generator=g).backward()
    assert float(sigma.grad.abs().min()) > 1e-5

    def wrong_shared_noise(mu, sigma, labels, samples, gen):
        eps = torch.randn(samples, 1, 1, generator=gen)  # one scalar per sample, shared by everything
        lpy = torch.log_softmax(mu + sigma * eps, 2)[:, torch.arange(len(labels)), labels]
        return (math.log(samples) - torch.logsumexp(lpy, 0)).mean()

    sigma_w = torch.full((16, 1), 1.0, requires_grad=True)
    wrong_shared_noise(mu, sigma_w, y, 30, g).backward()
    assert float(sigma_w.grad.abs().max()) < 1e-6

    # the full per-class scale of the head gets gradient too
    sigma_full = torch.full((16, 4), 1.0, requires_grad=True)
    heteroscedastic_loss(mu, sigma_full, y, samples=30, generator=g).backward()
    assert float(sigma_full.grad.abs().sum(1).min()) > 1e-5


# ------------------------------------------------------------------------------------------ loss: Monte Carlo
def _reference_mc(mu, sigma, y, n, seed, noise_on="all"):
    """Per-example −log E[softmax(u)_y] and its delta-method standard error, numpy float64."""
    rng = np.random.default_rng(seed)
    eps = rng.standard_normal((n, *mu.shape))
    if noise_on == "true":  # trap: noise only on the true-class logit
        mask = np.zeros(mu.shape)
        mask[np.arange(len(y)), y] = 1.0
        eps = eps * mask
    u = mu + sigma * eps
    u = u - u.max(-1, keepdims=True)
    p = np.exp(u[:, np.arange(len(y)), y]) / np.exp(u).sum(-1)  # (n, N)
    nll_per_sample = -np.log(p).mean(0)
    return -np.log(p.mean(0)), p.std(0) / (np.sqrt(n) * p.mean(0)), nll_per_sample


def test_loss_is_the_monte_carlo_estimate_of_the_true_objective():
    mu = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0], [3.0, -3.0, 1.0], [-1.0, 2.0, 0.5]])
    sigma = np.array([[1.0, 2.0, 0.5], [3.0, 3.0, 3.0], [0.2, 4.0, 1.0], [2.5, 0.5, 1.5]])
    y = np.array([0, 1, 2, 0])
    ref, ref_se, per_sample_ce = _reference_mc(mu, sigma, y, 400_000, 0)
    S = 100_000
    got = heteroscedastic_loss(
        torch.tensor(mu),
        torch.tensor(sigma),
        torch.tensor(y),
        samples=S,
        generator=torch.Generator().manual_seed(1),
        reduction="none",
    ).numpy()
    got_se = ref_se * math.sqrt(400_000 / S)
    margin = 5 * np.sqrt(got_se**2 + ref_se**2)
    assert np.all(np.abs(got - ref) < margin), (got, ref, margin)
    assert margin.max() < 0.03  # sharp enough to see the traps below

    # traps fall outside the margin (> 10 standard errors): noise only on the true logit, and the
    # mean of per-sample cross-entropies
    trap_true, _, _ = _reference_mc(mu, sigma, y, 400_000, 2, noise_on="true")
    assert np.all(np.abs(trap_true - ref) > 2 * margin)
    assert np.all(per_sample_ce - ref > 10 * margin)


def test_jensen_mean_per_sample_cross_entropy_is_an_upper_bound():
    mu = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]], dtype=torch.float64)
    sigma = torch.tensor([[2.0, 1.0, 0.5], [1.0, 3.0, 2.0]], dtype=torch.float64)
    y = torch.tensor([0, 2])
    (eps,) = contract_noise(5, [50], mu.shape)
    per_sample_ce = -torch.log_softmax(mu + sigma * eps, 2)[:, torch.arange(2), y].mean(0)  # same noise
    loss = heteroscedastic_loss(mu, sigma, y, samples=50, generator=torch.Generator().manual_seed(5), reduction="none")
    assert bool((per_sample_ce > loss + 0.05).all())


# ------------------------------------------------------------------------------------------ loss: shapes, dtypes
def test_segmentation_ignore_index_and_reductions():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(2, 3, 4, 5, generator=g)
    sigma = torch.rand(2, 1, 4, 5, generator=g)  # one scale per pixel is accepted
    y = torch.randint(0, 3, (2, 4, 5), generator=g)
    y[1, 2:, :] = -100
    kw = dict(samples=9, ignore_index=-100)
    per = heteroscedastic_loss(mu, sigma, y, reduction="none", generator=torch.Generator().manual_seed(1), **kw)
    assert per.shape == (2, 4, 5) and bool((per[1, 2:] == 0).all())
    mean = heteroscedastic_loss(mu, sigma, y, generator=torch.Generator().manual_seed(1), **kw)
    total = heteroscedastic_loss(mu, sigma, y, reduction="sum", generator=torch.Generator().manual_seed(1), **kw)
    torch.testing.assert_close(mean, per[y != -100].mean())
    torch.testing.assert_close(total, per.sum())
    # σ = 0 with ignore_index matches torch's cross-entropy
    ce = F.cross_entropy(mu, y, ignore_index=-100)
    torch.testing.assert_close(heteroscedastic_loss(mu, torch.zeros_like(mu), y, **kw), ce)


def test_half_precision_is_computed_in_float32_and_seeded_runs_repeat():
    mu, sigma, y = torch.randn(4, 3).half(), torch.rand(4, 3).half(), torch.tensor([0, 1, 2, 0])
    a = heteroscedastic_loss(mu, sigma, y, generator=torch.Generator().manual_seed(0))
    b = heteroscedastic_loss(mu, sigma, y, generator=torch.Generator().manual_seed(0))
    c = heteroscedastic_loss(mu, sigma, y, generator=torch.Generator().manual_seed(1))
    assert a.dtype == torch.float32 and float(a) == float(b) and float(a) != float(c)


def test_loss_errors():
    mu, sigma, y = torch.zeros(2, 3), torch.ones(2, 3), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="`samples` must be a positive integer, got 0"):
        heteroscedastic_loss(mu, sigma, y, samples=0)
    with pytest.raises(ValueError, match="`temperature` must be a positive number, got 0"):
        heteroscedastic_loss(mu, sigma, y, temperature=0)
    with pytest.raises(ValueError, match=r"`reduction` must be one of \['mean', 'sum', 'none'\], got 'avg'"):
        heteroscedastic_loss(mu, sigma, y, reduction="avg")
    with pytest.raises(ValueError, match="`sigma` must be non-negative, got values down to -1"):
        heteroscedastic_loss(mu, -sigma, y)
    with pytest.raises(ValueError, match=r"`sigma` must have shape \(N, C, \.\.\.\) = \(2, 3\) or \(N, 1, \.\.\.\)"):
        heteroscedastic_loss(mu, torch.ones(2, 2), y)
    with pytest.raises(ValueError, match="`sigma` must be finite, got 1 NaN"):
        heteroscedastic_loss(mu, torch.tensor([[1.0, float("nan"), 1.0], [1.0, 1.0, 1.0]]), y)
    with pytest.raises(TypeError, match="`sigma` must be a floating-point tensor"):
        heteroscedastic_loss(mu, torch.ones(2, 3, dtype=torch.long), y)
    with pytest.raises(TypeError, match="`sigma` must be a tensor, got list"):
        heteroscedastic_loss(mu, [[1.0] * 3] * 2, y)
    with pytest.raises(ValueError, match=r"`labels` must be integers in \[0, 3\), got values in \[0, 5\]"):
        heteroscedastic_loss(mu, sigma, torch.tensor([0, 5]))
    with pytest.raises(ValueError, match=r"`labels` must have shape \(2,\) to match `mu`"):
        heteroscedastic_loss(mu, sigma, torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="`generator` must be a torch.Generator or None, got int"):
        heteroscedastic_loss(mu, sigma, y, generator=0)
    with pytest.raises(ValueError, match="`chunk` must be a positive integer, got 0"):
        heteroscedastic_loss(mu, sigma, y, chunk=0)


# ------------------------------------------------------------------------------------------ predict
def test_predict_matches_mean_of_sampled_softmaxes_and_exposes_sigma():
    mu = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    sigma = torch.tensor([[1.0, 2.0, 0.5], [0.3, 0.3, 3.0]], dtype=torch.float64)
    eps = torch.cat(contract_noise(4, [5, 5, 2], mu.shape))
    expected = torch.softmax(mu + sigma * eps, 2)  # (12, N, C)
    pred = heteroscedastic_predict(
        mu, sigma, samples=12, chunk=5, keep_samples=True, generator=torch.Generator().manual_seed(4)
    )
    assert pred.num_samples == 12
    torch.testing.assert_close(pred.probs, expected.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pred.samples, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pred.scores["sigma"], sigma.mean(1))
    # the NLL of the predictive mean is the loss with the same noise
    y = torch.tensor([1, 2])
    nll = -pred.log_probs[torch.arange(2), y].mean()
    loss = heteroscedastic_loss(mu, sigma, y, samples=12, chunk=5, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(nll, loss, rtol=1e-12, atol=1e-12)


def test_predict_zero_sigma_is_softmax_and_segmentation_shapes():
    mu = torch.randn(2, 4, 3, 5)
    pred = heteroscedastic_predict(mu, torch.zeros_like(mu), samples=7)
    torch.testing.assert_close(pred.probs, torch.softmax(mu, 1))
    assert float(pred.epistemic.max()) < 1e-5
    sigma = torch.rand(2, 1, 3, 5) * 2
    pred = heteroscedastic_predict(mu, sigma, samples=20)
    assert pred.probs.shape == (2, 4, 3, 5) and pred.aleatoric.shape == (2, 3, 5)
    torch.testing.assert_close(pred.scores["sigma"], sigma[:, 0])
    with pytest.raises(ValueError, match="`samples` must be a positive integer, got -1"):
        heteroscedastic_predict(mu, sigma, samples=-1)
    with pytest.raises(ValueError, match="`mu` must be finite"):
        heteroscedastic_predict(torch.full((1, 2), float("inf")), torch.ones(1, 2))


def test_more_noise_moves_predictions_towards_uniform():
    mu = torch.tensor([[4.0, 0.0, 0.0]])
    g = torch.Generator().manual_seed(0)
    tops = [
        float(heteroscedastic_predict(mu, torch.full((1, 3), s), samples=2000, generator=g).probs[0, 0])
        for s in (0.0, 1.0, 3.0, 10.0)
    ]
    assert tops == sorted(tops, reverse=True) and tops[-1] < 0.7


# ------------------------------------------------------------------------------------------ training with fit
def _noisy_region_data(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """2-D inputs in [-2, 2]²; label = [x1 > 0], flipped with probability 0.4 where x0 > 0."""
    x = torch.rand(n, 2, generator=g) * 4 - 2
    y = (x[:, 1] > 0).long()
    flip = (x[:, 0] > 0) & (torch.rand(n, generator=g) < 0.4)
    return x, torch.where(flip, 1 - y, y)


@pytest.mark.parametrize("seed", [0, 1])
def test_sigma_is_larger_where_labels_are_noisy(seed):
    g = torch.Generator().manual_seed(100 + seed)
    x, y = _noisy_region_data(1000, g)
    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
    model = HeteroscedasticClassifier(backbone, HeteroscedasticHead(32, 2), samples=20)
    fit(model, (x, y), loss=model.loss, epochs=15, lr=1e-2, batch_size=128, seed=seed)

    x_test, _ = _noisy_region_data(2000, g)  # fresh inputs
    sigma = model.predict(x_test, samples=20).scores["sigma"].numpy()
    noisy, clean = sigma[x_test[:, 0].numpy() > 0], sigma[x_test[:, 0].numpy() <= 0]
    # one-sided Mann-Whitney on fresh points
    assert stats.mannwhitneyu(noisy, clean, alternative="greater").pvalue < 1e-10
    # ratio of mean σ with a bootstrap 99% interval clearly above 1
    rng = np.random.default_rng(seed)
    ratios = [rng.choice(noisy, len(noisy)).mean() / rng.choice(clean, len(clean)).mean() for _ in range(1000)]
    assert np.quantile(ratios, 0.005) > 1.5


def test_classifier_trains_with_fit_classification_and_helpers():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(48, 1, 8, 8, generator=g), torch.randint(0, 3, (48,), generator=g)
    torch.manual_seed(0)
    cnn = SmallCNN(1, 3, width=4)
    model = HeteroscedasticClassifier(cnn, HeteroscedasticHead(cnn.feature_dim, 3), samples=5, val_samples=30)
    h = fit(model, (x, y), val_data=(x, y), loss=model.loss, val_loss=model.val_loss, epochs=2, batch_size=16)
    assert h.epochs_run == 2 and all(math.isfinite(v) for v in h.train_loss + h.val_loss)
    model.train()
    pred = model.predict(x[:5], samples=10)
    assert model.training  # mode restored
    assert pred.probs.shape == (5, 3) and pred.scores["sigma"].shape == (5,)
    # val_loss uses common random numbers: same output, same value
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert float(model.val_loss(out, y)) == float(model.val_loss(out, y))
    ref = heteroscedastic_loss(*out, y, samples=30, generator=torch.Generator().manual_seed(0))
    assert float(model.val_loss(out, y)) == float(ref)


def test_spatial_head_trains_with_fit_segmentation_ignore_index():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 1, 8, 8, generator=g)
    y = torch.randint(0, 3, (8, 8, 8), generator=g)
    y[:, :2] = 255
    torch.manual_seed(0)
    unet = SmallUNet(1, 3, width=4)
    model = HeteroscedasticClassifier(
        unet, HeteroscedasticHead(unet.feature_dim, 3, spatial=True), samples=4, ignore_index=255, val_samples=8
    )
    h = fit(model, (x, y), val_data=(x, y), loss=model.loss, val_loss=model.val_loss, epochs=2, batch_size=4)
    assert all(math.isfinite(v) for v in h.train_loss + h.val_loss)
    pred = model.predict(x[:2], samples=6)
    assert pred.probs.shape == (2, 3, 8, 8) and pred.scores["sigma"].shape == (2, 8, 8)
    # a plain module backbone (no `embed`) and a functional loss closure
    plain = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), HeteroscedasticHead(4, 3, spatial=True))
    h = fit(plain, (x, y), loss=lambda out, t: heteroscedastic_loss(*out, t, samples=3, ignore_index=255), epochs=1)
    assert math.isfinite(h.train_loss[0])


def test_heteroscedastic_nll_is_the_predictive_nll_with_fixed_noise():
    g = torch.Generator().manual_seed(3)
    mu = torch.randn(6, 4, dtype=torch.float64, generator=g)
    sigma = torch.rand(6, 4, dtype=torch.float64, generator=g) * 2
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    got = heteroscedastic_nll(mu, sigma, y, samples=40, seed=7)
    # independent reference: the documented noise, mean of the sampled softmaxes, −log of the label's entry
    eps = torch.cat(contract_noise(7, [40], mu.shape))
    p_bar = torch.softmax(mu + sigma * eps, 2).mean(0)
    torch.testing.assert_close(got, -p_bar[torch.arange(6), y].log().mean(), rtol=1e-12, atol=1e-12)
    assert float(got) == float(heteroscedastic_nll(mu, sigma, y, samples=40, seed=7))  # common random numbers
    assert float(got) != float(heteroscedastic_nll(mu, sigma, y, samples=40, seed=8))
    per = heteroscedastic_nll(mu, sigma, y, samples=40, seed=7, reduction="none")
    assert per.shape == (6,)
    torch.testing.assert_close(per.mean(), got)


def test_heteroscedastic_nll_is_val_loss_for_any_model_segmentation_ignore_index():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 4, 5, generator=g)
    y = torch.randint(0, 3, (3, 4, 5), generator=g)
    y[0, 0] = 255
    torch.manual_seed(0)
    clf = HeteroscedasticClassifier(
        nn.Conv2d(2, 4, 1), HeteroscedasticHead(4, 3, spatial=True), ignore_index=255, val_samples=16, temperature=1.4
    )
    plain = nn.Sequential(clf.backbone, clf.head)  # not a HeteroscedasticClassifier, same (mu, sigma)
    with torch.no_grad():
        out = plain(x)
        ref = clf.val_loss(clf(x), y)
    got = heteroscedastic_nll(*out, y, samples=16, temperature=1.4, ignore_index=255)
    assert float(got) == float(ref)
    per = heteroscedastic_nll(*out, y, samples=16, temperature=1.4, ignore_index=255, reduction="none")
    assert float(per[0, 0].abs().max()) == 0.0


def test_heteroscedastic_nll_errors():
    mu, sigma, y = torch.zeros(2, 3), torch.ones(2, 3), torch.tensor([0, 1])
    with pytest.raises(TypeError, match="`mu` must be a tensor, got list"):
        heteroscedastic_nll([[0.0, 0.0]], sigma, y)
    with pytest.raises(TypeError, match="`seed` must be an integer, got float"):
        heteroscedastic_nll(mu, sigma, y, seed=0.5)
    with pytest.raises(TypeError, match="`seed` must be an integer, got bool"):
        heteroscedastic_nll(mu, sigma, y, seed=True)
    with pytest.raises(ValueError, match="`samples` must be a positive integer, got 0"):
        heteroscedastic_nll(mu, sigma, y, samples=0)


def test_predict_restores_each_module_flag_exactly():
    """Regression: predict restored with self.train(was), unfreezing a BatchNorm the user froze."""
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8))
    model = HeteroscedasticClassifier(backbone, HeteroscedasticHead(8, 3)).train()
    backbone[1].eval()
    stats_before = backbone[1].running_mean.clone()
    model.predict(torch.randn(4, 3), samples=5)
    assert model.training and backbone[0].training and not backbone[1].training
    assert torch.equal(backbone[1].running_mean, stats_before)


def test_classifier_errors():
    with pytest.raises(TypeError, match="`backbone` must be an nn.Module, got function"):
        HeteroscedasticClassifier(lambda x: x, HeteroscedasticHead(2, 2))
    with pytest.raises(ValueError, match="`samples` must be a positive integer, got 0"):
        HeteroscedasticClassifier(nn.Identity(), HeteroscedasticHead(2, 2), samples=0)


def test_exported_names():
    names = ("HeteroscedasticHead", "HeteroscedasticClassifier", "heteroscedastic_loss", "heteroscedastic_predict")
    for name in (*names, "heteroscedastic_nll"):
        assert name in netuq.__all__ and hasattr(netuq, name)
        assert name in netuq.methods.__all__ and hasattr(netuq.methods, name)


def test_a_masked_class_follows_the_rule_of_prediction_from_logits():
    """-inf in ``mu`` for a masked class is accepted; it keeps probability 0 and the NLL stays finite."""
    mu = torch.tensor([[2.0, 0.0, -math.inf], [0.0, 1.0, -math.inf]])
    sigma = torch.full((2, 3), 0.5)
    pred = netuq.heteroscedastic_predict(mu, sigma, samples=8, generator=torch.Generator().manual_seed(0))
    assert bool((pred.probs[:, 2] == 0).all()) and not torch.isnan(pred.probs).any()
    assert math.isfinite(float(netuq.heteroscedastic_nll(mu, sigma, torch.tensor([0, 1]), samples=8)))
