"""netuq's own exception types.

Everything else netuq raises is a plain :class:`ValueError` (bad values or shapes) or
:class:`TypeError` (bad dtypes or types), with a message that names the argument, what was
expected and what was found.
"""

from __future__ import annotations

__all__ = ["NotFittedError", "NotEnoughMemoryError"]


class NotFittedError(ValueError, AttributeError):
    """Raised when a calibrator (or other estimator) is used before ``fit``.

    Subclasses both :class:`ValueError` and :class:`AttributeError`, like scikit-learn's.
    """


class NotEnoughMemoryError(MemoryError, ValueError):
    """Raised before a job starts when it needs more memory than this machine has available.

    Subclasses :class:`MemoryError` and :class:`ValueError` (a size the machine cannot hold is a bad
    value: the command line reports it as one line, exit status 2).
    """
