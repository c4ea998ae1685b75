"""Every sentence that describes what was run is made from the results: for each kind of sentence,
two configurations that differ in the field it reads must read differently (and truly)."""

from __future__ import annotations

import copy

import pytest

from netuq.report import example_results, to_markdown
from netuq.report import sentences as S
from netuq.report.build import build_report

HELD_OUT = {"source": "compare", "calibration": "held_out", "calibrators": ["none", "temperature"],
            "temperature": "calibration", "shifts": {}}
CROSS_VAL = {"source": "compare", "calibration": "cross_validation", "folds": 2, "repeats": 5,
             "calibrators": ["none", "temperature"], "temperature": "test", "shifts": {}}


@pytest.fixture(scope="module")
def base():
    return example_results(methods=("mc_dropout", "ensemble"))


def _with(results, **top):
    r = copy.deepcopy(results)
    r.update(top)
    return r


def _shift_rows(results, severities, kinds=("blur", "rotation")):
    r = copy.deepcopy(results)
    for m in r["methods"].values():
        m["shift"] = {k: [{"severity": s, "ece": 0.1 * s, "accuracy": 0.9, "nll": 0.3} for s in severities]
                      for k in kinds}
    return r


def test_title_follows_the_source_and_the_methods(base):
    bench = S.title(_with(base, protocol={"source": "benchmark"}, data={"dataset": "digits"}))
    own = S.title(_with(base, protocol={"source": "compare"}))
    assert bench == "netuq benchmark: digits (classification)"
    assert own == "Uncertainty of MC dropout and deep ensemble (classification)"
    assert "benchmark" not in own
    page = build_report(_with(base, protocol={"source": "compare"}))
    assert page.title == own
    assert build_report(base, title="My models").title == "My models"


def test_data_sentence_reads_the_recorded_sizes(base):
    bench = S.data_sentence(_with(base, data={"dataset": "digits", "train": 988, "val": 270, "test": 539,
                                              "num_classes": 10, "ood": 200, "class_names": list("0123456789")}))
    own = S.data_sentence(_with(base, data={"calibration": 150, "test": 300, "num_classes": 3,
                                            "ood": {"MNIST-like digits": 200, "noise": 100}}))
    assert bench == "Data: digits; 988 training, 270 validation and 539 test images; 10 classes; 200 OOD inputs."
    assert own == ("Data: 150 calibration and 300 test images; 3 classes; 300 OOD inputs "
                   "(MNIST-like digits 200, noise 100).")
    assert "{" not in own and "'" not in own  # never a raw Python dict (issue 26)
    seg = S.data_sentence(_with(base, task="segmentation", data={"test": 40, "pixels": 25600, "ood": {"anomaly": 900}}))
    assert seg == "Data: 40 test images (25,600 labelled test pixels); 900 anomaly pixels."
    assert S.data_sentence(_with(base, data={})) is None


def test_header_has_no_raw_dict(base):
    r = _with(base, data={"test": 300, "ood": {"MNIST-like digits": 200}}, protocol=HELD_OUT)
    md = to_markdown(r)
    head = md.split("## Summary")[0]
    assert "{" not in head and "MNIST-like digits 200" in head


def test_calibration_sentence_follows_the_protocol(base):
    data = {"calibration": 270, "test": 539}
    held = S.calibration_sentence(_with(base, protocol=HELD_OUT, data=data))
    cv = S.calibration_sentence(_with(base, protocol=CROSS_VAL, data=data))
    assert held == ("Calibrators fitted on the calibration set (270 images) and scored on the whole test set "
                    "(539 images): one fit, so no spread is shown. Best per column in bold.")
    assert cv == ("Test set (539 images): each calibrator is fitted on one random half and scored on the other, "
                  "both ways (2-fold cross-validation on the test set, repeated 5 times (10 folds); Ashukha et al. "
                  "2020); mean ± standard deviation over the 10 folds. Best per column in bold.")
    assert "cross-validation" not in held and "calibration set" not in cv
    seeds = S.calibration_sentence(_with(example_results(methods=("ensemble",), seeds=2), protocol=HELD_OUT))
    assert seeds.endswith("; mean ± standard deviation over 2 seeds. Best per column in bold.")
    unknown = S.calibration_sentence({"methods": {}, "data": {"test": 5}})
    assert "not recorded" in unknown


def test_older_results_say_their_protocol_from_their_config(base):
    old = copy.deepcopy(base)
    old.pop("protocol")
    old["config"] = {"calibration": "calibration loader"}
    assert S.protocol(old)["calibration"] == "held_out"
    old["config"] = {"cv_repeats": 2}
    assert S.protocol(old) == {"source": "benchmark", "calibration": "cross_validation", "folds": 2, "repeats": 2,
                               "temperature": "test"}


def test_how_to_read_follows_the_protocol(base):
    held = S.calibration_howto(_with(base, protocol=HELD_OUT))
    cv = S.calibration_howto(_with(base, protocol=CROSS_VAL))
    assert "separate calibration set" in held and "Ashukha" not in held
    assert "Ashukha et al. (2020)" in cv and ", repeated." in cv
    how = next(s for s in build_report(_with(base, protocol=HELD_OUT)).sections if s.id == "how-to-read")
    assert "separate calibration set" in how.blocks[0].text


def test_temperature_sentence_says_where_it_was_fitted(base):
    r = _with(base, data={"calibration": 270, "test": 539})
    on_cal = S.temperature_sentence(_with(r, protocol=HELD_OUT))
    on_test = S.temperature_sentence(_with(r, protocol=CROSS_VAL))
    assert on_cal.startswith("Temperature of temperature scaling fitted on the calibration set (270 images): ")
    assert on_test.startswith("Temperature of temperature scaling fitted on the whole test set")
    assert "validation" not in on_cal + on_test  # it was never fitted on a validation set here
    t = base["methods"]["ensemble"]["temperature"]
    assert f"deep ensemble T = {t:.3f}" in on_cal
    assert S.temperature_sentence({"methods": {"a": {}}}) is None


def test_shift_sentence_lists_the_severities_that_ran(base):
    two_four = S.shift_sentence(_shift_rows(base, (2, 4)))
    all_five = S.shift_sentence(_shift_rows(base, (1, 2, 3, 4, 5)))
    assert two_four == "Averaged over 2 kinds of shift (blur and rotation) at severities 2 and 4."
    assert all_five == "Averaged over 2 kinds of shift (blur and rotation) at severities 1–5."
    r = _shift_rows(base, (1, 3), kinds=("blur",))
    r["methods"]["ensemble"]["shift"]["noise"] = [{"severity": 5, "ece": 0.2}]
    assert S.shift_sentence(r) == "Averaged over 2 kinds of shift: blur at severities 1 and 3; noise at severity 5."
    # The shift section shows it; the config's (benchmark) severities are not read.
    r = _shift_rows(base, (2, 4))
    r["config"]["severities"] = [1, 2, 3, 4, 5]
    sec = next(s for s in build_report(r).sections if s.id == "shift")
    assert sec.blocks[0].text == two_four


def test_ood_sentence_names_the_kinds_and_sizes(base):
    one = copy.deepcopy(base)
    for m in one["methods"].values():
        m["ood_kinds"] = {"noise": m["ood_kinds"]["noise"]}
    one["data"] = {"test": 400, "ood": {"noise": 100}}
    two = _with(base, data={"test": 400, "ood": {"noise": 100, "photos": 100}})
    assert S.ood_sentence(one).startswith("Scores rank the 100 OOD inputs (noise) against the 400 test images;")
    assert S.ood_sentence(two).startswith("Scores rank the 200 OOD inputs of 2 kinds (noise 100, photos 100), pooled, "
                                          "against the 400 test images;")
    assert "one run, so no spread" in S.ood_sentence(one)
    assert "over 2 seeds" in S.ood_sentence(example_results(methods=("ensemble",), seeds=2))
    # With one kind the per-kind table would repeat the pooled one: it is left out.
    for r, tables in ((one, 1), (two, 2)):
        sec = next(s for s in build_report(r).sections if s.id == "ood")
        assert sum(hasattr(b, "rows") for b in sec.blocks) == tables


def test_spread_words_and_run_meta(base):
    assert S.spread_words(_with(base, protocol=CROSS_VAL)) == "mean ± standard deviation over the 10 folds"
    assert S.spread_words(_with(base, protocol=HELD_OUT)) == "one fit on the calibration set, so no spread"
    assert S.run_meta(base).startswith("2 methods · 1 seed (0)")
    assert S.run_meta(example_results(methods=("ensemble",), seeds=3)).startswith("1 method · 3 seeds (0, 1, 2)")


def test_settings_without_effect_are_named_not_tabled(base):
    cfg = {"calibrators": ["none", "temperature"], "repeats": 5, "max_pixels": 250000, "n_bins": 15}
    held = _with(base, task="classification", protocol=HELD_OUT, config=cfg)
    cross = _with(base, task="classification", protocol=CROSS_VAL, config=cfg)
    assert set(S.idle_settings(held)) == {"repeats", "max_pixels"}
    assert set(S.idle_settings(cross)) == {"max_pixels"}
    md_held, md_cross = to_markdown(held), to_markdown(cross)
    assert "| repeats | 5 |" not in md_held and "| repeats | 5 |" in md_cross
    assert "repeats (the 2-fold protocol did not run" in md_held and "repeats (" not in md_cross
    assert "| max_pixels |" not in md_held + md_cross
    # The benchmark: segmentation-only settings of a classification run, and the reverse.
    bench = {"dataset": "digits", "max_train": 600, "n_scenes": 96, "scene_size": 32, "cv_repeats": 1}
    cls = S.idle_settings(_with(base, task="classification", protocol={"source": "benchmark"}, config=bench))
    seg = S.idle_settings(_with(base, task="segmentation", protocol={"source": "benchmark"}, config=bench))
    assert set(cls) == {"max_train", "n_scenes", "scene_size"} and set(seg) == {"dataset", "max_train"}


def test_ood_sentence_mentions_aleatoric_scores_only_when_there_are_some(base):
    with_sigma = copy.deepcopy(base)
    next(iter(with_sigma["methods"].values()))["ood"]["sigma"] = {"auroc": {"mean": 0.6, "std": None}}
    assert "aleatoric scores are shown but not ranked" in S.ood_sentence(with_sigma)
    assert "aleatoric" not in S.ood_sentence(base)
