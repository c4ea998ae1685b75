"""Set metrics: coverage, set size, class-wise / worst-class and size-stratified coverage against
plain loops; the streaming SetMetrics equals the functional metrics for any batching."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from netuq import metrics as M
from netuq.metrics.streaming_sets import SetMetrics


def _random_sets(n: int, C: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    sets = torch.rand(n, C, generator=gen) < 0.4
    labels = torch.randint(0, C, (n,), generator=gen)
    return sets, labels


def _loops(sets: np.ndarray, labels: np.ndarray):
    n, C = sets.shape
    covered = [bool(sets[i, labels[i]]) for i in range(n)]
    sizes = [int(sum(sets[i])) for i in range(n)]
    per_class = []
    for c in range(C):
        idx = [i for i in range(n) if labels[i] == c]
        per_class.append(sum(covered[i] for i in idx) / len(idx) if idx else math.nan)
    per_size = []
    for k in range(C + 1):
        idx = [i for i in range(n) if sizes[i] == k]
        per_size.append((len(idx), sum(covered[i] for i in idx) / len(idx) if idx else math.nan))
    return sum(covered) / n, sum(sizes) / n, per_class, per_size


@pytest.mark.parametrize("seed", range(4))
def test_functional_metrics_match_loops(seed):
    sets, labels = _random_sets(200, 6, seed)
    cov, size, per_class, per_size = _loops(sets.numpy(), labels.numpy())
    assert M.coverage(sets, labels) == pytest.approx(cov, abs=1e-15)
    assert M.set_size(sets) == pytest.approx(size, abs=1e-12)
    assert M.set_size(sets, labels) == pytest.approx(size, abs=1e-12)
    np.testing.assert_allclose(M.classwise_coverage(sets, labels).numpy(), per_class, equal_nan=True)
    assert M.worst_class_coverage(sets, labels) == pytest.approx(np.nanmin(per_class))
    strat = M.size_stratified_coverage(sets, labels)
    assert strat.counts.tolist() == [c for c, _ in per_size]
    np.testing.assert_allclose(strat.coverage.numpy(), [v for _, v in per_size], equal_nan=True)
    grouped = M.size_stratified_coverage(sets, labels, edges=(1, 3))
    assert grouped.lower.tolist() == [0, 2, 4] and grouped.upper.tolist() == [1, 3, 6]
    for lo, hi, count, value in zip(grouped.lower, grouped.upper, grouped.counts, grouped.coverage):
        sel = [(c, v) for k, (c, v) in enumerate(per_size) if lo <= k <= hi and c]
        assert int(count) == sum(c for c, _ in sel)
        if sel:
            assert float(value) == pytest.approx(sum(c * v for c, v in sel) / sum(c for c, _ in sel))


def test_segmentation_shape_and_ignore_index():
    gen = torch.Generator().manual_seed(0)
    sets = torch.rand(2, 3, 4, 5, generator=gen) < 0.5
    labels = torch.randint(0, 3, (2, 4, 5), generator=gen)
    labels[0, 0] = 255
    flat_sets = sets.movedim(1, -1).reshape(-1, 3)
    keep = labels.reshape(-1) != 255
    assert M.coverage(sets, labels, ignore_index=255) == M.coverage(flat_sets[keep], labels.reshape(-1)[keep])
    assert M.set_size(sets, labels, ignore_index=255) == M.set_size(flat_sets[keep])


def test_errors():
    sets, labels = _random_sets(10, 3, 0)
    with pytest.raises(TypeError, match="`sets` must be a bool set mask"):
        M.coverage(sets.int(), labels)
    with pytest.raises(ValueError, match="`labels` must have shape \\(10,\\) to match `sets`"):
        M.coverage(sets, labels[:5])
    with pytest.raises(ValueError, match="`edges` must be strictly increasing"):
        M.size_stratified_coverage(sets, labels, edges=(2, 1))


@given(st.integers(0, 10_000), st.lists(st.integers(1, 40), min_size=1, max_size=5))
def test_streaming_equals_functional_for_any_batching(seed, cuts):
    sets, labels = _random_sets(sum(cuts), 5, seed)
    m = SetMetrics(5)
    start = 0
    for c in cuts:
        m.update(sets[start:start + c], labels[start:start + c])
        start += c
    out = m.compute()
    assert float(out["coverage"]) == M.coverage(sets, labels)
    assert float(out["set_size"]) == pytest.approx(M.set_size(sets), abs=1e-12)
    assert float(out["worst_class_coverage"]) == M.worst_class_coverage(sets, labels)
    assert int(out["n"]) == len(labels)
    np.testing.assert_array_equal(m.classwise().numpy(), M.classwise_coverage(sets, labels).numpy())
    a, b = m.size_stratified((0, 2)), M.size_stratified_coverage(sets, labels, edges=(0, 2))
    assert torch.equal(a.counts, b.counts)
    np.testing.assert_array_equal(a.coverage.numpy(), b.coverage.numpy())


def test_streaming_state_is_fixed_size_and_resets():
    m = SetMetrics(4, ignore_index=-1)
    sizes = [t.numel() for t in (m.class_count, m.class_hits, m.size_count, m.size_hits)]
    for seed in range(3):
        sets, labels = _random_sets(100, 4, seed)
        labels[:10] = -1
        m.update(sets, labels)
    assert [t.numel() for t in (m.class_count, m.class_hits, m.size_count, m.size_hits)] == sizes
    assert int(m.compute()["n"]) == 270
    m.reset()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert math.isnan(float(m.compute()["coverage"]))
    with pytest.raises(ValueError, match="`sets` must have 4 classes"):
        m.update(torch.ones(2, 3, dtype=torch.bool), torch.tensor([0, 1]))
