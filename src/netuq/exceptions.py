"""netuq's own exception types.

Everything else netuq raises is a plain :class:`ValueError` (bad values or shapes) or
:class:`TypeError` (bad dtypes or types), with a message that names the argument, what was
expected and what was found.
"""

from __future__ import annotations

__all__ = ["NotFittedError"]


class NotFittedError(ValueError, AttributeError):
    """Raised when a calibrator (or other estimator) is used before ``fit``.

    Subclasses both :class:`ValueError` and :class:`AttributeError`, like scikit-learn's.
    """
