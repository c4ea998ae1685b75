"""The results contract between ``netuq.compare``, the benchmark and the report (owned by none of them).

* :mod:`~netuq.results.schema`: the layout (its docstring), :func:`validate_results`, the metric
  directions and the reference calibrator;
* :mod:`~netuq.results.plain`: :func:`to_plain` (tensors and NaN to JSON-safe plain data);
* :mod:`~netuq.results.aggregate`: :func:`aggregate_seeds` (several seeds into one results dict);
* :mod:`~netuq.results.sections`: result sections a new family adds in one module;
* :mod:`~netuq.results.example`: :func:`example_results`, a small realistic example.

The engine, the benchmark and the report import this package; it imports none of them.
"""

from . import sections
from .aggregate import aggregate_seeds
from .example import example_results
from .plain import to_plain
from .schema import SCHEMA_VERSION, validate_results

__all__ = ["sections", "validate_results", "to_plain", "aggregate_seeds", "example_results", "SCHEMA_VERSION"]
