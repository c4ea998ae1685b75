"""Several seeds: aggregate_seeds, the schema extensions, and tables/summary built on them."""

import copy
import json

import numpy as np
import pytest

from netuq.report import aggregate_seeds, example_results, summary_lines, to_markdown, validate_results
from netuq.report.build import build_report


@pytest.fixture(scope="module")
def runs():
    return [example_results(methods=("deterministic", "ensemble"), seed=s) for s in (3, 4, 5)]


@pytest.fixture(scope="module")
def agg(runs):
    return aggregate_seeds(runs)


def test_aggregate_means_and_sds_match_numpy(runs, agg):
    assert validate_results(json.loads(json.dumps(agg, allow_nan=False))) == agg
    assert list(agg["seeds"]) == ["3", "4", "5"]
    for name in ("deterministic", "ensemble"):
        m = agg["methods"][name]
        for cal in ("none", "temperature"):
            for metric in ("nll", "ece", "brier", "accuracy"):
                per = [r["methods"][name]["in_distribution"][cal][metric] for r in runs]
                stat = m["in_distribution"][cal][metric]
                means = np.array([p["mean"] for p in per])
                assert stat["mean"] == pytest.approx(means.mean(), rel=1e-12)
                assert stat["std"] == pytest.approx(means.std(ddof=1), rel=1e-12)
                assert stat["values"] == list(means)
                assert stat["fold_std"] == pytest.approx(np.mean([p["std"] for p in per]))
        for key in ("ood", "misclassification"):
            for score, vals in m[key].items():
                for metric, v in vals.items():
                    per = [r["methods"][name][key][score][metric] for r in runs]
                    assert v == pytest.approx(np.mean(per)) and m["seed_values"][key][score][metric] == per
        for metric, v in m["metrics"].items():
            assert v == pytest.approx(np.mean([r["methods"][name]["metrics"][metric] for r in runs]))
        kind_auroc = [r["methods"][name]["ood_kinds"]["photos"]["entropy"]["auroc"] for r in runs]
        assert m["ood_kinds"]["photos"]["entropy"]["auroc"] == pytest.approx(np.mean(kind_auroc))
        assert m["seed_values"]["ood_kinds"]["photos"]["entropy"]["auroc"] == kind_auroc
        row = m["shift"]["blur"][2]
        assert row["severity"] == 3
        assert row["ece"] == pytest.approx(np.mean([r["methods"][name]["shift"]["blur"][2]["ece"] for r in runs]))
        assert m["temperature"] == pytest.approx(np.mean([r["methods"][name]["temperature"] for r in runs]))
        errors = [r["methods"][name]["counts"]["errors"] for r in runs]
        assert m["seed_values"]["counts"]["errors"] == errors and m["counts"]["errors"] == sum(errors)
        # Curves are seed 0's (the first seed's).
        assert m["roc"] == runs[0]["methods"][name]["roc"]
        assert m["reliability"] == runs[0]["methods"][name]["reliability"]
        assert m["runtime_s"]["train"] == pytest.approx(sum(r["methods"][name]["runtime_s"]["train"] for r in runs))
    # Every seed's full results are kept.
    assert agg["seeds"]["4"]["methods"] == runs[1]["methods"]


def test_one_seed_is_the_identity(runs):
    one = aggregate_seeds([runs[0]])
    assert one == runs[0] and one is not runs[0]
    assert example_results(methods=("ensemble",), seeds=1) == example_results(methods=("ensemble",))


def test_aggregate_rejects_bad_input(runs):
    with pytest.raises(ValueError, match=r"at least one results dict, got 0"):
        aggregate_seeds([])
    with pytest.raises(TypeError, match=r"must be a list of results dicts, got dict"):
        aggregate_seeds(runs[0])
    with pytest.raises(ValueError, match=r"must hold distinct seeds, got seed 3 twice"):
        aggregate_seeds([runs[0], runs[0]])
    seg = example_results("segmentation", methods=("deterministic",), seed=9)
    with pytest.raises(ValueError, match=r"results of one task, got \['classification', 'segmentation'\]"):
        aggregate_seeds([runs[0], seg])
    bad = copy.deepcopy(runs[1])
    bad["methods"]["ensemble"]["ood"]["entropy"]["auroc"] = "high"
    with pytest.raises(ValueError, match=r"`results_list\[1\]` is not a valid results dict: .*\['auroc'\]"):
        aggregate_seeds([runs[0], bad])
    with pytest.raises(ValueError, match=r"already an aggregate"):
        aggregate_seeds([aggregate_seeds(runs[:2]), runs[2]])


def test_aggregate_of_methods_missing_in_some_seeds(runs):
    partial = copy.deepcopy(runs[1])
    del partial["methods"]["ensemble"]
    agg = aggregate_seeds([runs[0], partial])
    stat = agg["methods"]["ensemble"]["in_distribution"]["none"]["nll"]
    assert stat["values"][1] is None and stat["mean"] == runs[0]["methods"]["ensemble"]["in_distribution"]["none"][
        "nll"]["mean"] and stat["std"] is None
    validate_results(agg)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r["methods"]["ensemble"].__setitem__("counts", {"test": 10, "errors": -1}),
         r"\['counts'\]\['errors'\]` must be a non-negative integer, got -1"),
        (lambda r: r["methods"]["ensemble"].__setitem__("counts", {"test": 1.5}),
         r"\['counts'\]\['test'\]` must be a non-negative integer, got 1.5"),
        (lambda r: r["methods"]["ensemble"]["ood_kinds"]["noise"]["entropy"].__setitem__("auroc", "x"),
         r"\['ood_kinds'\]\['noise'\]\['entropy'\]\['auroc'\]` must be a finite number or null"),
        (lambda r: r["methods"]["ensemble"]["ood_kinds"].__setitem__("noise", [1]),
         r"\['ood_kinds'\]\['noise'\]` must be a mapping, got list"),
        (lambda r: r["methods"]["ensemble"]["seed_values"]["ood"]["entropy"].__setitem__("auroc", [0.5]),
         r"\['seed_values'\]\['ood'\]\['entropy'\]\['auroc'\]` must have 3 values, got 1"),
        (lambda r: r["methods"]["ensemble"]["seed_values"]["counts"].__setitem__("errors", [1, 2, "3"]),
         r"\['seed_values'\]\['counts'\]\['errors'\]\[2\]` must be a non-negative integer or null"),
        (lambda r: r["methods"]["ensemble"]["in_distribution"]["none"]["nll"].__setitem__("values", "a"),
         r"\['nll'\]\['values'\]` must be a list of numbers, got 'a'"),
        (lambda r: r["seeds"].__setitem__("4", {"methods": {}}),
         r"`results\['seeds'\]\['4'\]\['methods'\]` must have at least one method, got 0"),
        (lambda r: r["seeds"]["5"]["methods"]["ensemble"]["ood"]["entropy"].__setitem__("auroc", float("nan")),
         r"`results\['seeds'\]\['5'\]\['methods'\]\['ensemble'\]\['ood'\]\['entropy'\]\['auroc'\]` must be a finite"),
        (lambda r: r.__setitem__("seeds", {}), r"`results\['seeds'\]` must hold at least one seed, got 0"),
        (lambda r: r["methods"]["ensemble"].__setitem__("warnings", "oops"),
         r"\['warnings'\]` must be a list of \{'message', 'count'\} entries, got 'oops'"),
    ],
)
def test_schema_extensions_are_validated(agg, edit, message):
    r = copy.deepcopy(agg)
    edit(r)
    with pytest.raises(ValueError, match=message):
        validate_results(r)


def test_tables_show_mean_and_sd_over_seeds(runs, agg):
    report = build_report(agg)
    sec = {s.id: s for s in report.sections}
    main = [b for b in sec["calibration"].blocks if hasattr(b, "rows")][0]
    stat = agg["methods"]["ensemble"]["in_distribution"]["temperature"]["nll"]
    assert f"{stat['mean']:.3f} ± {stat['std']:.3f}" in [c for r in main.rows for c in r]
    assert "mean ± standard deviation over 3 seeds" in sec["calibration"].blocks[0].text
    ood = [b for b in sec["ood"].blocks if hasattr(b, "rows")]
    per = [r["methods"]["deterministic"]["ood"]["entropy"]["auroc"] for r in runs]
    assert f"{np.mean(per):.3f} ± {np.std(per, ddof=1):.3f}" in [c for r in ood[0].rows for c in r]
    per_kind = [r["methods"]["deterministic"]["ood_kinds"]["noise"]["entropy"]["auroc"] for r in runs]
    assert ood[1].header[2:] == ("noise: AUROC ↑", "photos: AUROC ↑")
    assert f"{np.mean(per_kind):.3f} ± {np.std(per_kind, ddof=1):.3f}" in [c for r in ood[1].rows for c in r]
    shift = [b for b in sec["shift"].blocks if hasattr(b, "rows")][0]
    seed_nll = [np.mean([row["nll"] for rows in r["methods"]["ensemble"]["shift"].values() for row in rows])
                for r in runs]
    assert f"{np.mean(seed_nll):.3f} ± {np.std(seed_nll, ddof=1):.3f}" in shift.rows[1]
    captions = [f.caption for f in report.figures()]
    assert all("(seed 3 of 3)" in c for c in captions if "shift" not in c and "Mean over the shifts" not in c)
    assert any("mean over 3 seeds" in c for c in captions)
    md = to_markdown(agg)
    assert "3 seeds (3, 4, 5)" in md


def test_summary_states_seeds_and_error_counts(agg):
    lines = summary_lines(agg)
    assert lines[0].startswith("3 seeds (3, 4, 5): numbers are mean ± sd over the seeds")
    errors = [e for e in agg["methods"]["ensemble"]["seed_values"]["counts"]["errors"]]
    line = next(x for x in lines if x.startswith("Errors on the test set: "))
    assert f"deep ensemble: {min(errors)}–{max(errors)} errors in 400 images per seed" in line
    assert not any(x.startswith("One seed") for x in lines)
