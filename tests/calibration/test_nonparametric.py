"""Histogram binning and isotonic regression: exact against references, invariants, persistence, protocol."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from reference.nonparametric_reference import (
    histogram_fit_reference,
    histogram_top_label_reference,
    share_rest_reference,
)
from sklearn.isotonic import IsotonicRegression as SkIsotonic

from netuq.calibration import CALIBRATORS, HistogramBinning, IsotonicRegression, cross_validate, load
from netuq.calibration.histogram import share_rest
from netuq.exceptions import NotFittedError


def overconfident(n=600, c=5, seed=0, dtype=torch.float64, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    z = scale * torch.randn(n, c, generator=g, dtype=torch.float64)
    y = torch.multinomial((z / 2).softmax(1), 1, generator=g).squeeze(1)
    return z.to(dtype), y


def quiet(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(*args, **kw)


# ----------------------------------------------------------------------------- isotonic vs scikit-learn
@pytest.mark.parametrize("seed,n,c,scale", [(0, 500, 4, 3.0), (1, 2000, 10, 3.0), (2, 60, 3, 3.0),
                                            (3, 1500, 30, 12.0)])  # the last: many p < 1e-15, pooled
def test_isotonic_equals_sklearn_one_vs_rest_renormalised(seed, n, c, scale):
    z, y = overconfident(n, c, seed=seed, scale=scale)
    zt, _ = overconfident(400, c, seed=seed + 100, scale=scale)
    iso = IsotonicRegression(min_prob=1e-300).fit(z, y)
    p, pt = z.softmax(1).numpy(), zt.softmax(1).numpy()
    ref = np.stack([SkIsotonic(out_of_bounds="clip").fit(p[:, k], (y.numpy() == k)).predict(pt[:, k])
                    for k in range(c)], 1)
    ref = ref / ref.sum(1, keepdims=True)
    got = iso.predict_proba(zt).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-299)
    # the stored breakpoints are sklearn's thresholds
    off = np.concatenate([[0], np.cumsum(iso.points_.numpy().astype(int))])
    for k in range(c):
        sk = SkIsotonic(out_of_bounds="clip").fit(p[:, k], (y.numpy() == k))
        np.testing.assert_allclose(iso.x_[off[k]:off[k + 1]].numpy(), sk.X_thresholds_, rtol=0, atol=0)
        np.testing.assert_allclose(iso.y_[off[k]:off[k + 1]].numpy(), sk.y_thresholds_, rtol=1e-12, atol=1e-15)


def test_isotonic_with_tied_probabilities_equals_sklearn():
    z, y = overconfident(600, 3, seed=4)
    z = (z * 2).round() / 2  # many tied probabilities
    iso = IsotonicRegression(min_prob=1e-300).fit(z, y)
    p = z.softmax(1).numpy()
    sk = [SkIsotonic(out_of_bounds="clip").fit(p[:, k], y.numpy() == k) for k in range(3)]
    ref = np.stack([sk[k].predict(p[:, k]) for k in range(3)], 1)
    ref = ref / ref.sum(1, keepdims=True)
    np.testing.assert_allclose(iso.predict_proba(z).numpy(), ref, rtol=1e-10, atol=1e-299)


def test_isotonic_unseen_class_passes_through_and_zero_rows_go_uniform():
    z, y = overconfident(300, 4, seed=5)
    y = y.clamp_max(2)  # class 3 never occurs
    with pytest.warns(RuntimeWarning, match="1 class\\(es\\) never occur.*class 3"):
        iso = IsotonicRegression(min_prob=1e-300).fit(z, y)
    assert iso.points_[3] == 0
    p = z.softmax(1)
    raw = iso.predict_proba(z)
    # the unseen class's column before renormalisation is the raw probability
    ratio = raw[:, 3] / p[:, 3]
    others = raw[:, :3].sum(1) / (1 - raw[:, 3])
    assert torch.allclose(raw.sum(1), torch.ones(300, dtype=torch.float64))
    assert bool((ratio > 0).all()) and bool(torch.isfinite(others).all())
    # an all-zero row (every map 0 at these inputs) becomes uniform
    iso2 = IsotonicRegression()
    iso2.num_classes_ = 2
    iso2.points_ = torch.tensor([1.0, 1.0], dtype=torch.float64)
    iso2.x_ = torch.tensor([0.5, 0.5], dtype=torch.float64)
    iso2.y_ = torch.tensor([0.0, 0.0], dtype=torch.float64)
    assert torch.equal(iso2._probs(torch.tensor([[0.3, 0.7]], dtype=torch.float64)),
                       torch.tensor([[0.5, 0.5]], dtype=torch.float64))


def test_isotonic_can_change_the_predicted_class():
    # class 0 predicted but always wrong: isotonic learns it
    z = torch.tensor([[2.0, 0.0]] * 60 + [[0.0, 2.0]] * 60, dtype=torch.float64)
    y = torch.tensor([1] * 60 + [1] * 60)
    y[60:70] = 0
    iso = quiet(IsotonicRegression().fit, z, y)
    assert IsotonicRegression.changes_prediction and not HistogramBinning.changes_prediction
    assert int(iso(z[:1]).argmax(1)) == 1


# ----------------------------------------------------------------------------- histogram vs reference
@pytest.mark.parametrize("seed,n,c,ppb", [(0, 2000, 4, 50), (1, 3000, 10, 30), (2, 700, 3, 100), (3, 500, 5, 7)])
def test_histogram_fit_equals_reference(seed, n, c, ppb):
    z, y = overconfident(n, c, seed=seed)
    hb = quiet(HistogramBinning(points_per_bin=ppb).fit, z, y)
    ref = histogram_fit_reference(z.softmax(1).numpy(), y.numpy(), ppb)
    bins = hb.bins_.numpy().astype(int)
    e_off = np.concatenate([[0], np.cumsum(np.maximum(bins - 1, 0))])
    v_off = np.concatenate([[0], np.cumsum(bins)])
    assert {k for k in range(c) if bins[k]} == set(ref)
    for k, (edges, values) in ref.items():
        np.testing.assert_array_equal(hb.edges_[e_off[k]:e_off[k + 1]].numpy(), edges)
        np.testing.assert_allclose(hb.values_[v_off[k]:v_off[k + 1]].numpy(), values, rtol=1e-15)


@pytest.mark.parametrize("round_to", [None, 0.5])  # continuous, and many tied confidences
def test_histogram_transform_equals_reference_top_label_and_sharing(round_to):
    z, y = overconfident(3000, 6, seed=7)
    zt, _ = overconfident(500, 6, seed=8)
    if round_to:
        z, zt = (z / round_to).round() * round_to, (zt / round_to).round() * round_to
    hb = quiet(HistogramBinning(points_per_bin=40, min_prob=1e-300).fit, z, y)
    fit = histogram_fit_reference(z.softmax(1).numpy(), y.numpy(), 40)
    pt = zt.softmax(1).numpy()
    pred, q = histogram_top_label_reference(fit, pt)
    got = hb.predict_proba(zt).numpy()
    for i in range(len(q)):
        want = share_rest_reference(pt[i], int(pred[i]), float(q[i])) if int(pred[i]) in fit else pt[i]
        np.testing.assert_allclose(got[i], want, rtol=1e-9, atol=1e-14)
    assert (got.argmax(1) == pt.argmax(1)).all()


def test_histogram_small_class_is_left_as_it_is():
    z, y = overconfident(400, 3, seed=9)
    z[:, 2] -= 10  # class 2 almost never predicted
    with pytest.warns(RuntimeWarning, match="left uncalibrated"):
        hb = HistogramBinning(points_per_bin=50, min_prob=1e-300).fit(z, y)
    rows = z.argmax(1) == 2
    if rows.any():
        assert torch.allclose(hb.predict_proba(z[rows]), z[rows].softmax(1), rtol=1e-12)
    assert hb.bins_[2] == 0


@given(st.integers(2, 6), st.integers(0, 10_000), st.floats(0.0, 1.0))
def test_share_rest_keeps_the_predicted_class_and_matches_the_loop(c, seed, q):
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(4, c, generator=g, dtype=torch.float64) ** 3
    p[1, 1:] = 0.0  # all other probabilities 0: shared uniformly
    p = p / p.sum(1, keepdim=True)
    top = p.argmax(1)
    out = share_rest(p, top, torch.full((4,), q, dtype=torch.float64))
    assert torch.allclose(out.sum(1), torch.ones(4, dtype=torch.float64), atol=1e-12)
    assert torch.equal(out.argmax(1), top)
    assert torch.equal(out.float().log().softmax(1).argmax(1), top)  # strict even after float32 log/softmax
    for i in range(4):
        np.testing.assert_allclose(out[i].numpy(), share_rest_reference(p[i].numpy(), int(top[i]), q), atol=1e-13)
        assert float(out[i, top[i]]) >= max(q, 1 / c) - 1e-12  # q is only ever raised, never lowered


# ----------------------------------------------------------------------------- shared behaviour
MAKERS = (lambda: HistogramBinning(points_per_bin=20), IsotonicRegression)


@pytest.mark.parametrize("make", MAKERS)
def test_registry_names_and_traits(make):
    cal = make()
    assert CALIBRATORS[cal.name] is type(cal)
    assert CALIBRATORS["temperature"].changes_prediction is False
    assert CALIBRATORS["vector"].changes_prediction and CALIBRATORS["matrix"].changes_prediction


@pytest.mark.parametrize("make", MAKERS)
def test_row_order_and_batch_split_invariance(make):
    z, y = overconfident(800, 4, seed=11)
    perm = torch.randperm(800, generator=torch.Generator().manual_seed(0))
    a, b = quiet(make().fit, z, y), quiet(make().fit, z[perm], y[perm])
    assert torch.equal(a(z), b(z))
    assert torch.equal(a(z), torch.cat([a(z[:300]), a(z[300:])]))


@pytest.mark.parametrize("make", MAKERS)
def test_segmentation_with_ignore_index_equals_flattened_valid_pixels(make):
    g = torch.Generator().manual_seed(12)
    z = 3 * torch.randn(3, 4, 10, 12, generator=g)
    y = torch.randint(0, 4, (3, 10, 12), generator=g)
    y[0, :3] = 255
    seg = quiet(make().fit, z, y, ignore_index=255)
    flat_z, flat_y = z.movedim(1, -1).reshape(-1, 4), y.reshape(-1)
    flat = quiet(make().fit, flat_z[flat_y != 255], flat_y[flat_y != 255])
    out = seg(z)
    assert out.shape == z.shape and out.dtype == z.dtype
    assert torch.equal(out.movedim(1, -1).reshape(-1, 4), flat(flat_z))
    # the bounded pixel sample: max_samples fits on a seeded subsample
    sub = quiet(make().fit, z, y, ignore_index=255, max_samples=100, seed=3)
    assert sub.n_samples_ == 100 and torch.equal(sub(z), quiet(make().fit, z, y, ignore_index=255,
                                                                max_samples=100, seed=3)(z))


@pytest.mark.parametrize("make", MAKERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dtypes_follow_the_input_and_stay_finite(make, dtype):
    z, y = overconfident(600, 4, seed=13)
    cal = quiet(make().fit, z.to(dtype), y)
    out = cal(z.to(dtype))
    assert out.dtype == dtype and bool(torch.isfinite(out).all())
    assert torch.allclose(cal.predict_proba(z.to(dtype)).float().sum(1), torch.ones(600), atol=2e-2)


@pytest.mark.parametrize("make", MAKERS)
def test_save_load_round_trip_is_exact(tmp_path, make):
    z, y = overconfident(900, 5, seed=14)
    cal = quiet(make().fit, z, y)
    back = load(cal.save(tmp_path / "c.json"))
    assert type(back) is type(cal) and back.get_params() == cal.get_params()
    assert torch.equal(back(z), cal(z))
    assert back.nll_after_ == cal.nll_after_


@pytest.mark.parametrize(
    "cls,edit,match",
    [
        (HistogramBinning, lambda d: d["fitted"].update(values=d["fitted"]["values"][:-1]), "bins.*must sum"),
        (HistogramBinning, lambda d: d["fitted"]["values"].__setitem__(0, 1.5), "values.*\\[0, 1\\]"),
        (HistogramBinning, lambda d: d["fitted"]["bins"].__setitem__(0, 2.5), "bins.*integers"),
        (HistogramBinning, lambda d: d["fitted"].update(edges=sorted(d["fitted"]["edges"], reverse=True)),
         "increase strictly"),
        (IsotonicRegression, lambda d: d["fitted"].update(y=d["fitted"]["y"][:-1]), "`y` must have the length"),
        (IsotonicRegression, lambda d: d["fitted"]["x"].__setitem__(0, -0.1), "`x` must lie in"),
        (IsotonicRegression, lambda d: d["fitted"].update(y=d["fitted"]["y"][::-1]), "must not decrease"),
        (IsotonicRegression, lambda d: d["params"].update(min_prob=0.4), "min_prob"),
        (IsotonicRegression, lambda d: d["fitted"].update(x="oops"), "fitted.x"),
    ],
)
def test_load_refuses_values_the_fit_would_not_produce(tmp_path, cls, edit, match):
    z, y = overconfident(900, 4, seed=15)
    path = quiet((cls(points_per_bin=20) if cls is HistogramBinning else cls()).fit, z, y).save(tmp_path / "c.json")
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=match):
        load(path)


@pytest.mark.parametrize("make", MAKERS)
def test_errors(make):
    cal = make()
    with pytest.raises(NotFittedError):
        cal(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="min_prob"):
        type(cal)(min_prob=0.0)
    with pytest.raises(ValueError, match="min_prob.*below 1/\\(2C\\)"):
        type(cal)(min_prob=0.3).fit(*overconfident(100, 3))
    with pytest.raises(ValueError, match="look like probabilities"):
        cal.fit(torch.full((10, 2), 0.5), torch.zeros(10, dtype=torch.long))
    with pytest.raises(ValueError, match="points_per_bin"):
        HistogramBinning(points_per_bin=0)


@pytest.mark.parametrize("name", ["histogram", "isotonic"])
def test_two_fold_protocol_improves_an_overconfident_model(name):
    z, y = overconfident(3000, 4, seed=16, scale=4.0)
    cv = quiet(cross_validate, CALIBRATORS[name], z, y, repeats=2)
    assert cv["ece"]["mean"] < cv["uncalibrated"]["ece"]["mean"]
    assert cv["nll"]["mean"] < cv["uncalibrated"]["nll"]["mean"]
    if name == "histogram":
        assert all(s["calibrated"]["accuracy"] == s["uncalibrated"]["accuracy"] for s in cv["splits"])
