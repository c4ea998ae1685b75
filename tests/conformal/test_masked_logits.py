"""Conformal estimators read logits by the rule of every entry point: -inf for a masked class is accepted."""

from __future__ import annotations

import pytest
import torch

from netuq.conformal import SplitConformal


@pytest.mark.parametrize("score", ["lac", "aps"])
def test_masked_class_is_never_in_a_set_and_matches_the_reduced_logits(score):
    g = torch.Generator().manual_seed(0)
    z = 3.0 * torch.randn(400, 4, generator=g, dtype=torch.float64)
    y = torch.distributions.Categorical(logits=z[:, :3]).sample()
    zm = z.clone()
    zm[:, 3] = float("-inf")
    cp = SplitConformal(score=score, alpha=0.1).fit(zm[:200], y[:200])
    sets = cp.predict(zm[200:])
    ref = SplitConformal(score=score, alpha=0.1).fit(z[:200, :3], y[:200]).predict(z[200:, :3])
    assert not sets[:, 3].any()
    assert torch.equal(sets[:, :3], ref)


def test_nan_is_still_refused():
    z = torch.zeros(10, 3)
    z[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        SplitConformal(score="lac", alpha=0.1).fit(z, torch.zeros(10, dtype=torch.long))
