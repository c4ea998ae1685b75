"""Detection metrics against scikit-learn's ROC / precision-recall code, ties included."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from netuq import metrics


def _sk_inputs(pos, neg):
    pos, neg = np.asarray(pos, dtype=np.float64).ravel(), np.asarray(neg, dtype=np.float64).ravel()
    return np.concatenate([np.ones(pos.size), np.zeros(neg.size)]), np.concatenate([pos, neg])


def _fpr_at_tpr_reference(pos, neg, tpr):
    y, s = _sk_inputs(pos, neg)
    fpr_c, tpr_c, _ = sk_roc_curve(y, s, drop_intermediate=False)
    return float(fpr_c[np.argmax(tpr_c >= tpr)])


def _normal_scores(n_pos=60, n_neg=80, shift=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_pos, generator=g) + shift, torch.randn(n_neg, generator=g)


score_sets = arrays(np.int64, st.integers(1, 20), elements=st.integers(-3, 3))  # integers: many ties


# ------------------------------------------------------------------------------------ sklearn
def test_continuous_scores_match_sklearn():
    pos, neg = _normal_scores()
    y, s = _sk_inputs(pos, neg)
    assert metrics.auroc(pos, neg) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert metrics.aupr(pos, neg) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    fpr, tpr = metrics.roc_curve(pos, neg)
    sk_fpr, sk_tpr, _ = sk_roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr.numpy(), sk_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr.numpy(), sk_tpr, atol=1e-12)


@given(score_sets, score_sets)
def test_ties_match_sklearn(pos, neg):
    y, s = _sk_inputs(pos, neg)
    assert metrics.auroc(pos, neg) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert metrics.aupr(pos, neg) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    fpr, tpr = metrics.roc_curve(torch.from_numpy(pos), torch.from_numpy(neg))
    sk_fpr, sk_tpr, _ = sk_roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr.numpy(), sk_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr.numpy(), sk_tpr, atol=1e-12)
    for target in (0.1, 0.5, 0.95, 1.0):
        expected = float(sk_fpr[np.argmax(sk_tpr >= target)])
        assert metrics.fpr_at_tpr(pos, neg, tpr=target) == pytest.approx(expected)


@given(score_sets, score_sets, st.randoms(use_true_random=False))
def test_input_order_does_not_matter(pos, neg, rnd):
    pos_s, neg_s = list(pos), list(neg)
    rnd.shuffle(pos_s)
    rnd.shuffle(neg_s)
    assert metrics.auroc(pos_s, neg_s) == metrics.auroc(pos, neg)
    assert metrics.aupr(pos_s, neg_s) == metrics.aupr(pos, neg)


def test_roc_curve_with_dropped_intermediate_points_has_same_auc():
    pos, neg = _normal_scores(seed=1)
    y, s = _sk_inputs(pos, neg)
    sk_fpr, sk_tpr, _ = sk_roc_curve(y, s)  # default drop_intermediate=True
    fpr, tpr = metrics.roc_curve(pos, neg)
    assert float(torch.trapezoid(tpr, fpr)) == pytest.approx(np.trapezoid(sk_tpr, sk_fpr), abs=1e-12)
    # every sklearn point lies on netuq's curve
    pts = set(zip(fpr.tolist(), tpr.tolist()))
    assert all((a, b) in pts for a, b in zip(sk_fpr.tolist(), sk_tpr.tolist()))


# ------------------------------------------------------------------------------ hand-computed
def test_hand_computed():
    pos, neg = torch.tensor([0.9, 0.6]), torch.tensor([0.7, 0.1])
    # pairs: (.9>.7) (.9>.1) (.6<.7) (.6>.1) -> 3/4
    assert metrics.auroc(pos, neg) == 0.75
    # ranking .9+ .7- .6+ .1-: AP = 1/2*1 + 1/2*2/3
    assert metrics.aupr(pos, neg) == pytest.approx(0.5 + 1 / 3)
    assert metrics.auroc(torch.tensor([0.5]), torch.tensor([0.5])) == 0.5  # a tie counts one half
    assert metrics.auroc(torch.tensor([1.0, 2.0]), torch.tensor([0.0])) == 1.0
    assert metrics.auroc(torch.tensor([0.0]), torch.tensor([1.0, 2.0])) == 0.0
    assert metrics.aupr(torch.tensor([3.0, 2.0]), torch.tensor([1.0])) == 1.0
    # swapping the roles mirrors the AUROC
    pos, neg = _normal_scores(seed=2)
    assert metrics.auroc(neg, pos) == pytest.approx(1 - metrics.auroc(pos, neg), abs=1e-12)


def test_fpr_at_tpr_hand_computed():
    pos = torch.arange(20.0) + 10  # 10..29
    neg = torch.arange(20.0) + 0.5  # 0.5..19.5
    # 95% TPR = 19 of 20 positives: threshold 11 keeps negatives 11.5..19.5 (9 of 20)
    assert metrics.fpr_at_tpr(pos, neg) == pytest.approx(9 / 20)
    # 100% TPR: threshold 10 keeps 10.5..19.5 (10 of 20)
    assert metrics.fpr_at_tpr(pos, neg, tpr=1.0) == pytest.approx(10 / 20)
    # 50% TPR: threshold 20 keeps no negative
    assert metrics.fpr_at_tpr(pos, neg, tpr=0.5) == 0.0
    # tied scores: one threshold for all; tpr jumps 0 -> 1 and fpr 0 -> 1
    assert metrics.fpr_at_tpr(torch.ones(3), torch.ones(5), tpr=0.01) == 1.0
    # perfectly separated
    assert metrics.fpr_at_tpr(torch.tensor([5.0, 6.0]), torch.tensor([1.0, 2.0])) == 0.0


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 0.99])
def test_fpr_at_tpr_matches_sklearn_reference(target):
    pos, neg = _normal_scores(n_pos=137, n_neg=91, seed=3)
    assert metrics.fpr_at_tpr(pos, neg, tpr=target) == pytest.approx(_fpr_at_tpr_reference(pos, neg, target))


def test_any_shape_and_dtype():
    pos, neg = _normal_scores(n_pos=24, n_neg=30, seed=4)
    flat = metrics.auroc(pos, neg)
    assert metrics.auroc(pos.reshape(2, 3, 4), neg.reshape(5, 6)) == flat  # segmentation maps: one score per pixel
    assert metrics.auroc(pos.numpy(), neg.double()) == pytest.approx(flat, abs=1e-12)
    assert metrics.auroc(pos.half(), neg.half()) == pytest.approx(
        roc_auc_score(*_sk_inputs(pos.half().float(), neg.half().float())), abs=1e-12
    )
    assert metrics.auroc(torch.tensor([True, True]), torch.tensor([False, True])) == 0.75
    assert metrics.auroc([3, 4], [1, 4]) == 0.625  # (1 + 0 + 1 + 1/2) / 4


# ------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("fn", [metrics.auroc, metrics.aupr, metrics.fpr_at_tpr, metrics.roc_curve])
def test_errors(fn):
    good = torch.tensor([0.1, 0.2])
    with pytest.raises(ValueError, match=r"`positive` must not be empty, got shape \(0,\)"):
        fn(torch.tensor([]), good)
    with pytest.raises(ValueError, match=r"`negative` must not be empty, got shape \(0, 3\)"):
        fn(good, torch.empty(0, 3))
    with pytest.raises(ValueError, match=r"`positive` must be finite, got 1 NaN value\(s\)"):
        fn(torch.tensor([0.1, float("nan")]), good)
    with pytest.raises(ValueError, match=r"`negative` must be finite, got 2 Inf value\(s\)"):
        fn(good, torch.tensor([float("inf"), -float("inf"), 0.0]))


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.01, float("nan")])
def test_fpr_at_tpr_range(bad):
    with pytest.raises(ValueError, match=r"`tpr` must be in \(0, 1\], got"):
        metrics.fpr_at_tpr(torch.tensor([1.0]), torch.tensor([0.0]), tpr=bad)


@pytest.mark.parametrize("bad, kind", [("a", "str"), (True, "bool"), (None, "NoneType"), ([0.9], "list")])
def test_fpr_at_tpr_type(bad, kind):
    with pytest.raises(TypeError, match=rf"`tpr` must be a number in \(0, 1\], got {kind}"):
        metrics.fpr_at_tpr(torch.tensor([1.0]), torch.tensor([0.0]), tpr=bad)


def test_fpr_at_tpr_accepts_numpy_and_int():
    pos, neg = torch.tensor([0.9, 0.6]), torch.tensor([0.7, 0.1])
    assert metrics.fpr_at_tpr(pos, neg, tpr=np.float64(0.95)) == 0.5
    assert metrics.fpr_at_tpr(pos, neg, tpr=np.float32(0.5)) == 0.0
    assert metrics.fpr_at_tpr(pos, neg, tpr=1) == 0.5


@pytest.mark.parametrize("fn", [metrics.roc_curve, metrics.aupr, metrics.fpr_at_tpr, metrics.auroc])
def test_documented_with_args_and_returns(fn):
    doc = fn.__doc__
    assert "Args:" in doc and "positive:" in doc and "negative:" in doc and ("Returns:" in doc or fn is metrics.auroc)
    assert "Example:" in doc
