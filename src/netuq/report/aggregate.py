"""Several seeds into one results dict: owned by :mod:`netuq.results.aggregate`; re-exported here so
``netuq.report.aggregate_seeds`` keeps working."""

from ..results.aggregate import aggregate_seeds

__all__ = ["aggregate_seeds"]
