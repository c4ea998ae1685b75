"""Prediction.energy and Prediction.max_logit: closed forms, the mean over samples, running sums."""

from __future__ import annotations

import pickle

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.special import logsumexp

from netuq import Prediction


def logits(s=4, n=6, c=5, seed=0):
    return 3 * torch.randn(s, n, c, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_one_sample_closed_forms_against_scipy():
    z = logits(1)[0]
    pred = Prediction.from_logits(z)
    torch.testing.assert_close(pred.energy, torch.from_numpy(-logsumexp(z.numpy(), axis=1)), rtol=1e-12, atol=0)
    assert torch.equal(pred.max_logit, -z.amax(1))
    assert torch.equal(pred.uncertainty("energy"), pred.energy)
    assert torch.equal(pred.uncertainty("max_logit"), pred.max_logit)


@given(st.integers(1, 6), st.integers(0, 1000), st.integers(1, 3))
def test_samples_mean_of_each_sample_score_whatever_the_chunks(s, seed, chunk):
    z = logits(s, seed=seed)
    stacked = Prediction.from_samples(z, logits=True)
    one_by_one = Prediction()
    for i in range(0, s, chunk):
        one_by_one.add_logits(z[i:i + chunk], stacked=True)
    want_e = torch.from_numpy(-logsumexp(z.numpy(), axis=2).mean(0))
    want_m = -z.amax(2).mean(0)
    for pred in (stacked, one_by_one):
        torch.testing.assert_close(pred.energy, want_e, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(pred.max_logit, want_m, rtol=1e-12, atol=1e-12)
    assert stacked.samples is None  # nothing of size S is kept


def test_segmentation_shapes_masked_classes_and_temperature_one():
    z = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    z[:, 1, 0, 0] = float("-inf")
    pred = Prediction.from_logits(z)
    assert pred.energy.shape == (2, 4, 5) and bool(torch.isfinite(pred.energy).all())
    torch.testing.assert_close(pred.energy, -torch.logsumexp(z, 1))


def test_cat_to_and_pickle_keep_them():
    z = logits(3, n=8)
    a, b = Prediction.from_samples(z[:, :5], logits=True), Prediction.from_samples(z[:, 5:], logits=True)
    whole = Prediction.from_samples(z, logits=True)
    both = Prediction.cat([a, b])
    torch.testing.assert_close(both.energy, whole.energy)
    torch.testing.assert_close(both.max_logit, whole.max_logit)
    back = pickle.loads(pickle.dumps(both.to("cpu")))
    assert torch.equal(back.energy, both.energy)
    state = both.__dict__.copy()
    for key in ("_energy_sum", "_max_logit_sum", "_logit_count"):  # a Prediction pickled before they existed
        state.pop(key)
    old = Prediction.__new__(Prediction)
    old.__setstate__(state)
    assert not old.has_logit_scores


def test_probabilities_have_no_logit_scores():
    probs = logits(1)[0].softmax(1)
    for pred in (Prediction(probs), Prediction.from_logits(logits(1)[0])):
        pred.add(probs)  # one sample without logits: the mean over samples is undefined
        assert not pred.has_logit_scores
        with pytest.raises(ValueError, match="`energy` needs logits: this Prediction holds [12] of 2 sample"):
            _ = pred.energy
        with pytest.raises(ValueError, match="max_logit"):
            pred.uncertainty("max_logit")
    mixed = Prediction(probs)
    mixed.add_logits(logits(1)[0])
    assert not mixed.has_logit_scores
    assert not Prediction.cat([Prediction(probs), Prediction.from_logits(logits(1)[0])]).has_logit_scores
