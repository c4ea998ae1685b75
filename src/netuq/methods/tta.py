"""``netuq.methods.tta``: the TTA wrapper lives in :mod:`netuq.tta.wrapper`; this name stays importable.

Example:
    >>> from netuq.methods.tta import TTA
    >>> TTA is __import__("netuq").tta.TTA
    True
"""

from ..tta.wrapper import MERGES, TASKS, TSHARPEN_T, TTA

__all__ = ["TTA", "MERGES", "TASKS", "TSHARPEN_T"]
