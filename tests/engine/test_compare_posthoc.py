"""netuq.compare with the non-parametric calibrators, the logit OOD scores and the Mahalanobis detector,
against in-memory references (netuq.predict, cross_validate, Mahalanobis fitted by hand, scikit-learn)."""

from __future__ import annotations

import warnings

import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

import netuq
from netuq.calibration import CALIBRATORS, cross_validate


def _classifier(c: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(c, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, c))


def _cls_data(n: int, c: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (n,), generator=g)
    return torch.randn(n, c, generator=g) + 2.0 * nn.functional.one_hot(y, c), y


def _batches(*tensors, size=100):
    return [tuple(t[i: i + size] for t in tensors) for i in range(0, len(tensors[0]), size)]


def _auroc(pos, neg) -> float:
    return roc_auc_score([1] * len(pos) + [0] * len(neg), torch.cat([pos, neg]).double().numpy())


@pytest.mark.parametrize("name", ["histogram", "isotonic"])
def test_protocol_numbers_equal_cross_validate(name):
    net = _classifier()
    x, y = _cls_data(600)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = netuq.compare({"plain": net}, _batches(x, y), calibrators=("none", name), repeats=2)
        pred, labels = netuq.predict(net, _batches(x, y))
        cv = cross_validate(CALIBRATORS[name], pred.log_probs, labels, repeats=2)
    got = res["methods"]["plain"]["in_distribution"][name]
    for metric in ("nll", "ece", "brier", "accuracy"):
        assert got[metric]["mean"] == pytest.approx(cv[metric]["mean"], rel=1e-6), metric


@pytest.mark.parametrize("name", ["histogram", "isotonic"])
def test_segmentation_fits_on_the_pixel_sample(name):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 3, 1))
    g = torch.Generator().manual_seed(1)
    test = []
    for _ in range(4):
        y = torch.randint(0, 3, (3, 10, 10), generator=g)
        x = (y.float() / 3 + 0.3 * torch.randn(3, 10, 10, generator=g)).unsqueeze(1)
        y[:, 0, :2] = 255
        test.append((x, y))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = netuq.compare({"net": net}, test, calibrators=("none", name), ignore_index=255, repeats=1)
        small = netuq.compare({"net": net}, test, calibrators=("none", name), ignore_index=255, repeats=1,
                              max_pixels=200, calibration_samples=150)
        pred, labels = netuq.predict(net, test)
        cv = cross_validate(CALIBRATORS[name], pred.log_probs, labels, ignore_index=255, repeats=1)
    got = res["methods"]["net"]["in_distribution"][name]
    for metric in ("nll", "ece", "accuracy"):
        assert got[metric]["mean"] == pytest.approx(cv[metric]["mean"], abs=1e-5), metric
    assert small["methods"]["net"]["in_distribution"][name]["nll"]["mean"] > 0
