"""The score vocabulary: every uncertainty score netuq knows, declared once, read at call time.

A :class:`Score` says how to compute the score from a :class:`~netuq.Prediction`, its display
label, its direction and what it needs. :data:`SCORES` (name → Score, in display order) is read
by ``Prediction.uncertainty``, ``netuq.compare`` (which scores a method offers), the report
(labels, which scores are ranked for OOD) and the benchmark (which scores a recipe offers), each
time they need it: a score registered after ``import netuq`` — by netuq itself or by a user's
script — is used everywhere.

Every score is reported *higher = less sure*: a score whose raw value grows with confidence (a
maximum logit) is declared with ``higher_is_uncertain=False`` and reported negated.

``needs`` names what the score requires (:data:`NEEDS`: name → test):

* ``"samples"``: more than one sample (S > 1);
* ``"epistemic"``: the method's samples carry an epistemic part (its traits, :mod:`netuq.traits`);
* ``"logits"``: every sample of the prediction came as logits, so it holds the logit scores
  (``pred.has_logit_scores``: ``energy``, ``max_logit``; a mean of probabilities has no logits);
* ``"features"``: the prediction holds a layer's features (``pred.features`` is not None; set by
  ``compare(..., features="layer")``);
* ``"score:KEY"``: the method attached ``pred.scores[KEY]`` (a learned head's output).

``"samples"`` and ``"epistemic"`` decide whether a score is *meaningful* (``compare`` offers
only those); the others whether it can be computed at all (``Prediction.uncertainty`` raises
when they are missing).

A score fitted on in-distribution data (Mahalanobis distance on features, Lee et al. 2018)
declares ``fit``: a zero-argument factory of an object with ``update(pred, labels)`` (called on
every batch of the calibration loader) and ``finish() -> compute`` (a function Prediction → (N,
...) raw score). ``compare`` offers it only when a calibration loader is given.

Adding a score to netuq: one :func:`register` call in this module (plus tests); a user's score:
the same call in their own script.

Example:
    >>> import torch
    >>> from netuq import Prediction
    >>> from netuq.scores import SCORES, Score, register
    >>> list(SCORES)[:3]
    ['max_prob', 'entropy', 'mutual_information']
    >>> _ = register(Score("gini", "Gini impurity", lambda p: 1 - (p.probs ** 2).sum(1)))
    >>> Prediction(torch.tensor([[0.5, 0.5]])).uncertainty("gini")
    tensor([0.5000])
    >>> _ = unregister("gini")
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["Score", "SCORES", "NEEDS", "register", "unregister", "get", "available", "compared_scores",
           "offered", "score_label", "RENAMED"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
KINDS = ("total", "aleatoric", "epistemic")


@dataclass(frozen=True)
class Score:
    """One uncertainty score.

    Attributes:
        name: the key in ``Prediction.uncertainty`` and in the results (``results[...][SCORE]``).
        label: display name in the report.
        compute: ``Prediction -> (N, ...)`` raw score tensor (a fitted score: None, see ``fit``).
        needs: what the score requires (keys of :data:`NEEDS`, or ``"score:KEY"``).
        higher_is_uncertain: direction of ``compute``; False: the score is reported negated.
        kind: ``"total"``, ``"aleatoric"`` (noise in the data: reported, never ranked as an OOD
            detector) or ``"epistemic"``.
        compared: whether ``netuq.compare`` reports it by default (others on request, ``scores=``).
        fit: a fitted score: a factory of an object with ``update(pred, labels)`` and
            ``finish() -> compute``; fitted on the calibration loader.
        description: one sentence for the documentation (with its citation).
    """

    name: str
    label: str
    compute: Callable[[Any], Any] | None = None
    needs: tuple[str, ...] = ()
    higher_is_uncertain: bool = True
    kind: str = "total"
    compared: bool = True
    fit: Callable[[], Any] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"`name` must be an identifier-like string (letters, digits, _ . -), got {self.name!r}")
        if not isinstance(self.label, str) or not self.label:
            raise ValueError(f"`label` must be a non-empty string, got {self.label!r}")
        if (self.compute is None) == (self.fit is None):
            raise ValueError(f"score {self.name!r}: give exactly one of `compute` (a function Prediction -> "
                             "tensor) and `fit` (a factory of a fitted score)")
        if self.compute is not None and not callable(self.compute):
            raise TypeError(f"`compute` must be callable, got {type(self.compute).__name__}")
        if self.fit is not None and not callable(self.fit):
            raise TypeError(f"`fit` must be callable, got {type(self.fit).__name__}")
        if isinstance(self.needs, str) or not all(isinstance(n, str) for n in self.needs):
            raise TypeError(f"`needs` must be a tuple of names, got {self.needs!r}")
        object.__setattr__(self, "needs", tuple(self.needs))
        for need in self.needs:
            if need not in NEEDS and not need.startswith("score:"):
                raise ValueError(f"score {self.name!r}: unknown need {need!r}; expected one of "
                                 f"{sorted(NEEDS)} or 'score:KEY'")
        if self.kind not in KINDS:
            raise ValueError(f"`kind` must be one of {KINDS}, got {self.kind!r}")

    @property
    def uses(self) -> tuple[str, ...]:
        """The keys of ``pred.scores`` this score reads."""
        return tuple(n[len("score:"):] for n in self.needs if n.startswith("score:"))

    @property
    def fitted(self) -> bool:
        """Whether the score must be fitted on in-distribution data first."""
        return self.fit is not None

    def oriented(self, value):
        """``value`` (the raw score) turned to *higher = less sure*."""
        return value if self.higher_is_uncertain else -value

    def __call__(self, pred, compute: Callable[[Any], Any] | None = None):
        """The score of ``pred``, (N, ...), higher = less sure (``compute``: a fitted score's function)."""
        fn = compute if compute is not None else self.compute
        if fn is None:
            raise ValueError(f"score {self.name!r} must be fitted first (it declares `fit`); netuq.compare fits it "
                             "on the calibration loader")
        return self.oriented(fn(pred))


def _has_scores(pred, key: str) -> bool:
    return key in getattr(pred, "scores", {})


#: need → test ``(pred, epistemic: bool | None) -> bool``; ``epistemic`` is the method's trait
#: (None where no method is known, as in ``Prediction.uncertainty``: meaning needs then pass).
NEEDS: dict[str, Callable[[Any, bool | None], bool]] = {
    "samples": lambda pred, epistemic: epistemic is None or pred.num_samples > 1,
    "epistemic": lambda pred, epistemic: epistemic is None or bool(epistemic),
    "logits": lambda pred, epistemic: bool(getattr(pred, "has_logit_scores", False)),
    "features": lambda pred, epistemic: getattr(pred, "features", None) is not None,
}

#: name → Score, in display order (built-in scores first, then in registration order).
SCORES: dict[str, Score] = {}

#: old names refused with the new one.
RENAMED = {"1-max_prob": "max_prob", "epistemic": "mutual_information", "1-confidence": "confidence"}


def register(score: Score, *, replace: bool = False) -> Score:
    """Add ``score`` to :data:`SCORES` (at the end of the display order); returns it.

    Raises:
        ValueError: the name is taken (unless ``replace``) or is an old, renamed name.
    """
    if not isinstance(score, Score):
        raise TypeError(f"`score` must be a netuq.scores.Score, got {type(score).__name__}")
    if score.name in RENAMED:
        raise ValueError(f"score name {score.name!r} is an old name of {RENAMED[score.name]!r}; choose another")
    if score.name in SCORES and not replace:
        raise ValueError(f"score name {score.name!r} is taken by {SCORES[score.name]!r}; pass replace=True")
    SCORES[score.name] = score
    return score


def unregister(name: str) -> Score:
    """Remove a score by name (returns it); for tests and scripts that register temporary scores."""
    if name not in SCORES:
        raise ValueError(f"`name` must be a registered score, one of {list(SCORES)}, got {name!r}")
    return SCORES.pop(name)


def get(name: str) -> Score:
    """The registered score ``name`` (ValueError naming the choices otherwise)."""
    if name not in SCORES:
        raise ValueError(f"`score` must be one of {list(SCORES)}, got {name!r}")
    return SCORES[name]


def available(score: Score, pred, epistemic: bool | None = None, *, meaning: bool = True) -> bool:
    """Whether ``pred`` (of a method whose samples are ``epistemic``) offers ``score``.

    With ``meaning=False`` only the data needs are tested (logits, features, ``score:KEY``).
    """
    for need in score.needs:
        if need.startswith("score:"):
            if not _has_scores(pred, need[len("score:"):]):
                return False
        elif need in ("samples", "epistemic"):
            if meaning and not NEEDS[need](pred, epistemic):
                return False
        elif not NEEDS[need](pred, epistemic):
            return False
    return True


def compared_scores(names=None) -> Iterator[Score]:
    """The scores ``compare`` considers: ``names`` (validated) or every ``compared`` score, in order."""
    if names is None:
        return (s for s in list(SCORES.values()) if s.compared)
    return (get(n) for n in names)


def offered(*, samples: bool, epistemic: bool, provides=()) -> tuple[str, ...]:
    """The ``compared`` scores a method offers, known before it runs: ``samples`` (S > 1),
    ``epistemic`` (its trait) and ``provides`` (the data needs its predictions meet: ``"logits"``,
    ``"features"``, ``"score:KEY"``). Fitted scores count (compare fits them on a calibration loader).

    Example:
        >>> offered(samples=True, epistemic=False, provides=("score:sigma",))
        ('max_prob', 'entropy', 'sigma')
    """
    have = set(provides) | ({"samples"} if samples else set()) | ({"epistemic"} if epistemic else set())
    return tuple(s.name for s in compared_scores() if all(n in have for n in s.needs))


def used_keys() -> set[str]:
    """Every ``pred.scores`` key a registered score reads (the rest are not scores: compare warns)."""
    return {k for s in SCORES.values() for k in s.uses} | set(SCORES)


def score_label(name: str) -> str:
    """The display label of a score; an unregistered name is shown with spaces for underscores."""
    s = SCORES.get(name)
    return s.label if s is not None else str(name).replace("_", " ")


def _builtins() -> None:
    def scored(key: str, flip: bool = False):
        return (lambda p: 1.0 - p.scores[key]) if flip else (lambda p: p.scores[key])

    for s in (
        Score("max_prob", "1 − max probability", lambda p: 1.0 - p.confidence,
              description="1 − max_c p̄_c, the maximum softmax probability baseline (Hendrycks & Gimpel 2017)."),
        Score("entropy", "predictive entropy", lambda p: p.entropy,
              description="H[p̄], total uncertainty (Depeweg et al. 2018)."),
        Score("mutual_information", "mutual information", lambda p: p.epistemic, needs=("samples", "epistemic"),
              kind="epistemic", description="H[p̄] − E_s H[p_s], the epistemic part (BALD; Gal 2016)."),
        Score("sigma", "heteroscedastic σ", scored("sigma"), needs=("score:sigma",), kind="aleatoric",
              description="σ of a heteroscedastic head: noise in the data (Kendall & Gal 2017)."),
        Score("confidence", "1 − learned confidence", scored("confidence", True), needs=("score:confidence",),
              description="1 − c of a learned confidence head (DeVries & Taylor 2018)."),
        Score("energy", "energy", lambda p: p.energy, needs=("logits",),
              description="−logsumexp_c z_c (T = 1), for samples the mean over samples (Liu et al. 2020)."),
        Score("max_logit", "−max logit", lambda p: p.max_logit, needs=("logits",),
              description="−max_c z_c, for samples the mean over samples (Hendrycks et al. 2022)."),
        Score("aleatoric", "expected entropy", lambda p: p.aleatoric, kind="aleatoric", compared=False,
              description="E_s H[p_s], the aleatoric part (Depeweg et al. 2018)."),
        Score("variation_ratio", "variation ratio", lambda p: p.variation_ratio, needs=("samples",),
              compared=False, description="1 − (votes of the modal class) / S (Freeman 1965)."),
        Score("confidence_unperturbed", "1 − learned confidence (unperturbed input)",
              scored("confidence_unperturbed", True), needs=("score:confidence_unperturbed",), compared=False,
              description="1 − c(x) of a learned confidence head without input perturbation."),
        Score("view_aleatoric", "TTA: expected entropy over views", scored("view_aleatoric"),
              needs=("score:view_aleatoric",), kind="aleatoric",
              description="E_v H[p_v] over TTA views, for merges other than the mean (Ayhan & Berens 2018)."),
        Score("view_epistemic", "TTA: mutual information over views", scored("view_epistemic"),
              needs=("score:view_epistemic",), kind="epistemic",
              description="H[mean_v p_v] − E_v H[p_v] over TTA views (Ayhan & Berens 2018)."),
        Score("view_variation_ratio", "TTA: variation ratio over views", scored("view_variation_ratio"),
              needs=("score:view_variation_ratio",), compared=False,
              description="1 − (views voting for the modal class) / V."),
    ):
        register(s)


_builtins()
