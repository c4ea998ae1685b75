"""Functional metrics against scikit-learn, torchmetrics, the plain-loop references and hand values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from reference.calibration_reference import (
    adaptive_ece_reference,
    aurc_reference,
    classwise_ece_reference,
    ece_reference,
    risk_coverage_reference,
)
from sklearn.metrics import accuracy_score, brier_score_loss, log_loss
from torchmetrics.functional.classification import multiclass_calibration_error

from netuq import metrics


def _data(N=400, C=4, *spatial, seed=0, scale=2.0, dtype=torch.float64):
    """Random continuous probabilities (no ties, nothing on a bin edge) and labels drawn from them."""
    g = torch.Generator().manual_seed(seed)
    probs = (torch.randn(N, C, *spatial, generator=g, dtype=torch.float64) * scale).softmax(1)
    flat = probs.movedim(1, -1).reshape(-1, C)
    labels = torch.multinomial(flat.sqrt(), 1, generator=g).reshape(N, *spatial)  # miscalibrated on purpose
    return probs.to(dtype), labels


@st.composite
def prob_label_pairs(draw, max_n=30, max_c=5):
    N, C = draw(st.integers(1, max_n)), draw(st.integers(2, max_c))
    raw = draw(arrays(np.float64, (N, C), elements=st.floats(0.0, 1.0)))
    raw[raw.sum(1) == 0] = 1.0
    labels = draw(arrays(np.int64, (N,), elements=st.integers(0, C - 1)))
    return torch.from_numpy(raw / raw.sum(1, keepdims=True)), torch.from_numpy(labels)


# ------------------------------------------------------------------ scikit-learn / numpy references
def test_accuracy_nll_brier_match_sklearn():
    probs, labels = _data(seed=1)
    p, y = probs.numpy(), labels.numpy()
    assert metrics.accuracy(probs, labels) == pytest.approx(accuracy_score(y, p.argmax(1)), abs=1e-15)
    assert metrics.nll(probs, labels) == pytest.approx(log_loss(y, p, labels=range(4)), rel=1e-12)
    onehot = np.eye(4)[y]
    direct = np.mean(np.sum((p - onehot) ** 2, axis=1))
    assert metrics.brier(probs, labels) == pytest.approx(direct, rel=1e-12)
    sk = brier_score_loss(y, p, labels=range(4), scale_by_half=False)
    assert metrics.brier(probs, labels) == pytest.approx(sk, rel=1e-12)


def test_binary_brier_is_twice_sklearn():
    probs, labels = _data(N=300, C=2, seed=2)
    sk = brier_score_loss(labels.numpy(), probs[:, 1].numpy())
    assert metrics.brier(probs, labels) == pytest.approx(2 * sk, rel=1e-12)


def test_float32_input_matches_float64():
    probs, labels = _data(seed=3)
    for fn in (metrics.nll, metrics.brier, metrics.ece, metrics.adaptive_ece, metrics.classwise_ece, metrics.aurc):
        assert fn(probs.float(), labels) == pytest.approx(fn(probs, labels), abs=1e-6), fn.__name__


@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
@pytest.mark.parametrize("n_bins", [1, 10, 15])
def test_ece_matches_torchmetrics(norm, n_bins):
    # continuous data: no confidence lies on a bin edge, where torchmetrics ([lo, hi)) and netuq ((lo, hi]) differ
    probs, labels = _data(N=500, C=5, seed=4)
    probs = probs.float()
    ref = multiclass_calibration_error(probs, labels, num_classes=5, n_bins=n_bins, norm=norm)
    assert metrics.ece(probs, labels, n_bins=n_bins, norm=norm) == pytest.approx(float(ref), abs=2e-6)
    if norm == "max":
        assert metrics.mce(probs, labels, n_bins=n_bins) == pytest.approx(float(ref), abs=2e-6)


@pytest.mark.parametrize("seed", [5, 6])
def test_against_plain_loop_references(seed):
    probs, labels = _data(N=200, C=3, seed=seed)
    p, y = probs.numpy(), labels.numpy()
    for norm in ("l1", "l2", "max"):
        assert metrics.ece(probs, labels, norm=norm) == pytest.approx(ece_reference(p, y, 15, norm), abs=1e-12)
    for n_bins in (1, 7, 15, 199, 200, 500):  # including more bins than samples
        assert metrics.adaptive_ece(probs, labels, n_bins=n_bins) == pytest.approx(
            adaptive_ece_reference(p, y, n_bins), abs=1e-12
        )
    for n_bins in (5, 15):
        assert metrics.classwise_ece(probs, labels, n_bins=n_bins) == pytest.approx(
            classwise_ece_reference(p, y, n_bins), abs=1e-12
        )
    assert metrics.aurc(probs, labels) == pytest.approx(aurc_reference(p, y), abs=1e-12)


def test_reliability_bins_against_reference_loop():
    probs, labels = _data(N=300, C=3, seed=7)
    rb = metrics.reliability_bins(probs, labels, n_bins=10)
    conf, pred = probs.max(1)
    for b in range(10):
        lo, hi = b / 10, (b + 1) / 10
        members = [(c, int(k == y)) for c, k, y in zip(conf.tolist(), pred.tolist(), labels.tolist()) if lo < c <= hi]
        assert rb.counts[b].item() == len(members)
        if members:
            assert rb.confidence[b].item() == pytest.approx(np.mean([m[0] for m in members]), abs=1e-12)
            assert rb.accuracy[b].item() == pytest.approx(np.mean([m[1] for m in members]), abs=1e-12)
        else:
            assert math.isnan(rb.confidence[b].item()) and math.isnan(rb.accuracy[b].item())
    torch.testing.assert_close(rb.edges, torch.arange(11, dtype=torch.float64) / 10)
    d = rb.to_dict()
    assert set(d) == {"edges", "counts", "confidence", "accuracy"}
    assert all((v is None) == (c == 0) for v, c in zip(d["accuracy"], d["counts"]))


# ------------------------------------------------------------------------------ hand-computed cases
def test_hand_computed_values():
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    labels = torch.tensor([0, 0, 0, 1])
    # bins (0.8, 0.9]: conf .9 acc 1 -> gap .1; (0.5, 0.6]: conf .6 acc .5 -> gap .1
    assert metrics.ece(probs, labels, n_bins=10) == pytest.approx(0.1, abs=1e-6)
    assert metrics.ece(probs, labels, n_bins=10, norm="l2") == pytest.approx(0.1, abs=1e-6)
    labels2 = torch.tensor([0, 1, 0, 0])  # bin .9: acc .5, gap .4; bin .6: acc 1, gap .4
    assert metrics.ece(probs, labels2, n_bins=10) == pytest.approx(0.4, abs=1e-6)
    labels3 = torch.tensor([0, 1, 0, 1])  # bin .9: gap .4; bin .6: gap .1
    assert metrics.ece(probs, labels3, n_bins=10) == pytest.approx(0.25, abs=1e-6)
    assert metrics.ece(probs, labels3, n_bins=10, norm="l2") == pytest.approx(math.sqrt(0.5 * 0.16 + 0.5 * 0.01))
    assert metrics.mce(probs, labels3, n_bins=10) == pytest.approx(0.4, abs=1e-6)
    # one bin: |mean acc - mean conf| = |0.5 - 0.75|
    assert metrics.ece(probs, labels3, n_bins=1) == pytest.approx(0.25, abs=1e-6)
    # nll: -(2 log .9 + log .6 + log .4) / 4
    assert metrics.nll(probs, labels) == pytest.approx(-(2 * math.log(0.9) + math.log(0.6) + math.log(0.4)) / 4)
    # brier: (0.02 + 0.02 + 0.32 + 0.72) / 4
    assert metrics.brier(probs, labels) == pytest.approx((0.02 + 0.02 + 0.32 + 0.72) / 4, abs=1e-6)
    assert metrics.accuracy(probs, labels) == 0.75
    # a certain mistake costs -log(1e-12)
    assert metrics.nll(torch.tensor([[1.0, 0.0]]), torch.tensor([1])) == pytest.approx(12 * math.log(10))
    assert metrics.brier(torch.tensor([[1.0, 0.0]]), torch.tensor([1])) == 2.0
    # perfect predictions
    eye = torch.eye(3)
    assert metrics.ece(eye, torch.arange(3)) == 0.0 and metrics.brier(eye, torch.arange(3)) == 0.0
    assert metrics.aurc(eye, torch.arange(3)) == 0.0


def test_hand_computed_aurc():
    # confidences .9 (right), .8 (wrong), .7 (right), .6 (wrong): risks 0, 1/2, 1/3, 2/4
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    labels = torch.tensor([0, 1, 0, 1])
    cov, risk = metrics.risk_coverage_curve(probs, labels)
    assert cov.tolist() == [0.25, 0.5, 0.75, 1.0]
    assert risk.tolist() == pytest.approx([0.0, 0.5, 1 / 3, 0.5])
    assert metrics.aurc(probs, labels) == pytest.approx((0 + 0.5 + 1 / 3 + 0.5) / 4)
    # external scores reverse the order: .6, .7, .8, .9 -> risks 1, 1/2, 2/3, 2/4
    scores = torch.tensor([0.1, 0.2, 0.3, 0.4])
    assert metrics.aurc(probs, labels, scores=scores) == pytest.approx((1 + 0.5 + 2 / 3 + 0.5) / 4)


def test_hand_computed_adaptive_and_classwise():
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.7, 0.3]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 0])
    # sorted conf .6(wrong) .7 | .8 .9: |.5 - .65| * .5 + |1 - .85| * .5 = .15
    assert metrics.adaptive_ece(probs, labels, n_bins=2) == pytest.approx(0.15)
    # 4 bins of one: |0-.6| + |1-.7| + |1-.8| + |1-.9| over 4
    assert metrics.adaptive_ece(probs, labels, n_bins=4) == pytest.approx((0.6 + 0.3 + 0.2 + 0.1) / 4)
    # class-wise, 2 bins (0, .5], (.5, 1]:
    #   class 0: p0 = .9 .8 .6 .7 all in bin 2, freq 3/4 vs mean .75 -> 0
    #   class 1: p1 = .1 .2 .4 .3 all in bin 1, freq 1/4 vs mean .25 -> 0
    assert metrics.classwise_ece(probs, labels, n_bins=2) == pytest.approx(0.0, abs=1e-12)
    # 10 bins: class 0 gaps |1-.9| |1-.8| |0-.6| |1-.7| = 1.2; class 1 the same by symmetry
    assert metrics.classwise_ece(probs, labels, n_bins=10) == pytest.approx(1.2 / 4)


# ------------------------------------------------------------------------------------ bin edges
def test_confidences_on_bin_edges_go_to_the_lower_bin():
    # top-1 confidences exactly 0.2, 0.4, 0.6, 0.8, 1.0 with 5 bins: (lo, hi] puts each in its own bin
    rows = [[0.2] * 5, [0.4, 0.15, 0.15, 0.15, 0.15], [0.6, 0.1, 0.1, 0.1, 0.1], [0.8, 0.05, 0.05, 0.05, 0.05],
            [1.0, 0.0, 0.0, 0.0, 0.0]]
    labels = torch.zeros(5, dtype=torch.long)
    for dtype in (torch.float32, torch.float64):
        rb = metrics.reliability_bins(torch.tensor(rows, dtype=dtype), labels, n_bins=5)
        assert rb.counts.tolist() == [1, 1, 1, 1, 1]  # [lo, hi) would give [0, 1, 1, 1, 2]
        assert rb.confidence.tolist() == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    # every k/15 edge, float64 and float32: confidence k/15 lands in bin k-1
    for dtype in (torch.float32, torch.float64):
        for k in range(1, 16):
            c = k / 15
            if c < 0.5:
                continue  # a two-class top-1 is at least 0.5
            rb = metrics.reliability_bins(torch.tensor([[c, 1 - c]], dtype=dtype), torch.tensor([0]), n_bins=15)
            assert rb.counts.argmax().item() == k - 1, (dtype, k)
    # a confidence of exactly 0 would need C = inf; but the first bin is closed at 0 for classwise probs
    assert metrics.classwise_ece(torch.tensor([[1.0, 0.0]]), torch.tensor([0]), n_bins=4) == 0.0


def test_edges_match_reference_at_every_k_over_n():
    probs = torch.tensor([[k / 10, 1 - k / 10] for k in range(5, 11)], dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 0, 1, 0])
    assert metrics.ece(probs, labels, n_bins=10) == pytest.approx(ece_reference(probs.numpy(), labels.numpy(), 10))


# ---------------------------------------------------------------------------------- properties
@given(prob_label_pairs(), st.integers(1, 20))
def test_metric_ranges(pair, n_bins):
    probs, labels = pair
    for fn in (metrics.ece, metrics.mce, metrics.adaptive_ece, metrics.classwise_ece):
        v = fn(probs, labels, n_bins=n_bins)
        assert 0.0 <= v <= 1.0 + 1e-12, fn.__name__
    assert metrics.ece(probs, labels, n_bins=n_bins) <= metrics.mce(probs, labels, n_bins=n_bins) + 1e-12
    assert 0.0 <= metrics.brier(probs, labels) <= 2.0 + 1e-12
    assert metrics.nll(probs, labels) >= 0.0
    assert 0.0 <= metrics.aurc(probs, labels) <= 1.0


@given(prob_label_pairs(), st.randoms(use_true_random=False))
def test_class_permutation_invariance(pair, rnd):
    probs, labels = pair
    C = probs.shape[1]
    perm = list(range(C))
    rnd.shuffle(perm)
    inverse = torch.argsort(torch.tensor(perm))
    probs_p, labels_p = probs[:, perm], inverse[labels]  # new class j is old class perm[j]
    assert metrics.nll(probs_p, labels_p) == pytest.approx(metrics.nll(probs, labels), abs=1e-12)
    assert metrics.brier(probs_p, labels_p) == pytest.approx(metrics.brier(probs, labels), abs=1e-12)
    assert metrics.classwise_ece(probs_p, labels_p) == pytest.approx(metrics.classwise_ece(probs, labels), abs=1e-12)
    top = probs.max(1).values
    if bool(((probs == top[:, None]).sum(1) == 1).all()):  # argmax ties pick the first index
        assert metrics.ece(probs_p, labels_p) == pytest.approx(metrics.ece(probs, labels), abs=1e-12)
        assert metrics.accuracy(probs_p, labels_p) == metrics.accuracy(probs, labels)


@given(st.integers(0, 2**31 - 1))
def test_ece_class_permutation_invariance_continuous(seed):
    probs, labels = _data(N=100, C=4, seed=seed)
    perm = torch.randperm(4, generator=torch.Generator().manual_seed(seed))
    inverse = torch.argsort(perm)
    for norm in ("l1", "l2", "max"):
        assert metrics.ece(probs[:, perm], inverse[labels], norm=norm) == pytest.approx(
            metrics.ece(probs, labels, norm=norm), abs=1e-12
        )


def test_calibrated_predictor_has_small_shrinking_ece():
    g = torch.Generator().manual_seed(0)
    values = []
    for n in (500, 20000):
        probs = (torch.randn(n, 3, generator=g, dtype=torch.float64) * 1.5).softmax(1)
        labels = torch.multinomial(probs, 1, generator=g).squeeze(1)  # labels drawn from the predicted probs
        values.append(metrics.ece(probs, labels))
    assert values[1] < 0.02
    assert values[1] < values[0]
    # a miscalibrated (over-confident) predictor is far worse
    sharp = (probs.log() * 3).softmax(1)
    assert metrics.ece(sharp, labels) > 5 * values[1]


# ------------------------------------------------------------------------------ risk-coverage
@given(
    arrays(np.int64, st.integers(1, 25), elements=st.integers(0, 3)),
    st.data(),
)
def test_risk_coverage_ties_are_order_independent(score_values, data):
    n = len(score_values)
    errors = data.draw(arrays(np.int64, (n,), elements=st.integers(0, 1)))
    perm = np.array(data.draw(st.permutations(range(n))))
    probs = torch.tensor([[0.6, 0.4]] * n, dtype=torch.float64)
    labels = torch.from_numpy(errors)  # label 1 is an error (argmax is 0)
    scores = torch.from_numpy(score_values.astype(np.float64))
    cov, risk = metrics.risk_coverage_curve(probs, labels, scores=scores)
    _, risk_p = metrics.risk_coverage_curve(probs, labels[perm], scores=scores[perm])
    torch.testing.assert_close(risk, risk_p, rtol=0, atol=1e-12)
    np.testing.assert_allclose(risk.numpy(), risk_coverage_reference(score_values, errors), atol=1e-12)
    assert cov.tolist() == pytest.approx([(k + 1) / n for k in range(n)])
    assert risk[-1].item() == pytest.approx(errors.mean())


def test_all_tied_confidences_give_flat_risk():
    probs = torch.full((10, 2), 0.5)
    labels = torch.tensor([0, 1] * 5)
    _, risk = metrics.risk_coverage_curve(probs, labels)
    torch.testing.assert_close(risk, torch.full((10,), 0.5, dtype=torch.float64))
    assert metrics.aurc(probs, labels) == pytest.approx(0.5)


def test_aurc_with_scores_against_reference():
    probs, labels = _data(N=150, C=3, seed=8)
    scores = -torch.special.entr(probs).sum(1)  # negative entropy as the confidence
    scores = (scores * 4).round() / 4  # coarse: many ties
    expected = aurc_reference(probs.numpy(), labels.numpy(), scores=scores.numpy())
    assert metrics.aurc(probs, labels, scores=scores) == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------------------------- segmentation
ALL_SCALAR = [
    metrics.accuracy,
    metrics.nll,
    metrics.brier,
    metrics.ece,
    metrics.mce,
    metrics.adaptive_ece,
    metrics.classwise_ece,
    metrics.aurc,
]


@pytest.mark.parametrize("as_numpy", [False, True])
def test_segmentation_with_ignore_index_equals_flattened_valid_pixels(as_numpy):
    probs, labels = _data(3, 4, 6, 5, seed=9)
    g = torch.Generator().manual_seed(1)
    labels = labels.clone()
    labels[torch.rand(labels.shape, generator=g) < 0.3] = 255
    valid = labels != 255
    flat_probs = probs.movedim(1, -1)[valid]  # (M, C)
    flat_labels = labels[valid]
    scores = torch.rand(labels.shape, generator=g, dtype=torch.float64)
    p_in, y_in, s_in = (probs.numpy(), labels.numpy(), scores.numpy()) if as_numpy else (probs, labels, scores)
    for fn in ALL_SCALAR:
        assert fn(p_in, y_in, ignore_index=255) == pytest.approx(fn(flat_probs, flat_labels), abs=1e-12), fn.__name__
    assert metrics.aurc(p_in, y_in, scores=s_in, ignore_index=255) == pytest.approx(
        metrics.aurc(flat_probs, flat_labels, scores=scores[valid]), abs=1e-12
    )
    rb = metrics.reliability_bins(p_in, y_in, ignore_index=255)
    rb_flat = metrics.reliability_bins(flat_probs, flat_labels)
    assert torch.equal(rb.counts, rb_flat.counts)
    torch.testing.assert_close(rb.accuracy, rb_flat.accuracy, equal_nan=True)
    cov, risk = metrics.risk_coverage_curve(p_in, y_in, ignore_index=255)
    assert cov.numel() == int(valid.sum())
    torch.testing.assert_close(risk, metrics.risk_coverage_curve(flat_probs, flat_labels)[1])
    ev, ev_flat = metrics.evaluate(p_in, y_in, ignore_index=255), metrics.evaluate(flat_probs, flat_labels)
    assert ev == pytest.approx(ev_flat, abs=1e-12)


def test_segmentation_without_ignore_index_equals_all_pixels():
    probs, labels = _data(2, 3, 4, 4, seed=10)
    flat_probs, flat_labels = probs.movedim(1, -1).reshape(-1, 3), labels.reshape(-1)
    for fn in ALL_SCALAR:
        assert fn(probs, labels) == pytest.approx(fn(flat_probs, flat_labels), abs=1e-12), fn.__name__


# -------------------------------------------------------------------------------------- evaluate
def test_evaluate_keys_and_values():
    probs, labels = _data(N=120, C=3, seed=11)
    out = metrics.evaluate(probs, labels, n_bins=10)
    assert sorted(out) == ["accuracy", "adaptive_ece", "aurc", "brier", "classwise_ece", "ece", "mce", "nll"]
    assert all(isinstance(v, float) for v in out.values())
    assert out["ece"] == metrics.ece(probs, labels, n_bins=10)
    assert out["mce"] == metrics.mce(probs, labels, n_bins=10)
    assert out["adaptive_ece"] == metrics.adaptive_ece(probs, labels, n_bins=10)
    assert out["classwise_ece"] == metrics.classwise_ece(probs, labels, n_bins=10)
    for name in ("accuracy", "nll", "brier", "aurc"):
        assert out[name] == getattr(metrics, name)(probs, labels), name
    with pytest.raises(ValueError, match=r"`labels` must be integers in \[0, 3\), got values in \[0, 3\]"):
        metrics.evaluate(probs, torch.full_like(labels, 3).index_fill(0, torch.tensor([0]), 0))


def test_validate_args_false_accepts_logits_for_accuracy():
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    assert metrics.accuracy(logits, torch.tensor([0, 0]), validate_args=False) == 0.5


# ------------------------------------------------------------------ regressions
def test_equal_mass_bins_match_numpy_array_split():
    # Distinct confidences: the bins are exactly numpy.array_split of the sorted samples.
    g = torch.Generator().manual_seed(3)
    for n in range(1, 41):
        conf = torch.randperm(1000, generator=g)[:n].double() / 2000 + 0.5  # distinct, in [0.5, 1)
        probs = torch.stack([conf, 1 - conf], 1)
        labels = torch.randint(0, 2, (n,), generator=g)
        order = np.argsort(conf.numpy())
        c, hit = conf.numpy()[order], (labels.numpy() == 0)[order]
        for n_bins in (1, 2, 3, 7, 15, 40, 50):
            parts = np.array_split(np.arange(n), min(n_bins, n))
            expected = sum(abs(hit[p].sum() - c[p].sum()) for p in parts) / n
            assert metrics.adaptive_ece(probs, labels, n_bins=n_bins) == pytest.approx(expected, abs=1e-12), (n, n_bins)


@pytest.mark.parametrize(
    "name", ["nll", "brier", "mce", "adaptive_ece", "classwise_ece", "aurc", "risk_coverage_curve", "evaluate"]
)
def test_documented_with_shapes_args_and_returns(name):
    doc = getattr(metrics, name).__doc__
    assert "Args:" in doc and "Returns:" in doc and "Example:" in doc
    assert "probs: (N, C) or (N, C, ...)" in doc and "labels: (N,) or (N, ...)" in doc


# ------------------------------------------------------------------ issue 13: half precision (item 2)
BINNED = ("ece", "mce", "classwise_ece", "adaptive_ece")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_confidence_on_an_edge_goes_where_its_value_says(dtype):
    # float16(0.6) = 0.60009765625 > 0.6: bin (0.6, 0.7]; rounding the edges to float16 used to tie them.
    probs = torch.tensor([[0.6, 0.4]], dtype=dtype)
    value = float(probs[0, 0])
    rb = metrics.reliability_bins(probs, torch.tensor([0]), n_bins=10)
    expected_bin = 6 if value > 0.6 else 5
    assert rb.counts.tolist() == [int(i == expected_bin) for i in range(10)]
    assert metrics.mce(probs, torch.tensor([0]), n_bins=10) == pytest.approx(1 - value, abs=1e-12)


@given(
    data=prob_label_pairs(max_n=40, max_c=4),
    dtype=st.sampled_from([torch.float16, torch.bfloat16]),
    n_bins=st.sampled_from([2, 3, 5, 10, 15]),
)
def test_half_precision_bins_equal_the_widened_values(data, dtype, n_bins):
    # Binning a half-precision tensor == binning its exact float32 widening (the class of item 2):
    # every binned metric, the reliability table, and on values forced onto bin edges.
    probs, labels = data
    edges = torch.arange(1, n_bins, dtype=torch.float64) / n_bins
    on_edge = edges[torch.arange(probs.numel()).reshape(probs.shape) % edges.numel()]
    probs = torch.where(torch.rand(probs.shape, generator=torch.Generator().manual_seed(0)) < 0.3, on_edge, probs)
    probs = probs / probs.sum(1, keepdim=True)
    half = probs.to(dtype)
    half = half / half.float().sum(1, keepdim=True).to(dtype)  # keep the sums within the dtype's tolerance
    wide = half.float()
    kw = {"n_bins": n_bins, "validate_args": False}
    for name in BINNED:
        assert getattr(metrics, name)(half, labels, **kw) == getattr(metrics, name)(wide, labels, **kw), name
    a, b = metrics.reliability_bins(half, labels, **kw), metrics.reliability_bins(wide, labels, **kw)
    assert torch.equal(a.counts, b.counts)
    torch.testing.assert_close(a.accuracy, b.accuracy, equal_nan=True, rtol=0, atol=0)


def test_bf16_softmax_ece_equals_float32_of_the_same_values():
    # The case: 20k realistic bf16 softmax outputs (ECE 0.0084 vs 0.0095, MCE 0.023 vs 0.041 before).
    probs, labels = _data(20_000, 10, seed=21, scale=3.0)
    half = probs.to(torch.bfloat16)
    for name in ("ece", "mce", "classwise_ece"):
        got = getattr(metrics, name)(half, labels, validate_args=False)
        assert got == getattr(metrics, name)(half.float(), labels, validate_args=False), name


# ------------------------------------------------------------------ issue 13: order of the rows (item 7)
def test_adaptive_ece_tied_confidences_are_one_block():
    probs = torch.tensor([[0.6, 0.4]] * 4, dtype=torch.float64)
    a = metrics.adaptive_ece(probs, torch.tensor([0, 0, 1, 1]), n_bins=2)
    b = metrics.adaptive_ece(probs, torch.tensor([0, 1, 0, 1]), n_bins=2)
    assert a == b == pytest.approx(0.1, abs=1e-12)  # each bin: accuracy 0.5 at confidence 0.6
    # A tie block straddling a cut is shared in proportion: 3 x 0.9 (2 right) then 0.7 (right), 2 bins.
    probs = torch.tensor([[0.9, 0.1]] * 3 + [[0.7, 0.3]], dtype=torch.float64)
    got = metrics.adaptive_ece(probs, torch.tensor([0, 0, 1, 0]), n_bins=2)
    # bin 1: 0.7 (acc 1) + half of the block (acc 2/3): |1 + 2/3 - 1.6|; bin 2: the other half |4/3 - 1.8|
    assert got == pytest.approx((abs(1 + 2 / 3 - 1.6) + abs(4 / 3 - 1.8)) / 4, abs=1e-12)


def _all_functional(probs, labels, scores):
    out = {name: getattr(metrics, name)(probs, labels) for name in ("accuracy", "nll", "brier", "aurc")}
    for name in ("ece", "mce", "adaptive_ece", "classwise_ece"):
        out[name] = getattr(metrics, name)(probs, labels, n_bins=4)
    out["ece_l2"] = metrics.ece(probs, labels, n_bins=4, norm="l2")
    out["aurc_scores"] = metrics.aurc(probs, labels, scores=scores)
    out.update({f"evaluate_{k}": v for k, v in metrics.evaluate(probs, labels, n_bins=3).items()})
    cov, risk = metrics.risk_coverage_curve(probs, labels, scores=scores)
    out["curve"] = torch.cat([cov, risk])
    rb = metrics.reliability_bins(probs, labels, n_bins=5)
    out["reliability"] = torch.cat([rb.counts.double(), rb.confidence.nan_to_num(-1), rb.accuracy.nan_to_num(-1)])
    wrong = probs.argmax(1) != labels
    if bool(wrong.any()) and not bool(wrong.all()):
        pos, neg = scores[wrong], scores[~wrong]
        out.update(auroc=metrics.auroc(pos, neg), aupr=metrics.aupr(pos, neg),
                   fpr95=metrics.fpr_at_tpr(pos, neg), roc=torch.cat(metrics.roc_curve(pos, neg)))
    return out


@st.composite
def tied_rows(draw, max_n=24):
    """Rows drawn from a few distinct probability vectors, so confidences and scores tie often."""
    C = draw(st.integers(2, 4))
    k = draw(st.integers(1, 4))
    raw = draw(arrays(np.float64, (k, C), elements=st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0])))
    raw[raw.sum(1) == 0] = 1.0
    table = raw / raw.sum(1, keepdims=True)
    N = draw(st.integers(1, max_n))
    rows = draw(arrays(np.int64, (N,), elements=st.integers(0, k - 1)))
    labels = draw(arrays(np.int64, (N,), elements=st.integers(0, C - 1)))
    scores = draw(arrays(np.float64, (N,), elements=st.sampled_from([0.0, 0.5, 1.0])))
    perm = draw(st.permutations(range(N)))
    return (torch.from_numpy(table[rows]), torch.from_numpy(labels), torch.from_numpy(scores),
            torch.tensor(perm, dtype=torch.long))


@given(tied_rows())
def test_every_functional_metric_is_invariant_to_the_order_of_the_rows(case):
    probs, labels, scores, perm = case
    a, b = _all_functional(probs, labels, scores), _all_functional(probs[perm], labels[perm], scores[perm])
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(b[key], value, rtol=0, atol=1e-12, msg=key)
        else:
            assert b[key] == pytest.approx(value, abs=1e-12), key


# ------------------------------------------------------------------ issue 13: documented claims (item 8)
def test_nll_clamp_convention_against_sklearn():
    probs, labels = _data(200, 4, seed=22)
    assert metrics.nll(probs, labels) == pytest.approx(log_loss(labels.numpy(), probs.numpy(), labels=range(4)),
                                                       abs=1e-12)  # equal while every p_y >= 1e-12
    certain_miss = torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=torch.float64)
    got = metrics.nll(certain_miss, torch.tensor([1, 0]))
    assert got == pytest.approx((-math.log(1e-12) + math.log(2)) / 2, abs=1e-12)  # p_y = 0 costs 27.63 nats
    sk = log_loss([1, 0], certain_miss.numpy(), labels=[0, 1])  # sklearn clips at float64 eps instead
    assert sk == pytest.approx((-math.log(np.finfo(np.float64).eps) + math.log(2)) / 2, abs=1e-9) and sk > got
    assert "1e-12" in metrics.nll.__doc__ and "log_loss" in metrics.nll.__doc__


@pytest.mark.parametrize("fn", [metrics.auroc, metrics.aupr, metrics.fpr_at_tpr, metrics.roc_curve])
def test_detection_refuses_complex_scores(fn):
    with pytest.raises(TypeError, match=r"`positive` must be real numbers .*, got dtype torch.complex64"):
        fn(torch.tensor([1 + 1j, 0.5j]), torch.tensor([0.1, 0.2]))
    with pytest.raises(TypeError, match=r"`negative` must be real numbers .*, got dtype torch.complex128"):
        fn(torch.tensor([0.1]), torch.tensor([0.2 + 0j], dtype=torch.complex128))
    with pytest.raises(TypeError, match=r"`scores` must be real numbers"):
        metrics.aurc(torch.tensor([[0.9, 0.1]]), torch.tensor([0]), scores=torch.tensor([1j]))


@pytest.mark.parametrize("name", ["ece", "mce", "adaptive_ece", "classwise_ece", "reliability_bins", "evaluate"])
def test_n_bins_upper_bound_before_any_allocation(name):
    probs, labels = torch.tensor([[0.9, 0.1]]), torch.tensor([0])
    with pytest.raises(ValueError, match=r"`n_bins` must be at most 100000, got 10000000000"):
        getattr(metrics, name)(probs, labels, n_bins=10_000_000_000)
    assert isinstance(getattr(metrics, name)(probs, labels, n_bins=100_000), (float, dict, metrics.ReliabilityBins))
