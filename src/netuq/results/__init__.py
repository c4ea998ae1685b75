"""The results contract between ``netuq.compare``, the benchmark and the report.

* :mod:`netuq.results.sections`: result sections a new family adds in one module.
"""

from . import sections

__all__ = ["sections"]
