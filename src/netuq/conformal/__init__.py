"""Prediction sets with a finite-sample guarantee (conformal prediction).

* :class:`SplitConformal` — classification sets from LAC, APS or RAPS scores, marginal or
  class-conditional (Mondrian) coverage ≥ 1 − α.
* :class:`ConformalRiskControl` — segmentation: a per-image loss (FNR of a class, or pixel
  miscoverage) controlled in expectation over images, fitted in one bounded-memory pass.
* :mod:`~netuq.conformal.scores`, :mod:`~netuq.conformal.quantile` — the scores and the
  (n+1)-corrected quantile, as functions.

Set metrics (coverage, set size, worst-class and size-stratified coverage) are in
:mod:`netuq.metrics`.
"""

from ._section import options_for as section_options  # importing it registers the "conformal" section
from .quantile import conformal_quantile, conformal_rank
from .risk import ConformalRiskControl, image_losses, threshold_grid
from .scores import aps_scores, lac_scores, raps_scores
from .split import SplitConformal

__all__ = [
    "SplitConformal",
    "ConformalRiskControl",
    "conformal_quantile",
    "conformal_rank",
    "lac_scores",
    "aps_scores",
    "raps_scores",
    "image_losses",
    "threshold_grid",
    "section_options",
]
