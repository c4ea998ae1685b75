"""netuq.report: the results schema, the figures and the HTML/Markdown/CSV report."""

import base64
import copy
import csv
import json
import re

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from netuq import metrics as M
from netuq.report import (
    example_results,
    main_table,
    ood_histogram,
    reliability_diagram,
    render_report,
    risk_coverage_plot,
    roc_plot,
    segmentation_grid,
    shift_plot,
    summary_lines,
    to_markdown,
    validate_results,
    write_csv,
)
from netuq.report.plots import grid_figure


@pytest.fixture(scope="module")
def results():
    return example_results("classification", methods=("deterministic", "mc_dropout", "ensemble"))


@pytest.fixture(scope="module")
def seg_results():
    return example_results("segmentation", methods=("mc_dropout",), seed=1)


@pytest.fixture(scope="module")
def rendered(results, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return out, render_report(results, out)


# ----------------------------------------------------------------------------- schema


def test_example_results_follow_the_schema_and_are_json(results, seg_results):
    for r in (results, seg_results):
        assert validate_results(r) is r
        text = json.dumps(r, allow_nan=False)  # plain JSON, no NaN
        assert validate_results(json.loads(text)) == r
    m = results["methods"]["ensemble"]
    assert set(m["in_distribution"]) == {"none", "temperature"}
    assert set(m["in_distribution"]["none"]) >= {"nll", "ece", "brier", "accuracy"}
    assert set(m["reliability"]["uncalibrated"]) == {"edges", "counts", "confidence", "accuracy"}


def _broken(results, path, value):
    r = copy.deepcopy(results)
    node = r
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return r


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("task",), "regression", r"`results\['task'\]` must be one of \('classification', 'segmentation'\)"),
        (("methods",), {}, r"`results\['methods'\]` must have at least one method, got 0"),
        (("methods",), [], r"`results\['methods'\]` must be a mapping, got list"),
        (("methods", "ensemble", "ood", "entropy", "auroc"), float("nan"),
         r"`results\['methods'\]\['ensemble'\]\['ood'\]\['entropy'\]\['auroc'\]` must be a finite number or null, "
         r"got nan"),
        (("methods", "ensemble", "in_distribution", "none", "nll", "mean"), KeyError, r"must have a 'mean' entry"),
        (("methods", "ensemble", "in_distribution", "none", "nll", "std"), "0.1",
         r"\['std'\]` must be a finite number"),
        (("methods", "ensemble", "roc", "entropy", "tpr"), [0.0, 1.0], r"\['tpr'\]` must have \d+ values, got 2"),
        (("methods", "ensemble", "reliability", "temperature", "counts"), [1, 2],
         r"\['counts'\]` must have 15 values, got 2"),
        (("methods", "ensemble", "shift", "blur", 0, "severity"), "1", r"\['severity'\]` must be an integer"),
        (("config", "device"), float("inf"), r"`results\['config'\]\['device'\]` must be finite or null"),
        (("config", "device"), object(), r"must be plain JSON data"),
    ],
)
def test_validate_results_rejects(results, path, value, message):
    with pytest.raises(ValueError, match=message):
        validate_results(_broken(results, path, value))


def test_example_results_rejects_unknown_task():
    with pytest.raises(ValueError, match=r"`task` must be one of"):
        example_results("detection")


# ----------------------------------------------------------------------------- plots


def test_reliability_diagram_draws_the_given_bins(results):
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.35, 0.65], [0.6, 0.4]])
    labels = torch.tensor([0, 1, 1, 0])
    bins = M.reliability_bins(probs, labels, n_bins=4)
    fig = reliability_diagram(bins, title="t")  # a ReliabilityBins object
    assert isinstance(fig, Figure)
    ax = next(a for a in fig.axes if a.get_title() == "t")
    heights = [b.get_height() for b in ax.containers[0]]
    expected = [a for a in bins.accuracy.tolist() if a == a]
    assert heights == pytest.approx(expected)  # drawn, not recomputed
    conf = [c for c in bins.confidence.tolist() if c == c]
    over = [v for b in ax.containers[1] for v in (b.get_y(), b.get_height())]  # red: accuracy up to confidence
    under = [v for b in ax.containers[2] for v in (b.get_y(), b.get_height())]  # white: confidence up to accuracy
    assert over == pytest.approx([v for c, a in zip(conf, expected) if c > a for v in (a, c - a)])
    assert under == pytest.approx([v for c, a in zip(conf, expected) if c <= a for v in (c, a - c)])
    assert len(over) >= 1 and len(under) >= 1
    # Into a given ax, from the JSON form:
    fig2, axes = grid_figure(1, 2)
    out = reliability_diagram(results["methods"]["ensemble"]["reliability"]["temperature"], ax=axes[0, 1])
    assert out is fig2 and len(axes[0, 1].containers) == 3
    with pytest.raises(ValueError, match="`bins` must have keys edges, counts, confidence, accuracy"):
        reliability_diagram({"edges": [0, 1]})
    with pytest.raises(ValueError, match="`bins` must have n \\+ 1 edges"):
        reliability_diagram({"edges": [0, 1], "counts": [1, 2], "confidence": [0.5, 0.5], "accuracy": [1, 0]})
    with pytest.raises(TypeError, match="`bins` must be a ReliabilityBins or its to_dict"):
        reliability_diagram([1, 2, 3])


def test_shift_plot_averages_kinds(results):
    fig = shift_plot(results, "ece", per_kind=True)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert labels == ["deterministic", "MC dropout", "deep ensemble"]
    m = results["methods"]["mc_dropout"]
    expected = [m["metrics"]["ece"]] + [
        np.mean([rows[s - 1]["ece"] for rows in m["shift"].values()]) for s in range(1, 6)
    ]
    line = next(line for line in ax.get_lines() if line.get_label() == "MC dropout")
    assert line.get_xdata().tolist() == [0, 1, 2, 3, 4, 5]
    assert line.get_ydata() == pytest.approx(expected)
    assert len(ax.get_lines()) == 3 + 3 * 4  # mean lines + faint per-kind lines
    _, axes = grid_figure(1, 1)
    assert shift_plot(results, "ece_temperature", ax=axes[0, 0], methods=["ensemble"]) is axes[0, 0].figure
    with pytest.raises(ValueError, match=r"`methods` must be methods of the results"):
        shift_plot(results, methods=["svm"])
    with pytest.raises(ValueError, match=r"must hold shift rows with 'mce'"):
        shift_plot(results, "mce")


def test_curve_plots_accept_ax_and_check_inputs(results):
    ms = results["methods"]
    for fn, key, keys in ((risk_coverage_plot, "risk_coverage", None), (roc_plot, "roc", "entropy")):
        curves = {n: (m[key] if keys is None else m[key][keys]) for n, m in ms.items()}
        fig = fn(curves)
        assert isinstance(fig, Figure) and len(fig.axes[0].get_lines()) >= 3
        _, axes = grid_figure(1, 1)
        assert fn(next(iter(curves.values())), ax=axes[0, 0]) is axes[0, 0].figure  # one bare curve
    fig = roc_plot({"a": ms["ensemble"]["roc"]["entropy"]}, auroc={"a": 0.5})
    assert fig.axes[0].get_legend().get_texts()[0].get_text() == "a (AUROC 0.500)"
    rc = risk_coverage_plot({"ensemble": ms["ensemble"]["risk_coverage"]}, aurc={"ensemble": 0.25})
    assert "AURC 0.250" in rc.axes[0].get_legend().get_texts()[0].get_text()
    line = rc.axes[0].get_lines()[0]
    assert line.get_ydata().tolist() == ms["ensemble"]["risk_coverage"]["risk"]
    with pytest.raises(ValueError, match=r"must have as many fpr as tpr values, got 3 and 2"):
        roc_plot({"a": {"fpr": [0, 0.5, 1], "tpr": [0, 1]}})
    with pytest.raises(ValueError, match=r"`curves\['a'\]` must be a mapping with keys \('coverage', 'risk'\)"):
        risk_coverage_plot({"a": {"coverage": [1.0]}})
    with pytest.raises(TypeError, match="`curves` must be a mapping, got list"):
        roc_plot([0, 1])


def test_ood_histogram(results):
    h = results["methods"]["ensemble"]["ood_hist"]["entropy"]
    fig = ood_histogram(h, title="x")
    assert isinstance(fig, Figure) and fig.axes[0].get_ylabel() == "fraction of inputs"
    _, axes = grid_figure(1, 1)
    counts = {"edges": [0, 1, 2], "in": [3, 4], "out": [5, 0]}
    assert ood_histogram(counts, ax=axes[0, 0]) is axes[0, 0].figure
    assert axes[0, 0].get_ylabel() == "count"
    with pytest.raises(ValueError, match=r"`hist` must have B \+ 1 edges and B values per set, got 2, 2, 2"):
        ood_histogram({"edges": [0, 1], "in": [1, 2], "out": [1, 2]})
    with pytest.raises(ValueError, match=r"`hist` must have keys edges, in, out, got missing \['out'\]"):
        ood_histogram({"edges": [0, 1], "in": [1]})


def test_segmentation_grid(seg_results):
    ex = seg_results["methods"]["mc_dropout"]["segmentation_examples"]
    fig = segmentation_grid(ex["image"], ex["label"], ex["prediction"], ex["entropy"], ex["epistemic"],
                            ex["anomaly"], num_classes=5, title="MC dropout")
    assert isinstance(fig, Figure)
    titles = [a.get_title() for a in fig.axes[:5]]
    assert titles == ["image", "labels", "prediction", "entropy", "epistemic"]
    shown = fig.axes[1].get_images()[0].get_array()
    assert bool(shown.mask[0, 0]) and not bool(shown.mask[5, 5])  # ignore_index (255) is masked out
    _, axes = grid_figure(2, 4)
    images = torch.rand(2, 1, 6, 6)  # (K, C, H, W) tensors work too
    z = torch.zeros(2, 6, 6)
    assert segmentation_grid(images, z, z, z, axes=axes) is axes[0, 0].figure
    with pytest.raises(ValueError, match=r"segmentation maps must share the shape \(K, H, W\)"):
        segmentation_grid(z, z, torch.zeros(2, 5, 5), z)
    with pytest.raises(ValueError, match=r"`labels` must have shape \(K, H, W\), got shape \(6, 6\)"):
        segmentation_grid(z, z[0], z, z)
    with pytest.raises(ValueError, match=r"`axes` must hold at least 2 x 5 axes"):
        segmentation_grid(z, z, z, z, epistemic=z, axes=axes)


# ----------------------------------------------------------------------------- report


def _best_nll(results):
    rows = [(n, c, s["nll"]["mean"]) for n, m in results["methods"].items() for c, s in m["in_distribution"].items()]
    return min(rows, key=lambda r: r[2])


def test_render_report_files_and_embedded_figures(rendered, results):
    out, html_path = rendered
    assert html_path == out / "report.html"
    pngs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert pngs == sorted(["reliability_deterministic.png", "reliability_mc_dropout.png", "reliability_ensemble.png",
                           "shift.png", "roc.png", "ood_hist.png", "risk_coverage.png"])
    html = html_path.read_text()
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == len(pngs)
    on_disk = {(out / "figures" / p).read_bytes() for p in pngs}
    assert {base64.b64decode(i) for i in images} == on_disk  # the same PNGs, embedded
    assert all(base64.b64decode(i).startswith(b"\x89PNG\r\n\x1a\n") for i in images)
    for text in ('<table class="sortable"', "Summary", "How to read this report", "NLL ↓", "ECE ↓", "AUROC ↑",
                 "FPR at 95% TPR ↓",
                 "deep ensemble", "temperature scaling", "Configuration", "train (s)"):
        assert text in html
    assert "http://" not in html and "https://" not in html  # self-contained
    assert (out / "report.md").exists() and (out / "results.csv").exists()


def test_html_highlights_the_best_per_column(rendered, results):
    html = rendered[1].read_text()
    name, cal, nll = _best_nll(results)
    std = results["methods"][name]["in_distribution"][cal]["nll"]["std"]
    assert f'<td class="best"><strong>{nll:.3f} ± {std:.3f}</strong></td>' in html
    table = html.split('<h2 id="calibration">')[1].split("</table>")[0]
    assert table.count('class="best"') >= 4  # one per metric column at least
    best_auroc = max(v["auroc"] for m in results["methods"].values() for v in m["ood"].values())
    ood_table = html.split('<h2 id="ood">')[1].split("</table>")[0]
    assert f'<td class="best"><strong>{best_auroc:.3f}</strong></td>' in ood_table


def test_summary_names_the_winners(results):
    lines = summary_lines(results)
    name, cal, nll = _best_nll(results)
    label = {"deterministic": "deterministic", "mc_dropout": "MC dropout", "ensemble": "deep ensemble"}[name]
    who = f"{label}, uncalibrated" if cal == "none" else f"{label} + temperature scaling"
    assert lines[0].startswith(f"Lowest NLL: {who} ({nll:.3f} ± ")
    assert any(line.startswith("Best out-of-distribution detection: ") for line in lines)
    nll = {n: np.mean([r["nll"] for rows in m["shift"].values() for r in rows]) for n, m in results["methods"].items()}
    best = {"deterministic": "deterministic", "mc_dropout": "MC dropout", "ensemble": "deep ensemble"}[
        min(nll, key=nll.get)]
    assert (f"Best under distribution shift (lowest NLL, averaged over 4 shifts (rotation, gaussian noise, blur and "
            f"pixel dropout) at severities 1–5): {best} (NLL {min(nll.values()):.3f}, ECE ") in "\n".join(lines)


def test_summary_on_a_handmade_result():
    def stat(mean, std=0.001):
        return {"mean": mean, "std": std}

    r = {
        "task": "classification",
        "methods": {
            "a": {"in_distribution": {"none": {"nll": stat(0.5), "ece": stat(0.10), "accuracy": stat(0.9)},
                                      "temperature": {"nll": stat(0.3), "ece": stat(0.02), "accuracy": stat(0.9)}},
                  "ood": {"entropy": {"auroc": 0.7, "fpr95": 0.6}}},
            "b": {"label": "Bee", "in_distribution": {"none": {"nll": stat(0.31, 0.05), "ece": stat(0.01),
                                                               "accuracy": stat(0.95)}},
                  "ood": {"entropy": {"auroc": 0.9, "fpr95": 0.2}, "max_prob": {"auroc": 0.8}}},
        },
    }
    # Behaviour change (issue 15): a lead within one sd is reported as a tie, not as a winner.
    assert summary_lines(r) == [
        "Lowest NLL: tied: a + temperature scaling (0.300 ± 0.001); Bee, uncalibrated (0.310 ± 0.050) (the lead "
        "is within one standard deviation).",
        "Lowest ECE: Bee, uncalibrated (0.010 ± 0.001).",
        "Highest accuracy: Bee, uncalibrated (0.950 ± 0.001).",
        "Best out-of-distribution detection: Bee scored by predictive entropy (AUROC 0.900, FPR95 0.200).",
        "One seed: the differences above are not tested against seed-to-seed variation; run several seeds before "
        "drawing conclusions.",
    ]
    assert [(row["method"], row["calibration"]) for row in main_table(r)] == [
        ("a", "none"), ("a", "temperature"), ("b", "none")]


def test_minimal_results_render(tmp_path):
    r = {"task": "segmentation", "methods": {"x<script>": {"in_distribution": {"none": {
        "nll": {"mean": 0.2, "std": None}, "ece": {"mean": None, "std": None}}}}}}
    path = render_report(r, tmp_path, csv=False)
    html = path.read_text()
    assert "x&lt;script&gt;" in html and html.count("<script>") == 1  # the page's own sorting script only
    assert "0.200</td>" in html and "—" in html
    assert not (tmp_path / "results.csv").exists() and "data:image/png" not in html


def test_segmentation_report(seg_results, tmp_path):
    path = render_report(seg_results, tmp_path, dpi=60)
    names = {p.name for p in (tmp_path / "figures").glob("*.png")}
    assert "segmentation_mc_dropout.png" in names
    assert "Segmentation examples" in path.read_text() and "kinds (noise, photos)" in path.read_text()


def test_markdown_main_table(results):
    md = to_markdown(results)
    assert md.startswith("# netuq benchmark: synthetic (classification)")
    name, cal, nll = _best_nll(results)
    assert f"**{nll:.3f} ± " in md
    table = [line for line in md.splitlines() if line.startswith("| ") and "±" in line]
    assert len(table) == sum(len(m["in_distribution"]) for m in results["methods"].values())


def test_write_csv_rows(results, tmp_path):
    path = write_csv(results, tmp_path / "sub" / "results.csv")
    rows = list(csv.DictReader(open(path)))
    ms = results["methods"]
    expected = sum(
        len(m["in_distribution"]) + 1 + sum(len(v) for v in m["shift"].values()) + len(m["ood"])
        + len(m["misclassification"]) + sum(len(v) for v in m["ood_kinds"].values()) for m in ms.values()
    )
    assert len(rows) == expected
    ind = [r for r in rows if r["setting"] == "in_distribution"]
    assert [(r["method"], r["calibration"]) for r in ind] == [
        (n, c) for n, m in ms.items() for c in m["in_distribution"]
    ]
    row = next(r for r in ind if r["method"] == "ensemble" and r["calibration"] == "temperature")
    stat = ms["ensemble"]["in_distribution"]["temperature"]
    assert float(row["nll"]) == stat["nll"]["mean"] and float(row["nll_std"]) == stat["nll"]["std"]
    shift = [r for r in rows if r["setting"] == "shift" and r["method"] == "mc_dropout" and r["kind"] == "blur"]
    assert [int(r["severity"]) for r in shift] == [1, 2, 3, 4, 5]
    assert float(shift[2]["ece"]) == ms["mc_dropout"]["shift"]["blur"][2]["ece"]
    ood = next(r for r in rows if r["setting"] == "ood" and r["method"] == "deterministic" and r["kind"] == "entropy")
    assert float(ood["auroc"]) == ms["deterministic"]["ood"]["entropy"]["auroc"] and ood["nll"] == ""


def test_data_and_report_import_matplotlib_and_torchvision_lazily():
    # Static check of our modules (importing netuq as a whole also imports torchmetrics, which
    # itself imports matplotlib when it is installed): no module-level import of either.
    import ast
    from pathlib import Path

    import netuq.data
    import netuq.report

    files = [*Path(netuq.data.__file__).parent.glob("*.py"), *Path(netuq.report.__file__).parent.glob("*.py")]
    assert len(files) >= 9
    for path in files:
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only; imports inside functions are lazy
            for sub in ast.walk(node):
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    break
                names = [a.name for a in sub.names] if isinstance(sub, ast.Import) else (
                    [sub.module or ""] if isinstance(sub, ast.ImportFrom) else [])
                bad = [n for n in names if n.split(".")[0] in ("matplotlib", "torchvision")]
                assert not bad, f"{path.name} imports {bad} at module level"


def test_run_warnings_are_listed_in_the_report(tmp_path):
    results = example_results(methods=("deterministic", "mc_dropout"))
    results["methods"]["mc_dropout"]["warnings"] = [
        {"message": "RuntimeWarning: VectorScaling: the data are (nearly) separable", "count": 3}
    ]
    html = render_report(results, tmp_path).read_text()
    assert "Warnings raised during the run" in html
    assert "VectorScaling: the data are (nearly) separable (× 3)" in html
    plain = example_results(methods=("deterministic",))
    assert "Warnings raised" not in render_report(plain, tmp_path / "plain").read_text()
