"""The report's views: table of contents, sortable tables, per class, per OOD kind, a reliability
diagram per calibrator, segmentation legend and alt text, a legible shift figure."""

from __future__ import annotations

import copy
import re

import pytest

from netuq.report import example_results, render_report, to_markdown
from netuq.report.build import build_report
from netuq.report.figures import MAX_WIDTH_IN, figure_blocks
from netuq.report.html import render_html
from netuq.report.markdown import anchor


@pytest.fixture(scope="module")
def results():
    r = example_results(methods=("mc_dropout", "ensemble"))
    for i, m in enumerate(r["methods"].values()):
        conf = [[40 if a == b else (3 if (a + b + i) % 4 == 0 else 0) for b in range(10)] for a in range(10)]
        support = [sum(row) for row in conf]
        m["per_class"] = {"support": support, "accuracy": [row[k] / s for k, (row, s) in enumerate(zip(conf, support))],
                          "ece": [0.01 * (k + 1) for k in range(10)], "confusion": conf}
        rel = m["reliability"]["temperature"]
        m["reliability"]["vector"] = {**rel, "ece": 0.0123}
        m["reliability"]["matrix"] = {**rel, "ece": 0.0456}
        m["ood_kinds_roc"] = {k: {s: v for s, v in m["roc"].items()} for k in m["ood_kinds"]}
        m["ood_kinds_hist"] = {k: {s: v for s, v in m["ood_hist"].items()} for k in m["ood_kinds"]}
    r["data"]["class_names"] = [f"class {c}" for c in range(10)]
    return r


def _texts(fig):
    return [t for t in fig.findobj(lambda a: hasattr(a, "get_text") and hasattr(a, "get_fontsize"))
            if t.get_text().strip() and t.get_visible()]


def test_table_of_contents_in_both_formats(results):
    report = build_report(results)
    page, md = render_html(report), to_markdown(results)
    nav = re.search(r'<nav class="toc".*?</nav>', page, flags=re.S).group(0)
    assert re.findall(r'href="#([^"]+)"', nav) == [s.id for s in report.sections]
    assert all(f'<h2 id="{s.id}">' in page for s in report.sections)
    toc = [line for line in md.splitlines() if re.match(r"\d+\. \[", line)]
    assert toc == [f"{i}. [{s.title}](#{anchor(s.title)})" for i, s in enumerate(report.sections, 1)]
    assert anchor("Misclassification detection and selective prediction") == \
        "misclassification-detection-and-selective-prediction"


def test_tables_are_sortable_without_needing_javascript(results):
    page = render_html(build_report(results))
    assert page.count('<table class="sortable"') >= 5
    assert '<table class="kv">' in page  # the configuration is a list, not sorted
    assert "<script src" not in page and "http" not in page.split("<script>")[1]
    # A grouped table keeps the full method name for the script to restore once sorted.
    assert re.search(r'<td data-full="MC dropout" class="l"></td>', page)


def test_per_class_section_names_the_classes(results, tmp_path):
    sec = next(s for s in build_report(results).sections if s.id == "per-class")
    table = next(b for b in sec.blocks if hasattr(b, "rows"))
    assert [r[0] for r in table.rows] == [f"class {c}" for c in range(10)]
    assert table.header[:4] == ("class", "test images", "MC dropout: accuracy ↑", "MC dropout: ECE ↓")
    assert "named from the data set" in sec.blocks[0].text
    mine = {**results, "protocol": {"source": "compare", "calibration": "held_out"}}
    text = next(s for s in build_report(mine).sections if s.id == "per-class").blocks[0].text
    assert "named from the class_names given to compare" in text
    assert sec.blocks[1].text.startswith("Least accurate class: MC dropout: class class ")
    # class_names= overrides, and is checked.
    named = build_report(results, class_names=list("abcdefghij"))
    sec = next(s for s in named.sections if s.id == "per-class")
    assert [r[0] for r in next(b for b in sec.blocks if hasattr(b, "rows")).rows] == list("abcdefghij")
    assert "named from the class_names argument" in sec.blocks[0].text
    with pytest.raises(ValueError, match=r"`class_names` must have one name per class \(10\), got 2"):
        render_report(results, tmp_path, class_names=["a", "b"])
    # The confusion matrix is the best method's (lowest NLL in the calibration table).
    figs = figure_blocks(results)["per-class"]
    best = min((stat["nll"]["mean"], n) for n, m in results["methods"].items()
               for stat in m["in_distribution"].values())[1]
    assert [f.file for f in figs] == [f"confusion_{best}.png"]
    ax = figs[0].draw().axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == [f"class {c}" for c in range(10)]
    no_names = copy.deepcopy(results)
    del no_names["data"]["class_names"]
    sec = next(s for s in build_report(no_names).sections if s.id == "per-class")
    assert [r[0] for r in next(b for b in sec.blocks if hasattr(b, "rows")).rows] == [str(c) for c in range(10)]


def test_a_reliability_panel_per_calibrator_with_its_ece(results):
    fig_block = figure_blocks(results)["reliability"][0]
    fig = fig_block.draw()
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    ece = results["methods"]["mc_dropout"]["metrics"]["ece"]
    assert titles == [  # the example's temperature bins record no ECE: none is made up
        f"MC dropout: uncalibrated (ECE {ece:.3f})", "MC dropout: temperature scaling",
        "MC dropout: vector scaling (ECE 0.012)", "MC dropout: matrix scaling (ECE 0.046)"]
    assert fig.get_size_inches()[0] <= MAX_WIDTH_IN
    assert "vector scaling (ECE 0.012)" in fig_block.alt and "matrix scaling (ECE 0.046)" in fig_block.alt


def test_per_kind_figures_only_with_several_kinds(results):
    figs = figure_blocks(results)
    assert [f.file for f in figs["ood-kinds"]] == ["ood_kind_noise.png", "ood_kind_photos.png"]
    fig = figs["ood-kinds"][0].draw()
    assert fig.axes[0].get_title() == "noise: ROC"
    assert any(ax.get_title().startswith("deep ensemble (AUROC ") for ax in fig.axes)
    assert "OOD inputs of kind noise" in figs["ood-kinds"][0].alt and "AUROC" in figs["ood-kinds"][0].alt
    one = copy.deepcopy(results)
    for m in one["methods"].values():
        for key in ("ood_kinds", "ood_kinds_roc", "ood_kinds_hist"):
            m[key] = {"noise": m[key]["noise"]}
    assert "ood-kinds" not in figure_blocks(one)
    assert "pooled" not in figure_blocks(one)["ood"][0].caption


def test_shift_figure_is_legible_and_every_panel_has_the_clean_point(results):
    block = figure_blocks(results)["shift"][0]
    fig = block.draw()
    width = fig.get_size_inches()[0]
    assert width <= MAX_WIDTH_IN  # shown at its own size (100 dpi) in the 1200 px page: fonts not scaled down
    smallest_px = min(t.get_fontsize() for t in _texts(fig)) * 100 / 72
    assert smallest_px >= 11, smallest_px
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 4
    for ax in panels:
        mean_lines = [ln for ln in ax.get_lines() if ln.get_marker() == "o"]
        assert mean_lines and all(ln.get_xdata()[0] == 0 for ln in mean_lines)
        assert ax.get_xticklabels()[0].get_text() == "clean"
    # The last panel's clean point is the calibration table's temperature-scaled ECE.
    last = [ln for ln in panels[3].get_lines() if ln.get_marker() == "o"][0]
    ens = results["methods"]["mc_dropout"]["in_distribution"]["temperature"]["ece"]["mean"]
    assert last.get_ydata()[0] == pytest.approx(ens)
    assert "clean" in block.caption


def test_segmentation_grid_has_a_class_legend_and_alt_text():
    r = example_results("segmentation", methods=("mc_dropout",))
    r["data"]["class_names"] = ["background", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    block = figure_blocks(r)["segmentation"][0]
    fig = block.draw()
    legend = fig.legends[0]
    names = [t.get_text() for t in legend.get_texts()]
    assert names[0] == "background" and names[-1] == "ignored" and legend.get_title().get_text() == "classes"
    assert block.alt.startswith("2 test scenes segmented by MC dropout; columns: image, labels, prediction, entropy")
    page = render_html(build_report(r), {f.file: b"\x89PNG" for f in build_report(r).figures()})
    alts = re.findall(r'<img [^>]*alt="([^"]*)"', page)
    assert alts and all(len(a) > 30 and not a.endswith(".png") for a in alts)


def test_one_kind_of_shift_is_not_called_a_mean_over_shifts(results):
    one = copy.deepcopy(results)
    for m in one["methods"].values():
        m["shift"] = {k: v for k, v in m["shift"].items() if k == next(iter(m["shift"]))}
    kind = next(iter(next(iter(one["methods"].values()))["shift"])).replace("_", " ")
    block = figure_blocks(one)["shift"][0]
    assert block.caption.lower().startswith(kind) and "mean over the shifts" not in block.caption.lower()
    fig = block.draw()
    for ax in [a for a in fig.axes if a.get_visible()]:
        assert "mean over shifts" not in ax.get_ylabel()
        assert all(ln.get_marker() == "o" for ln in ax.get_lines())  # no faint per-kind copy of the mean
    several = figure_blocks(results)["shift"][0]
    assert several.caption.startswith("Mean over the shifts")
    assert all("mean over shifts" in ax.get_ylabel() for ax in several.draw().axes if ax.get_visible())


def test_segmentation_class_colours_are_distinct_hues():
    import numpy as np

    from netuq.report import plots

    img = np.zeros((1, 8, 8))
    lab = np.arange(64).reshape(1, 8, 8) % 11
    fig = plots.segmentation_grid(img, lab, lab, np.zeros((1, 8, 8)), class_names=[str(i) for i in range(11)])
    colors = [tuple(np.round(p.get_facecolor()[:3], 3)) for p in fig.legends[0].get_patches()[:-1]]
    assert len(set(colors)) == 11
    # neighbouring classes never share a hue family (tab20 pairs a light shade with each dark one)
    assert all(np.abs(np.subtract(a, b)).max() > 0.2 for a, b in zip(colors[1:], colors[2:]))
