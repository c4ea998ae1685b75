"""Report files: atomic writes that never follow symlinks out of the run folder, and escaping of
text taken from the results (issue 13 items 4 and 8) in report.html and report.md alike."""

import html as htmllib
import os
import re

import pytest

from netuq.report import example_results, render_report, to_markdown, write_csv
from netuq.report import html as html_module
from netuq.report.markdown import escape

OUTPUTS = ["report.html", "report.md", "results.csv", "figures/roc.png", "figures/shift.png",
           "figures/reliability_ensemble.png"]


@pytest.fixture(scope="module")
def results():
    return example_results(methods=("deterministic", "ensemble"))


@pytest.fixture(autouse=True)
def fast_png(monkeypatch):
    """Where files go is under test here, not drawing: skip matplotlib's rasterising."""
    import netuq.report.render as render

    monkeypatch.setattr(render, "png", lambda fig, dpi: b"\x89PNG fake")


@pytest.mark.parametrize("name", OUTPUTS)
def test_a_symlinked_output_is_replaced_and_its_target_untouched(results, tmp_path, name):
    run, outside = tmp_path / "run", tmp_path / "outside"
    (run / "figures").mkdir(parents=True)
    outside.mkdir()
    target = outside / "precious.txt"
    target.write_text("keep me")
    (run / name).symlink_to(target)
    render_report(results, run, dpi=30)
    assert target.read_text() == "keep me"
    assert not (run / name).is_symlink() and (run / name).stat().st_size > 0
    assert sorted(os.listdir(outside)) == ["precious.txt"]
    assert not [p for p in run.rglob(".*.tmp")]  # no temporary files left behind


def test_every_output_symlinked_at_once(results, tmp_path):
    run, outside = tmp_path / "run", tmp_path / "outside"
    (run / "figures").mkdir(parents=True)
    outside.mkdir()
    for i, name in enumerate(OUTPUTS):
        (outside / f"t{i}").write_text(str(i))
        (run / name).symlink_to(outside / f"t{i}")
    render_report(results, run, dpi=30)
    assert [(outside / f"t{i}").read_text() for i in range(len(OUTPUTS))] == [str(i) for i in range(len(OUTPUTS))]
    assert not any((run / name).is_symlink() for name in OUTPUTS)


def test_a_figures_folder_symlinked_out_of_the_run_is_replaced(results, tmp_path):
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    run.mkdir()
    elsewhere.mkdir()
    (elsewhere / "roc.png").write_bytes(b"not yours")
    (run / "figures").symlink_to(elsewhere, target_is_directory=True)
    render_report(results, run, dpi=30)
    assert (run / "figures").is_dir() and not (run / "figures").is_symlink()
    assert (run / "figures" / "roc.png").read_bytes().startswith(b"\x89PNG")
    assert os.listdir(elsewhere) == ["roc.png"] and (elsewhere / "roc.png").read_bytes() == b"not yours"


def test_a_figures_symlink_inside_the_run_is_kept(results, tmp_path):
    run = tmp_path / "run"
    (run / "figs").mkdir(parents=True)
    (run / "figures").symlink_to(run / "figs", target_is_directory=True)
    render_report(results, run, dpi=30)
    assert (run / "figures").is_symlink() and (run / "figs" / "roc.png").exists()


def test_a_file_named_figures_is_refused(results, tmp_path):
    (tmp_path / "figures").write_text("x")
    with pytest.raises(ValueError, match=r"figures must be a folder for the report's figures, found a file"):
        render_report(results, tmp_path)


def test_write_csv_replaces_a_symlink(results, tmp_path):
    target = tmp_path / "target.csv"
    target.write_text("keep")
    (tmp_path / "r.csv").symlink_to(target)
    write_csv(results, tmp_path / "r.csv")
    assert target.read_text() == "keep" and (tmp_path / "r.csv").read_text().startswith("method,")


EVIL = [
    "<script>alert(1)</script>",
    "*bold* _it_ `code` ~~gone~~",
    "[click](javascript:alert(1))",
    "a | b || c",
    "# heading",
    "- item",
    "1. first",
    "&lt;entity&gt; & \\ backslash",
    "two\nlines",
    "<img src=x onerror=alert(1)>",
]


def _evil_results():
    r = example_results(methods=("deterministic", "ensemble"))
    for i, text in enumerate(EVIL):
        r["config"][f"k{i}"] = text
    r["config"]["<b>key</b>"] = "|"
    r["methods"]["deterministic"]["label"] = EVIL[0]
    r["methods"]["ensemble"]["label"] = EVIL[2] + " " + EVIL[3]
    r["methods"]["ensemble"]["warnings"] = [{"message": EVIL[9], "count": 2}, {"message": EVIL[4], "count": 1}]
    r["data"]["<i>split</i>"] = 5
    return r


def _md_plain(md_text: str) -> str:
    """What a CommonMark reader shows for escaped text: drop each backslash before punctuation."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", md_text)


def test_escape_round_trips_and_leaves_no_active_markup():
    for text in EVIL:
        esc = escape(text)
        assert "\n" not in esc
        assert _md_plain(esc) == text.replace("\n", " ")
        # No unescaped markup character survives.
        assert not re.search(r"(?<!\\)[<>*_`|\[\]&~#]", re.sub(r"\\\\", "", esc)), esc


def test_malicious_text_is_escaped_in_html_and_markdown(tmp_path):
    r = _evil_results()
    render_report(r, tmp_path, dpi=30, csv=False)
    page = (tmp_path / "report.html").read_text()
    md = (tmp_path / "report.md").read_text()
    body = page.split("</style>", 1)[1]
    assert body.count("<script") == 1  # the page's own sorting script, at the end, and nothing else
    body = body.replace(f"<script>{html_module._SCRIPT}</script>", "")
    for tag in ("<script", "<img src=x", "<b>key", "<i>split"):
        assert tag not in body
        assert tag in _md_plain(md)  # present in report.md only in escaped form
    assert not re.search(r"(?<!\\)<", md)  # no raw "<" at all: no HTML can start
    assert htmllib.escape(EVIL[0]) in page and escape(EVIL[0]) in md
    assert not re.search(r"(?<!\\)\]\(javascript", md) and "\\[click\\](javascript:alert(1))" in md  # never a link
    # Markdown tables keep their shape: every row has as many unescaped pipes as its header.
    lines = md.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|---"):
            width = len(re.findall(r"(?<!\\)\|", lines[i - 1]))
            j = i + 1
            while j < len(lines) and lines[j].startswith("| "):
                assert len(re.findall(r"(?<!\\)\|", lines[j])) == width, lines[j]
                j += 1
    # No line the results wrote turns into a heading or a list item of its own.
    assert [line for line in md.splitlines() if line.startswith("#")] == [
        line for line in md.splitlines() if line.startswith(("# netuq", "## "))]
    assert "| k4 | \\# heading |" in md and "| k5 | - item |" in md
    # What a reader sees is the original text, as in the HTML.
    shown = _md_plain(md)
    for text in EVIL[:8]:
        assert text in shown and htmllib.escape(text) in page


def test_markdown_bullets_from_results_cannot_start_blocks():
    r = example_results(methods=("ensemble",))
    r["methods"]["ensemble"]["label"] = "# not a heading"
    md = to_markdown(r)
    assert not any(line.startswith("# not") or line.startswith("- # not") for line in md.splitlines())
    r["methods"]["ensemble"]["label"] = "1. not a list"
    r["methods"]["ensemble"]["warnings"] = [{"message": "m", "count": 1}]
    md = to_markdown(r)
    assert "- 1\\. not a list: m (× 1)" in md
