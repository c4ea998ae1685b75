"""Shared by perf/bench_conformal.py and perf/conformal_study.py: data and the MAPIE adapter."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
NETWORKS = ("cifar10_resnet110", "cifar10_wide_resnet", "focal_cifar10_resnet50", "cifar100_resnet110")


def real_logits_dir() -> Path | None:
    """$NETUQ_REAL_LOGITS, else shared/real-logits beside or above the checkout (None if absent)."""
    for c in [os.environ.get("NETUQ_REAL_LOGITS")] + [str(b / "shared" / "real-logits")
                                                      for b in (ROOT, ROOT.parent, ROOT.parent.parent)]:
        if c and Path(c).is_dir() and list(Path(c).glob("*_val.npz")):
            return Path(c)
    return None


def load_network(name: str):
    """(probs float64 (N, C), labels (N,)) of val + test, or synthetic data of the same size if absent."""
    folder = real_logits_dir()
    if folder is None:
        C = 100 if "cifar100" in name else 10
        g = torch.Generator().manual_seed(hash(name) % 2**31)
        z = torch.randn(15000, C, generator=g, dtype=torch.float64) * 4
        y = torch.multinomial(torch.softmax(z, 1), 1, generator=g).squeeze(1)
        return torch.softmax(z, 1), y, False
    parts = [np.load(folder / f"{name}_{p}.npz") for p in ("val", "test")]
    z = torch.from_numpy(np.concatenate([a["logits"] for a in parts]))
    y = torch.from_numpy(np.concatenate([a["labels"] for a in parts]))
    return torch.softmax(z.double(), 1), y, True


def mapie_classifier(probs: np.ndarray, score: str, alpha: float, **kw):
    """A MAPIE SplitConformalClassifier on a prefit lookup estimator (features = row indices)."""
    from mapie.classification import SplitConformalClassifier
    from sklearn.base import BaseEstimator, ClassifierMixin

    class Lookup(ClassifierMixin, BaseEstimator):
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
    return SplitConformalClassifier(estimator=est, confidence_level=1 - alpha, conformity_score=score, prefit=True,
                                    **kw)


def mapie_sets(probs: np.ndarray, y: np.ndarray, cal: np.ndarray, test: np.ndarray, score: str, alpha: float,
               seed: int) -> np.ndarray:
    """MAPIE's sets (bool (len(test), C)) with its defaults for ``score`` (APS/RAPS: include_last_label=True)."""
    kw = {"random_state": seed} if score != "lac" else {}
    m = mapie_classifier(probs, score, alpha, **kw).conformalize(cal.reshape(-1, 1), y[cal])
    return m.predict_set(test.reshape(-1, 1))[1][:, :, 0]


def mapie_randomized_sets(probs, y, cal, test, score, alpha, seed):
    """MAPIE's randomised APS / RAPS sets (include_last_label="randomized")."""
    m = mapie_classifier(probs, score, alpha, random_state=seed).conformalize(cal.reshape(-1, 1), y[cal])
    return m.predict_set(test.reshape(-1, 1), conformity_score_params={"include_last_label": "randomized"})[1][:, :, 0]


def torchcp_status() -> str | None:
    """None when torchcp imports, else why not (one line)."""
    try:
        import torchcp.classification  # noqa: F401
    except Exception as err:  # an optional peer: any import failure is reported, not raised
        return f"{type(err).__name__}: {err}".splitlines()[0]
    return None
