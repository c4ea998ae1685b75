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


def _ood_run():
    net = _classifier()
    x, y = _cls_data(400)
    xc, yc = _cls_data(300, seed=1)
    g = torch.Generator().manual_seed(2)
    ood = {"far": _batches(4 * torch.randn(100, 4, generator=g) + 6),
           "noise": _batches(torch.randn(150, 4, generator=g))}
    methods = {"plain": net, "mc": netuq.MCDropout(net, samples=4, seed=0)}
    res = netuq.compare(methods, _batches(x, y), calibration=_batches(xc, yc), ood=ood, features="1", repeats=1)
    return res, net, methods, (x, y), (xc, yc), ood


@pytest.fixture(scope="module")
def ood_run():
    return _ood_run()


def test_logit_scores_per_ood_kind_equal_sklearn_on_predict(ood_run):
    res, _, methods, (x, y), _, ood = ood_run
    for name, method in methods.items():
        part = res["methods"][name]
        pred_in, _ = netuq.predict(method, _batches(x, y))
        for kind, loader in ood.items():
            pred_out, _ = netuq.predict(method, loader)
            for score in ("energy", "max_logit"):
                want = _auroc(getattr(pred_out, score), getattr(pred_in, score))
                assert part["ood_kinds"][kind][score]["auroc"] == pytest.approx(want, abs=1e-9), (name, kind, score)
        wrong = pred_in.prediction != y
        assert part["misclassification"]["energy"]["auroc"] == pytest.approx(
            _auroc(pred_in.energy[wrong], pred_in.energy[~wrong]), abs=1e-9)
    labels = res["vocabulary"]["scores"]
    assert labels["energy"]["label"] == "energy" and labels["mahalanobis"]["kind"] == "epistemic"


def test_mahalanobis_is_fitted_on_the_calibration_loader_and_scored_per_kind(ood_run):
    from netuq.detectors import Mahalanobis

    res, net, methods, (x, y), (xc, yc), ood = ood_run
    det = Mahalanobis(layer="1").fit(net, _batches(xc, yc), num_classes=4)
    u_in = det.score_inputs(x)
    for name in methods:  # the network's eval features: the same for the plain net and its MC dropout
        part = res["methods"][name]
        for kind, loader in ood.items():
            u_out = det.score_inputs(torch.cat([b[0] for b in loader]))
            assert part["ood_kinds"][kind]["mahalanobis"]["auroc"] == pytest.approx(_auroc(u_out, u_in), abs=1e-9)
    assert res["methods"]["plain"]["ood_kinds"]["far"]["mahalanobis"]["auroc"] > 0.99


def test_features_argument_errors_and_logit_scores_by_default():
    net = _classifier()
    x, y = _cls_data(100)
    with pytest.raises(ValueError, match="`features` needs `calibration`"):
        netuq.compare({"plain": net}, _batches(x, y), features="1")
    with pytest.raises(ValueError, match="`features` must name a layer of some method's network, got 'nope'"):
        netuq.compare({"plain": net}, _batches(x, y), calibration=_batches(x, y), features="nope")
    with pytest.raises(TypeError, match="`features` must be a layer name"):
        netuq.compare({"plain": net}, _batches(x, y), calibration=_batches(x, y), features=1)
    res = netuq.compare({"plain": net}, _batches(x, y), repeats=1, ood=_batches(torch.randn(50, 4)))
    assert {"energy", "max_logit"} <= set(res["methods"]["plain"]["ood"])
    assert "mahalanobis" not in res["methods"]["plain"]["ood"]  # no features asked for
