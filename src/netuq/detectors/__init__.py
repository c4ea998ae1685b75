"""Feature-space OOD detectors fitted on in-distribution data.

* :class:`Mahalanobis` (Lee et al. 2018): class means and one shared covariance of a named layer's
  features, fitted in one streaming pass (memory O(C·D + D²), independent of N).
* :class:`LayerFeatures`: a layer's (N, D) features through a forward hook.

``netuq.compare(..., detectors=[Mahalanobis(layer="...")])`` fits an unfitted detector on the
calibration loader and scores the test and OOD sets with it, per OOD kind.
"""

from .features import FeatureTap, LayerFeatures
from .mahalanobis import Mahalanobis, MahalanobisScore

__all__ = ["Mahalanobis", "MahalanobisScore", "LayerFeatures", "FeatureTap"]
