"""The marginal guarantee on real networks' logits (../shared/real-logits), and parity with MAPIE.

The real-logits folder is looked for in $NETUQ_REAL_LOGITS, then shared/real-logits beside or
above the checkout; the tests skip (saying so) where it is absent. The MAPIE tests use synthetic
logits and skip only without MAPIE.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import netuq
from netuq.conformal import SplitConformal, conformal_quantile

ROOT = Path(__file__).resolve().parents[2]


def real_logits_dir() -> Path | None:
    candidates = [os.environ.get("NETUQ_REAL_LOGITS")] + [
        str(base / "shared" / "real-logits") for base in (ROOT, ROOT.parent, ROOT.parent.parent)
    ]
    for c in candidates:
        if c and Path(c).is_dir() and list(Path(c).glob("*_val.npz")):
            return Path(c)
    return None


def _pool(name: str):
    folder = real_logits_dir()
    if folder is None:
        pytest.skip("real logits not found: set NETUQ_REAL_LOGITS or put shared/real-logits beside the checkout")
    arrays = [np.load(folder / f"{name}_{part}.npz") for part in ("val", "test")]
    z = torch.from_numpy(np.concatenate([a["logits"] for a in arrays]))
    y = torch.from_numpy(np.concatenate([a["labels"] for a in arrays]))
    return torch.softmax(z.double(), 1), y


@pytest.mark.parametrize("cfg", [dict(score="lac"), dict(score="aps"), dict(score="aps", randomized=True),
                                 dict(score="raps", randomized=True)], ids=["lac", "aps", "aps-rand", "raps-rand"])
def test_coverage_on_random_splits_of_real_logits(cfg):
    p, y = _pool("cifar10_resnet110")
    alpha, n, splits = 0.1, 500, 150
    gen = torch.Generator().manual_seed(0)
    covs = []
    for s in range(splits):
        perm = torch.randperm(len(y), generator=gen)
        cal, test = perm[:n], perm[n:n + 3000]
        cp = SplitConformal(alpha=alpha, seed=s, **cfg).fit(p[cal], y[cal], input="probs")
        covs.append(netuq.metrics.coverage(cp.predict(p[test], input="probs"), y[test]))
    covs = np.array(covs)
    mean, se = covs.mean(), covs.std(ddof=1) / math.sqrt(splits)
    n_q = n - int(0.3 * n) if cfg["score"] == "raps" else n  # RAPS sets its tuning split aside
    assert mean >= 1 - alpha - 4 * se, (mean, se)
    if cfg.get("randomized"):  # continuous scores: the upper bound holds too
        assert mean <= 1 - alpha + 1 / (n_q + 1) + 4 * se, (mean, se)


# ------------------------------------------------------------------ MAPIE parity
def _mapie(probs: np.ndarray, score: str, alpha: float, X_cal, y_cal, **kw):
    mapie = pytest.importorskip("mapie.classification")
    from sklearn.base import BaseEstimator, ClassifierMixin

    class Lookup(ClassifierMixin, BaseEstimator):
        """A prefit classifier whose features are row indices into fixed probabilities."""

        def __init__(self, probs=None):
            self.probs = probs

        def fit(self, X, y):
            return self

        def predict_proba(self, X):
            return self.probs[np.asarray(X)[:, 0].astype(int)]

        def predict(self, X):
            return self.predict_proba(X).argmax(1)

        def __sklearn_is_fitted__(self):
            return True

    est = Lookup(probs)
    est.classes_ = np.arange(probs.shape[1])
    m = mapie.SplitConformalClassifier(estimator=est, confidence_level=1 - alpha, conformity_score=score,
                                       prefit=True, **kw)
    return m.conformalize(X_cal, y_cal)


def test_lac_sets_equal_mapie_up_to_its_epsilon():
    gen = torch.Generator().manual_seed(1)
    p = torch.softmax(torch.randn(3000, 7, generator=gen, dtype=torch.float64) * 2, 1)
    y = torch.multinomial(p, 1, generator=gen).squeeze(1)
    X = np.arange(3000).reshape(-1, 1)
    for alpha in (0.05, 0.1, 0.2):
        m = _mapie(p.numpy(), "lac", alpha, X[:1000], y[:1000].numpy())
        _, ms = m.predict_set(X[1000:])
        cp = SplitConformal(score="lac", alpha=alpha).fit(p[:1000], y[:1000], input="probs")
        assert cp.quantile_ == pytest.approx(float(m._mapie_classifier.conformity_score_function_.quantiles_[0]),
                                             abs=0)
        ours = cp.predict(p[1000:], input="probs").numpy()
        differ = ours != ms[:, :, 0]
        # MAPIE includes classes within EPSILON = 1e-8 above q̂; netuq uses <= exactly
        near = np.abs((1 - p[1000:].numpy()) - cp.quantile_) <= 1e-8
        assert not (differ & ~near).any()


def test_aps_quantile_and_sets_match_mapie_on_mapies_scores():
    gen = torch.Generator().manual_seed(2)
    p = torch.softmax(torch.randn(2000, 6, generator=gen, dtype=torch.float64) * 2, 1)
    y = torch.multinomial(p, 1, generator=gen).squeeze(1)
    X = np.arange(2000).reshape(-1, 1)
    m = _mapie(p.numpy(), "aps", 0.1, X[:800], y[:800].numpy(), random_state=0)
    scores = torch.from_numpy(np.asarray(m.conformity_scores).reshape(-1))  # MAPIE's randomised APS scores
    q = conformal_quantile(scores, 0.1)
    # MAPIE without the last label = {y : cumulative mass <= q̂}: netuq's non-randomised APS sets at that q̂
    _, ms = m.predict_set(X[800:], conformity_score_params={"include_last_label": False})
    assert q == float(m._mapie_classifier.conformity_score_function_.quantiles_[0])
    cp = SplitConformal(score="aps", alpha=0.1).fit(p[:800], y[:800], input="probs")
    cp.quantile_ = q
    ours = cp.predict(p[800:], input="probs").numpy()
    theirs = ms[:, :, 0]
    empty = ~ours.any(1)
    np.testing.assert_array_equal(ours[~empty], theirs[~empty])
    # where the exact set is empty (q̂ below the top mass), MAPIE still returns the top class
    top = p[800:].numpy().argmax(1)
    np.testing.assert_array_equal(theirs[empty], np.eye(6, dtype=bool)[top[empty]])
