"""A class masked to -inf: every calibrator accepts it (the rule of ``Prediction.from_logits``) and keeps it at 0.

References are independent of the code under test: a scipy minimisation of the NLL written in
numpy over the unmasked classes (temperature), and fits on the logits with the masked column
removed (vector / matrix scaling without a penalty: a masked class carries no evidence).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

from netuq import Prediction
from netuq.calibration import (
    HistogramBinning,
    IsotonicRegression,
    MatrixScaling,
    TemperatureScaling,
    VectorScaling,
    cross_validate,
    load,
)

NEG = float("-inf")


def _data(n=240, c=4, seed=0, masked=(3,)):
    g = torch.Generator().manual_seed(seed)
    z = 2.0 * torch.randn(n, c, generator=g, dtype=torch.float64)
    keep = [k for k in range(c) if k not in masked]
    y = torch.tensor(keep)[torch.multinomial((z[:, keep] / 2.0).softmax(1), 1, generator=g).squeeze(1)]
    zm = z.clone()
    zm[:, list(masked)] = NEG
    return z, zm, y, keep


def _reference_temperature(z: np.ndarray, y: np.ndarray) -> float:
    """argmin_T mean NLL of softmax(z / T) with -inf entries excluded (numpy logsumexp over finite entries)."""
    def nll(log_t):
        s = z / np.exp(log_t)
        return float(np.mean(logsumexp(s, axis=1) - s[np.arange(len(y)), y]))

    return float(np.exp(minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded",
                                        options={"xatol": 1e-10}).x))


def test_temperature_matches_the_reference_and_the_unmasked_fit():
    z, zm, y, keep = _data()
    ts = TemperatureScaling().fit(zm, y)
    with np.errstate(invalid="ignore"):
        ref = _reference_temperature(zm.numpy(), y.numpy())
    assert ts.temperature_ == pytest.approx(ref, rel=1e-5)
    assert ts.temperature_ == pytest.approx(TemperatureScaling().fit(z[:, keep], y).temperature_, rel=1e-9)
    p = ts.predict_proba(zm)
    assert not torch.isnan(p).any() and bool((p[:, 3] == 0).all())
    assert torch.isneginf(ts(zm)[:, 3]).all()
    torch.testing.assert_close(p[:, keep], (z[:, keep] / ref).softmax(1), rtol=0, atol=1e-5)


@pytest.mark.parametrize("cls, kw", [(VectorScaling, {"l2": None}), (MatrixScaling, {"odir": None}),
                                     (VectorScaling, {}), (MatrixScaling, {})])
def test_linear_masked_class_stays_zero_and_equals_the_reduced_fit(cls, kw):
    z, zm, y, keep = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        cal = cls(**kw).fit(zm, y)
    out = cal(zm)
    assert torch.isneginf(out[:, 3]).all() and torch.isfinite(out[:, keep]).all()
    p = cal.predict_proba(zm)
    assert bool((p[:, 3] == 0).all()) and torch.allclose(p.sum(1), torch.ones(len(y), dtype=p.dtype))
    if kw:  # no penalty: the masked class's parameters see no data, the rest is the reduced problem
        ref = cls(**kw).fit(z[:, keep], y)
        torch.testing.assert_close(p[:, keep], ref.predict_proba(z[:, keep]), rtol=0, atol=1e-8)


@pytest.mark.parametrize("cls", [HistogramBinning, IsotonicRegression, TemperatureScaling, VectorScaling,
                                 MatrixScaling])
def test_every_calibrator_fits_applies_saves_and_cross_validates(cls, tmp_path):
    z, zm, y, keep = _data(masked=(1,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        cal = cls().fit(zm, y)
        res = cross_validate(cls, zm, y, repeats=1)
    p = cal.predict_proba(zm)
    assert not torch.isnan(p).any() and bool((p[:, 1] == 0).all())
    assert np.isfinite(cal.nll_after_) and np.isfinite(res["nll"]["mean"])
    again = load(cal.save(tmp_path / "c.json"))
    torch.testing.assert_close(again.predict_proba(zm), p)


def test_segmentation_and_float32_with_a_masked_class():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(3, 3, 5, 5, generator=g)
    z[:, 2] = NEG
    y = torch.randint(0, 2, (3, 5, 5), generator=g)
    p = TemperatureScaling().fit(z, y).predict_proba(z)
    assert p.dtype == torch.float32 and bool((p[:, 2] == 0).all()) and not torch.isnan(p).any()


@pytest.mark.parametrize("bad, message", [
    (float("nan"), "NaN"), (float("inf"), r"\+Inf"), ("row", "all -inf"),
])
def test_the_same_errors_as_prediction(bad, message):
    z, zm, y, _ = _data()
    if bad == "row":
        zm[0] = NEG
    else:
        zm[0, 0] = bad
    with pytest.raises(ValueError, match=message):
        Prediction.from_logits(zm)
    for cal in (TemperatureScaling(), MatrixScaling()):
        with pytest.raises(ValueError, match=message):
            cal.fit(zm, y)
    fitted = TemperatureScaling().fit(z, y)
    with pytest.raises(ValueError, match=message):
        fitted.predict_proba(zm)


def test_a_label_on_a_masked_class_is_refused():
    z, zm, y, _ = _data()
    y = y.clone()
    y[:3] = 3
    with pytest.raises(ValueError, match="`labels` must not name a masked class: 3 label"):
        TemperatureScaling().fit(zm, y)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(8, 40), c=st.integers(3, 6))
def test_property_temperature_with_any_mask_pattern(seed, n, c):
    """Each row masks its own random classes (one finite entry at least: the label's)."""
    g = torch.Generator().manual_seed(seed)
    z = 3.0 * torch.randn(n, c, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (n,), generator=g)
    mask = torch.rand(n, c, generator=g) < 0.4
    mask[torch.arange(n), y] = False
    zm = z.masked_fill(mask, NEG)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ts = TemperatureScaling(bounds=(0.05, 20.0), separable="bound").fit(zm, y)
    with np.errstate(invalid="ignore"):
        ref = _reference_temperature(zm.numpy(), y.numpy())

    def nll(t):
        return float(torch.nn.functional.cross_entropy(zm / t, y))

    assert nll(ts.temperature_) <= nll(ref) + 1e-7
    p = ts.predict_proba(zm)
    assert not torch.isnan(p).any() and bool((p[mask] == 0).all())
    perm = torch.randperm(n, generator=g)  # invariance to row order
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        again = TemperatureScaling(bounds=(0.05, 20.0), separable="bound").fit(zm[perm], y[perm])
    assert again.temperature_ == pytest.approx(ts.temperature_, rel=1e-6)
