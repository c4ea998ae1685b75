"""findings: each literature claim's decision, one test per outcome."""

import pytest

from netuq.report import aggregate_seeds, example_results
from netuq.report.findings import (
    CLAIMS,
    calibration_degrades_under_shift,
    ensemble_best_nll,
    ensemble_degrades_least,
    findings,
    members,
    mi_detects_ood,
    ts_lowers_ece,
    verdict,
)


def stat(v):
    return {"mean": v, "std": 0.01}


def ind(**cals):
    """``ind(none=(nll, ece), temperature=(nll, ece))`` -> in_distribution."""
    return {"in_distribution": {c: {"nll": stat(n), "ece": stat(e)} for c, (n, e) in cals.items()}}


def shifted(clean, rows):
    """A method with clean ECE ``clean`` and shift ECE per severity ``rows`` (two kinds alike)."""
    shift = {k: [{"severity": s + 1, "ece": e} for s, e in enumerate(rows)] for k in ("blur", "rotation")}
    return {"metrics": {"ece": clean}, "shift": shift}


@pytest.mark.parametrize(
    ("outcomes", "expected"),
    [
        ([True, True, True], "holds"),
        ([False, False], "does not hold"),
        ([True, False, True], "inconclusive"),
        ([True], "holds in this seed (1 seed: inconclusive)"),
        ([False], "does not hold in this seed (1 seed: inconclusive)"),
        ([None, True], "holds in this seed (1 seed: inconclusive)"),
        ([None, None], "not measured"),
        ([], "not measured"),
        ([True, None, True], "holds"),
    ],
)
def test_verdict(outcomes, expected):
    assert verdict(outcomes) == expected


def test_ts_lowers_ece():
    assert ts_lowers_ece({"a": ind(none=(1, 0.10), temperature=(1, 0.05)),
                          "b": ind(none=(1, 0.20), temperature=(1, 0.02))}) is True
    assert ts_lowers_ece({"a": ind(none=(1, 0.10), temperature=(1, 0.05)),
                          "b": ind(none=(1, 0.02), temperature=(1, 0.03))}) is False
    assert ts_lowers_ece({"a": ind(none=(1, 0.10), temperature=(1, 0.10))}) is False  # a tie does not count
    assert ts_lowers_ece({"a": ind(none=(1, 0.10))}) is None
    assert ts_lowers_ece({"a": ind(uncalibrated=(1, 0.10), temperature=(1, 0.05))}) is True


def ens(m: dict, members: int = 5) -> dict:
    """A method recorded as an ensemble (its traits), whatever its name."""
    return {**m, "traits": {"family": "ensemble", "members": members}}


def test_ensemble_best_nll():
    assert ensemble_best_nll({"ensemble": ens(ind(none=(0.5, 0), temperature=(0.2, 0))),
                              "mc_dropout": ind(none=(0.3, 0))}) is True
    assert ensemble_best_nll({"ensemble": ens(ind(none=(0.5, 0))), "mc_dropout": ind(none=(0.3, 0))}) is False
    assert ensemble_best_nll({"ensemble": ens(ind(none=(0.3, 0))), "mc_dropout": ind(none=(0.3, 0))}) is False
    assert ensemble_best_nll({"mc_dropout": ind(none=(0.3, 0))}) is None
    assert ensemble_best_nll({"ensemble": ens(ind(none=(0.3, 0)))}) is None


def test_ensembles_are_recognised_by_what_the_results_record_not_by_name():
    # A method called "deep ensemble" is measured (issue 26: it used to get "not measured").
    methods = {"deep ensemble": ens(ind(none=(0.2, 0))), "plain": ind(none=(0.3, 0))}
    assert ensemble_best_nll(methods) is True
    # compare's per-member metrics (two or more) say so too; the family alone as well.
    assert ensemble_best_nll({"mine": {**ind(none=(0.2, 0)), "members": [{"nll": 0.3}, {"nll": 0.4}]},
                              "plain": ind(none=(0.3, 0))}) is True
    assert ensemble_best_nll({"mine": {**ind(none=(0.2, 0)), "traits": {"family": "ensemble"}},
                              "plain": ind(none=(0.3, 0))}) is True
    # ...and a method *named* "ensemble" that records no members is not one.
    assert ensemble_best_nll({"ensemble": ind(none=(0.2, 0)), "plain": ind(none=(0.3, 0))}) is None
    assert members({"traits": {"members": 3}}) == 3 and members({"members": [{}, {}]}) == 2 and members({}) == 0


def test_calibration_degrades_under_shift():
    assert calibration_degrades_under_shift({"a": shifted(0.02, [0.03, 0.08]), "b": shifted(0.05, [0.04, 0.09])})
    assert calibration_degrades_under_shift({"a": shifted(0.02, [0.03, 0.08]),
                                             "b": shifted(0.10, [0.12, 0.09])}) is False
    assert calibration_degrades_under_shift({"a": {"metrics": {"ece": 0.1}}}) is None
    # A severity-0 row is the clean ECE when present.
    m = shifted(0.5, [0.03, 0.08])
    m["shift"]["blur"].insert(0, {"severity": 0, "ece": 0.01})
    assert calibration_degrades_under_shift({"a": m}) is True


def test_ensemble_degrades_least():
    assert ensemble_degrades_least({"my ens": ens(shifted(0.02, [0.03, 0.04])), "mc": shifted(0.02, [0.05, 0.09])})
    assert ensemble_degrades_least({"ensemble": ens(shifted(0.02, [0.05, 0.09])),
                                    "mc": shifted(0.02, [0.03, 0.04])}) is False
    assert ensemble_degrades_least({"ensemble": ens(shifted(0.02, [0.05, 0.09]))}) is None
    assert ensemble_degrades_least({"mc": shifted(0.02, [0.05, 0.09]), "det": shifted(0.0, [0.1])}) is None


def test_mi_detects_ood():
    def ood(**scores):
        return {"ood": {s: {"auroc": a} for s, a in scores.items()}}

    assert mi_detects_ood({"ens": ood(mutual_information=0.8), "mc": ood(mutual_information=0.6)}) is True
    assert mi_detects_ood({"ens": ood(mutual_information=0.8), "mc": ood(mutual_information=0.4)}) is False
    assert mi_detects_ood({"ens": ood(mutual_information=0.5)}) is False
    assert mi_detects_ood({"det": ood(entropy=0.9)}) is None


def _seed(seed, ens_nll, mc_nll):
    r = {"task": "classification", "config": {"seed": seed},
         "methods": {"ensemble": ens(ind(none=(ens_nll, 0.1), temperature=(ens_nll, 0.05))),
                     "mc_dropout": ind(none=(mc_nll, 0.1), temperature=(mc_nll, 0.05))}}
    return r


def test_findings_over_seeds():
    holds = aggregate_seeds([_seed(0, 0.2, 0.3), _seed(1, 0.2, 0.3), _seed(2, 0.25, 0.3)])
    mixed = aggregate_seeds([_seed(0, 0.2, 0.3), _seed(1, 0.4, 0.3), _seed(2, 0.25, 0.3)])
    fails = aggregate_seeds([_seed(0, 0.4, 0.3), _seed(1, 0.4, 0.3)])

    def nll_row(r):
        return next(f for f in findings(r) if f.claim == "deep ensembles have the best NLL")

    assert (nll_row(holds).verdict, nll_row(holds).evidence) == ("holds", "holds in 3 of 3 seeds")
    assert (nll_row(mixed).verdict, nll_row(mixed).evidence) == ("inconclusive", "holds in 2 of 3 seeds (seeds 0, 2)")
    assert nll_row(fails).verdict == "does not hold" and nll_row(fails).outcomes == (False, False)
    one = nll_row(_seed(7, 0.2, 0.3))
    assert one.verdict == "holds in this seed (1 seed: inconclusive)" and one.seeds == ("7",)
    rows = findings(holds)
    assert [f.claim for f in rows] == [c.claim for c in CLAIMS]
    shift_rows = [f for f in rows if "shift" in f.claim or "mutual" in f.claim]
    assert all(f.verdict == "not measured" for f in shift_rows)


def test_findings_table_in_the_report():
    from netuq.report.build import build_report

    report = build_report(example_results(methods=("deterministic", "ensemble"), seeds=2))
    sec = next(s for s in report.sections if s.id == "findings")
    table = next(b for b in sec.blocks if hasattr(b, "rows"))
    assert table.header == ("claim", "source", "rule", "evidence", "verdict")
    # Only measured claims are rows (issue 26); the others are named once, under the table.
    measured = [f.claim for f in findings(example_results(methods=("deterministic", "ensemble"), seeds=2))
                if f.verdict != "not measured"]
    assert [r[0] for r in table.rows] == measured == [c.claim for c in CLAIMS][:4]
    assert {r[4] for r in table.rows} <= {"holds", "does not hold", "inconclusive"}
    assert sec.blocks[-1].text == ("Not checked (these results lack the methods or numbers they need): mutual "
                                   "information detects OOD inputs.")
    single = build_report(example_results(methods=("deterministic", "ensemble")))
    table = next(b for s in single.sections if s.id == "findings" for b in s.blocks if hasattr(b, "rows"))
    assert all(r[4].endswith("(1 seed: inconclusive)") for r in table.rows)
