"""Mahalanobis detector: against scikit-learn / scipy, streaming == all at once, the layer hook, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.spatial.distance import mahalanobis as scipy_mahalanobis
from sklearn.covariance import EmpiricalCovariance
from torch import nn

from netuq.detectors import LayerFeatures, Mahalanobis
from netuq.exceptions import NotFittedError


def blobs(n=600, d=5, c=3, seed=0, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (n,), generator=g)
    centres = 3 * torch.randn(c, d, generator=g, dtype=torch.float64)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64)
    f = centres[y] + torch.randn(n, d, generator=g, dtype=torch.float64) @ mix + offset
    return f, y


def test_covariance_and_means_equal_sklearn_on_pooled_centred_features():
    f, y = blobs()
    det = Mahalanobis(ridge=0.0).partial_fit(f, y)
    means = torch.stack([f[y == c].mean(0) for c in range(3)])
    torch.testing.assert_close(det.means_, means, rtol=1e-12, atol=1e-12)
    centred = (f - means[y]).numpy()
    ref = EmpiricalCovariance(assume_centered=True).fit(centred)
    np.testing.assert_allclose(det.covariance_.numpy(), ref.covariance_, rtol=1e-10, atol=1e-12)
    assert det.n_samples_ == 600 and det.counts_.tolist() == torch.bincount(y).tolist()


def test_scores_equal_scipy_min_over_classes():
    f, y = blobs(seed=1)
    ft, _ = blobs(50, seed=2)
    det = Mahalanobis(ridge=1e-3).partial_fit(f, y)
    cov = det.covariance_.numpy()
    vi = np.linalg.inv(cov + 1e-3 * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0]))
    ref = [min(scipy_mahalanobis(x, m, vi) ** 2 for m in det.means_.numpy()) for x in ft.numpy()]
    np.testing.assert_allclose(det.score(ft).numpy(), ref, rtol=1e-9)


@given(st.lists(st.integers(1, 200), min_size=1, max_size=6), st.integers(0, 1000))
def test_streaming_equals_all_at_once_whatever_the_batches(sizes, seed):
    f, y = blobs(sum(sizes) + 20, seed=seed)
    whole = Mahalanobis().partial_fit(f, y)
    parts = Mahalanobis()
    start = 0
    for n in [*sizes, 20]:
        parts.partial_fit(f[start:start + n], y[start:start + n], num_classes=3)
        start += n
    torch.testing.assert_close(parts.covariance_, whole.covariance_, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(parts.means_, whole.means_, rtol=1e-11, atol=1e-11, equal_nan=True)
    torch.testing.assert_close(parts.score(f[:30]), whole.score(f[:30]), rtol=1e-8, atol=1e-9)
    perm = torch.randperm(f.shape[0], generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(Mahalanobis().partial_fit(f[perm], y[perm]).score(f[:30]), whole.score(f[:30]),
                               rtol=1e-8, atol=1e-9)


def test_a_large_feature_offset_does_not_cost_precision():
    f, y = blobs(seed=3)
    a = Mahalanobis().partial_fit(f, y).score(f[:40])
    b = Mahalanobis().partial_fit(f + 1e6, y).score(f[:40] + 1e6)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_state_is_independent_of_n():
    det = Mahalanobis()
    for seed in range(3):
        det.partial_fit(*blobs(500, d=7, c=4, seed=seed), num_classes=4)
    assert det._sums.shape == (4, 7) and det._scatter.shape == (7, 7) and det._counts.shape == (4,)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        h = self.drop(torch.relu(self.conv(x)))
        return self.head(h.mean((2, 3)))


def test_fit_on_a_model_layer_equals_partial_fit_on_its_pooled_features():
    torch.manual_seed(0)
    net = Net().train()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(90, 1, 6, 6, generator=g)
    y = torch.randint(0, 3, (90,), generator=g)
    loader = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 90, 32)]
    det = Mahalanobis(layer="conv").fit(net, loader)
    assert net.training and net.drop.training  # train flags restored
    with torch.no_grad():
        feats = net.conv(x).double().mean((2, 3))  # eval: the conv output, averaged over H, W
    ref = Mahalanobis().partial_fit(feats, y)
    torch.testing.assert_close(det.covariance_, ref.covariance_, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(det.score_inputs(x[:10]), ref.score(feats[:10]), rtol=1e-8, atol=1e-10)
    # eval-mode features: dropout after the layer does not matter, and two calls agree
    torch.testing.assert_close(det.score_inputs(x[:10]), det.score_inputs(x[:10]))


def test_errors():
    net = Net()
    with pytest.raises(ValueError, match="`layer` must name a submodule of Net, got 'nope'"):
        LayerFeatures(net, "nope")
    with pytest.raises(NotFittedError):
        Mahalanobis().score(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="`ridge` must be a number >= 0"):
        Mahalanobis(ridge=-1)
    with pytest.raises(ValueError, match="`layer` must be set"):
        Mahalanobis().fit(net, [])
    with pytest.raises(ValueError, match="singular"):
        Mahalanobis(ridge=0.0).partial_fit(torch.ones(10, 4, dtype=torch.float64), torch.zeros(10, dtype=torch.long)
                                           ).score(torch.ones(1, 4))
    with pytest.raises(ValueError, match="`features` must have shape \\(N, 5\\)"):
        Mahalanobis().partial_fit(*blobs()).score(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="`labels` must have shape"):
        Mahalanobis().partial_fit(torch.zeros(4, 2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="`labels` must be in \\[0, 2\\)"):
        Mahalanobis().partial_fit(torch.randn(4, 2), torch.tensor([0, 1, 2, 0]), num_classes=2)
