"""Write the report of a run: report.html (self-contained), report.md, figures/*.png, results.csv.

The report is built once as a format-neutral model (:mod:`netuq.report.build`) and rendered to
HTML (:mod:`netuq.report.html`) and Markdown (:mod:`netuq.report.markdown`). Every file is
written through :mod:`netuq._files` (temporary file + ``os.replace``): an existing symlink at an
output path is replaced by a regular file and its target is never written.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from .._files import atomic_write_bytes, atomic_write_text, inside
from .build import build_report
from .csvfile import write_csv, write_csv_text
from .figures import png
from .html import render_html
from .markdown import render_markdown
from .schema import validate_results
from .summary import summary_lines
from .tables import main_table

__all__ = ["render_report", "write_csv", "summary_lines", "to_markdown", "main_table"]


def to_markdown(results: Mapping, figures: Collection[str] | None = None, *, title: str | None = None,
                class_names: Sequence[str] | None = None) -> str:
    """report.md: the same sections, tables and summary as report.html, in Markdown.

    Args:
        results: a results dict (validated first).
        figures: file names (``"roc.png"`` or ``"figures/roc.png"``) of figures that exist next
            to the report: those are linked; ``None`` links none.
        title: the report's title (default: made from what the results record).
        class_names: one name per class (default: the names the results record).

    Example:
        >>> from netuq.report.schema import example_results
        >>> print(to_markdown(example_results(methods=("ensemble",))).splitlines()[0])
        # netuq benchmark: synthetic (classification)
    """
    return render_markdown(build_report(validate_results(results), title=title, class_names=class_names), figures)


def _figure_dir(out: Path) -> Path:
    """``out/figures`` as a real folder inside ``out``: a symlink there is replaced by a folder."""
    fig_dir = out / "figures"
    if fig_dir.is_symlink():
        try:
            inside(out, "figures", "x")
        except ValueError:
            fig_dir.unlink()  # removes the link only; what it points to is left untouched
    if fig_dir.exists() and not fig_dir.is_dir():
        raise ValueError(f"{fig_dir} must be a folder for the report's figures, found a file")
    fig_dir.mkdir(parents=True, exist_ok=True)
    return fig_dir


def render_report(results: Mapping, out_dir: str | Path, *, dpi: int = 100, csv: bool = True,
                  title: str | None = None, class_names: Sequence[str] | None = None) -> Path:
    """Write the report of a benchmark run into ``out_dir`` and return the path of report.html.

    Files: ``report.html`` (self-contained: figures embedded as base64 PNG data URIs, tables,
    summary, findings, how to read it, run configuration and times), ``report.md`` (the same
    sections and tables in Markdown, linking the PNGs), ``figures/*.png`` and, with ``csv``,
    ``results.csv``. Each file is replaced atomically; a symlink at an output path is replaced
    by a regular file (its target is not touched), and a ``figures`` symlink that leads out of
    ``out_dir`` is replaced by a folder.

    Args:
        results: a results dict following :mod:`netuq.report.schema` (validated first).
        out_dir: output folder (created if needed).
        dpi: resolution of the PNG figures.
        csv: also write results.csv (:func:`write_csv`).
        title: the report's title (default: made from what the results record: "netuq benchmark:
            digits (classification)" for the benchmark, "Uncertainty of A and B (task)" for compare).
        class_names: one name per class for the per-class view (default: ``data["class_names"]``).

    Raises:
        ValueError: ``results`` does not follow the schema, ``class_names`` has not one name per
            class, or ``out_dir/figures`` is a file.

    Example:
        >>> import tempfile
        >>> stat = {"mean": 0.42, "std": 0.01}
        >>> results = {"task": "classification", "methods": {"ensemble": {"in_distribution": {"none": {"nll": stat}}}}}
        >>> path = render_report(results, tempfile.mkdtemp())
        >>> path.name, "0.420 ± 0.010" in path.read_text()
        ('report.html', True)
    """
    validate_results(results)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = build_report(results, title=title, class_names=class_names)
    fig_dir = _figure_dir(out)
    images: dict[str, bytes] = {}
    for fig in report.figures():
        images[fig.file] = png(fig.draw(), dpi)
        atomic_write_bytes(inside(out, "figures", fig.file), images[fig.file])
    del fig_dir
    html_path = inside(out, "report.html")
    atomic_write_text(html_path, render_html(report, images))
    atomic_write_text(inside(out, "report.md"), render_markdown(report, images))
    if csv:
        write_csv_text(results, inside(out, "results.csv"))
    return html_path
