"""FeatureTap: a layer's pooled output captured during the method's own forwards, into Prediction.features."""

from __future__ import annotations

import torch
from torch import nn

from netuq import MCDropout, Prediction
from netuq.detectors.features import FeatureTap, LayerFeatures, find_module


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Dropout(0.3), nn.Linear(4 * 36, 3))


def test_plain_module_features_equal_a_separate_eval_forward_and_outputs_are_unchanged():
    model = net()
    x = torch.randn(5, 1, 6, 6)
    base = lambda x: Prediction.from_logits(model(x))  # noqa: E731
    tap = FeatureTap(model, "1").wrap(base)
    with torch.no_grad():
        model.eval()
        pred, plain = tap(x), base(x)
    assert torch.equal(pred.probs, plain.probs)
    torch.testing.assert_close(pred.features, LayerFeatures(model, "1")(x))
    assert pred.features.shape == (5, 4) and pred.features.dtype == torch.float64
    assert not model[1]._forward_hooks  # the hook is gone


def test_mc_dropout_gets_the_networks_eval_features_whatever_it_samples():
    model = net()
    mc = MCDropout(model, samples=4, seed=0)
    assert find_module(mc, "4") is model and find_module(mc, "nope") is None
    x = torch.randn(3, 1, 6, 6)
    pred = FeatureTap(model, "3").wrap(mc)(x)  # after the dropout: eval mode passes it through
    with torch.no_grad():
        want = model.eval()[:3](x).double()
    torch.testing.assert_close(pred.features, want)
    plain = mc(x)
    torch.testing.assert_close(pred.probs, plain.probs)  # the method's own output is unchanged
