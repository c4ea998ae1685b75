"""The summary's rule for naming a winner, σ and inverted OOD scores, error counts, quick runs."""

import pytest

from netuq.report import aggregate_seeds, example_results, summary_lines
from netuq.report.build import build_report
from netuq.report.summary import Entry, rank


def test_rank_names_a_winner_only_beyond_both_spreads():
    a, b = Entry("a", "A", 0.30, 0.01), Entry("b", "B", 0.35, 0.02)
    assert rank([b, a], higher=False) == ([a], "")
    close = Entry("b", "B", 0.315, 0.02)  # gap 0.015 <= max(0.01, 0.02)
    assert rank([a, close], higher=False) == ([a, close], "the lead is within one standard deviation")
    wide = Entry("b", "B", 0.32, 0.001)  # gap 0.02 > max(0.01, 0.001)
    assert rank([a, wide], higher=False)[0] == [a]
    assert rank([Entry("a", "A", 0.9), Entry("b", "B", 0.8)], higher=True)[0][0].who == "A"
    assert rank([], higher=True) == ([], "")


def test_rank_needs_a_majority_of_seeds():
    # Mean lead beyond the sds, but the winner is the best in only one of three seeds.
    a = Entry("a", "A", 0.20, 0.001, (0.10, 0.25, 0.25))
    b = Entry("b", "B", 0.23, 0.001, (0.20, 0.24, 0.24))
    ranked, reason = rank([a, b], higher=False)
    assert ranked == [a, b] and reason == "no method is the best in a majority of the seeds"
    b2 = Entry("b", "B", 0.23, 0.001, (0.20, 0.26, 0.24))  # a wins 2 of 3
    assert rank([a, b2], higher=False)[0] == [a]


def _two(nll_a, sd_a, nll_b, sd_b):
    return {"task": "classification", "methods": {
        "ensemble": {"in_distribution": {"none": {"nll": {"mean": nll_a, "std": sd_a}}}},
        "mc_dropout": {"in_distribution": {"none": {"nll": {"mean": nll_b, "std": sd_b}}}}}}


def test_summary_winner_and_tie_lines():
    assert summary_lines(_two(0.2, 0.01, 0.3, 0.01))[0] == "Lowest NLL: deep ensemble, uncalibrated (0.200 ± 0.010)."
    assert summary_lines(_two(0.2, 0.05, 0.22, 0.01))[0] == (
        "Lowest NLL: tied: deep ensemble, uncalibrated (0.200 ± 0.050); MC dropout, uncalibrated (0.220 ± 0.010) "
        "(the lead is within one standard deviation).")


def _seed(seed, a, b):
    r = _two(a, 0.001, b, 0.001)
    r["config"] = {"seed": seed}
    return r


def test_summary_over_seeds_uses_the_seed_spread_and_the_majority():
    clear = aggregate_seeds([_seed(0, 0.20, 0.30), _seed(1, 0.21, 0.30), _seed(2, 0.19, 0.31)])
    line = next(x for x in summary_lines(clear) if x.startswith("Lowest NLL"))
    assert line == "Lowest NLL: deep ensemble, uncalibrated (0.200 ± 0.010, best in 3 of 3 seeds)."
    # Spread over seeds larger than the lead: tied, even though each fold sd is tiny.
    noisy = aggregate_seeds([_seed(0, 0.10, 0.30), _seed(1, 0.40, 0.30), _seed(2, 0.20, 0.31)])
    line = next(x for x in summary_lines(noisy) if x.startswith("Lowest NLL"))
    assert line.startswith("Lowest NLL: tied: deep ensemble, uncalibrated (0.233 ± 0.153); MC dropout")


def _ood(**scores):
    out = {}
    for name, per in scores.items():
        out[name] = {"ood": {s: {"auroc": a} for s, a in per.items()}}
    return {"task": "classification", "methods": out}


def test_sigma_is_never_ranked_and_inverted_scores_are_marked():
    r = _ood(heteroscedastic={"sigma": 0.99, "entropy": 0.7}, confidence={"confidence": 0.17, "entropy": 0.6})
    lines = summary_lines(r)
    assert "Best out-of-distribution detection: heteroscedastic scored by predictive entropy (AUROC 0.700)." in lines
    assert ("Not ranked as OOD detectors (aleatoric: they measure noise in the data, not the model's ignorance): "
            "heteroscedastic scored by heteroscedastic σ: AUROC 0.990.") in lines
    assert ("Inverted OOD scores (AUROC < 0.5: OOD inputs look more familiar than test inputs): learned confidence "
            "scored by 1 − learned confidence (0.170).") in lines
    table = next(b for s in build_report(r).sections if s.id == "ood" for b in s.blocks if hasattr(b, "rows"))
    cells = {(row[0] or prev, row[1]): row[2] for prev, row in zip(["", *[x[0] for x in table.rows]], table.rows)}
    assert cells[("heteroscedastic", "heteroscedastic σ (aleatoric, not ranked)")] == "0.990"
    assert cells[("learned confidence", "1 − learned confidence")] == "0.170 (inverted)"
    sigma_row = [i for i, row in enumerate(table.rows) if "σ" in row[1]][0]
    assert sigma_row not in table.best[2]  # the highest AUROC, but not marked best
    assert table.best[2] == {[i for i, row in enumerate(table.rows) if row[0] == "heteroscedastic"
                              and row[1] == "predictive entropy"][0]}
    only_bad = summary_lines(_ood(a={"entropy": 0.4}, b={"entropy": 0.3}))
    assert only_bad[0].startswith("Out-of-distribution detection: no score ranks OOD inputs above")


def test_per_kind_table_marks_inverted_and_skips_sigma():
    r = _ood(heteroscedastic={"sigma": 0.05, "entropy": 0.7})
    r["methods"]["heteroscedastic"]["ood_kinds"] = {"noise": {"sigma": {"auroc": 0.05}, "entropy": {"auroc": 0.4}},
                                                     "digits": {"sigma": {"auroc": 0.9}, "entropy": {"auroc": 0.8}}}
    sec = next(s for s in build_report(r).sections if s.id == "ood")
    kinds = [b for b in sec.blocks if hasattr(b, "rows")][1]
    assert kinds.header == ("method", "score", "noise: AUROC ↑", "digits: AUROC ↑")
    assert [list(row) for row in kinds.rows] == [
        ["heteroscedastic", "heteroscedastic σ (aleatoric, not ranked)", "0.050 (inverted)", "0.900"],
        ["heteroscedastic", "predictive entropy", "0.400 (inverted)", "0.800"],
    ]
    assert kinds.best[2:] == (frozenset(), frozenset())  # one ranked row: nothing to compare


def test_error_counts_are_stated():
    r = example_results(methods=("deterministic", "ensemble"))
    r["methods"]["deterministic"]["counts"] = {"test": 539, "errors": 7}
    r["methods"]["ensemble"]["counts"] = {"test": 539, "errors": 1}
    line = next(x for x in summary_lines(r) if x.startswith("Errors"))
    assert line == ("Errors on the test set: deterministic: 7 errors in 539 images; deep ensemble: 1 error in 539 "
                    "images. Few errors: ECE and misclassification detection rest on a handful of points.")
    seg = example_results("segmentation", methods=("mc_dropout",))
    assert "pixels" in next(x for x in summary_lines(seg) if x.startswith("Errors"))


@pytest.mark.parametrize("quick", [True, False])
def test_quick_runs_are_labelled(quick):
    r = example_results(methods=("ensemble",))
    r["config"]["quick"] = quick
    lines = summary_lines(r)
    assert (lines[0] == "Quick run: numbers are not meaningful (smoke test).") is quick
    header = " ".join(b.text for b in build_report(r).header)
    assert ("numbers are not meaningful (smoke test)" in header) is quick


def _cal_results(ens: dict, other: dict) -> dict:
    def block(cals):
        return {cal: {"nll": {"mean": m, "std": s}, "ece": {"mean": 0.05, "std": 0.01}} for cal, (m, s) in cals.items()}

    return {"task": "classification",
            "methods": {"ensemble": {"in_distribution": block(ens)}, "mc_dropout": {"in_distribution": block(other)}}}


def test_a_calibrator_is_named_only_when_it_too_wins_beyond_the_spread():
    # The digits case of issue 26: the ensemble's lead is real, matrix over temperature scaling is not.
    tied = _cal_results({"none": (0.5, 0.01), "temperature": (0.020, 0.010), "matrix": (0.019, 0.011)},
                        {"none": (0.6, 0.01), "temperature": (0.3, 0.01)})
    line = summary_lines(tied)[0]
    assert line == "Lowest NLL: deep ensemble (temperature and matrix scaling tied) (0.019 ± 0.011)."
    # Beyond the spread, the calibrator is named.
    wins = _cal_results({"none": (0.5, 0.01), "temperature": (0.10, 0.01), "matrix": (0.019, 0.002)},
                        {"none": (0.6, 0.01), "temperature": (0.3, 0.01)})
    assert summary_lines(wins)[0] == "Lowest NLL: deep ensemble + matrix scaling (0.019 ± 0.002)."
    # Uncalibrated can be one of the tied.
    unc = _cal_results({"none": (0.10, 0.02), "temperature": (0.09, 0.02)}, {"none": (0.6, 0.01)})
    assert summary_lines(unc)[0] == ("Lowest NLL: deep ensemble (uncalibrated and temperature scaling tied) "
                                     "(0.090 ± 0.020).")


def test_calibrator_ties_over_seeds():
    # Over seeds: matrix has the lower mean and wins in every seed, but its lead is within the sd over seeds.
    def seed(s, t, mx):
        return {"task": "classification", "config": {"seed": s},
                "methods": {"ensemble": {"in_distribution": {
                    "temperature": {"nll": {"mean": t, "std": 0.0}}, "matrix": {"nll": {"mean": mx, "std": 0.0}}}},
                    "plain": {"in_distribution": {"none": {"nll": {"mean": 0.9, "std": 0.0}}}}}}

    agg = aggregate_seeds([seed(0, 0.200, 0.150), seed(1, 0.200, 0.2005), seed(2, 0.200, 0.2005)])
    line = summary_lines(agg)[1]
    assert line == ("Lowest NLL: deep ensemble (temperature and matrix scaling tied) (0.184 ± 0.029, best in 3 "
                    "of 3 seeds).")


def test_no_spread_is_said_once_at_the_top():
    held = {"task": "classification", "methods": {
        "a": {"in_distribution": {"none": {"nll": {"mean": 0.3, "std": None}, "ece": {"mean": 0.1, "std": None}}}},
        "b": {"in_distribution": {"none": {"nll": {"mean": 0.4, "std": None}, "ece": {"mean": 0.2, "std": None}}}}}}
    lines = summary_lines(held)
    assert lines[0].startswith("No spread was recorded (one calibration fit, one seed)")
    assert sum("No spread" in line for line in lines) == 1
    cv = example_results(methods=("mc_dropout", "ensemble"))
    assert not any("No spread" in line for line in summary_lines(cv))


def test_a_lead_too_small_for_the_digits_shown_names_no_calibrator():
    # One fit on a calibration set (no spread): matrix scaling "wins" by 0.0001, printed as the same 0.147.
    r = {"task": "classification", "methods": {"ensemble": {"in_distribution": {
        "none": {"nll": {"mean": 0.174}}, "temperature": {"nll": {"mean": 0.1472}},
        "matrix": {"nll": {"mean": 0.1471}}}}, "mc_dropout": {"in_distribution": {"none": {"nll": {"mean": 0.2}}}}}}
    line = next(x for x in summary_lines(r) if x.startswith("Lowest NLL"))
    assert line == "Lowest NLL: deep ensemble (temperature and matrix scaling tied) (0.147)."
    r["methods"]["ensemble"]["in_distribution"]["matrix"]["nll"]["mean"] = 0.140
    line = next(x for x in summary_lines(r) if x.startswith("Lowest NLL"))
    assert line == "Lowest NLL: deep ensemble + matrix scaling (0.140)."
    assert rank([Entry("a", "A", 0.1471), Entry("b", "B", 0.1472)], higher=False)[1] == "equal to the digits shown"


def test_equal_numbers_without_spread_are_tied_for_that_reason():
    # Two methods sharing one network's features score exactly alike: no spread, so the reason is the digits.
    r = _ood(a={"mahalanobis": 0.995}, b={"mahalanobis": 0.995})
    line = next(x for x in summary_lines(r) if x.startswith("Best out-of-distribution"))
    assert line.endswith("(equal to the digits shown).") and "standard deviation" not in line
