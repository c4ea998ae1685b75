"""The sum-to-one tolerance follows the dtype (netuq._checks.sum_tolerance), at every place probabilities are validated.

float16/bfloat16 values that are the exact rounding of valid probabilities (or log-probabilities)
were refused ("sums off by up to 0.001953", issue 22.13): rounding C probabilities moves the sum
by up to u = eps/2 plus C subnormal half-spacings, and rounding log-probabilities moves it by up to
u·log C. Every check accepts them; values that are not probabilities stay refused.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from netuq import Prediction, measures
from netuq._checks import check_probs, sum_tolerance
from netuq.calibration import TemperatureScaling
from netuq.cli._common import looks_like_probs
from netuq.metrics.streaming import UncertaintyMetrics

HALF = (torch.float16, torch.bfloat16)


def _valid(n: int, c: int, scale: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(scale * torch.randn(n, c, generator=g, dtype=torch.float64), 1)


def _accepted_everywhere(q: torch.Tensor) -> None:
    """Every validator of probabilities accepts ``q`` (N, C); the calibrators refuse it as logits."""
    check_probs(q)
    Prediction().add(q)
    Prediction.from_samples(q.unsqueeze(0))
    measures.entropy(q)
    labels = torch.zeros(len(q), dtype=torch.long)
    UncertaintyMetrics(q.shape[1]).update(q, labels)
    assert looks_like_probs(q)
    with pytest.raises(ValueError, match="look like probabilities"):
        TemperatureScaling().fit(q, labels)


def test_float16_log_probabilities_rounded_from_valid_ones_are_accepted():
    """The issue's case: log(1/64) in float16 is 0.3 ulp off, so exp sums to 1.0013 (> the old 1e-3)."""
    lq = torch.full((2, 64), -math.log(64), dtype=torch.float64).to(torch.float16)
    assert float((lq.float().exp().sum(1) - 1).abs().max()) > 1e-3
    pred = Prediction()
    pred.add_log_probs(lq)
    assert torch.allclose(pred.probs, torch.full((2, 64), 1 / 64), rtol=3e-3)


def test_float16_probabilities_below_the_smallest_normal_number_are_accepted():
    """C = 40,000 equal probabilities are subnormal in float16; each rounds by 0.43 spacing, the sum by 1.0e-3."""
    q = torch.full((2, 40_000), 1 / 40_000, dtype=torch.float64).to(torch.float16)
    assert float((q.double().sum(1) - 1).abs().max()) > 1e-3
    check_probs(q)
    UncertaintyMetrics(40_000).update(q, torch.zeros(2, dtype=torch.long))
    assert looks_like_probs(q)


@settings(max_examples=30)
@given(dtype=st.sampled_from(HALF), c=st.sampled_from([2, 3, 10, 64, 100, 1000]),
       scale=st.sampled_from([0.0, 0.3, 3.0, 30.0]), seed=st.integers(0, 5))
def test_the_rounding_of_valid_probabilities_is_accepted_everywhere(dtype, c, scale, seed):
    p = _valid(64, c, scale, seed)
    _accepted_everywhere(p.to(dtype))
    lq = p.log().to(dtype)
    Prediction().add_log_probs(lq)
    Prediction().add_log_probs(lq.float().log_softmax(1).to(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
def test_values_that_are_not_probabilities_stay_refused(dtype):
    p = _valid(32, 10, 1.0, 0)
    off = (p * 1.05).to(dtype)  # 5% off: beyond any dtype's rounding
    with pytest.raises(ValueError, match="must sum to 1"):
        check_probs(off)
    with pytest.raises(ValueError, match="must sum to 1"):
        UncertaintyMetrics(10).update(off, torch.zeros(32, dtype=torch.long))
    assert not looks_like_probs(off)
    with pytest.raises(ValueError, match="must be normalised"):
        Prediction().add_log_probs((p * 1.1).log().to(dtype))


@pytest.mark.parametrize(("dtype", "c", "log", "want"), [
    (torch.float32, 10, False, 1e-3), (torch.float64, 10 ** 6, True, 1e-3), (torch.bfloat16, 10, False, 2.0 ** -7),
    (torch.float16, 10, False, 1e-3), (torch.bfloat16, 1000, True, 2.0 ** -7 * (math.log(1000) + 1)),
])
def test_the_tolerance_is_twice_the_rounding_bound_and_at_least_1e3(dtype, c, log, want):
    assert sum_tolerance(dtype, c, log=log) == pytest.approx(want)
