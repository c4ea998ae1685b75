"""SplitConformal: sets equal an independent loop implementation, the (n+1) rank is exact, the
marginal guarantee holds on many random splits, inputs and errors behave as every netuq entry point."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from reference.conformal_reference import conformal_sets, quantile, rank_k, score_row

import netuq
from netuq.conformal import SplitConformal, conformal_quantile, conformal_rank
from netuq.conformal._tuning import LAMBDA_GRID, pick_k_reg, pick_lambda
from netuq.conformal.quantile import min_calibration_size
from netuq.conformal.scores import aps_scores, class_ranks, lac_scores, raps_scores


def _data(n: int, C: int, seed: int, scale: float = 2.0):
    """Logits and labels drawn from the model itself (so the model is calibrated), float64."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, C, generator=gen, dtype=torch.float64) * scale
    labels = torch.multinomial(torch.softmax(logits, 1), 1, generator=gen).squeeze(1)
    return logits, labels


# ------------------------------------------------------------------ the quantile
@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.07, 0.1, 0.2, 0.3, 0.5, 0.9])
def test_rank_matches_exact_counting(alpha):
    for n in range(1, 400):
        assert conformal_rank(n, alpha) == rank_k(n, alpha)


def test_rank_avoids_the_float_ceiling_trap():
    # In floating point (999 + 1) * (1 - 0.059) = 941.0000000000001, whose ceiling is 942.
    assert math.ceil((999 + 1) * (1 - 0.059)) == 942
    assert conformal_rank(999, 0.059) == 941 == rank_k(999, 0.059)


def test_quantile_and_all_classes_case():
    s = torch.arange(1.0, 21.0, dtype=torch.float64)[torch.randperm(20)]
    for alpha in (0.05, 0.1, 0.25, 0.5):
        assert conformal_quantile(s, alpha) == quantile(s.tolist(), alpha)
    assert conformal_quantile(s[:5], 0.1) == math.inf  # ⌈6 · 0.9⌉ = 6 > 5
    assert min_calibration_size(0.1) == 9 and conformal_rank(9, 0.1) == 9 and conformal_rank(8, 0.1) == 9
    cp = SplitConformal(alpha=0.1).fit(*_data(5, 3, 0))
    assert cp.quantile_ == math.inf and bool(cp.predict(_data(7, 3, 1)[0]).all())


# ------------------------------------------------------------------ scores and sets vs the reference
def test_scores_match_reference_rows():
    logits, _ = _data(40, 6, 0)
    p = torch.softmax(logits, 1)
    p[0] = torch.tensor([0.25, 0.25, 0.25, 0.125, 0.0625, 0.0625], dtype=torch.float64)  # ties: by class index
    u = torch.rand(40, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = {"lac": lac_scores(p), "aps": aps_scores(p), "aps_u": aps_scores(p, u),
           "raps": raps_scores(p, u, k_reg=2, lam=0.3)}
    for i in range(40):
        np.testing.assert_array_equal(got["lac"][i].numpy(), score_row(p[i].numpy(), "lac"))
        np.testing.assert_array_equal(got["aps"][i].numpy(), score_row(p[i].numpy(), "aps"))
        np.testing.assert_array_equal(got["aps_u"][i].numpy(), score_row(p[i].numpy(), "aps", float(u[i])))
        np.testing.assert_allclose(got["raps"][i].numpy(), score_row(p[i].numpy(), "raps", float(u[i]), 2, 0.3),
                                   rtol=0, atol=1e-15)
    assert class_ranks(p[:1]).tolist() == [[1, 2, 3, 4, 5, 6]]


CONFIGS = [
    dict(score="lac"),
    dict(score="aps"),
    dict(score="aps", randomized=True),
    dict(score="raps", k_reg=2, lam=0.05),
    dict(score="raps", k_reg=1, lam=0.2, randomized=True),
    dict(score="lac", class_conditional=True),
    dict(score="aps", randomized=True, class_conditional=True),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("alpha", [0.1, 0.2])
def test_sets_equal_reference(cfg, alpha):
    z_cal, y_cal = _data(300, 5, 2)
    z_test, _ = _data(200, 5, 3)
    gen = torch.Generator().manual_seed(4)
    u_cal = torch.rand(300, generator=gen, dtype=torch.float64) if cfg.get("randomized") else None
    u_test = torch.rand(200, generator=gen, dtype=torch.float64) if cfg.get("randomized") else None
    cp = SplitConformal(alpha=alpha, **cfg).fit(z_cal, y_cal, uniforms=u_cal)
    sets = cp.predict(z_test, uniforms=u_test)
    ref = conformal_sets(torch.softmax(z_cal, 1).numpy(), y_cal.numpy(), torch.softmax(z_test, 1).numpy(), alpha,
                         cfg["score"], u_cal=None if u_cal is None else u_cal.numpy(),
                         u_test=None if u_test is None else u_test.numpy(), k_reg=cfg.get("k_reg", 0),
                         lam=cfg.get("lam", 0.0), class_conditional=cfg.get("class_conditional", False))
    np.testing.assert_array_equal(sets.numpy(), ref)
    assert sets.dtype == torch.bool and sets.shape == (200, 5)


def test_aps_sets_are_prefixes_empty_only_below_the_top_mass():
    z_cal, y_cal = _data(500, 8, 5)
    z, _ = _data(300, 8, 6)
    for score in ("aps", "raps"):
        kw = {"k_reg": 1, "lam": 0.1} if score == "raps" else {}
        cp = SplitConformal(score=score, alpha=0.3, **kw).fit(z_cal, y_cal)
        sets = cp.predict(z)
        top = torch.softmax(z, 1).amax(1)
        # s = cumulative mass including y (METHODS.md): the top class's score is p_max
        assert torch.equal(~sets.any(1), top > cp.quantile_)
        ranks = class_ranks(torch.softmax(z, 1))
        size = sets.sum(1, keepdim=True)
        assert torch.equal(sets, ranks <= size)  # the set is the `size` most probable classes


# ------------------------------------------------------------------ RAPS tuning as the paper's code
def test_raps_tuning_matches_paper_rules():
    z, y = _data(1000, 10, 7)
    cp = SplitConformal(score="raps", alpha=0.1, seed=3).fit(z, y)
    assert cp.n_calibration_ == 1000 - 300
    perm = torch.randperm(1000, generator=netuq._random.generator(netuq._random.derive_seed(3, 2)))
    tune = perm[:300]
    p = torch.softmax(z, 1)[tune].numpy()
    yt = y[tune].numpy()
    # k_reg: numpy's "higher" (1 − α) quantile of the 0-based rank, plus 1 (Angelopoulos et al.'s pick_kreg)
    ranks0 = np.array([list(np.argsort(-row, kind="stable")).index(t) for row, t in zip(p, yt)])
    assert cp.k_reg_ == int(np.quantile(ranks0, 0.9, method="higher")) + 1
    # λ: smallest mean size on the tuning split, calibrated there too
    sizes = []
    for lam in LAMBDA_GRID:
        sets = conformal_sets(p, yt, p, 0.1, "raps", k_reg=cp.k_reg_, lam=lam)
        sizes.append(sets.sum(1).mean())
    assert cp.lam_ == LAMBDA_GRID[int(np.argmin(sizes))]
    assert pick_k_reg(torch.softmax(z, 1)[tune], y[tune], 0.1) == cp.k_reg_
    assert pick_lambda(torch.softmax(z, 1)[tune], y[tune], 0.1, cp.k_reg_, None) == cp.lam_
    # given k_reg and lam, nothing is set aside
    assert SplitConformal(score="raps", k_reg=2, lam=0.1).fit(z, y).n_calibration_ == 1000


# ------------------------------------------------------------------ the guarantee, Monte Carlo
def _coverages(pool_z, pool_y, n_cal, n_test, splits, seed, **cfg):
    gen = torch.Generator().manual_seed(seed)
    covs = []
    for _ in range(splits):
        perm = torch.randperm(len(pool_y), generator=gen)
        cal, test = perm[:n_cal], perm[n_cal:n_cal + n_test]
        cp = SplitConformal(seed=int(torch.randint(0, 2**31, (1,), generator=gen)), **cfg).fit(pool_z[cal], pool_y[cal])
        sets = cp.predict(pool_z[test])
        covs.append(netuq.metrics.coverage(sets, pool_y[test]))
    covs = np.array(covs)
    return covs.mean(), covs.std(ddof=1) / math.sqrt(splits)


@pytest.mark.parametrize("cfg", [dict(score="lac"), dict(score="aps"), dict(score="aps", randomized=True),
                                 dict(score="raps", k_reg=1, lam=0.1, randomized=True)],
                         ids=["lac", "aps", "aps-rand", "raps-rand"])
def test_marginal_coverage_is_exact_on_synthetic_splits(cfg):
    # Continuous scores: E[coverage] = ⌈(n+1)(1−α)⌉/(n+1), inside [1−α, 1−α + 1/(n+1)].
    z, y = _data(4000, 6, 11)
    alpha, n = 0.1, 40
    mean, se = _coverages(z, y, n, 200, 600, 12, alpha=alpha, **cfg)
    exact = conformal_rank(n, alpha) / (n + 1)
    assert 1 - alpha <= exact <= 1 - alpha + 1 / (n + 1)
    assert abs(mean - exact) < 4 * se, (mean, exact, se)


def test_class_conditional_coverage_holds_in_every_class():
    z, y = _data(6000, 4, 13)
    alpha = 0.2
    gen = torch.Generator().manual_seed(14)
    per_class = []
    for _ in range(300):
        perm = torch.randperm(6000, generator=gen)
        cal, test = perm[:120], perm[120:520]
        cp = SplitConformal(alpha=alpha, class_conditional=True).fit(z[cal], y[cal])
        per_class.append(netuq.metrics.classwise_coverage(cp.predict(z[test]), y[test]).numpy())
    per_class = np.array(per_class)
    mean, se = np.nanmean(per_class, 0), np.nanstd(per_class, 0, ddof=1) / math.sqrt(len(per_class))
    assert (mean >= 1 - alpha - 4 * se).all(), (mean, se)


# ------------------------------------------------------------------ inputs
def test_logits_probs_and_prediction_give_the_same_sets():
    z_cal, y_cal = _data(200, 4, 15)
    z, _ = _data(50, 4, 16)
    z32 = z.float()
    ref = SplitConformal(score="aps").fit(z_cal, y_cal).predict(z32)
    via_probs = SplitConformal(score="aps").fit(torch.softmax(z_cal, 1), y_cal).predict(torch.softmax(z32.double(), 1))
    via_pred = SplitConformal(score="aps").fit(netuq.Prediction.from_logits(z_cal), y_cal).predict(
        netuq.Prediction.from_logits(z32))
    assert torch.equal(ref, via_probs)
    assert (ref != via_pred).float().mean() < 0.01  # Prediction holds float32 log-probs of the same model
    assert torch.equal(SplitConformal(score="aps").fit(z_cal.numpy(), y_cal.numpy()).predict(z32), ref)


def test_ignore_index_drops_calibration_points():
    z, y = _data(120, 3, 17)
    y_ign = y.clone()
    y_ign[100:] = -100
    a = SplitConformal(alpha=0.2).fit(z, y_ign, ignore_index=-100)
    b = SplitConformal(alpha=0.2).fit(z[:100], y[:100])
    assert a.quantile_ == b.quantile_ and a.n_calibration_ == 100


def test_segmentation_shaped_input_gives_pixel_sets():
    gen = torch.Generator().manual_seed(18)
    z = torch.randn(4, 3, 5, 6, generator=gen)
    y = torch.randint(0, 3, (4, 5, 6), generator=gen)
    cp = SplitConformal(alpha=0.3).fit(z, y)
    sets = cp.predict(z)
    flat = cp.predict(z.movedim(1, -1).reshape(-1, 3))
    assert sets.shape == (4, 3, 5, 6) and torch.equal(sets.movedim(1, -1).reshape(-1, 3), flat)


@given(st.integers(0, 10_000))
def test_invariant_to_row_order_and_batching(seed):
    z_cal, y_cal = _data(60, 4, seed)
    z, _ = _data(30, 4, seed + 1)
    perm = torch.randperm(60, generator=torch.Generator().manual_seed(seed))
    a = SplitConformal(score="aps", alpha=0.2).fit(z_cal, y_cal)
    b = SplitConformal(score="aps", alpha=0.2).fit(z_cal[perm], y_cal[perm])
    assert a.quantile_ == b.quantile_
    sets = a.predict(z)
    assert torch.equal(torch.cat([a.predict(z[:7]), a.predict(z[7:])]), sets)
    assert torch.equal(a.predict(z.flip(0)), sets.flip(0))


def test_randomised_predict_is_reproducible_by_seed_and_independent_across_calls():
    z, y = _data(300, 5, 19)
    cp = SplitConformal(score="aps", randomized=True, seed=1).fit(z, y)
    assert torch.equal(cp.predict(z, seed=5), cp.predict(z, seed=5))
    first, second = cp.predict(z), cp.predict(z)
    assert not torch.equal(first, second)
    again = SplitConformal(score="aps", randomized=True, seed=1).fit(z, y)
    assert torch.equal(again.predict(z), first)


# ------------------------------------------------------------------ errors
def test_errors_name_the_argument():
    z, y = _data(50, 3, 20)
    with pytest.raises(ValueError, match="`score` must be one of"):
        SplitConformal(score="thr")
    with pytest.raises(ValueError, match=r"`alpha` must be a number in \(0, 1\)"):
        SplitConformal(alpha=1.0)
    with pytest.raises(ValueError, match="`randomized` must be False for score='lac'"):
        SplitConformal(score="lac", randomized=True)
    with pytest.raises(ValueError, match="`k_reg` and `lam` apply to score='raps'"):
        SplitConformal(score="aps", lam=0.1)
    with pytest.raises(ValueError, match="`lam` must be a finite number >= 0"):
        SplitConformal(score="raps", lam=-1.0)
    with pytest.raises(TypeError):
        SplitConformal("lac")  # keyword-only
    with pytest.raises(netuq.NotFittedError, match="not fitted"):
        SplitConformal().predict(z)
    with pytest.raises(ValueError, match="`labels` must be integers in \\[0, 3\\)"):
        SplitConformal().fit(z, y + 5)
    with pytest.raises(ValueError, match="`x` must have 3 classes"):
        SplitConformal().fit(z, y).predict(torch.randn(2, 4))
    with pytest.raises(ValueError, match="`x` must not contain NaN"):
        SplitConformal().fit(torch.full((3, 2), float("nan")), torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="`uniforms` must be floats of shape \\(50,\\)"):
        SplitConformal(score="aps", randomized=True).fit(z, y, uniforms=torch.rand(49))
    with pytest.raises(ValueError, match="`input` must be one of"):
        SplitConformal().fit(z, y, input="logit")


def test_class_conditional_refuses_too_few_points_per_class():
    z, y = _data(100, 3, 21)
    y[:] = 0
    y[:5] = 1
    y[5:30] = 2
    with pytest.raises(ValueError, match=r"at least 9 calibration points of every class .* class 1: 5"):
        SplitConformal(alpha=0.1, class_conditional=True).fit(z, y)
    SplitConformal(alpha=0.2, class_conditional=True).fit(z, y)  # 1/0.2 − 1 = 4 <= 5
