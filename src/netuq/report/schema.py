"""The results schema, as the report reads it: owned by :mod:`netuq.results.schema` (the contract
between compare, the benchmark and the report); re-exported here so ``netuq.report.schema`` keeps
working."""

from ..results.example import example_results
from ..results.schema import (
    HIGHER_IS_BETTER,
    LOWER_IS_BETTER,
    SCHEMA_VERSION,
    TASKS,
    protocol_record,
    validate_results,
)

__all__ = ["SCHEMA_VERSION", "TASKS", "LOWER_IS_BETTER", "HIGHER_IS_BETTER", "validate_results", "example_results",
           "protocol_record"]
