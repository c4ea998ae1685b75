"""AUGRC and selective risk at a coverage: exact against the plain-loop reference, tie-aware, invariant."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from reference.nonparametric_reference import augrc_reference, selective_risk_reference

from netuq import metrics


def sample(n=60, c=4, seed=0, levels=None):
    g = torch.Generator().manual_seed(seed)
    z = 2 * torch.randn(n, c, generator=g, dtype=torch.float64)
    if levels:
        z = (z * levels).round() / levels  # ties in the confidence
    y = torch.multinomial(z.softmax(1), 1, generator=g).squeeze(1)
    return z.softmax(1), y


def conf_err(p, y):
    return p.max(1).values.numpy(), (p.argmax(1) != y).double().numpy()


@given(st.integers(1, 80), st.integers(0, 10_000), st.sampled_from([None, 1, 2]))
def test_augrc_equals_reference_and_is_permutation_invariant(n, seed, levels):
    p, y = sample(n, seed=seed, levels=levels)
    got = metrics.augrc(p, y)
    assert got == pytest.approx(augrc_reference(*conf_err(p, y)), rel=1e-12, abs=1e-15)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    assert metrics.augrc(p[perm], y[perm]) == pytest.approx(got, rel=1e-12, abs=1e-15)
    assert 0.0 <= got <= metrics.aurc(p, y) + 1e-15  # generalised risk k/n · risk <= risk


@given(st.integers(1, 80), st.integers(0, 10_000), st.sampled_from([None, 1, 2]),
       st.sampled_from([0.01, 0.1, 0.3, 0.5, 0.7, 0.95, 1.0]))
def test_selective_risk_equals_reference_and_is_permutation_invariant(n, seed, levels, coverage):
    p, y = sample(n, seed=seed, levels=levels)
    got = metrics.selective_risk(p, y, coverage=coverage)
    assert got == pytest.approx(selective_risk_reference(*conf_err(p, y), coverage), rel=1e-12, abs=1e-15)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    assert metrics.selective_risk(p[perm], y[perm], coverage=coverage) == pytest.approx(got, rel=1e-12, abs=1e-15)


def test_closed_forms():
    p = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    y = torch.tensor([0, 1, 0, 1])  # errors at ranks 2 and 4
    # errors among the k most confident: 0, 1, 1, 2 -> generalised risks /4, mean over k
    assert metrics.augrc(p, y) == pytest.approx((0 + 1 + 1 + 2) / 4 / 4)
    assert metrics.selective_risk(p, y, coverage=0.5) == pytest.approx(0.5)
    assert metrics.selective_risk(p, y, coverage=0.3) == pytest.approx(0.5)  # ceil(1.2) = 2 kept
    assert metrics.selective_risk(p, y, coverage=0.25) == 0.0
    # all tied: every coverage sees the mean error rate
    tied = torch.full((4, 2), 0.5)
    assert metrics.selective_risk(tied, y, coverage=0.25) == pytest.approx(0.5)
    assert metrics.augrc(tied, y) == pytest.approx(np.mean([0.5 * k / 4 for k in range(1, 5)]))


def test_segmentation_ignore_index_scores_and_dtypes():
    g = torch.Generator().manual_seed(3)
    p = torch.randn(2, 3, 4, 4, generator=g).softmax(1)
    y = torch.randint(0, 3, (2, 4, 4), generator=g)
    y[0, 0] = 255
    keep = (y != 255).reshape(-1)
    flat_p, flat_y = p.movedim(1, -1).reshape(-1, 3)[keep], y.reshape(-1)[keep]
    assert metrics.augrc(p, y, ignore_index=255) == pytest.approx(metrics.augrc(flat_p, flat_y), rel=1e-12)
    s = torch.rand(2, 4, 4, generator=g)
    assert metrics.selective_risk(p, y, coverage=0.4, scores=s, ignore_index=255) == pytest.approx(
        metrics.selective_risk(flat_p, flat_y, coverage=0.4, scores=s.reshape(-1)[keep]))
    assert metrics.augrc(p.half(), y, ignore_index=255) == pytest.approx(
        metrics.augrc(p.half().double(), y, ignore_index=255), rel=1e-12)


@pytest.mark.parametrize("coverage", [0, 1.5, -0.1, True, "0.5", float("nan")])
def test_bad_coverage(coverage):
    p, y = sample(10)
    with pytest.raises(ValueError, match="`coverage` must be a number in \\(0, 1\\]"):
        metrics.selective_risk(p, y, coverage=coverage)
