"""Prediction: running sums equal the measures on stacked samples, log space, memory, cat, errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from netuq import Prediction, measures


def _logits(S, N, C, *spatial, seed=0, scale=3.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(S, N, C, *spatial, generator=g) * scale).to(dtype)


def _assert_matches_measures(pred: Prediction, samples: torch.Tensor, **tol):
    tol = tol or {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(pred.probs, samples.mean(0), **tol)
    torch.testing.assert_close(pred.entropy, measures.entropy(samples.mean(0), validate_args=False), **tol)
    torch.testing.assert_close(pred.aleatoric, measures.expected_entropy(samples), **tol)
    torch.testing.assert_close(pred.epistemic, measures.mutual_information(samples), **tol)
    torch.testing.assert_close(pred.variation_ratio, measures.variation_ratio(samples), **tol)
    torch.testing.assert_close(pred.prediction, samples.mean(0).argmax(1))
    torch.testing.assert_close(pred.confidence, samples.mean(0).amax(1), **tol)
    assert pred.num_samples == samples.shape[0]


@pytest.mark.parametrize("spatial", [(), (4, 5)], ids=["classification", "segmentation"])
def test_incremental_equals_measures_on_stacked_samples(spatial):
    z = _logits(6, 3, 4, *spatial, seed=1)
    samples = z.softmax(2)
    pred = Prediction()
    for s in samples:
        pred.add(s)
    _assert_matches_measures(pred, samples)
    assert pred.probs.shape == (3, 4, *spatial) and pred.entropy.shape == (3, *spatial)
    # the same from logits, one by one
    pred_z = Prediction()
    for s in z:
        pred_z.add_logits(s)
    _assert_matches_measures(pred_z, samples)


@pytest.mark.parametrize("spatial", [(), (3, 2)], ids=["classification", "segmentation"])
def test_stacked_add_equals_one_by_one(spatial):
    z = _logits(7, 5, 3, *spatial, seed=2)
    one = Prediction()
    for s in z:
        one.add_logits(s)
    chunks = Prediction()
    chunks.add_logits(z[:3], stacked=True)
    chunks.add_logits(z[3], stacked=False)
    chunks.add(z[4:].softmax(2), stacked=True)
    for p in (chunks, Prediction.from_samples(z, logits=True), Prediction.from_samples(z.softmax(2))):
        torch.testing.assert_close(p.log_probs, one.log_probs, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(p.aleatoric, one.aleatoric, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(p.variation_ratio, one.variation_ratio)
        assert p.num_samples == 7


def test_more_samples_than_classes_in_one_stack():
    # the vote scatter must work for k > C
    z = _logits(20, 4, 2, seed=3)
    _assert_matches_measures(Prediction.from_samples(z, logits=True), z.softmax(2))


def test_add_log_probs():
    z = _logits(3, 4, 5, seed=4)
    a = Prediction.from_samples(z, logits=True)
    b = Prediction()
    b.add_log_probs(z.log_softmax(2), stacked=True)
    torch.testing.assert_close(a.log_probs, b.log_probs)
    torch.testing.assert_close(a.epistemic, b.epistemic)


def test_from_logits_equals_softmax():
    z = _logits(1, 6, 4, 3, 3, seed=5)[0]
    pred = Prediction.from_logits(z)
    torch.testing.assert_close(pred.probs, z.softmax(1))
    torch.testing.assert_close(pred.log_probs, z.log_softmax(1))
    torch.testing.assert_close(pred.entropy, pred.aleatoric)  # one sample: no epistemic part
    assert float(pred.epistemic.abs().max()) < 1e-6
    assert float(pred.variation_ratio.abs().max()) == 0.0
    torch.testing.assert_close(Prediction(z.softmax(1)).probs, z.softmax(1))


def test_log_probs_exact_where_float32_underflows():
    # gaps of 200: exp(-200) and exp(-400) underflow float32 (smallest subnormal ~1.4e-45)
    z = torch.tensor([[[0.0, -200.0, -400.0]], [[0.0, -300.0, -200.0]]])
    pred = Prediction.from_samples(z, logits=True)
    assert float(pred.probs[0, 1]) == 0.0  # the probability itself underflows...
    lp = pred.log_probs
    assert bool(torch.isfinite(lp).all())  # ...its logarithm does not
    ref = torch.logsumexp(z.double().log_softmax(2), 0) - math.log(2)
    torch.testing.assert_close(lp.double(), ref, rtol=1e-6, atol=1e-4)
    assert lp[0, 1].item() == pytest.approx(-200 - math.log(2), abs=1e-3)
    # a calibrator can use log_probs as logits: softmax(log_probs) recovers the probabilities
    torch.testing.assert_close(lp.softmax(1), pred.probs)


def test_log_probs_dtype_follows_input():
    assert Prediction.from_logits(torch.zeros(2, 3, dtype=torch.float64)).log_probs.dtype == torch.float64
    half = Prediction.from_logits(torch.zeros(2, 3, dtype=torch.float16))
    assert half.log_probs.dtype == torch.float32 and half.aleatoric.dtype == torch.float32
    pb = Prediction(torch.full((2, 3), 1 / 3).bfloat16())
    assert pb.probs.dtype == torch.float32


def test_zero_probabilities():
    pred = Prediction()
    pred.add(torch.tensor([[1.0, 0.0, 0.0]]))
    pred.add(torch.tensor([[0.0, 1.0, 0.0]]))
    assert pred.log_probs[0, 2].item() == -math.inf  # no sample gave class 2 any mass
    torch.testing.assert_close(pred.probs, torch.tensor([[0.5, 0.5, 0.0]]))
    torch.testing.assert_close(pred.entropy, torch.tensor([math.log(2)]))
    torch.testing.assert_close(pred.aleatoric, torch.tensor([0.0]))
    torch.testing.assert_close(pred.epistemic, torch.tensor([math.log(2)]))


def _internal_numel(pred: Prediction) -> int:
    tensors = [pred._log_sum, pred._entropy_sum, pred._votes, *pred._samples]
    return sum(t.numel() for t in tensors if t is not None)


def test_keep_samples_false_memory_constant_in_s():
    z = _logits(30, 2, 3, 8, 8, seed=6)
    pred = Prediction()
    pred.add_logits(z[0])
    size_after_one = _internal_numel(pred)
    for s in z[1:]:
        pred.add_logits(s)
        assert _internal_numel(pred) == size_after_one
    pred.add_logits(z, stacked=True)
    assert _internal_numel(pred) == size_after_one
    assert pred.samples is None and pred._samples == []
    assert pred.num_samples == 60
    # state: log-sum (N, C, H, W) + entropy sum (N, H, W) + votes (N, C, H, W)
    assert size_after_one == 2 * 3 * 64 * 2 + 2 * 64


def test_keep_samples_true_returns_every_sample():
    z = _logits(5, 3, 4, seed=7)
    pred = Prediction(keep_samples=True)
    pred.add_logits(z[:2], stacked=True)
    pred.add_logits(z[2])
    pred.add(z[3:].softmax(2), stacked=True)
    torch.testing.assert_close(pred.samples, z.softmax(2))
    assert pred.samples.shape == (5, 3, 4)
    pred.add_logits(z[0])  # still works after the list was concatenated
    assert pred.samples.shape == (6, 3, 4)


@pytest.mark.parametrize("keep", [False, True])
def test_cat_equals_prediction_on_concatenated_batch(keep):
    z = _logits(4, 7, 3, seed=8)
    whole = Prediction.from_samples(z, logits=True)
    parts = [
        Prediction.from_samples(z[:, :2], logits=True, keep_samples=keep, scores={"c": torch.arange(2.0)}),
        Prediction.from_samples(z[:, 2:], logits=True, keep_samples=keep, scores={"c": torch.arange(5.0), "x": 1}),
    ]
    cat = Prediction.cat(parts)
    for name in ("log_probs", "entropy", "aleatoric", "epistemic", "variation_ratio"):
        torch.testing.assert_close(getattr(cat, name), getattr(whole, name))
    assert cat.num_samples == 4 and len(cat) == 7
    assert list(cat.scores) == ["c"]  # only the keys every part has
    torch.testing.assert_close(cat.scores["c"], torch.tensor([0.0, 1.0, 0.0, 1.0, 2.0, 3.0, 4.0]))
    if keep:
        torch.testing.assert_close(cat.samples, z.softmax(2))
    else:
        assert cat.samples is None


def test_scores_and_uncertainty_by_name():
    z = _logits(3, 4, 5, seed=9)
    conf_head = torch.tensor([0.9, 0.2, 0.5, 0.7])
    sigma = torch.tensor([0.1, 2.0, 0.3, 0.4])
    pred = Prediction.from_samples(z, logits=True, scores={"confidence": conf_head, "sigma": sigma,
                                                          "view_x": conf_head * 2})
    # The one score vocabulary (contract 2), each higher = less sure.
    torch.testing.assert_close(pred.uncertainty(), pred.entropy)
    torch.testing.assert_close(pred.uncertainty("entropy"), measures.entropy(pred.probs))
    torch.testing.assert_close(pred.uncertainty("max_prob"), 1 - pred.probs.amax(1))
    torch.testing.assert_close(pred.uncertainty("mutual_information"),
                               measures.mutual_information(z.softmax(2)), atol=1e-6, rtol=0)
    torch.testing.assert_close(pred.uncertainty("sigma"), sigma)
    torch.testing.assert_close(pred.uncertainty("confidence"), 1 - conf_head)
    # Extra measures and method-specific scores.
    torch.testing.assert_close(pred.uncertainty("aleatoric"), pred.aleatoric)
    torch.testing.assert_close(pred.uncertainty("variation_ratio"), measures.variation_ratio(z.softmax(2)))
    torch.testing.assert_close(pred.uncertainty("view_x"), conf_head * 2)
    # Old names: a clear error naming the new one.
    for old, new in (("1-max_prob", "max_prob"), ("epistemic", "mutual_information"), ("1-confidence", "confidence"),
                     ("1-view_x", "view_x")):
        with pytest.raises(ValueError, match=rf"`kind` '{old}' was renamed: use '{new}'"):
            pred.uncertainty(old)
    with pytest.raises(ValueError, match=r"`kind` must be one of \[.*'sigma', 'confidence', 'view_x'\], got 'bogus'"):
        pred.uncertainty("bogus")
    with pytest.raises(ValueError, match=r"this prediction has no scores\['sigma'\]\), got 'sigma'"):
        Prediction(pred.probs).uncertainty("sigma")
    with pytest.raises(TypeError, match=r"`kind` must be a score name \(str\), got int"):
        pred.uncertainty(3)


def test_prediction_shares_measures_code():
    # Prediction's entropy and vote counting are netuq.measures' (one implementation).
    import netuq.prediction as P

    assert P._entropy is measures._entropy and P._add_votes is measures._add_votes
    s = torch.tensor([[[0.5, 0.5, 0.0]], [[0.2, 0.4, 0.4]], [[0.1, 0.1, 0.8]]])  # ties -> first class
    pred = Prediction.from_samples(s)
    torch.testing.assert_close(pred.variation_ratio, measures.variation_ratio(s))
    torch.testing.assert_close(pred.aleatoric, measures.expected_entropy(s))


def test_to_and_repr():
    z = _logits(2, 3, 4, seed=10)
    pred = Prediction.from_samples(z, logits=True, keep_samples=True, scores={"s": torch.ones(3)})
    assert pred.to("cpu") is pred
    assert repr(pred) == "Prediction(shape=(3, 4), num_samples=2, keep_samples=True)"
    assert repr(Prediction()) == "Prediction(shape=None, num_samples=0, keep_samples=False)"


def test_errors():
    pred = Prediction()
    for name in ("log_probs", "probs", "entropy", "aleatoric", "epistemic", "variation_ratio", "prediction"):
        with pytest.raises(ValueError, match=r"this Prediction holds no samples yet: call add\(\)"):
            getattr(pred, name)
    with pytest.raises(ValueError, match=r"this Prediction holds no samples yet"):
        len(pred)
    assert pred.samples is None
    pred.add(torch.full((2, 3), 1 / 3))
    with pytest.raises(ValueError, match=r"`probs` must have shape \(2, 3\) like the samples already added, "
                                         r"got shape \(2, 4\)"):
        pred.add(torch.full((2, 4), 1 / 4))
    with pytest.raises(ValueError, match=r"got shape \(3, 3\)"):
        pred.add_logits(torch.zeros(2, 3, 3), stacked=True)  # k=2 samples of shape (3, 3)
    with pytest.raises(ValueError, match=r"`probs` must sum to 1 over the class dimension \(dim 2"):
        pred.add(torch.full((2, 2, 3), 0.5), stacked=True)
    with pytest.raises(ValueError, match=r"`predictions` must contain at least one Prediction, got none"):
        Prediction.cat([])
    two = Prediction.from_samples(torch.full((2, 2, 3), 1 / 3))
    with pytest.raises(ValueError, match=r"`predictions` must all hold the same \(non-zero\) number of samples, "
                                         r"got \[1, 2\]"):
        Prediction.cat([pred, two])
    with pytest.raises(ValueError, match=r"got \[0\]"):
        Prediction.cat([Prediction()])


@given(st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_chunking_does_not_matter(split, seed):
    z = _logits(6, 3, 4, seed=seed)
    a = Prediction()
    a.add_logits(z[:split], stacked=True)
    a.add_logits(z[split:], stacked=True)
    b = Prediction.from_samples(z, logits=True)
    torch.testing.assert_close(a.log_probs, b.log_probs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.epistemic, b.epistemic, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(a.variation_ratio, b.variation_ratio)


# ------------------------------------------------------------------ regressions
def test_entropy_of_one_hot_is_positive_zero():
    pred = Prediction(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    pred.add(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    for name in ("entropy", "aleatoric", "epistemic"):
        value = getattr(pred, name)
        assert torch.equal(value, torch.zeros(2)) and not value.signbit().any(), name
    assert str(Prediction(torch.tensor([[1.0, 0.0]])).entropy) == "tensor([0.])"


def test_minus_inf_logits_are_masked_classes():
    inf = math.inf
    z = torch.tensor([[0.0, -inf, 1.0], [2.0, 0.0, -inf]])
    pred = Prediction.from_logits(z)
    masked = torch.tensor([[0.0, -1e4, 1.0], [2.0, 0.0, -1e4]])  # the same softmax up to exp(-1e4) = 0
    torch.testing.assert_close(pred.probs, masked.softmax(1))
    assert pred.probs[0, 1] == 0 and torch.isfinite(pred.entropy).all() and torch.isfinite(pred.aleatoric).all()
    stacked = torch.stack([z, z.flip(0)])  # (S=2, N=2, C=3), each row has a finite entry
    s = Prediction.from_samples(stacked, logits=True)
    torch.testing.assert_close(s.probs, torch.stack([masked, masked.flip(0)]).softmax(2).mean(0))
    assert torch.isfinite(s.epistemic).all() and torch.isfinite(s.variation_ratio).all()


@pytest.mark.parametrize("method", ["add_logits", "add_log_probs"])
def test_log_value_validation(method):
    inf, name = math.inf, "logits" if method == "add_logits" else "log_probs"
    add = getattr(Prediction(), method)
    with pytest.raises(ValueError, match=rf"`{name}` must not contain NaN, got 1 NaN value\(s\)"):
        add(torch.tensor([[0.0, math.nan]]))
    with pytest.raises(ValueError, match=rf"`{name}` must be finite or -inf \(a masked class\), got 1 \+Inf value"):
        add(torch.tensor([[inf, 0.0]]))
    with pytest.raises(ValueError, match=rf"`{name}` must have a finite entry in every row over the class "
                                         r"dimension \(dim 1\), got 1 row\(s\) that are all -inf"):
        add(torch.tensor([[-inf, -inf], [0.0, -inf]]))
    with pytest.raises(ValueError, match=r"\(dim 2\), got 1 row"):
        add(torch.tensor([[[0.0, -inf]], [[-inf, -inf]]]), stacked=True)
    with pytest.raises(TypeError, match=rf"`{name}` must be a floating-point tensor, got dtype torch.int64"):
        add(torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match=rf"`{name}` must have shape \(N, C\) or \(N, C, ...\), got shape \(2,\)"):
        add(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=rf"`{name}` must have shape \(k, N, C, ...\), got shape \(1, 2\)"):
        add(torch.tensor([[0.0, 1.0]]), stacked=True)
    with pytest.raises(TypeError, match=rf"`{name}` must be a tensor or array, got str"):
        add("x")


def test_add_log_probs_validates_normalisation():
    pred = Prediction()
    with pytest.raises(ValueError, match=r"`log_probs` must be normalised: exp\(log_probs\) must sum to 1 over the "
                                         r"class dimension \(dim 1, tolerance 0.001\), got sums off by up to 1"):
        pred.add_log_probs([[0.0, 0.0]])
    with pytest.raises(ValueError, match=r"\(dim 2, tolerance"):
        pred.add_log_probs(torch.zeros(2, 1, 2), stacked=True)
    assert pred.num_samples == 0  # nothing was accumulated by the failed calls
    p = torch.tensor([[0.25, 0.75, 0.0], [1.0, 0.0, 0.0]])
    pred.add_log_probs(p.log().tolist())  # lists are accepted; log 0 = -inf is allowed
    pred.add_log_probs(p.log().to(torch.float16))  # half precision within its tolerance, computed in float32
    torch.testing.assert_close(pred.probs, p, atol=1e-3, rtol=0)
    ref = Prediction.from_samples(torch.stack([p, p]))
    torch.testing.assert_close(pred.aleatoric, ref.aleatoric, atol=2e-3, rtol=0)
    unchecked = Prediction()
    unchecked.add_log_probs(torch.zeros(1, 2), validate_args=False)  # the hot path skips the checks
    assert unchecked.num_samples == 1


def test_cat_errors_and_rules():
    a = Prediction(torch.full((2, 3), 1 / 3), scores={"c": torch.ones(2), "only_a": torch.ones(2)})
    with pytest.raises(ValueError, match=r"`predictions` must all have shape \(·, C, ...\) = \(·, 3\), "
                                         r"got \(1, 4\) at position 1"):
        Prediction.cat([a, Prediction(torch.full((1, 4), 1 / 4))])
    seg = Prediction(torch.full((2, 3, 4, 4), 1 / 3))
    with pytest.raises(ValueError, match=r"= \(·, 3, 4, 4\), got \(2, 3, 4, 5\) at position 2"):
        Prediction.cat([seg, seg, Prediction(torch.full((2, 3, 4, 5), 1 / 3))])
    with pytest.raises(TypeError, match=r"`predictions` must all be Prediction objects, got Tensor at position 1"):
        Prediction.cat([a, torch.ones(2, 3)])
    other_device = Prediction(torch.full((1, 3), 1 / 3)).to("meta")
    with pytest.raises(ValueError, match=r"`predictions` must all be on one device, got cpu at position 0 and meta "
                                         r"at position 1; move them with .to\(device\) first"):
        Prediction.cat([a, other_device])
    bad_score = Prediction(torch.full((1, 3), 1 / 3), scores={"c": torch.ones(1, 5)})
    with pytest.raises(ValueError, match=r"`scores\['c'\]` must be tensors of shape \(N, ...\) on one device that "
                                         r"concatenate along N, got shapes \[\(2,\), \(1, 5\)\]"):
        Prediction.cat([a, bad_score])
    kept = Prediction(torch.full((1, 3), 1 / 3), keep_samples=True, scores={"c": torch.zeros(1)})
    out = Prediction.cat([a, kept])
    assert list(out.scores) == ["c"] and out.scores["c"].tolist() == [1.0, 1.0, 0.0]  # "only_a" dropped
    assert out.samples is None and not out.keep_samples  # `a` kept no samples
    assert "only if *every* prediction" in Prediction.cat.__doc__


def test_statistics_round_trip():
    # The public statistics rebuild the same prediction (what TTA's merges and rank gathering use).
    z = _logits(3, 5, 4, seed=21)
    pred = Prediction.from_samples(z, logits=True, keep_samples=True, scores={"sigma": torch.ones(5)})
    st = pred.statistics()
    assert st.count == 3 and st.linear_sum is None and st.samples.shape == (3, 5, 4)
    back = Prediction.from_statistics(**st._asdict())
    for name in ("probs", "entropy", "aleatoric", "epistemic", "variation_ratio", "samples"):
        assert torch.equal(getattr(back, name), getattr(pred, name)), name
    assert torch.equal(back.scores["sigma"], pred.scores["sigma"])
    # A linear sum is handed over as it is: probs is the sum over the count, no log taken.
    lin = pred.probs * 3
    linear = Prediction.from_statistics(count=3, linear_sum=lin, entropy_sum=st.entropy_sum, votes=st.votes)
    assert torch.equal(linear.probs, lin / 3) and linear.statistics().linear_sum is lin
    torch.testing.assert_close(linear.log_probs, pred.log_probs)


@pytest.mark.parametrize("change, match", [
    ({"log_sum": None}, "give exactly one of `log_sum` and `linear_sum`"),
    ({"linear_sum": torch.ones(5, 4)}, "give exactly one of `log_sum` and `linear_sum`"),
    ({"count": 0}, "`count` must be a positive integer, got 0"),
    ({"entropy_sum": torch.zeros(4)}, r"`entropy_sum` must have shape \(5,\), got \(4,\)"),
    ({"votes": torch.zeros(5, 4)}, "`votes` must be integer counts of shape"),
    ({"samples": torch.zeros(2, 5, 4)}, r"`samples` must have shape \(3, 5, 4\)"),
])
def test_from_statistics_checks(change, match):
    st = Prediction.from_samples(_logits(3, 5, 4, seed=2), logits=True).statistics()._asdict()
    with pytest.raises(ValueError, match=match):
        Prediction.from_statistics(**{**st, **change})
