"""Former home of the calibrators, kept so ``netuq.calibration.scaling`` imports keep working.

The code now lives in :mod:`.base` (base class, registry), :mod:`.persistence` (JSON),
:mod:`.temperature` and :mod:`.linear` (vector / matrix scaling).
"""

from .base import Calibrator
from .linear import ODIR_GRID, MatrixScaling, VectorScaling
from .persistence import load
from .temperature import TemperatureScaling

__all__ = ["Calibrator", "TemperatureScaling", "VectorScaling", "MatrixScaling", "ODIR_GRID", "load"]
