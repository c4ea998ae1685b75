"""Post-hoc calibration of logits and the repeated 2-fold protocol for reporting it.

* :data:`CALIBRATORS`: name → class ("temperature", "vector", "matrix", "histogram", "isotonic"),
  filled by the classes themselves; ``CALIBRATORS[name]()`` is the recommended configuration;
  ``CALIBRATORS[name].changes_prediction`` says whether it can change the predicted class.
* :class:`TemperatureScaling`, :class:`VectorScaling` (L2 toward the temperature solution),
  :class:`MatrixScaling` (ODIR of Kull et al. 2019) (Guo et al. 2017): ``fit(logits, labels)``
  then ``calibrator(logits)`` → new logits.
* :class:`HistogramBinning` (top-label, equal-mass bins; Gupta & Ramdas 2022) and
  :class:`IsotonicRegression` (one-vs-rest, renormalised): non-parametric, on the probabilities.
* :func:`cross_validate`: repeated random 2-fold fit/evaluate on the test set (Ashukha et al. 2020).
* :func:`load`: read a calibrator written by ``calibrator.save(path)``.

Adding a calibrator: one module defining a :class:`Calibrator` subclass with a ``name`` (imported
below) plus its tests; the registry, ``load``, ``netuq.compare``, the report, the benchmark and
``netuq calibrate`` read :mod:`netuq.calibration.registry` when they need it, so a subclass
defined in a user's script after ``import netuq`` works everywhere too.

For a sampling method (MC dropout, ensembles, TTA) calibrate the log of the mean prediction,
``Prediction.log_probs``, not averaged logits.

Example:
    >>> import torch
    >>> from netuq.calibration import CALIBRATORS, TemperatureScaling
    >>> ts = TemperatureScaling().fit(torch.tensor([[3.0, 0.0], [3.0, 0.0], [0.0, 3.0]]), torch.tensor([0, 1, 1]))
    >>> round(ts.temperature_, 3)
    4.328
    >>> sorted(CALIBRATORS), CALIBRATORS["temperature"] is TemperatureScaling
    (['histogram', 'isotonic', 'matrix', 'temperature', 'vector'], True)
"""

from . import registry
from .base import CALIBRATORS, Calibrator
from .crossval import cross_validate
from .histogram import HistogramBinning
from .isotonic import IsotonicRegression
from .linear import L2_GRID, ODIR_GRID, MatrixScaling, VectorScaling
from .persistence import load
from .temperature import TemperatureScaling

__all__ = [
    "CALIBRATORS",
    "registry",
    "Calibrator",
    "TemperatureScaling",
    "VectorScaling",
    "MatrixScaling",
    "HistogramBinning",
    "IsotonicRegression",
    "ODIR_GRID",
    "L2_GRID",
    "cross_validate",
    "load",
]
