"""The benchmark report: figures and tables drawn from a results dict (``results.json``).

Compute and presentation are kept apart: the benchmark runner computes every number and stores
it as plain data following :mod:`netuq.report.schema` (read that module's docstring for the
exact layout); this package only draws and tabulates it, and never recomputes a metric.

* :mod:`~netuq.report.schema`: the layout, :func:`validate_results`, :func:`example_results`.
* :func:`aggregate_seeds`: several seeds' results into one (mean ± sd over seeds, seeds kept).
* :mod:`~netuq.report.tables`, :mod:`~netuq.report.summary`, :mod:`~netuq.report.findings`:
  the rows of the tables, the summary sentences (winners only when the lead exceeds the spread)
  and the literature claims checked per seed.
* :mod:`~netuq.report.build` makes the format-neutral :mod:`~netuq.report.model` once;
  :mod:`~netuq.report.html` and :mod:`~netuq.report.markdown` render it; :mod:`~netuq.report.figures`
  decides the figures, drawn by :mod:`netuq.report.plots` (matplotlib imported lazily).
* :func:`render_report`: report.html (self-contained), report.md, figures/*.png, results.csv.

Example:
    >>> from netuq.report import example_results, summary_lines
    >>> line = summary_lines(example_results(methods=("mc_dropout", "ensemble")))[0]
    >>> print(line[:line.index(")") + 1])
    Lowest NLL: tied: MC dropout + temperature scaling (0.736 ± 0.008)
"""

from ._text import cal_label
from .aggregate import aggregate_seeds
from .findings import findings
from .plots import (
    method_colors,
    ood_histogram,
    reliability_diagram,
    risk_coverage_plot,
    roc_plot,
    segmentation_grid,
    shift_plot,
)
from .render import main_table, render_report, summary_lines, to_markdown, write_csv
from .schema import SCHEMA_VERSION, example_results, validate_results

__all__ = [
    "render_report",
    "write_csv",
    "summary_lines",
    "to_markdown",
    "main_table",
    "aggregate_seeds",
    "findings",
    "validate_results",
    "example_results",
    "SCHEMA_VERSION",
    "reliability_diagram",
    "shift_plot",
    "risk_coverage_plot",
    "ood_histogram",
    "roc_plot",
    "segmentation_grid",
    "method_colors",
    "cal_label",
]
