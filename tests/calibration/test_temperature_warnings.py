"""What TemperatureScaling's warnings say happened when the fit stops at a bound.

Separable fit data whose Laplace-smoothed optimum lies above the largest allowed temperature
were reported as logits carrying "no (or inverted) information" (issue 22): the warning now says
that the data are separable and the smoothed target asks for a T beyond the bound.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from netuq.calibration import TemperatureScaling


def _fit(z, y) -> tuple[TemperatureScaling, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ts = TemperatureScaling().fit(z, y)
    return ts, [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


def test_a_smoothed_optimum_above_the_bound_is_not_called_inverted_information():
    # Two rows, both right with a margin of 1000: the smoothed target 1 - 1/(2+2) = 0.75 needs T = 1000/log 3 > 100.
    z, y = torch.tensor([[1000.0, 0.0], [0.0, 1000.0]]), torch.tensor([0, 1])
    ts, (message,) = _fit(z, y)
    assert ts.temperature_ == pytest.approx(100.0)
    assert "inverted" not in message
    assert "separable" in message and "n = 2" in message and "above the largest allowed T = 100" in message
    assert "widen `bounds` or fit on more data" in message


def test_anti_informative_logits_still_say_so():
    z, y = torch.tensor([[2.0, 0.0], [0.0, 2.0]] * 5), torch.tensor([1, 0] * 5)
    ts, (message,) = _fit(z, y)
    assert ts.temperature_ == pytest.approx(100.0)
    assert "no (or inverted) information" in message
