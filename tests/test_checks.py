"""Error paths of the shared validators, reached through the public functions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from netuq import Prediction, measures, metrics
from netuq._checks import (
    as_tensor,
    check_ignore_index,
    check_labels,
    check_logits,
    check_probs,
    check_scores,
    flatten_valid,
    float_dtype,
    move_class_last,
    validate_probs_labels,
)

PROBS = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
LABELS = torch.tensor([0, 1, 2])

PROB_METRICS = [
    metrics.accuracy,
    metrics.nll,
    metrics.brier,
    metrics.ece,
    metrics.mce,
    metrics.adaptive_ece,
    metrics.classwise_ece,
    metrics.reliability_bins,
    metrics.risk_coverage_curve,
    metrics.aurc,
    metrics.evaluate,
]
PROB_MEASURES = [measures.entropy, measures.margin, measures.max_prob]
SAMPLE_MEASURES = [measures.expected_entropy, measures.mutual_information, measures.variation_ratio, measures.std]


def _with(probs, index, value):
    out = probs.clone()
    out[index] = value
    return out


# ---------------------------------------------------------------------------------------- probs
@pytest.mark.parametrize("fn", PROB_METRICS)
@pytest.mark.parametrize(
    "bad, match",
    [
        (_with(PROBS, (0, 0), float("nan")), r"`probs` must be finite, got 1 NaN value\(s\)"),
        (_with(PROBS, (1, 2), float("inf")), r"`probs` must be finite, got 1 Inf value\(s\)"),
        (PROBS[0], r"`probs` must have shape \(N, C\) or \(N, C, \.\.\.\), got shape \(3,\)"),
        (torch.empty(0, 3), r"`probs` must not be empty, got shape \(0, 3\)"),
        (PROBS * 2, r"`probs` must be probabilities in \[0, 1\], got values in \[0\.2, 1\.6\]"),
        (PROBS - 0.2, r"`probs` must be probabilities in \[0, 1\], got values in \[-0\.1, 0\.6\]"),
        (PROBS * 0.9, r"`probs` must sum to 1 over the class dimension \(dim 1, tolerance 0\.001\), got sums off by"),
    ],
)
def test_metrics_reject_bad_probs(fn, bad, match):
    with pytest.raises(ValueError, match=match):
        fn(bad, LABELS)  # probs are checked before labels


def test_nan_and_inf_together_counted():
    bad = _with(_with(PROBS, (0, 0), float("nan")), (2, 1), float("-inf"))
    with pytest.raises(ValueError, match=r"`probs` must be finite, got 2 NaN/Inf value\(s\)"):
        metrics.ece(bad, LABELS)


def test_prob_sum_tolerance_is_1e_3():
    ok = PROBS.double().clone()
    ok[:, 0] += 0.0009  # sums off by 9e-4: accepted
    assert metrics.nll(ok, LABELS) > 0
    bad = PROBS.double().clone()
    bad[:, 0] += 0.0011
    with pytest.raises(ValueError, match=r"tolerance 0\.001\), got sums off by up to 0\.0011"):
        metrics.nll(bad, LABELS)


def test_logits_instead_of_probs_hint():
    logits = torch.tensor([[0.2, 0.3, 0.1], [0.1, 0.1, 0.1]])
    with pytest.raises(ValueError, match=r"got sums off by up to 0\.7; pass softmax\(logits\), not logits"):
        metrics.brier(logits, LABELS[:2])


def test_bfloat16_softmax_accepted():
    # bf16 rounding moves a softmax's sum by ~3e-3: the tolerance follows the dtype's epsilon.
    probs = (torch.randn(200, 10, generator=torch.Generator().manual_seed(0)) * 3).softmax(1).bfloat16()
    assert float((probs.double().sum(1) - 1).abs().max()) > 1e-3
    assert measures.entropy(probs).dtype == torch.float32
    with pytest.raises(ValueError, match=r"tolerance 0\.007812"):
        measures.entropy(probs * 0.95)


def test_integer_probs_rejected():
    with pytest.raises(TypeError, match=r"`probs` must be a floating-point tensor, got dtype torch.int64"):
        metrics.ece(torch.tensor([[1, 0], [0, 1]]), torch.tensor([0, 1]))


def test_non_array_rejected():
    with pytest.raises(TypeError, match=r"`probs` must be a tensor or array, got str"):
        metrics.nll("not probs", LABELS)
    with pytest.raises(TypeError, match=r"`positive` must be a tensor or array, got object"):
        metrics.auroc(object(), [0.1])


@pytest.mark.parametrize("fn", PROB_MEASURES)
def test_measures_reject_bad_probs(fn):
    with pytest.raises(ValueError, match=r"`probs` must be finite"):
        fn(_with(PROBS, (0, 1), float("nan")))
    with pytest.raises(ValueError, match=r"`probs` must have shape \(N, C\) or \(N, C, \.\.\.\), got shape \(3,\)"):
        fn(PROBS[0])
    with pytest.raises(ValueError, match=r"`probs` must sum to 1 over the class dimension \(dim 1"):
        fn(PROBS * 0.5)


@pytest.mark.parametrize("fn", SAMPLE_MEASURES)
def test_sample_measures_reject_bad_samples(fn):
    samples = torch.stack([PROBS, PROBS.flip(1)])
    with pytest.raises(ValueError, match=r"`samples` must have shape \(S, N, C, \.\.\.\), got shape \(3, 3\)"):
        fn(PROBS)
    with pytest.raises(ValueError, match=r"`samples` must be finite, got 1 Inf value"):
        fn(_with(samples, (1, 0, 0), float("inf")))
    with pytest.raises(ValueError, match=r"`samples` must sum to 1 over the class dimension \(dim 2"):
        fn(samples.transpose(1, 2))  # sums over the wrong axis are not 1
    with pytest.raises(ValueError, match=r"`samples` must not be empty, got shape \(0, 3, 3\)"):
        fn(torch.empty(0, 3, 3))


def test_margin_needs_two_classes():
    with pytest.raises(ValueError, match=r"`probs` must have at least 2 classes for a margin, got C=1"):
        measures.margin(torch.ones(4, 1))


# --------------------------------------------------------------------------------------- labels
@pytest.mark.parametrize("fn", PROB_METRICS)
def test_metrics_reject_bad_labels(fn):
    with pytest.raises(ValueError, match=r"`labels` must be integers in \[0, 3\), got values in \[0, 5\]"):
        fn(PROBS, torch.tensor([0, 5, 1]))
    with pytest.raises(ValueError, match=r"`labels` must be integers in \[0, 3\), got values in \[-1, 2\]"):
        fn(PROBS, torch.tensor([-1, 2, 1]))
    with pytest.raises(
        ValueError, match=r"`labels` must have shape \(3,\) to match `probs` \(the class dimension removed\), "
        r"got shape \(2,\)"
    ):
        fn(PROBS, torch.tensor([0, 1]))
    with pytest.raises(TypeError, match=r"`labels` must be an integer tensor, got dtype torch.float32"):
        fn(PROBS, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(TypeError, match=r"`labels` must be an integer tensor, got dtype torch.bool"):
        fn(PROBS, torch.tensor([True, False, True]))
    with pytest.raises(
        ValueError, match=r"`labels` must contain at least one value other than ignore_index=255"
    ):
        fn(PROBS, torch.tensor([255, 255, 255]), ignore_index=255)
    with pytest.raises(
        ValueError, match=r"`labels` must be integers in \[0, 3\) \(or ignore_index=-1\), got values in \[0, 3\]"
    ):
        fn(PROBS, torch.tensor([-1, 3, 0]), ignore_index=-1)


def test_numpy_float_labels_rejected():
    with pytest.raises(TypeError, match=r"`labels` must be an integer tensor, got dtype torch.float64"):
        metrics.nll(PROBS.numpy(), np.array([0.0, 1.0, 2.0]))


def test_segmentation_label_shape():
    probs = torch.full((2, 3, 4, 5), 1 / 3)
    match = r"`labels` must have shape \(2, 4, 5\) to match `probs`.*got shape \(2, 5, 4\)"
    with pytest.raises(ValueError, match=match):
        metrics.ece(probs, torch.zeros(2, 5, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"`labels` must have shape \(2, 4, 5\).*got shape \(2, 1, 4, 5\)"):
        metrics.ece(probs, torch.zeros(2, 1, 4, 5, dtype=torch.long))


def test_ignore_index_drops_out_of_range_values():
    # 255 is out of [0, 3) but ignored: no error, and the result uses the other pixels only.
    labels = torch.tensor([0, 255, 2])
    assert metrics.accuracy(PROBS, labels, ignore_index=255) == pytest.approx(1.0)


def test_check_labels_empty_direct():
    with pytest.raises(ValueError, match=r"`labels` must not be empty, got shape \(0,\)"):
        check_labels(torch.empty(0, dtype=torch.long), 3, (0,))


def test_check_labels_custom_names():
    with pytest.raises(ValueError, match=r"`targets` must have shape \(4,\) to match `logits`"):
        check_labels(torch.zeros(3, dtype=torch.long), 2, (4,), name="targets", probs_name="logits")


# ------------------------------------------------------------------------------- logits, scores
def test_logits_errors_through_prediction():
    with pytest.raises(ValueError, match=r"`logits` must not contain NaN, got 1 NaN value"):
        Prediction.from_logits(torch.tensor([[0.0, float("nan")]]))  # -inf is allowed (masked class), NaN not
    with pytest.raises(ValueError, match=r"`logits` must have shape \(N, C\) or \(N, C, \.\.\.\), got shape \(2,\)"):
        Prediction.from_logits(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"`logits` must have shape \(k, N, C, \.\.\.\), got shape \(1, 2\)"):
        Prediction.from_samples(torch.zeros(1, 2), logits=True)
    with pytest.raises(TypeError, match=r"`logits` must be a floating-point tensor, got dtype torch.int64"):
        Prediction.from_logits(torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match=r"`logits` must not be empty, got shape \(0, 4\)"):
        check_logits(torch.empty(0, 4))


def test_scores_errors_through_detection():
    with pytest.raises(ValueError, match=r"`positive` must not be empty, got shape \(0,\)"):
        metrics.auroc(torch.tensor([]), torch.tensor([0.1]))
    with pytest.raises(ValueError, match=r"`negative` must be finite, got 1 NaN value"):
        metrics.aupr(torch.tensor([0.3]), torch.tensor([0.1, float("nan")]))
    # bool and integer scores are accepted (converted)
    assert check_scores(torch.tensor([True, False]), "s").dtype == torch.float32
    assert check_scores(np.array([[1, 2], [3, 4]]), "s").shape == (4,)


def test_selective_scores_errors():
    with pytest.raises(ValueError, match=r"`scores` must have one value per label \(3\), got shape \(2,\)"):
        metrics.aurc(PROBS, LABELS, scores=torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match=r"`scores` must be finite, got 1 NaN value"):
        metrics.aurc(PROBS, LABELS, scores=torch.tensor([0.1, float("nan"), 0.2]))


def test_bin_and_norm_arguments():
    for bad in (0, -3, 2.5, True, "15"):
        with pytest.raises(ValueError, match=r"`n_bins` must be a positive integer, got"):
            metrics.ece(PROBS, LABELS, n_bins=bad)
    with pytest.raises(ValueError, match=r"`n_bins` must be a positive integer, got 0"):
        metrics.adaptive_ece(PROBS, LABELS, n_bins=0)
    with pytest.raises(ValueError, match=r"`norm` must be one of \('l1', 'l2', 'max'\), got 'l3'"):
        metrics.ece(PROBS, LABELS, norm="l3")


# ------------------------------------------------------------------------------------ helpers
def test_helpers():
    assert float_dtype(torch.zeros(1, dtype=torch.float16)) == torch.float32
    assert float_dtype(torch.zeros(1, dtype=torch.bfloat16)) == torch.float32
    assert float_dtype(torch.zeros(1, dtype=torch.float64)) == torch.float64
    assert as_tensor([[0.5, 0.5]], "x").shape == (1, 2)
    x = torch.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    flat = move_class_last(x)
    assert flat.shape == (40, 3)
    assert torch.equal(flat[7], x[0, :, 1, 2])
    labels = torch.tensor([[[0, 1, 9, 2, 0]] * 4, [[9] * 5] * 4])
    v, y = flatten_valid(x, labels, ignore_index=9)
    assert v.shape == (16, 3) and y.dtype == torch.int64 and not bool((y == 9).any())
    p, y2 = validate_probs_labels(PROBS, torch.tensor([0, 7, 1]), 7)
    assert p.shape == (2, 3) and y2.tolist() == [0, 1]
    # validate_args=False skips the checks (the caller vouches for the input)
    p, _ = validate_probs_labels(PROBS * 5, LABELS, None, validate_args=False)
    assert float(p.max()) == pytest.approx(4.0)
    check_probs(torch.tensor([[[1.0, 0.0]]]), dim=2, min_ndim=3)


# ------------------------------------------------------------------ issue 13 item 6: ignore_index vs label dtype
INT_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)
IGNORE_VALUES = (-(2**31) - 1, -100, -1, 0, 2, 127, 128, 255, 256, 2**15, 2**31)


def _every_ignore_index_consumer(probs, labels, ignore_index, validate_args=True):
    """Every metric that takes ``ignore_index`` (functional and streaming), as {name: value}."""
    from netuq.metrics.streaming import CalibrationError, UncertaintyMetrics

    kw = {"ignore_index": ignore_index, "validate_args": validate_args}
    out = {name: getattr(metrics, name)(probs, labels, **kw)
           for name in ("accuracy", "nll", "brier", "ece", "mce", "adaptive_ece", "classwise_ece", "aurc")}
    out["aurc_scores"] = metrics.aurc(probs, labels, scores=-torch.arange(labels.numel()).double(), **kw)
    out["curve"] = metrics.risk_coverage_curve(probs, labels, **kw)[1]
    out["reliability"] = metrics.reliability_bins(probs, labels, **kw).counts
    out.update({f"evaluate_{k}": v for k, v in metrics.evaluate(probs, labels, **kw).items()})
    ce = CalibrationError(n_bins=5, **kw)
    um = UncertaintyMetrics(3, n_bins=5, classwise=True, **kw)
    ce.update(probs, labels)
    um.update(probs, labels)
    out["streaming_ece"] = ce.compute()
    out.update({f"streaming_{k}": v for k, v in um.compute().items()})
    return out


@pytest.mark.parametrize("dtype", INT_DTYPES)
@pytest.mark.parametrize("validate_args", [True, False])
def test_ignore_index_is_compared_without_wrapping_in_every_label_dtype(dtype, validate_args):
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(12, 3, generator=g, dtype=torch.float64).softmax(1)
    base = torch.randint(0, 3, (12,), generator=g)
    info = torch.iinfo(dtype)
    for value in IGNORE_VALUES:
        if info.min <= value <= info.max:
            labels = base.clone()
            labels[[1, 4, 7]] = value if value not in (0, 2) else labels[[1, 4, 7]]
            # The result equals the int64 computation with the same labels and ignore_index.
            expected = _every_ignore_index_consumer(probs, labels, value, validate_args)
            got = _every_ignore_index_consumer(probs, labels.to(dtype), value, validate_args)
            for key, ref in expected.items():
                torch.testing.assert_close(torch.as_tensor(got[key]), torch.as_tensor(ref), rtol=0, atol=0, msg=key)
        else:
            match = rf"`ignore_index` must be representable in the dtype of `labels` \({dtype}, values in "
            with pytest.raises(ValueError, match=match + rf".*got {value}"):
                _every_ignore_index_consumer(probs, base.to(dtype), value, validate_args)


def test_ignore_index_wrap_cases_of_the_issue():
    probs = torch.tensor([[0.6, 0.4], [0.3, 0.7]])
    # int8 labels: 255 would compare as -1; uint8 labels: -1 would compare as 255.
    with pytest.raises(ValueError, match=r"torch.int8, values in \[-128, 127\]\), got 255; it would wrap"):
        metrics.ece(probs, torch.tensor([0, -1], dtype=torch.int8), ignore_index=255)
    with pytest.raises(ValueError, match=r"torch.uint8, values in \[0, 255\]\), got -1"):
        metrics.ece(probs, torch.tensor([0, 1], dtype=torch.uint8), ignore_index=-1, validate_args=False)
    with pytest.raises(ValueError, match=r"torch.uint8"):
        flatten_valid(probs, torch.tensor([0, 1], dtype=torch.uint8), ignore_index=-1)
    assert metrics.accuracy(probs, torch.tensor([0, 255], dtype=torch.uint8), ignore_index=255) == 1.0


@pytest.mark.parametrize("bad", [2.0, 255.0, "255", True, None.__class__, np.float32(1)])
def test_non_integer_ignore_index_is_a_type_error_everywhere(bad):
    from netuq.metrics.streaming import CalibrationError, UncertaintyMetrics

    match = r"`ignore_index` must be an integer or None, got "
    for fn in (metrics.accuracy, metrics.nll, metrics.ece, metrics.adaptive_ece, metrics.classwise_ece,
               metrics.reliability_bins, metrics.aurc, metrics.evaluate):
        for validate_args in (True, False):
            with pytest.raises(TypeError, match=match):
                fn(PROBS, LABELS, ignore_index=bad, validate_args=validate_args)
    for cls in (CalibrationError, UncertaintyMetrics):
        with pytest.raises(TypeError, match=match):
            cls(ignore_index=bad)
    assert check_ignore_index(np.int16(-3), torch.int8) == -3 and check_ignore_index(None, torch.uint8) is None
