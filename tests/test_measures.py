"""netuq.measures against scipy, hand-computed values and the invariants of the decomposition."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from netuq import measures


def _random_samples(S=7, N=20, C=5, *spatial, seed=0, scale=2.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(S, N, C, *spatial, generator=g, dtype=torch.float64) * scale).softmax(2).to(dtype)


@st.composite
def sample_stacks(draw, max_s=5, max_n=4, max_c=5):
    """(S, N, C) float64 probabilities, exact zeros allowed."""
    S, N, C = draw(st.integers(1, max_s)), draw(st.integers(1, max_n)), draw(st.integers(2, max_c))
    raw = draw(arrays(np.float64, (S, N, C), elements=st.floats(0.0, 1.0)))
    raw[raw.sum(2) == 0] = 1.0  # an all-zero row becomes uniform
    return torch.from_numpy(raw / raw.sum(2, keepdims=True))


# --------------------------------------------------------------------------------- references
def test_entropy_matches_scipy():
    p = _random_samples()[0]
    expected = scipy.stats.entropy(p.numpy(), axis=1)
    torch.testing.assert_close(measures.entropy(p), torch.from_numpy(expected), rtol=1e-12, atol=1e-12)


def test_sample_measures_match_scipy_numpy():
    s = _random_samples()
    sn = s.numpy()
    h = scipy.stats.entropy(sn, axis=2)  # (S, N)
    total = scipy.stats.entropy(sn.mean(0), axis=1)
    torch.testing.assert_close(measures.expected_entropy(s), torch.from_numpy(h.mean(0)))
    torch.testing.assert_close(measures.mutual_information(s), torch.from_numpy(total - h.mean(0)))
    torch.testing.assert_close(measures.std(s), torch.from_numpy(sn.std(0).mean(1)))
    # variation ratio: a plain loop over examples
    S, N, _ = sn.shape
    vr = []
    for n in range(N):
        votes = np.bincount(sn[:, n].argmax(1), minlength=sn.shape[2])
        vr.append(1 - votes.max() / S)
    torch.testing.assert_close(measures.variation_ratio(s), torch.tensor(vr, dtype=torch.float64))


def test_margin_and_max_prob_match_numpy():
    p = _random_samples()[0]
    top = np.sort(p.numpy(), axis=1)[:, ::-1]
    torch.testing.assert_close(measures.margin(p), torch.from_numpy(top[:, 0] - top[:, 1].copy()))
    torch.testing.assert_close(measures.max_prob(p), torch.from_numpy(top[:, 0].copy()))


def test_hand_computed():
    p = torch.tensor([[0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(measures.entropy(p), torch.tensor([math.log(4), math.log(2), 0.0], dtype=torch.float64))
    torch.testing.assert_close(measures.margin(p), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(measures.max_prob(p), torch.tensor([0.25, 0.5, 1.0], dtype=torch.float64))
    # two samples [0.8, 0.2] and [0.2, 0.8]: mean uniform, total log 2, aleatoric H(0.8), epistemic the rest
    s = torch.tensor([[[0.8, 0.2]], [[0.2, 0.8]]], dtype=torch.float64)
    h08 = -(0.8 * math.log(0.8) + 0.2 * math.log(0.2))
    torch.testing.assert_close(measures.expected_entropy(s), torch.tensor([h08], dtype=torch.float64))
    torch.testing.assert_close(measures.mutual_information(s), torch.tensor([math.log(2) - h08], dtype=torch.float64))
    torch.testing.assert_close(measures.std(s), torch.tensor([0.3], dtype=torch.float64))
    torch.testing.assert_close(measures.variation_ratio(s), torch.tensor([0.5], dtype=torch.float64))
    # three samples, three classes, votes 2:1
    s3 = torch.eye(3, dtype=torch.float64)[[0, 0, 2]].unsqueeze(1)
    torch.testing.assert_close(measures.variation_ratio(s3), torch.tensor([1 / 3], dtype=torch.float64))
    torch.testing.assert_close(measures.mutual_information(s3), torch.tensor([scipy.stats.entropy([2, 0, 1])],
                                                                             dtype=torch.float64))


def test_zero_probabilities_are_safe():
    p = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])
    s = torch.stack([p, p.flip(1)])
    for out in (
        measures.entropy(p),
        measures.expected_entropy(s),
        measures.mutual_information(s),
        measures.std(s),
        measures.margin(p),
    ):
        assert bool(torch.isfinite(out).all())
    assert measures.entropy(p)[0].item() == 0.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_computed_in_float32(dtype):
    s64 = _random_samples(S=4, N=50, C=10, seed=3)
    s_half = s64.to(dtype)
    ref = s_half.to(torch.float64)  # the same (rounded) numbers in float64
    tol = {"rtol": 1e-5, "atol": 1e-5}
    for fn in (measures.expected_entropy, measures.mutual_information, measures.std, measures.variation_ratio):
        out = fn(s_half)
        assert out.dtype == torch.float32, fn.__name__
        torch.testing.assert_close(out.double(), fn(ref, validate_args=False), **tol)
    for fn in (measures.entropy, measures.margin, measures.max_prob):
        out = fn(s_half[0])
        assert out.dtype == torch.float32, fn.__name__
        torch.testing.assert_close(out.double(), fn(ref[0], validate_args=False), **tol)


def test_float32_stays_float32_float64_stays_float64():
    s = _random_samples(dtype=torch.float32)
    assert measures.mutual_information(s).dtype == torch.float32
    assert measures.entropy(s.double()[0]).dtype == torch.float64


def test_segmentation_shapes():
    S, N, C, H, W = 4, 2, 3, 5, 6
    s = _random_samples(S, N, C, H, W, seed=1)
    for fn in (measures.expected_entropy, measures.mutual_information, measures.variation_ratio, measures.std):
        out = fn(s)
        assert out.shape == (N, H, W), fn.__name__
        # per pixel equals the classification measure on that pixel's (S, 1, C) samples
        torch.testing.assert_close(out[1, 3, 4], fn(s[:, 1:2, :, 3, 4])[0])
    for fn in (measures.entropy, measures.margin, measures.max_prob):
        out = fn(s[0])
        assert out.shape == (N, H, W), fn.__name__
        torch.testing.assert_close(out[0, 2, 1], fn(s[0, 0:1, :, 2, 1])[0])


def test_validate_args_false_skips_checks():
    logits = torch.tensor([[[3.0, 1.0]], [[0.0, 2.0]], [[5.0, -1.0]]])
    assert measures.variation_ratio(logits, validate_args=False).tolist() == pytest.approx([1 / 3])


# ---------------------------------------------------------------------------------- properties
@given(sample_stacks())
def test_decomposition_properties(s):
    total = measures.entropy(s.mean(0))
    ale, epi = measures.expected_entropy(s), measures.mutual_information(s)
    C = s.shape[2]
    assert bool((epi >= 0).all())
    assert bool((total >= ale - 1e-9).all())  # Jensen: the clamp only removes rounding noise
    assert bool((ale >= -1e-12).all()) and bool((total <= math.log(C) + 1e-9).all())
    torch.testing.assert_close(ale + epi, torch.maximum(total, ale), rtol=0, atol=1e-9)
    vr = measures.variation_ratio(s)
    assert bool((vr >= 0).all()) and bool((vr <= 1 - 1 / C + 1e-12).all())
    assert bool((measures.std(s) >= 0).all())


@given(sample_stacks(max_s=1), st.integers(1, 6))
def test_identical_samples_have_zero_mutual_information(one, repeats):
    s = one.expand(repeats, *one.shape[1:])
    torch.testing.assert_close(measures.mutual_information(s), torch.zeros(s.shape[1], dtype=s.dtype), atol=1e-12,
                               rtol=0)
    assert measures.variation_ratio(s).abs().max().item() == 0.0
    torch.testing.assert_close(measures.std(s), torch.zeros(s.shape[1], dtype=s.dtype), atol=1e-12, rtol=0)
    torch.testing.assert_close(measures.expected_entropy(s), measures.entropy(s[0]))


@given(sample_stacks(), st.randoms(use_true_random=False))
def test_invariant_to_class_permutation(s, rnd):
    perm = list(range(s.shape[2]))
    rnd.shuffle(perm)
    sp = s[:, :, perm]
    for fn in (measures.expected_entropy, measures.mutual_information, measures.std):
        torch.testing.assert_close(fn(sp), fn(s), rtol=0, atol=1e-12)
    for fn in (measures.entropy, measures.margin, measures.max_prob):
        torch.testing.assert_close(fn(sp[0]), fn(s[0]), rtol=0, atol=1e-12)


@given(st.integers(0, 2**31 - 1))
def test_variation_ratio_invariant_to_class_permutation(seed):
    # continuous samples (no argmax ties, where the first index would win)
    s = _random_samples(S=6, N=8, C=4, seed=seed, scale=0.5)
    perm = torch.randperm(4, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(measures.variation_ratio(s[:, :, perm]), measures.variation_ratio(s))


# ------------------------------------------------------------------ regressions
def test_entropy_of_one_hot_is_positive_zero():
    one_hot = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    samples = torch.stack([one_hot, one_hot])
    for value in (
        measures.entropy(one_hot),
        measures.expected_entropy(samples),
        measures.mutual_information(samples),
        measures.entropy(torch.ones(2, 1)),  # C = 1
    ):
        assert torch.equal(value, torch.zeros(2)) and not value.signbit().any()
    assert str(measures.entropy(one_hot[:1])) == "tensor([0.])"


def _variation_ratio_reference(samples):
    """1 − modal count / S by an explicit loop over samples (one-hot counting)."""
    votes = sum(torch.nn.functional.one_hot(s.argmax(1), s.shape[1]) for s in samples)  # (N, ..., C)
    return 1.0 - votes.amax(-1).double() / samples.shape[0]


@pytest.mark.parametrize("S, C, spatial", [(7, 2, ()), (1, 4, ()), (9, 3, (4, 5)), (2, 6, (3,))])
def test_variation_ratio_votes_against_reference(S, C, spatial):
    s = _random_samples(S, 5, C, *spatial, seed=S + C)
    out = measures.variation_ratio(s)
    assert out.shape == (5, *spatial) and out.dtype == torch.float64
    torch.testing.assert_close(out, _variation_ratio_reference(s))


def test_variation_ratio_takes_logits_only_without_validation():
    g = torch.Generator().manual_seed(3)
    z = 3 * torch.randn(6, 4, 3, generator=g)
    with pytest.raises(ValueError, match=r"`samples` must be probabilities in \[0, 1\]"):
        measures.variation_ratio(z)
    torch.testing.assert_close(measures.variation_ratio(z, validate_args=False), measures.variation_ratio(z.softmax(2)))
    doc = measures.variation_ratio.__doc__.lower()
    assert "logits" in doc and "validate_args=false" in doc


# ------------------------------------------------------------------ issue 13 item 8: exact zero
@given(
    s=st.integers(1, 20),
    c=st.integers(2, 6),
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]),
)
def test_mutual_information_is_exactly_zero_for_identical_samples(s, c, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    p = (torch.randn(7, c, 3, generator=g) * 3).softmax(1)
    p[0, :, 0] = torch.nn.functional.one_hot(torch.tensor(c - 1), c).float()  # zeros in a row
    p = p.to(dtype)
    samples = p.expand(s, *p.shape)
    mi = measures.mutual_information(samples, validate_args=False)
    assert mi.shape == (7, 3) and bool((mi == 0).all())  # was 4.8e-7 in float32 for S = 10


@given(seed=st.integers(0, 2**16), s=st.integers(2, 12))
def test_mutual_information_equals_the_entropy_decomposition_in_float64(seed, s):
    g = torch.Generator().manual_seed(seed)
    samples = (torch.randn(s, 5, 4, generator=g, dtype=torch.float64) * 2).softmax(2)
    samples[0, 0] = torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64)  # a zero probability
    mean = samples.mean(0)
    ref = scipy.stats.entropy(mean.numpy(), axis=1) - scipy.stats.entropy(samples.numpy(), axis=2).mean(0)
    torch.testing.assert_close(measures.mutual_information(samples), torch.from_numpy(ref).clamp_min(0),
                               rtol=0, atol=1e-12)
    assert measures.mutual_information(samples.float()).dtype == torch.float32
