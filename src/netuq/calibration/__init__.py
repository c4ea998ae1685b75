"""Post-hoc calibration of logits and the repeated 2-fold protocol for reporting it.

* :class:`TemperatureScaling`, :class:`VectorScaling`, :class:`MatrixScaling` (Guo et al. 2017;
  ODIR of Kull et al. 2019): ``fit(logits, labels)`` then ``calibrator(logits)`` → new logits.
* :func:`cross_validate`: repeated random 2-fold fit/evaluate on the test set (Ashukha et al. 2020).
* :func:`load`: read a calibrator written by ``calibrator.save(path)``.

Example:
    >>> import torch
    >>> from netuq.calibration import TemperatureScaling
    >>> ts = TemperatureScaling().fit(torch.tensor([[3.0, 0.0], [3.0, 0.0], [0.0, 3.0]]), torch.tensor([0, 1, 1]))
    >>> round(ts.temperature_, 3)
    4.328
"""

from .crossval import cross_validate
from .scaling import ODIR_GRID, Calibrator, MatrixScaling, TemperatureScaling, VectorScaling, load

__all__ = [
    "Calibrator",
    "TemperatureScaling",
    "VectorScaling",
    "MatrixScaling",
    "ODIR_GRID",
    "cross_validate",
    "load",
]
