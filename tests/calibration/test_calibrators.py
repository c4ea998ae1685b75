"""Calibrators: exact fits against scipy / scikit-learn / closed forms, invariants, persistence, errors."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from scipy.optimize import minimize, minimize_scalar

import netuq
from netuq.calibration import ODIR_GRID, MatrixScaling, TemperatureScaling, VectorScaling, load
from netuq.calibration._solvers import solve_temperature
from netuq.exceptions import NotFittedError

CALIBRATORS = (TemperatureScaling, VectorScaling, MatrixScaling)
# The same three with a fixed penalty (no inner cross-validation), and unregularised.
FIXED = (TemperatureScaling, lambda: VectorScaling(l2=0.1), lambda: MatrixScaling(odir=(1.0, 1.0)))
PLAIN = (TemperatureScaling, lambda: VectorScaling(l2=None), lambda: MatrixScaling(odir=None))


def overconfident(n=600, c=5, t_true=2.0, seed=0, dtype=torch.float32):
    """Logits z with labels drawn from softmax(z / t_true): the optimum temperature is about t_true."""
    g = torch.Generator().manual_seed(seed)
    z = 3.0 * torch.randn(n, c, generator=g, dtype=torch.float64)
    y = torch.multinomial((z / t_true).softmax(1), 1, generator=g).squeeze(1)
    return z.to(dtype), y


def ts_nll_np(beta, z, y):
    s = beta * z
    m = s.max(1, keepdims=True)
    lse = (m + np.log(np.exp(s - m).sum(1, keepdims=True))).squeeze(1)
    return float((lse - s[np.arange(len(y)), y]).mean())


# ----------------------------------------------------------------------------- temperature: exactness
def test_temperature_matches_scipy_minimize_scalar():
    z, y = overconfident(2000, 10, t_true=1.7, seed=1, dtype=torch.float64)
    ts = TemperatureScaling().fit(z, y)
    zn, yn = z.numpy(), y.numpy()
    res = minimize_scalar(ts_nll_np, bounds=(0.01, 100), args=(zn, yn), method="bounded", options={"xatol": 1e-12})
    assert ts.temperature_ == pytest.approx(1 / res.x, rel=1e-4)
    assert ts.nll_after_ == pytest.approx(res.fun, rel=1e-9)
    assert ts.nll_after_ <= res.fun + 1e-12
    assert ts.nll_before_ == pytest.approx(ts_nll_np(1.0, zn, yn), rel=1e-12)
    assert ts.n_passes_ <= 8 and ts.converged_


def test_temperature_float32_reaches_the_float64_optimum():
    z, y = overconfident(3000, 20, t_true=2.5, seed=2)
    ts = TemperatureScaling().fit(z, y)
    zn, yn = z.double().numpy(), y.numpy()
    res = minimize_scalar(ts_nll_np, bounds=(0.01, 100), args=(zn, yn), method="bounded", options={"xatol": 1e-12})
    assert ts_nll_np(1 / ts.temperature_, zn, yn) - res.fun <= 1e-6 * res.fun


def test_temperature_recovers_the_generating_temperature():
    z, y = overconfident(20000, 10, t_true=2.0, seed=3)
    ts = TemperatureScaling().fit(z, y)
    assert ts.temperature_ == pytest.approx(2.0, rel=0.05)
    assert ts.nll_after_ < ts.nll_before_


@given(a=st.floats(0.5, 5.0), k=st.integers(55, 95))
def test_temperature_closed_form_two_classes(a, k):
    # Logits (a, -a) for every sample, k of 100 labelled 0 (correct): p_correct = sigmoid(2a/T) = k/100,
    # so T = 2a / logit(k/100) exactly.
    z = torch.tensor([[a, -a]] * 100, dtype=torch.float64)
    y = torch.tensor([0] * k + [1] * (100 - k))
    ts = TemperatureScaling().fit(z, y)
    assert ts.temperature_ == pytest.approx(2 * a / math.log(k / (100 - k)), rel=1e-7)
    assert torch.equal(ts(z).argmax(1), z.argmax(1))


def test_temperature_closed_form_by_hand():
    # Two samples, margins 3, one right one wrong is accuracy 1/2 -> logit 0 -> T -> infinity (upper bound);
    # three samples with two right: T = 3 / log 2 = 4.328...
    z = torch.tensor([[3.0, 0.0], [3.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    ts = TemperatureScaling().fit(z, torch.tensor([0, 1, 1]))
    assert ts.temperature_ == pytest.approx(3 / math.log(2), rel=1e-9)


@given(seed=st.integers(0, 10_000), t=st.floats(0.3, 5.0))
def test_temperature_optimum_has_zero_slope(seed, t):
    z, y = overconfident(300, 4, t_true=t, seed=seed, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = TemperatureScaling().fit(z, y)
    beta = 1 / ts.temperature_
    if 0.01 < beta < 100:
        p = (beta * z).softmax(1)
        slope = float(((p * z).sum(1) - z.gather(1, y[:, None]).squeeze(1)).mean())
        assert abs(slope) < 1e-7
    assert math.isfinite(ts.temperature_) and ts.temperature_ > 0


def test_solver_counts_passes_and_bisects_when_newton_leaves_the_bracket():
    z, y = overconfident(500, 6, t_true=8.0, seed=4, dtype=torch.float64)
    sol = solve_temperature(z, y, beta_min=0.01, beta_max=100.0)
    assert sol.status == "converged" and sol.passes <= 10
    res = minimize_scalar(
        ts_nll_np, bounds=(0.01, 100), args=(z.numpy(), y.numpy()), method="bounded", options={"xatol": 1e-12}
    )
    assert sol.beta == pytest.approx(res.x, rel=1e-6)


# ----------------------------------------------------------------------------- NLL ordering and references
def test_nll_decreases_and_nests():
    z, y = overconfident(800, 4, seed=5)
    # Add class-dependent miscalibration that vector and matrix scaling can fix and temperature cannot.
    z = z * torch.tensor([1.0, 2.0, 0.5, 1.0]) + torch.tensor([0.5, 0.0, 0.0, -0.5])
    fitted = [make().fit(z, y) for make in PLAIN]  # unregularised: the models nest
    nlls = []
    for cal in fitted:
        nll = float(F.cross_entropy(cal(z).double(), y))
        assert nll == pytest.approx(cal.nll_after_, abs=1e-6)
        assert cal.nll_after_ <= cal.nll_before_
        nlls.append(nll)
    assert nlls[1] <= nlls[0] + 1e-7 and nlls[2] <= nlls[1] + 1e-7
    assert nlls[1] < nlls[0] - 1e-3  # vector scaling really uses its extra freedom here


def test_matrix_scaling_equals_unpenalised_multinomial_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    z, y = overconfident(600, 3, seed=6, dtype=torch.float64)
    ms = MatrixScaling(odir=None, tol=1e-9).fit(z, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lr = LogisticRegression(C=1e12, tol=1e-12, max_iter=10_000).fit(z.numpy(), y.numpy())
    ref = float(F.cross_entropy(torch.from_numpy(lr.predict_log_proba(z.numpy())), y, reduction="mean"))
    # softmax(W z + b) is that model; NLL as good as scikit-learn's to float precision.
    assert ms.nll_after_ == pytest.approx(ref, abs=1e-6)


def test_odir_objective_matches_independent_scipy_solution():
    z, y = overconfident(300, 3, seed=7, dtype=torch.float64)
    lam, mu = 0.5, 0.2
    ms = MatrixScaling(odir=(lam, mu), pull_diagonal=False, tol=1e-10).fit(z, y)
    zn, yn, C = z.numpy(), y.numpy(), 3

    def objective(theta):  # Kull et al. 2019: NLL + λ/(C(C−1)) Σ_{i≠j} W_ij² + μ/C Σ_j b_j²
        W, b = theta[: C * C].reshape(C, C), theta[C * C :]
        s = zn @ W.T + b
        m = s.max(1, keepdims=True)
        lse = (m + np.log(np.exp(s - m).sum(1, keepdims=True))).squeeze(1)
        off = W - np.diag(np.diag(W))
        return (lse - s[np.arange(len(yn)), yn]).mean() + lam * (off**2).sum() / (C * (C - 1)) + mu * (b**2).sum() / C

    res = minimize(objective, np.concatenate([np.eye(C).ravel(), np.zeros(C)]), method="BFGS", options={"gtol": 1e-10})
    ours = np.concatenate([ms.weight_.numpy().ravel(), ms.bias_.numpy()])
    assert objective(ours) <= res.fun + 1e-9
    np.testing.assert_allclose(ours, res.x, atol=1e-4)
    assert ms.odir_ == (lam, mu)


def test_odir_shrinks_off_diagonal_and_auto_picks_from_grid():
    z, y = overconfident(400, 4, seed=8)
    plain = MatrixScaling(odir=None).fit(z, y)
    strong = MatrixScaling(odir=(1e4, 1e4)).fit(z, y)
    off = ~torch.eye(4, dtype=torch.bool)
    assert strong.weight_[off].abs().max() < 0.1 * plain.weight_[off].abs().max()
    auto = MatrixScaling(odir="auto", cv=2).fit(z, y)
    assert auto.odir_ in ODIR_GRID and set(auto.odir_scores_) <= set(ODIR_GRID) and len(auto.odir_scores_) >= 3
    assert auto.odir_scores_[auto.odir_] == min(auto.odir_scores_.values())
    grid = MatrixScaling(odir=[(0.1, 0.1), (10.0, 10.0)], cv=2).fit(z, y)
    assert grid.odir_ in {(0.1, 0.1), (10.0, 10.0)}


# ----------------------------------------------------------------------------- invariants, shapes, devices
def test_temperature_keeps_argmax_and_does_not_touch_input():
    z, y = overconfident(300, 7, seed=9)
    before = z.clone()
    ts = TemperatureScaling().fit(z, y)
    out = ts(z)
    assert torch.equal(z, before) and out is not z
    assert torch.equal(out.argmax(1), z.argmax(1))
    torch.testing.assert_close(out, z / ts.temperature_)
    torch.testing.assert_close(ts.predict_proba(z), out.softmax(1))


@pytest.mark.parametrize("cls", FIXED)
def test_segmentation_with_ignore_index_equals_flattened_valid_pixels(cls):
    g = torch.Generator().manual_seed(10)
    z = 2 * torch.randn(3, 4, 5, 6, generator=g, dtype=torch.float64)
    y = torch.multinomial(z.movedim(1, -1).reshape(-1, 4).softmax(1), 1, generator=g).view(3, 5, 6)
    y[0, :2] = 255
    seg = cls().fit(z, y, ignore_index=255)
    keep = y.reshape(-1) != 255
    flat = cls().fit(z.movedim(1, -1).reshape(-1, 4)[keep], y.reshape(-1)[keep])
    assert seg.n_samples_ == int(keep.sum())
    assert seg.nll_after_ == pytest.approx(flat.nll_after_, rel=1e-9)
    if isinstance(seg, TemperatureScaling):
        assert seg.temperature_ == pytest.approx(flat.temperature_, rel=1e-9)
    out = seg(z)
    assert out.shape == z.shape
    torch.testing.assert_close(out.movedim(1, -1).reshape(-1, 4), seg(z.movedim(1, -1).reshape(-1, 4)))


def test_max_samples_is_a_seeded_subsample():
    z, y = overconfident(2000, 5, seed=11)
    a = TemperatureScaling().fit(z, y, max_samples=300, seed=1)
    b = TemperatureScaling().fit(z, y, max_samples=300, seed=1)
    c = TemperatureScaling().fit(z, y, max_samples=300, seed=2)
    full = TemperatureScaling().fit(z, y, max_samples=5000)
    assert a.n_samples_ == 300 and a.temperature_ == b.temperature_ != c.temperature_
    assert full.temperature_ == TemperatureScaling().fit(z, y).temperature_


@pytest.mark.parametrize("cls", CALIBRATORS)
def test_dtypes_follow_the_input(cls):
    z, y = overconfident(200, 3, seed=12)
    cal = cls().fit(z.half(), y)
    assert cal(z.half()).dtype == torch.float16 and cal.predict_proba(z.half()).dtype == torch.float16
    assert cal(z.double()).dtype == torch.float64
    torch.testing.assert_close(cal(z.half()).float(), cal(z.half().float()), atol=2e-2, rtol=1e-2)


def test_fit_under_inference_mode():
    z, y = overconfident(200, 3, seed=13)
    with torch.inference_mode():
        zi = z.clone()
        vs = VectorScaling().fit(zi, y)
        out = vs(zi)
    assert torch.isfinite(out).all() and vs.nll_after_ < vs.nll_before_


def test_refit_replaces_previous_fit():
    z, y = overconfident(300, 3, seed=14)
    ms = MatrixScaling(odir="auto", cv=2).fit(z, y)
    ms.odir = None
    ms.fit(z, y)
    assert ms.odir_ is None and ms.odir_scores_ is None


# ----------------------------------------------------------------------------- persistence
@pytest.mark.parametrize(
    "make", [TemperatureScaling, VectorScaling, MatrixScaling, lambda: MatrixScaling(odir="auto", cv=2)]
)
def test_save_load_round_trip_is_exact(tmp_path, make):
    z, y = overconfident(300, 4, seed=15)
    cal = make().fit(z, y)
    path = cal.save(tmp_path / "cal.json")
    back = load(path)
    assert type(back) is type(cal) and back.get_params() == cal.get_params()
    assert back.num_classes_ == 4 and back.nll_after_ == cal.nll_after_ and back.n_passes_ == cal.n_passes_
    for name in ("temperature_", "weight_", "bias_", "odir_", "odir_scores_"):
        if hasattr(cal, name):
            a, b = getattr(cal, name), getattr(back, name)
            assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
    assert torch.equal(back(z), cal(z))


def _saved(tmp_path):
    path = VectorScaling().fit(*overconfident(100, 3, seed=16)).save(tmp_path / "v.json")
    return path, json.loads(path.read_text())


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda d: d.update(format="other"), 'missing "format"'),
        (lambda d: d.update(format_version=99), "unsupported format_version 99"),
        (lambda d: d.pop("fitted"), "missing key 'fitted'"),
        (lambda d: d.update({"class": "Isotonic"}), "unknown class 'Isotonic'"),
        (lambda d: d["fitted"].update(weight=[1.0, 2.0]), r"`weight` must have shape \(3,\) for num_classes=3"),
        (lambda d: d["fitted"].pop("bias"), "missing fitted parameter 'bias'"),
        (lambda d: d["fitted"].update(bias=["a", 1, 2]), "fitted.bias: `bias` must hold numbers, got str 'a'"),
        (lambda d: d.update(num_classes=1), "num_classes must be an integer >= 2"),
        (lambda d: d["params"].update(max_iter=0), "bad parameters for VectorScaling"),
        (lambda d: d["params"].update(foo=1), r"unknown parameter\(s\) \['foo'\]"),
    ],
)
def test_load_rejects_corrupt_or_mismatched_files(tmp_path, edit, match):
    path, data = _saved(tmp_path)
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=match) as info:
        load(path)
    assert str(path) in str(info.value)


def test_load_errors_on_bad_json_missing_file_and_bad_temperature(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not a valid netuq calibrator file: invalid JSON"):
        load(bad)
    with pytest.raises(FileNotFoundError, match="no such calibrator file"):
        load(tmp_path / "nope.json")
    path = TemperatureScaling().fit(*overconfident(100, 3, seed=17)).save(tmp_path / "t.json")
    data = json.loads(path.read_text())
    data["fitted"]["temperature"] = -1.0
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"`temperature` must lie within bounds \[0.01, 100\], got -1.0"):
        load(path)


# ----------------------------------------------------------------------------- degenerate data
def test_separable_data_fit_the_laplace_smoothed_target_or_hit_the_bound():
    z = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]] * 10)
    y = torch.tensor([0, 1, 2] * 10)
    with pytest.warns(RuntimeWarning, match="separable"):
        bound = TemperatureScaling(separable="bound").fit(z, y)
    assert bound.temperature_ == pytest.approx(0.01) and math.isfinite(bound.nll_after_)
    with pytest.warns(RuntimeWarning, match="Laplace-smoothed target"):
        ts = TemperatureScaling().fit(z, y)
    # Every row has margin 5 over two others: p_y = 1 / (1 + 2 exp(-5/T)) = 1 - 1/(n+2) with n = 30.
    assert ts.temperature_ == pytest.approx(5 / math.log(2 * 31), rel=1e-5)  # float32 solve: rtol 1e-6 on β
    assert ts.nll_after_ == pytest.approx(math.log(1 + 2 / 62), rel=1e-5)
    for make in (VectorScaling, MatrixScaling, *PLAIN[1:]):
        with pytest.warns(RuntimeWarning, match="separable"):
            cal = make().fit(z, y)
        assert torch.isfinite(cal.weight_).all() and torch.isfinite(cal(z)).all()
        assert cal.predict_proba(z).gather(1, y[:, None]).min() < 1 - 1e-3  # bounded, not one-hot


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_matrix_scaling_on_an_error_free_ensemble_prediction_iterates():
    # The log mean probability of a 5-member ensemble with every prediction right. In float32 the
    # unregularised vector fit drove the NLL to exactly 0, so matrix scaling started there with a
    # zero gradient and stopped after no iteration at the vector solution (issue 15).
    g = torch.Generator().manual_seed(34)
    y = torch.randint(0, 10, (270,), generator=g)
    members = torch.stack([12 * (4.0 * F.one_hot(y, 10) + torch.randn(270, 10, generator=g)) for _ in range(5)])
    z = members.softmax(-1).mean(0).log().clamp_min(-100).float()
    assert bool((z.argmax(1) == y).all())
    ms = MatrixScaling(odir=None).fit(z, y)
    assert ms.n_iter_ > 1 and 0 < ms.nll_after_ < VectorScaling(l2=None).fit(z, y).nll_after_


def test_anti_informative_logits_hit_the_upper_bound():
    z = torch.tensor([[2.0, 0.0], [0.0, 2.0]] * 5)
    y = torch.tensor([1, 0] * 5)  # always wrong: the best positive temperature is +infinity
    with pytest.warns(RuntimeWarning, match="no \\(or inverted\\) information"):
        ts = TemperatureScaling().fit(z, y)
    assert ts.temperature_ == pytest.approx(100.0)


@pytest.mark.parametrize("cls", CALIBRATORS)
def test_constant_logits_warn_and_stay_finite(cls):
    z, y = torch.zeros(20, 3), torch.arange(20) % 3
    with pytest.warns(RuntimeWarning, match="constant over the classes"):
        cal = cls().fit(z, y)
    out = cal(z)
    assert torch.isfinite(out).all()
    if cls is TemperatureScaling:
        assert cal.temperature_ == 1.0 and cal.n_iter_ == 0


@pytest.mark.filterwarnings("ignore:TemperatureScaling. the NLL still decreases")
@pytest.mark.parametrize("cls", CALIBRATORS)
def test_single_class_and_single_sample_warn_and_stay_finite(cls):
    z, _ = overconfident(30, 3, seed=18)
    with pytest.warns(RuntimeWarning, match="single class"):
        cal = cls().fit(z, torch.full((30,), 2))
    assert torch.isfinite(cal(z)).all()
    with pytest.warns(RuntimeWarning, match="single class"):
        one = cls().fit(z[:1], torch.tensor([int(z[0].argmin())]))
    assert torch.isfinite(one(z)).all() and math.isfinite(one.nll_after_)


def test_minus_inf_log_probs_are_a_masked_class():
    # log 0 = -inf is the rule of Prediction.from_logits (a masked class): accepted, it stays at 0
    z = torch.tensor([[0.0, -math.inf], [-1.0, -0.5]])
    ts = TemperatureScaling().fit(z, torch.tensor([0, 1]))
    assert ts.predict_proba(z)[0, 1] == 0
    pred = netuq.Prediction.from_logits(torch.tensor([[3.0, 0.0], [0.0, 1.0], [2.0, 0.0]]))
    ts = TemperatureScaling().fit(pred.log_probs, torch.tensor([0, 1, 1]))
    assert 0.01 < ts.temperature_ < 100 and ts.nll_after_ < ts.nll_before_


# ----------------------------------------------------------------------------- errors
def test_unfitted_use_raises_not_fitted(tmp_path):
    for cls in CALIBRATORS:
        cal = cls()
        assert not cal.is_fitted
        with pytest.raises(NotFittedError, match="not fitted yet"):
            cal(torch.zeros(2, 3))
        with pytest.raises(NotFittedError, match="not fitted yet"):
            cal.predict_proba(torch.zeros(2, 3))
        with pytest.raises(NotFittedError, match="not fitted yet"):
            cal.save(tmp_path / "x.json")


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: TemperatureScaling(bounds=(0.0, 10.0)), r"`bounds\[0\]` must be a positive finite number"),
        (lambda: TemperatureScaling(bounds=(5.0, 1.0)), "T_min <= T_max"),
        (lambda: TemperatureScaling(bounds=1.0), r"`bounds` must be a pair"),
        (lambda: TemperatureScaling(max_iter=0), "`max_iter` must be a positive integer"),
        (lambda: VectorScaling(tol=-1.0), "`tol` must be a positive finite number"),
        (lambda: MatrixScaling(odir="yes"), "`odir` must be None, 'auto', a pair"),
        (lambda: MatrixScaling(odir=(1.0, -1.0)), "`odir` values must be finite numbers >= 0"),
        (lambda: MatrixScaling(odir=(1.0,)), "`odir` must be None, 'auto', a pair"),
        (lambda: MatrixScaling(cv=1), "`cv` must be an integer >= 2"),
    ],
)
def test_constructor_validation(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_constructor_arguments_are_keyword_only():
    with pytest.raises(TypeError):
        MatrixScaling((1.0, 1.0))  # type: ignore[misc]


def test_fit_and_call_validation():
    z, y = overconfident(50, 3, seed=19)
    ts = TemperatureScaling()
    with pytest.raises(ValueError, match=r"`labels` must be integers in \[0, 3\), got values in \[0, 7\]"):
        ts.fit(z, torch.tensor([7] + [0] * 49))
    with pytest.raises(ValueError, match=r"`labels` must have shape \(50,\) to match `logits`"):
        ts.fit(z, y[:10])
    with pytest.raises(TypeError, match="`labels` must be an integer tensor"):
        ts.fit(z, y.float())
    with pytest.raises(ValueError, match="`max_samples` must be a positive integer or None"):
        ts.fit(z, y, max_samples=0)
    with pytest.raises(TypeError, match="`ignore_index` must be an int or None"):
        ts.fit(z, y, ignore_index=1.5)
    with pytest.raises(ValueError, match="at least 2 classes"):
        ts.fit(z[:, :1], y * 0)
    with pytest.raises(ValueError, match="`logits` must not contain NaN, got 1 NaN"):
        ts.fit(torch.where(torch.arange(150).view(50, 3) == 4, torch.nan, z), y)
    with pytest.raises(TypeError, match="`logits` must be a floating-point tensor"):
        ts.fit(torch.ones(50, 3, dtype=torch.long), y)
    ts.fit(z, y)
    with pytest.raises(ValueError, match=r"`logits` must have 3 classes \(dim 1\) like the data"):
        ts(torch.zeros(2, 4))


def test_repr_and_get_params():
    ms = MatrixScaling(odir=(1.0, 2.0), cv=4)
    assert repr(ms) == "MatrixScaling(odir=(1.0, 2.0), pull_diagonal=True, cv=4, max_iter=500, tol=1e-07)"
    assert type(ms)(**ms.get_params()).get_params() == ms.get_params()


# ----------------------------------------------------------------------------- probabilities instead of logits
PROBS_MSG = r"`logits` look like probabilities \(every row in \[0, 1\] sums to 1\); pass logits, or log\(probs\)"


@pytest.mark.parametrize("cls", CALIBRATORS)
def test_fit_on_probabilities_raises(cls):
    z, y = overconfident(60, 3, seed=21)
    with pytest.raises(ValueError, match=PROBS_MSG):
        cls().fit(z.softmax(1), y)
    seg = z.view(6, 10, 3).movedim(2, 1).softmax(1)  # (N, C, W) probabilities, labels (N, W)
    with pytest.raises(ValueError, match=PROBS_MSG):
        cls().fit(seg, y.view(6, 10))
    with pytest.raises(ValueError, match=PROBS_MSG):
        cls().fit(z.softmax(1).to(torch.bfloat16), y)  # bfloat16 rounding of the sums stays within tolerance
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cls().fit(z.softmax(1).log(), y)  # log(probs) is a valid input


def test_values_in_unit_interval_that_are_not_probabilities_are_logits():
    g = torch.Generator().manual_seed(22)
    z = torch.rand(200, 3, generator=g)  # in [0, 1], rows do not sum to 1
    y = torch.multinomial((8 * z).softmax(1), 1, generator=g).squeeze(1)
    ts = TemperatureScaling().fit(z, y)
    assert 0.01 < ts.temperature_ < 100 and ts.nll_after_ < ts.nll_before_
    with pytest.raises(ValueError, match="at least 2 classes"):  # C = 1 is refused before the probability check
        TemperatureScaling().fit(torch.ones(5, 1), torch.zeros(5, dtype=torch.long))


def test_cross_validate_on_probabilities_raises():
    z, y = overconfident(60, 3, seed=23)
    with pytest.raises(ValueError, match=PROBS_MSG):
        netuq.calibration.cross_validate(TemperatureScaling, z.softmax(1), y, repeats=1)


# ----------------------------------------------------------------------------- registry
def test_registry_is_filled_by_the_classes_and_builds_the_recommended_configuration(tmp_path):
    from netuq.calibration import CALIBRATORS, Calibrator, HistogramBinning, IsotonicRegression

    assert CALIBRATORS == {"temperature": TemperatureScaling, "vector": VectorScaling, "matrix": MatrixScaling,
                           "histogram": HistogramBinning, "isotonic": IsotonicRegression}
    assert all(cls.name == name for name, cls in CALIBRATORS.items())
    assert CALIBRATORS["vector"]().l2 == "auto" and CALIBRATORS["matrix"]().odir == "auto"

    class Shift(Calibrator):  # a new calibrator is one class: the registry and load() pick it up
        name = "test-shift"
        _param_names = ()

        def _fitted_shapes(self, num_classes):
            return {"bias_": (num_classes,)}

        def _fit(self, z, y, image, seed, owned):
            self.bias_ = torch.log(torch.bincount(y, minlength=z.shape[1]).double() + 1)

        def _transform(self, z):
            return z + self._param("bias_", z).view(1, -1)

    try:
        assert CALIBRATORS["test-shift"] is Shift
        z, y = overconfident(100, 3, seed=30)
        back = load(Shift().fit(z, y).save(tmp_path / "s.json"))
        assert type(back) is Shift and torch.equal(back(z), Shift().fit(z, y)(z))
        with pytest.raises(ValueError, match="calibrator name 'temperature' is taken by TemperatureScaling"):
            type("Other", (Calibrator,), {"name": "temperature"})
    finally:
        CALIBRATORS.pop("test-shift", None)


# ----------------------------------------------------------------------------- hard inputs vs float64 scipy
def _hard(kind):
    """(float32/16 logits, labels) of one class of numerically hard input; float64 optimum is the reference."""
    g = torch.Generator().manual_seed(31)
    base = 3 * torch.randn(300, 4, generator=g, dtype=torch.float64)
    y = torch.multinomial((base / 2).softmax(1), 1, generator=g).squeeze(1)
    pred = base.argmax(1)
    if kind == "saturated":  # float32 softmax exactly one-hot, labels disagree 30% of the time
        return F.one_hot(pred, 4).float() * 200, y
    if kind == "saturated-1e4":
        return F.one_hot(pred, 4).float() * 1e4, y
    if kind == "mixed":  # half the rows saturated, half ordinary
        z = base.clone()
        z[::2] = F.one_hot(pred[::2], 4).double() * 300
        return z.float(), y
    if kind == "huge":
        return (base * 1e20).float(), y
    if kind == "float16":
        return base.half(), y
    if kind == "bfloat16":
        return base.bfloat16(), y
    if kind == "ties":  # integer logits: many rows with a tied maximum
        return base.round().clamp(-2, 2).float(), y
    if kind == "log-probs":  # near-separable log of a mean prediction, what an ensemble hands in
        return (6 * base).log_softmax(1).float(), y
    raise AssertionError(kind)


HARD = ("saturated", "saturated-1e4", "mixed", "huge", "float16", "bfloat16", "ties", "log-probs")


@pytest.mark.parametrize("kind", HARD)
def test_temperature_reaches_the_float64_optimum_on_hard_input(kind):
    from reference.calibration_reference import nll_np, temperature_reference

    z, y = _hard(kind)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no false "constant rows" (or any other) warning
        ts = TemperatureScaling(bounds=(1e-30, 1e30)).fit(z, y)
    zn, yn = z.double().numpy(), y.numpy()
    T, ref = temperature_reference(zn, yn, bounds=(1e-30, 1e30))
    assert nll_np(zn / ts.temperature_, yn) - ref <= 1e-6 * ref
    assert ts.temperature_ == pytest.approx(T, rel=1e-3)


def test_issue_case_saturated_one_hot_float32():
    g = torch.Generator().manual_seed(32)
    pred = torch.randint(0, 10, (1000,), generator=g)
    y = torch.where(torch.rand(1000, generator=g) < 0.2, (pred + torch.randint(1, 10, (1000,), generator=g)) % 10, pred)
    ts = TemperatureScaling().fit(F.one_hot(pred, 10).float() * 200, y)
    assert 45 < ts.temperature_ < 70 and ts.nll_after_ < 1.2 and ts.converged_  # T = 1 gives NLL ~40


@pytest.mark.parametrize("kind", [k for k in HARD if k != "huge"] + ["huge"])
@pytest.mark.parametrize("which", ["vector", "matrix", "matrix-kull"])
def test_linear_fits_reach_the_float64_optimum_on_hard_input(kind, which):
    from reference.calibration_reference import matrix_objective, matrix_reference, vector_objective, vector_reference

    z, y = _hard(kind)
    zn, yn = z.double().numpy(), y.numpy()
    s = 2.0 ** (math.frexp(float(np.abs(zn).max()))[1] - 1)  # the reference in unit-scale logits too
    beta = 1 / TemperatureScaling(bounds=(1e-30, 1e30)).fit(z.double(), y).temperature_
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if which == "vector":
            cal = VectorScaling(l2=0.1).fit(z, y)
            ours = vector_objective(cal.weight_.numpy() * s, cal.bias_.numpy(), zn / s, yn, 0.1, beta * s)
            ref = vector_reference(zn / s, yn, 0.1, beta * s)
        else:
            pull = which == "matrix"
            cal = MatrixScaling(odir=(1.0, 1.0), pull_diagonal=pull).fit(z, y)
            args = (zn / s, yn, 1.0 / s**2, 1.0, beta * s, pull)
            ours = matrix_objective(cal.weight_.numpy() * s, cal.bias_.numpy(), *args)
            ref = matrix_reference(*args)
    assert ours - ref <= 1e-7 * max(1.0, abs(ref)), (ours, ref)
    assert cal.converged_ and cal.n_iter_ > 1


def test_linear_fit_raises_rather_than_return_parameters_it_would_not_load():
    z, y = _hard("float16")
    with pytest.raises(ValueError, match="the fit produced invalid parameters: `weight` must be at most 1e"):
        VectorScaling(l2=0.1).fit(z.float() * 1e-20, y)  # the optimum needs w ~ 1e20


# ----------------------------------------------------------------------------- small near-separable sets
def near_separable(n=540, c=10, seed=0):
    """Overconfident, near-separable logits like the digits benchmark's (about 2% errors)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (n,), generator=g)
    z = 4.0 * F.one_hot(y, c) + torch.randn(n, c, generator=g)
    return 12.0 * z, y  # T ≈ 3


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_recommended_calibrators_are_not_catastrophic_on_small_near_separable_sets():
    from netuq.calibration import CALIBRATORS, cross_validate

    z, y = near_separable()
    assert 0.01 < float((z.argmax(1) != y).float().mean()) < 0.04
    cv = {name: cross_validate(make, z, y, repeats=1) for name, make in CALIBRATORS.items()}
    ts = cv["temperature"]["nll"]["mean"]
    assert ts < 0.5 * cv["temperature"]["uncalibrated"]["nll"]["mean"]
    for name in ("vector", "matrix"):
        assert cv[name]["nll"]["mean"] < 1.5 * ts, (name, cv[name]["nll"]["mean"], ts)
        assert cv[name]["nll"]["mean"] < cv[name]["uncalibrated"]["nll"]["mean"]
        assert cv[name]["catastrophic_splits"] == 0
    plain = cross_validate(lambda: VectorScaling(l2=None), z, y, repeats=1)
    assert plain["nll"]["mean"] > 3 * ts  # what the regularisation prevents (the test can fail)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_error_free_fit_half_gives_a_sane_temperature():
    z, y = near_separable(200, 10, seed=1)
    right = z.argmax(1) == y
    ts = TemperatureScaling().fit(z[right], y[right])  # every prediction correct
    held = F.cross_entropy(z[~right] / ts.temperature_, y[~right])
    bound = TemperatureScaling(separable="bound").fit(z[right], y[right])
    assert ts.temperature_ > 10 * bound.temperature_
    assert float(held) < 0.2 * float(F.cross_entropy(z[~right] / bound.temperature_, y[~right]))


# ----------------------------------------------------------------------------- the class of bad files
def _file(tmp_path, make=TemperatureScaling):
    path = make().fit(*overconfident(100, 3, seed=33)).save(tmp_path / "c.json")
    return path, json.loads(path.read_text())


def _set(*keys, value):
    def edit(d):
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    return edit


BAD_FILES = [
    # temperature: wrong type, NaN, inf, negative, tiny, out of bounds
    (TemperatureScaling, _set("fitted", "temperature", value="1.0"), "fitted.temperature: `temperature` must hold num"),
    (TemperatureScaling, _set("fitted", "temperature", value=True), "`temperature` must hold numbers, got bool"),
    (TemperatureScaling, _set("fitted", "temperature", value=[1.0]), "fitted.temperature"),
    (TemperatureScaling, _set("fitted", "temperature", value=float("nan")), "`temperature` must be finite"),
    (TemperatureScaling, _set("fitted", "temperature", value=float("inf")), "`temperature` must be finite"),
    (TemperatureScaling, _set("fitted", "temperature", value=-2.0), "must lie within bounds"),
    (TemperatureScaling, _set("fitted", "temperature", value=1e-308), r"within bounds \[0.01, 100\], got 1e-308"),
    (TemperatureScaling, _set("fitted", "temperature", value=500.0), "must lie within bounds"),
    (TemperatureScaling, _set("params", "bounds", value=[0, 1]), "bad parameters for TemperatureScaling"),
    (TemperatureScaling, _set("params", "separable", value="maybe"), "`separable` must be one of"),
    # vector / matrix: shapes, NaN, magnitude
    (VectorScaling, _set("fitted", "weight", value=[[1.0, 1.0, 1.0]]), r"`weight` must have shape \(3,\)"),
    (VectorScaling, _set("fitted", "bias", value=[0.0, float("nan"), 0.0]), "fitted.bias: `bias` must be finite"),
    (VectorScaling, _set("fitted", "weight", value=[1e300, 1.0, 1.0]), "`weight` must be at most 1e"),
    (VectorScaling, _set("params", "l2", value=-1.0), "bad parameters for VectorScaling"),
    (MatrixScaling, _set("fitted", "weight", value=[1.0, 1.0, 1.0]), r"`weight` must have shape \(3, 3\)"),
    (MatrixScaling, _set("params", "pull_diagonal", value="yes"), "`pull_diagonal` must be True or False"),
    (MatrixScaling, _set("fit_info", "odir_scores", value=[[1.0, "a", 0.5]]), "fit_info.odir_scores"),
    (MatrixScaling, _set("fit_info", "odir", value=[1.0, -1.0]), "fit_info.odir"),
    # fit information
    (TemperatureScaling, _set("fit_info", "n_iter", value=-1), "fit_info.n_iter must be an integer >= 0"),
    (TemperatureScaling, _set("fit_info", "converged", value="yes"), "fit_info.converged must be true or false"),
    (TemperatureScaling, _set("fit_info", "nll_after", value=float("nan")), "fit_info.nll_after must be a finite"),
    # structure: unknown class, missing / extra keys, non-objects
    (TemperatureScaling, _set("class", value="Isotonic"), "unknown class 'Isotonic'"),
    (TemperatureScaling, _set("class", value=["TemperatureScaling"]), "unknown class"),
    (TemperatureScaling, lambda d: d.pop("num_classes"), "missing key 'num_classes'"),
    (TemperatureScaling, lambda d: d["fitted"].pop("temperature"), "missing fitted parameter 'temperature'"),
    (TemperatureScaling, lambda d: d["params"].pop("bounds"), r"missing parameter\(s\) \['bounds'\]"),
    (TemperatureScaling, _set("extra", value=1), r"unknown key\(s\) \['extra'\]"),
    (TemperatureScaling, _set("fitted", "weight", value=[1.0]), "unknown fitted parameter 'weight'"),
    (TemperatureScaling, _set("fit_info", "secret", value=1), r"unknown fit_info key\(s\) \['secret'\]"),
    (TemperatureScaling, _set("params", value=[]), "`params` must be a JSON object, got list"),
    (TemperatureScaling, _set("fitted", value=None), "`fitted` must be a JSON object"),
]


@pytest.mark.parametrize("make, edit, match", BAD_FILES)
def test_load_refuses_every_value_the_fit_would_not_produce(tmp_path, make, edit, match):
    path, data = _file(tmp_path, make)
    edit(data)
    path.write_text(json.dumps(data))  # json writes NaN / Infinity for float nan / inf
    with pytest.raises(ValueError, match=match) as info:
        load(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("text", ["[1, 2]", '"netuq"', "3", "null", "[" * 100_000 + "]" * 100_000,
                                  '{"a":' * 50_000 + "1" + "}" * 50_000])
def test_load_refuses_non_object_and_deeply_nested_json(tmp_path, text):
    path = tmp_path / "odd.json"
    path.write_text(text)
    match = "odd.json: not a valid netuq calibrator file: (expected a JSON object|JSON nested)"
    with pytest.raises(ValueError, match=match):
        load(path)


def test_files_written_before_the_new_parameters_load_as_they_were_fitted(tmp_path):
    for make, key, legacy in ((TemperatureScaling, "separable", "bound"), (VectorScaling, "l2", None),
                              (MatrixScaling, "pull_diagonal", False)):
        path, data = _file(tmp_path, make)
        data["params"].pop(key)
        data["params"].pop("cv", None) if make is VectorScaling else None
        path.write_text(json.dumps(data))
        assert getattr(load(path), key) == legacy


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("make", FIXED)
def test_nll_before_is_the_uncalibrated_nll_whatever_the_logit_scale(make):
    z, y = overconfident(200, 4, seed=35)
    for s in (1.0, 300.0):
        cal = make().fit(z * s, y)
        assert cal.nll_before_ == pytest.approx(float(F.cross_entropy((z * s).double(), y)), rel=1e-6)
