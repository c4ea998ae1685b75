"""One report model: report.html and report.md show the same sections, tables and figures."""

import html as htmllib
import re
import subprocess
import sys

import pytest

from netuq.report import example_results, render_report, to_markdown
from netuq.report.build import build_report
from netuq.report.html import render_html
from netuq.report.markdown import escape as md_escape
from netuq.report.markdown import render_markdown
from netuq.report.model import Bullets, Figure, Paragraph, Report, Section, Strong, Table


def _html_sections(page: str) -> list[str]:
    return [htmllib.unescape(t) for t in re.findall(r"<h2 id=\"[^\"]*\">(.*?)</h2>", page)]


def _html_tables(page: str) -> list[list[list[tuple[str, bool]]]]:
    tables = []
    for body in re.findall(r"<tbody>(.*?)</tbody>", page, flags=re.S):
        rows = []
        for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body, flags=re.S):
            cells = re.findall(r"<td([^>]*)>(.*?)</td>", row, flags=re.S)
            rows.append([(htmllib.unescape(re.sub(r"</?strong>", "", c)), 'class="best"' in a) for a, c in cells])
        tables.append(rows)
    return tables


def _md_unescape(text: str) -> str:
    return re.sub(r"\\([\\`*_\[\]<>#|~&+=().!-])", r"\1", text)


def _md_cells(line: str) -> list[str]:
    inner = line.strip()[2:-2]  # drop "| " and " |"
    return re.split(r"(?<!\\) \| ", inner) if inner else [""]


def _md_sections(md: str) -> list[str]:
    return [_md_unescape(line[3:]) for line in md.splitlines() if line.startswith("## ")]


def _md_tables(md: str) -> list[list[list[tuple[str, bool]]]]:
    tables, current = [], None
    lines = md.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|---"):
            current = []
            tables.append(current)
            continue
        if current is not None and line.startswith("| ") and i > 0:
            cells = []
            for c in _md_cells(line):
                bold = len(c) > 4 and c.startswith("**") and c.endswith("**")
                cells.append((_md_unescape(c[2:-2] if bold else c), bold))
            current.append(cells)
        elif not line.startswith("| "):
            current = None
    return tables


@pytest.fixture(scope="module")
def cases():
    one = example_results(methods=("deterministic", "mc_dropout", "ensemble"))
    many = example_results(methods=("mc_dropout", "ensemble"), seeds=3)
    many["config"]["quick"] = True
    seg = example_results("segmentation", methods=("mc_dropout",), seed=1)
    minimal = {"task": "classification", "methods": {"a": {"in_distribution": {"none": {"nll": {"mean": 0.2}}}}}}
    return {"one": one, "many": many, "seg": seg, "minimal": minimal}


@pytest.mark.parametrize("case", ["one", "many", "seg", "minimal"])
def test_html_and_markdown_have_the_same_sections_and_cells(cases, case):
    report = build_report(cases[case])
    files = {f.file for f in report.figures()}
    page = render_html(report, {f: b"png" for f in files})
    md = render_markdown(report, files)
    assert _html_sections(page) == _md_sections(md) == [s.title for s in report.sections]
    html_tables, md_tables = _html_tables(page), _md_tables(md)
    assert len(html_tables) == len(md_tables) == len(report.tables()) >= 1
    assert html_tables == md_tables  # same cells, same "best" marks, same order
    for t, rows in zip(report.tables(), html_tables):
        assert [[c for c, _ in r] for r in rows] == t.shown()
    # Every figure is in both, in the same section.
    for sec in report.sections:
        for f in sec.figures():
            assert f"figures/{f.file}" in md.split(f"## {sec.title}")[1].split("\n## ")[0]
            body = page.split(f">{htmllib.escape(sec.title)}</h2>")[1].split("<h2")[0]
            assert f'alt="{htmllib.escape(f.alt_text)}"' in body and f.alt_text != f.file
            assert f"![{md_escape(f.alt_text)}](figures/{f.file})" in md


def test_markdown_has_the_sections_it_used_to_lack(cases):
    md = to_markdown(cases["one"], figures=["figures/shift.png"])
    for title in ("Under distribution shift", "Misclassification detection and selective prediction",
                  "Findings from the literature", "How to read this report"):
        assert f"## {title}" in md
    assert "](figures/shift.png)" in md and "](figures/roc.png)" not in md  # only the listed figures
    assert "](figures/" not in to_markdown(cases["one"])


def test_rendered_files_agree(cases, tmp_path):
    path = render_report(cases["many"], tmp_path, dpi=40)
    page, md = path.read_text(), (tmp_path / "report.md").read_text()
    assert _html_sections(page) == _md_sections(md)
    assert _html_tables(page) == _md_tables(md)
    for link in re.findall(r"\]\((figures/[^)]+)\)", md):
        assert (tmp_path / link).read_bytes().startswith(b"\x89PNG")
    # Quick runs are labelled in the header and the summary of both formats.
    for text in (page, md):
        mark = '<h2 id="summary">' if text is page else "## Summary"
        head, summary = text.split(mark)[0], text.split(mark)[1].split("How to read")[0]
        assert "numbers are not meaningful (smoke test)" in head.lower()
        assert "quick run: numbers are not meaningful (smoke test)" in summary.lower()


def test_model_blocks_render_in_both_formats():
    t = Table(["a", "b"], [["x", "1"], ["x", "2"], ["y", "3"]], best=[set(), {2}], group_rows=True)
    assert t.shown() == [["x", "1"], ["", "2"], ["y", "3"]]
    report = Report("T", [Paragraph("meta", style="meta")], [
        Section("s", "S", [Paragraph(["plain ", Strong("bold")]), Bullets(["one", ("two ", Strong("2"))]), t,
                           Figure("f.png", "cap", draw=lambda: None)])])
    page = render_html(report, {"f.png": b"\x89PNG"})
    assert "<p>plain <b>bold</b></p>" in page and "<li>two <b>2</b></li>" in page
    assert '<td class="best"><strong>3</strong></td>' in page and 'alt="cap"' in page  # alt text: the caption
    assert 'alt="what it shows"' in render_html(Report("T", sections=[Section("s", "S", [
        Figure("f.png", "cap", draw=lambda: None, alt="what it shows")])]), {"f.png": b"\x89PNG"})
    md = render_markdown(report, ["f.png"])
    assert "plain **bold**" in md and "- two **2**" in md and "| y | **3** |" in md and "| | 2 |" not in md
    assert "|  | 2 |" in md and "![cap](figures/f.png)" in md
    assert "figures/f.png" not in render_markdown(report) and "<img" not in render_html(report)
    with pytest.raises(ValueError, match=r"`rows\[0\]` must have 2 cells like the header, got 1"):
        Table(["a", "b"], [["x"]])


def test_building_the_model_and_markdown_do_not_import_matplotlib():
    # (Importing netuq may import matplotlib through torchmetrics: compare before and after.)
    code = ("import sys; from netuq.report import example_results, to_markdown; r = example_results(seeds=2); "
            "before = 'matplotlib.figure' in sys.modules; to_markdown(r); "
            "print(before or 'matplotlib.figure' not in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
