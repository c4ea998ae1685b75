"""Streaming metrics: batch-by-batch == the functional metrics on everything, bounded state, exact sums,
approximations within their guaranteed bounds, torchmetrics integration and error paths."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassCalibrationError

from netuq import metrics
from netuq.metrics import streaming
from netuq.metrics._core import bin_index
from netuq.metrics.streaming import CalibrationError, UncertaintyMetrics

EXACT_KEYS = ("accuracy", "nll", "brier", "ece", "mce")


def _data(N, C, *spatial, seed=0, scale=2.0, dtype=torch.float32):
    """Continuous random probabilities and labels drawn from a distorted version of them (miscalibrated)."""
    g = torch.Generator().manual_seed(seed)
    probs = (torch.randn(N, C, *spatial, generator=g, dtype=torch.float64) * scale).softmax(1)
    flat = probs.movedim(1, -1).reshape(-1, C)
    labels = torch.multinomial(flat.sqrt(), 1, generator=g).reshape(N, *spatial)
    return probs.to(dtype), labels


def _ignore(labels, frac, seed=1, value=255):
    g = torch.Generator().manual_seed(seed)
    labels = labels.clone()
    labels[torch.rand(labels.shape, generator=g) < frac] = value
    return labels


def _split(n, sizes):
    """Cut range(n) into consecutive slices of the given sizes (the last one takes the rest)."""
    out, start = [], 0
    for size in sizes:
        out.append(slice(start, min(n, start + size)))
        start += size
    out.append(slice(start, n))
    return [s for s in out if s.stop > s.start]


def _functional(probs, labels, n_bins=15, ignore_index=None, validate_args=True):
    kw = {"ignore_index": ignore_index, "validate_args": validate_args}
    out = {
        "accuracy": metrics.accuracy(probs, labels, **kw),
        "nll": metrics.nll(probs, labels, **kw),
        "brier": metrics.brier(probs, labels, **kw),
        "ece": metrics.ece(probs, labels, n_bins=n_bins, **kw),
        "mce": metrics.mce(probs, labels, n_bins=n_bins, **kw),
        "classwise_ece": metrics.classwise_ece(probs, labels, n_bins=n_bins, **kw),
        "adaptive_ece": metrics.adaptive_ece(probs, labels, n_bins=n_bins, **kw),
        "aurc": metrics.aurc(probs, labels, **kw),
    }
    flat = probs.movedim(1, -1).reshape(-1, probs.shape[1])
    y = labels.reshape(-1)
    if ignore_index is not None:
        flat, y = flat[y != ignore_index], y[y != ignore_index]
    conf, pred = flat.max(1)
    correct = pred == y
    both = bool(correct.any()) and not bool(correct.all())
    out["misclassification_auroc"] = metrics.auroc(conf[correct], conf[~correct]) if both else math.nan
    return out


# ---------------------------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
def test_calibration_error_batches_equal_all_at_once_classification(norm):
    probs, labels = _data(1000, 6, seed=3)
    metric = CalibrationError(n_bins=12, norm=norm)
    for s in _split(1000, [1, 7, 100, 333, 2]):
        metric.update(probs[s], labels[s])
    expected = metrics.ece(probs, labels, n_bins=12, norm=norm)
    assert metric.compute() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
def test_calibration_error_matches_torchmetrics_reference(norm):
    # Independent reference; continuous float64 data, so bin-edge conventions and float32 sums don't matter.
    probs, labels = _data(600, 5, seed=4, dtype=torch.float64)
    metric = CalibrationError(n_bins=10, norm=norm)
    tm = MulticlassCalibrationError(num_classes=5, n_bins=10, norm=norm)
    for s in _split(600, [50, 250]):
        metric.update(probs[s], labels[s])
        tm.update(probs[s], labels[s])
    assert metric.compute() == pytest.approx(float(tm.compute()), abs=1e-6)


def test_segmentation_with_ignore_index_batches_equal_all_at_once():
    probs, labels = _data(9, 5, 12, 10, seed=5)
    labels = _ignore(labels, 0.2)
    labels[4] = 255  # a batch that is entirely ignored adds nothing
    ce = CalibrationError(n_bins=15, ignore_index=255)
    um = UncertaintyMetrics(5, ignore_index=255, classwise=True)
    for s in _split(9, [2, 1, 1, 1, 3]):
        ce.update(probs[s], labels[s])
        um.update(probs[s], labels[s])
    exp = _functional(probs, labels, ignore_index=255)
    out = um.compute()
    for key in (*EXACT_KEYS, "classwise_ece"):
        assert out[key] == pytest.approx(exp[key], abs=1e-6), key
    assert ce.compute() == pytest.approx(exp["ece"], abs=1e-12)
    assert out["n"] == int((labels != 255).sum())
    ref = metrics.reliability_bins(probs, labels, ignore_index=255)
    for rel in (um.reliability(), ce.reliability()):
        assert torch.equal(rel.counts, ref.counts)
        torch.testing.assert_close(rel.accuracy, ref.accuracy, equal_nan=True)
        torch.testing.assert_close(rel.confidence, ref.confidence, equal_nan=True)
        torch.testing.assert_close(rel.edges, ref.edges)


def test_uncertainty_metrics_classification_many_batches_float64():
    probs, labels = _data(2000, 7, seed=6, dtype=torch.float64)
    um = UncertaintyMetrics(7, n_bins=10, classwise=True)
    for s in _split(2000, [3, 500, 17, 1, 900]):
        um.update(probs[s], labels[s])
    out, exp = um.compute(), _functional(probs, labels, n_bins=10)
    for key in (*EXACT_KEYS, "classwise_ece"):
        assert out[key] == pytest.approx(exp[key], abs=1e-12), key
    # Independent reference for the accuracy/NLL/Brier definitions.
    assert out["accuracy"] == pytest.approx(float((probs.argmax(1) == labels).double().mean()), abs=1e-12)


@pytest.mark.parametrize("chunk", [7, 50, 1000])
def test_chunk_boundaries_do_not_change_anything(monkeypatch, chunk):
    # Small chunks exercise both chunking paths (several images per chunk, several chunks per image).
    monkeypatch.setattr(streaming, "_MIN_CHUNK", 1)
    monkeypatch.setitem(streaming._CHUNK_VALUES, "cpu", chunk * 4)  # chunk pixels of C = 4 classes
    probs, labels = _data(5, 4, 9, 11, seed=7)
    labels = _ignore(labels, 0.1, value=-100)
    um = UncertaintyMetrics(4, ignore_index=-100, classwise=True, n_bins=8)
    um.update(probs[:3], labels[:3])
    um.update(probs[3:], labels[3:])
    out, exp = um.compute(), _functional(probs, labels, n_bins=8, ignore_index=-100)
    for key in (*EXACT_KEYS, "classwise_ece"):
        assert out[key] == pytest.approx(exp[key], abs=1e-6), key


def test_uint8_labels_and_multiple_spatial_dims():
    probs, labels = _data(2, 3, 4, 5, 6, seed=8)
    labels = _ignore(labels, 0.2).to(torch.uint8)
    um = UncertaintyMetrics(3, ignore_index=255)
    um.update(probs, labels)
    exp = _functional(probs, labels.long(), ignore_index=255)
    assert um.compute()["ece"] == pytest.approx(exp["ece"], abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(dtype):
    probs, labels = _data(300, 4, seed=9, dtype=dtype)
    um = UncertaintyMetrics(4)
    um.update(probs, labels)
    # bfloat16 rounding moves sums by ~3e-3: valid for its dtype, not once cast to float32.
    out, exp = um.compute(), _functional(probs.float(), labels, validate_args=False)
    for key in EXACT_KEYS:
        assert out[key] == pytest.approx(exp[key], abs=1e-6), key
    assert um.fine_conf_sum.dtype == torch.float64


def test_ties_follow_the_first_argmax_like_the_functional_metrics():
    # torch.max / argmax pick the first maximal class: label 1 on [0.5, 0.5] is a mistake.
    probs = torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.9, 0.1]])
    labels = torch.tensor([0, 1, 0])
    probs3 = torch.tensor([[0.4, 0.4, 0.2], [0.4, 0.4, 0.2], [0.2, 0.4, 0.4], [0.2, 0.4, 0.4]])
    labels3 = torch.tensor([1, 0, 2, 1])  # top-1 is class 0, 0, 1, 1: the 2nd and 4th are right
    for p, y, acc in ((probs, labels, 2 / 3), (probs3, labels3, 0.5)):
        um = UncertaintyMetrics(n_bins=5)
        um.update(p, y)
        out = um.compute()
        assert out["accuracy"] == pytest.approx(acc)
        assert out["accuracy"] == pytest.approx(metrics.accuracy(p, y))
        assert out["ece"] == pytest.approx(metrics.ece(p, y, n_bins=5), abs=1e-12)


def test_coarse_bins_from_the_fine_grid_equal_bin_index_at_the_edges():
    for dtype in (torch.float32, torch.float64):
        for n_bins in (1, 3, 10, 15, 100):
            edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64).to(dtype)
            near = torch.cat([edges, torch.nextafter(edges, edges + 1), torch.nextafter(edges, edges - 1)])
            conf = torch.cat([near.clamp(0, 1), torch.rand(5000, dtype=torch.float64).to(dtype)])
            for fine_bins in (1, 7, 10_000):
                fine = streaming._fine_index(conf, fine_bins)
                got = streaming._coarse_index(conf, fine, n_bins, fine_bins)
                assert torch.equal(got, bin_index(conf, n_bins)), (dtype, n_bins, fine_bins)


def test_fine_index_is_monotone_and_resolves_confidences_near_one():
    conf = torch.sort(torch.cat([torch.rand(20000), 1 - torch.rand(20000) * 1e-4, torch.tensor([0.0, 1.0])]))[0]
    fine = streaming._fine_index(conf, 10_000)
    assert bool((fine.diff() >= 0).all())
    assert int(fine.min()) >= 0 and int(fine.max()) <= 9999
    assert len(torch.unique(fine[conf > 1 - 1e-4])) > 500  # not one bin for the over-confident pile-up


# ------------------------------------------------------------------------------------- bounded, exact state


def _state_bytes(metric):
    return sum(v.numel() * v.element_size() for v in metric.metric_state.values())


def test_state_size_does_not_grow_with_updates():
    probs, labels = _data(40, 4, 8, 8, seed=10)
    for metric in (CalibrationError(), UncertaintyMetrics(4, classwise=True)):
        metric.update(probs[:2], labels[:2])
        before = {k: tuple(v.shape) for k, v in metric.metric_state.items()}
        size = _state_bytes(metric)
        for i in range(2, 40, 2):
            metric.update(probs[i : i + 2], labels[i : i + 2])
        assert {k: tuple(v.shape) for k, v in metric.metric_state.items()} == before
        assert _state_bytes(metric) == size
    assert _state_bytes(CalibrationError(n_bins=15)) == 15 * 24
    assert _state_bytes(UncertaintyMetrics(fine_bins=1000)) == 15 * 24 + 1000 * 24 + 16


def test_reset_forgets_everything():
    probs, labels = _data(200, 3, seed=11)
    um, ce = UncertaintyMetrics(3, classwise=True), CalibrationError()
    for metric in (um, ce):
        metric.update(probs[:100], labels[:100])
        metric.reset()
        assert all(int(v.abs().sum()) == 0 for v in metric.metric_state.values())
        metric.update(probs[100:], labels[100:])
    exp = _functional(probs[100:], labels[100:])
    assert um.compute()["ece"] == pytest.approx(exp["ece"], abs=1e-12)
    assert ce.compute() == pytest.approx(exp["ece"], abs=1e-12)


def test_float64_sums_stay_exact_where_float32_accumulation_drifts():
    # 10^7 pixels of confidence float32(0.7): a float32 running sum (what binning in float32 does) drifts.
    n, batches = 2_000_000, 5
    probs = torch.tensor([0.7, 0.3]).expand(n, 2)  # a view: no memory
    labels = torch.zeros(n, dtype=torch.int64)
    labels[: n * 2 // 5] = 1  # 60% correct
    metric = UncertaintyMetrics(2, validate_args=False)
    for _ in range(batches):
        metric.update(probs, labels)
    c = float(torch.tensor(0.7))  # float64 value of float32(0.7)
    total = n * batches
    assert int(metric.counts.sum()) == total
    assert float(metric.conf_sum.sum()) == pytest.approx(total * c, rel=1e-13)
    out = metric.compute()
    assert out["accuracy"] == 0.6
    assert out["ece"] == pytest.approx(c - 0.6, abs=1e-12)
    assert out["nll"] == pytest.approx(-(0.6 * math.log(c) + 0.4 * math.log(float(torch.tensor(0.3)))), abs=1e-9)
    drifted = torch.zeros(1).index_add_(0, torch.zeros(total, dtype=torch.int64), torch.tensor([0.7]).expand(total))
    assert abs(float(drifted) / total - c) > 1e-3  # the float32 sum is visibly wrong


# --------------------------------------------------------------------------------------- approximations


APPROX_KEYS = ("adaptive_ece", "misclassification_auroc", "aurc")


@pytest.mark.parametrize(
    "scale, spatial", [(1.0, ()), (2.5, ()), (12.0, (16, 16))], ids=["flat", "peaked", "overconfident-seg"]
)
def test_approximations_within_their_bounds_and_1e3(scale, spatial):
    N = 100_000 if not spatial else 400
    probs, labels = _data(N, 10, *spatial, seed=12, scale=scale)
    um = UncertaintyMetrics(10)
    um.update(probs, labels)
    out, exp = um.compute(), _functional(probs, labels)
    for key in APPROX_KEYS:
        err = abs(out[key] - exp[key])
        assert err <= out[f"{key}_error_bound"] + 1e-12, key
        assert err < 1e-3, key
    assert out["misclassification_auroc_error_bound"] < 1e-3
    assert out["aurc_error_bound"] < 1e-3
    # Independent reference for the AUROC direction: correct pixels are the positives.
    flat = probs.movedim(1, -1).reshape(-1, 10)
    conf, pred = flat.max(1)
    sk = roc_auc_score((pred == labels.reshape(-1)).numpy(), conf.numpy())
    assert out["misclassification_auroc"] == pytest.approx(sk, abs=1e-3)


@given(
    n=st.integers(1, 60),
    c=st.integers(2, 4),
    fine_bins=st.integers(1, 12),
    n_bins=st.integers(1, 8),
    decimals=st.sampled_from([1, 2, 6]),
    seed=st.integers(0, 10_000),
)
def test_bounds_hold_even_on_a_coarse_grid_with_ties(n, c, fine_bins, n_bins, decimals, seed):
    g = torch.Generator().manual_seed(seed)
    raw = torch.rand(n, c, generator=g, dtype=torch.float64).pow(3)
    probs = raw / raw.sum(1, keepdim=True)
    probs = probs.mul(10**decimals).round().div(10**decimals)  # rounded: many exact ties
    probs[:, 0] += 1 - probs.sum(1)
    probs = probs.clamp(0, 1)
    probs = probs / probs.sum(1, keepdim=True)
    labels = torch.randint(0, c, (n,), generator=g)
    um = UncertaintyMetrics(n_bins=n_bins, fine_bins=fine_bins)
    um.update(probs, labels)
    out = um.compute()
    exp = _functional(probs, labels, n_bins=n_bins)
    for key in EXACT_KEYS:
        assert out[key] == pytest.approx(exp[key], abs=1e-9), key
    for key in APPROX_KEYS:
        if math.isnan(exp[key]):
            assert math.isnan(out[key])
            continue
        assert abs(out[key] - exp[key]) <= out[f"{key}_error_bound"] + 1e-9, key


def test_one_fine_bin_per_value_is_exact():
    # With distinct confidences far apart, every fine bin holds one confidence: the bounds are 0.
    probs = torch.tensor([[0.95, 0.05], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4], [0.52, 0.48]])
    labels = torch.tensor([0, 1, 0, 1, 0])
    um = UncertaintyMetrics(n_bins=2)
    um.update(probs, labels)
    out, exp = um.compute(), _functional(probs, labels, n_bins=2)
    for key in APPROX_KEYS:
        assert out[f"{key}_error_bound"] == 0.0
        assert out[key] == pytest.approx(exp[key], abs=1e-12), key


# ------------------------------------------------------------------------------ torchmetrics integration


def test_metric_collection_and_forward():
    probs, labels = _data(300, 4, seed=13)
    collection = MetricCollection({"calib": CalibrationError(n_bins=10), "unc": UncertaintyMetrics(4, n_bins=10)})
    batch = collection(probs[:100], labels[:100])  # forward: the batch's values, and accumulates
    assert batch["calib"] == pytest.approx(metrics.ece(probs[:100], labels[:100], n_bins=10), abs=1e-12)
    assert batch["ece"] == pytest.approx(float(batch["calib"]), abs=1e-12)
    collection.update(probs[100:], labels[100:])
    out = collection.compute()
    assert out["calib"] == pytest.approx(metrics.ece(probs, labels, n_bins=10), abs=1e-12)
    assert out["nll"] == pytest.approx(metrics.nll(probs, labels), abs=1e-9)
    # torchmetrics' contract: tensors only (a Lightning `self.log_dict` needs them).
    assert "reliability" not in out
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 for v in out.values())
    assert out["calib"].dtype == torch.float64 and out["n"].dtype == torch.float64 and int(out["n"]) == 300
    assert isinstance(collection["unc"].reliability(), metrics.ReliabilityBins)


def test_compute_before_update_is_nan_and_set_dtype_keeps_exact_states():
    um = UncertaintyMetrics(3)
    with pytest.warns(UserWarning, match="before the ``update``"):
        out = um.compute()
    assert out["n"] == 0 and all(math.isnan(out[k]) for k in (*EXACT_KEYS, *APPROX_KEYS))
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 for v in out.values())
    assert um.reliability().counts.tolist() == [0] * 15
    ce = CalibrationError()
    with pytest.warns(UserWarning):
        value = ce.compute()
    assert isinstance(value, torch.Tensor) and value.ndim == 0 and math.isnan(value)
    for norm in ("l2", "max"):
        with pytest.warns(UserWarning):
            assert math.isnan(CalibrationError(norm=norm).compute())
    um.set_dtype(torch.float32)
    assert um.fine_conf_sum.dtype == torch.float64 and um.counts.dtype == torch.int64


def test_reliability_method_of_calibration_error():
    probs, labels = _data(100, 3, seed=14)
    ce = CalibrationError(n_bins=5)
    ce.update(probs, labels)
    assert torch.equal(ce.reliability().counts, metrics.reliability_bins(probs, labels, n_bins=5).counts)


# ------------------------------------------------------------------------------------------- error paths


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"n_bins": 0}, ValueError, "`n_bins` must be a positive integer, got 0"),
        ({"n_bins": 2.5}, ValueError, "`n_bins` must be a positive integer"),
        ({"n_bins": True}, ValueError, "`n_bins` must be a positive integer"),
        ({"n_bins": 10_000_000_000}, ValueError, "`n_bins` must be at most 100000, got 10000000000"),
        ({"norm": "l3"}, ValueError, r"`norm` must be one of \('l1', 'l2', 'max'\), got 'l3'"),
        ({"ignore_index": 2.0}, TypeError, "`ignore_index` must be an integer or None, got float 2.0"),
        ({"ignore_index": True}, TypeError, "`ignore_index` must be an integer or None, got bool True"),
        ({"validate_args": 1}, TypeError, "`validate_args` must be True or False, got int 1"),
    ],
)
def test_calibration_error_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        CalibrationError(**kwargs)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"num_classes": 0}, ValueError, "`num_classes` must be an integer >= 1 or None, got 0"),
        ({"fine_bins": 0}, ValueError, "`fine_bins` must be a positive integer, got 0"),
        ({"fine_bins": 10**12}, ValueError, "`fine_bins` must be at most 10000000, got 1000000000000"),
        ({"n_bins": -1}, ValueError, "`n_bins` must be a positive integer, got -1"),
        ({"n_bins": 100_001}, ValueError, "`n_bins` must be at most 100000, got 100001"),
        ({"classwise": True}, ValueError, "`num_classes` must be given when classwise=True"),
        ({"classwise": "yes"}, TypeError, "`classwise` must be True or False"),
        ({"ignore_index": "255"}, TypeError, "`ignore_index` must be an integer or None, got str '255'"),
        ({"num_classes": 10**6, "n_bins": 1000, "classwise": True}, ValueError, "`num_classes` \\* `n_bins` must"),
    ],
)
def test_uncertainty_metrics_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        UncertaintyMetrics(**kwargs)


@pytest.mark.parametrize("cls", [CalibrationError, UncertaintyMetrics])
def test_bad_batches_raise_and_leave_the_state_untouched(cls):
    probs, labels = _data(20, 3, 4, 4, seed=15)
    metric = cls(ignore_index=255)
    metric.update(probs[:10], labels[:10])
    state = {k: v.clone() for k, v in metric.metric_state.items()}
    bad_labels = labels[10:].clone()
    bad_labels[-1, -1, -1] = 7  # only in the last chunk: the earlier chunks must not be added
    nan_probs = probs[10:].clone()
    nan_probs[0, 0, 0, 0] = float("nan")
    cases = [
        ((probs[10:], labels[10:, :3]), ValueError, r"`labels` must have shape \(10, 4, 4\) to match `probs`"),
        ((probs[10:], bad_labels), ValueError, r"`labels` must be integers in \[0, 3\) \(or ignore_index=255\)"),
        ((probs[10:] * 2, labels[10:]), ValueError, r"`probs` must be probabilities in \[0, 1\]"),
        ((probs[10:] * 0.5, labels[10:]), ValueError, "`probs` must sum to 1 over the class dimension"),
        ((nan_probs, labels[10:]), ValueError, "`probs` must be finite"),
        ((probs[10:], labels[10:].float()), TypeError, "`labels` must be an integer tensor"),
        ((labels[10:], labels[10:]), TypeError, "`probs` must be a floating-point tensor"),
        ((probs[10:, 0, 0, 0], labels[10:, 0, 0]), ValueError, r"`probs` must have shape \(N, C\)"),
    ]
    for args, err, match in cases:
        with pytest.raises(err, match=match):
            metric.update(*args)
    for key, value in metric.metric_state.items():
        assert torch.equal(value, state[key]), key


def test_num_classes_is_checked():
    probs, labels = _data(10, 3, seed=16)
    with pytest.raises(ValueError, match=r"`probs` must have 4 classes \(num_classes\) in dim 1, got shape \(10, 3\)"):
        UncertaintyMetrics(4).update(probs, labels)


def test_validate_args_false_skips_value_checks_but_not_shapes():
    probs, labels = _data(10, 3, seed=17)
    metric = CalibrationError(validate_args=False)
    metric.update(probs * 1.0005, labels)  # would fail nothing here either, but no check runs
    with pytest.raises(ValueError, match="`labels` must have shape"):
        metric.update(probs, labels[:5])
    assert bool(torch.isfinite(metric.compute()))


# ------------------------------------------------------------------ issue 13 items 2 and 7: dtypes, order, batches
def _streaming_all(batches, n_bins=4, fine_bins=50):
    """Every streaming output (CalibrationError for each norm, UncertaintyMetrics, reliability tables)."""
    ces = {norm: CalibrationError(n_bins=n_bins, norm=norm, validate_args=False) for norm in ("l1", "l2", "max")}
    um = UncertaintyMetrics(batches[0][0].shape[1], n_bins=n_bins, classwise=True, fine_bins=fine_bins,
                            validate_args=False)
    for p, y in batches:
        for m in (*ces.values(), um):
            m.update(p, y)
    out = {f"ce_{k}": m.compute() for k, m in ces.items()}
    out.update(um.compute())
    for name, m in (("ce", ces["l1"]), ("um", um)):
        rb = m.reliability()
        out[f"{name}_reliability"] = torch.cat([rb.counts.double(), rb.confidence.nan_to_num(-1),
                                                rb.accuracy.nan_to_num(-1)])
    return out


def _assert_same(a, b, atol=1e-12):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=atol, equal_nan=True, msg=key)


@st.composite
def _tied_batch(draw, max_n=24):
    C = draw(st.integers(2, 4))
    table = torch.tensor(draw(st.lists(st.lists(st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0]), min_size=C, max_size=C),
                                       min_size=1, max_size=4)), dtype=torch.float64)
    table[table.sum(1) == 0] = 1.0
    table = table / table.sum(1, keepdim=True)
    N = draw(st.integers(1, max_n))
    rows = torch.tensor(draw(st.lists(st.integers(0, table.shape[0] - 1), min_size=N, max_size=N)))
    labels = torch.tensor(draw(st.lists(st.integers(0, C - 1), min_size=N, max_size=N)))
    perm = torch.tensor(draw(st.permutations(range(N))), dtype=torch.long)
    cuts = sorted(draw(st.lists(st.integers(1, max(1, N - 1)), max_size=4))) if N > 1 else []
    return table[rows], labels, perm, cuts


@given(_tied_batch())
def test_streaming_is_invariant_to_row_order_and_batch_splits(case):
    probs, labels, perm, cuts = case
    whole = _streaming_all([(probs, labels)])
    _assert_same(whole, _streaming_all([(probs[perm], labels[perm])]))  # any row order
    bounds = [0, *cuts, probs.shape[0]]
    batches = [(probs[a:b], labels[a:b]) for a, b in zip(bounds, bounds[1:]) if b > a]
    _assert_same(whole, _streaming_all(batches))  # any cut into batches
    # ... and the exact keys equal the functional metrics (tie-aware adaptive ECE included, fine bins
    # permitting: the approximation stays within its bound).
    exp = _functional(probs, labels, n_bins=4)
    for key in ("accuracy", "nll", "brier", "ece", "mce", "classwise_ece"):
        assert float(whole[key]) == pytest.approx(exp[key], abs=1e-12), key
    assert abs(float(whole["adaptive_ece"]) - exp["adaptive_ece"]) <= float(whole["adaptive_ece_error_bound"]) + 1e-12


@given(
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from([torch.float16, torch.bfloat16]),
    n_bins=st.sampled_from([2, 5, 10, 15]),
    on_edges=st.booleans(),
)
def test_half_precision_functional_equals_streaming(seed, dtype, n_bins, on_edges):
    g = torch.Generator().manual_seed(seed)
    probs = (torch.randn(64, 3, generator=g) * 3).softmax(1)
    if on_edges:  # top-1 confidences exactly on (the dtype's rounding of) the bin edges
        k = torch.randint(max(1, n_bins // 2), n_bins, (64,), generator=g)
        top = k.double() / n_bins
        probs = torch.stack([top, (1 - top) * 0.7, (1 - top) * 0.3], 1)
    half = probs.to(dtype)
    labels = torch.randint(0, 3, (64,), generator=g)
    stream = _streaming_all([(half[:20], labels[:20]), (half[20:], labels[20:])], n_bins=n_bins)
    kw = {"n_bins": n_bins, "validate_args": False}
    for key, fn in (("ece", metrics.ece), ("mce", metrics.mce), ("classwise_ece", metrics.classwise_ece)):
        assert float(stream[key]) == pytest.approx(fn(half, labels, **kw), abs=1e-12), key
    assert float(stream["ce_l2"]) == pytest.approx(metrics.ece(half, labels, norm="l2", **kw), abs=1e-12)
    rb = metrics.reliability_bins(half, labels, **kw)
    assert torch.equal(stream["um_reliability"][:n_bins], rb.counts.double())


def test_streaming_n_bins_bound_and_label_dtype_rule():
    with pytest.raises(ValueError, match=r"`n_bins` must be at most 100000, got 10000000000"):
        UncertaintyMetrics(n_bins=10_000_000_000)
    ce = CalibrationError(ignore_index=255)
    with pytest.raises(ValueError, match=r"`ignore_index` must be representable in the dtype of `labels` \(torch.int8"):
        ce.update(torch.tensor([[0.6, 0.4]]), torch.tensor([-1], dtype=torch.int8))
    assert int(ce.counts.sum()) == 0
