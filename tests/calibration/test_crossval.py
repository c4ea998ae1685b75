"""Repeated 2-fold protocol (Ashukha et al. 2020): splits, schema, by-image segmentation splits, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from netuq import metrics
from netuq.calibration import MatrixScaling, TemperatureScaling, VectorScaling, cross_validate
from netuq.calibration.crossval import split_indices

METRICS = ("nll", "ece", "brier", "accuracy")


def data(n=200, c=4, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    z = 2.0 * torch.randn(n, c, generator=g)
    y = torch.multinomial(z.softmax(1), 1, generator=g).squeeze(1)
    return scale * z, y  # overconfident by a factor `scale`


class Spy:
    """A calibrator that records what it was fitted on and applies the identity."""

    calls: list = []

    def fit(self, logits, labels, *, ignore_index=None, **kwargs):
        Spy.calls.append((logits.clone(), labels.clone(), ignore_index))
        return self

    def __call__(self, logits):
        return logits.clone()


def test_split_indices_partition_each_repeat():
    splits = split_indices(11, folds=2, repeats=3, seed=5)
    assert [(r, k) for r, k, _ in splits] == [(r, k) for r in range(3) for k in range(2)]
    for r in range(3):
        a, b = splits[2 * r][2], splits[2 * r + 1][2]
        assert sorted(torch.cat([a, b]).tolist()) == list(range(11)) and abs(len(a) - len(b)) <= 1
    assert all(torch.equal(x[2], y[2]) for x, y in zip(splits, split_indices(11, folds=2, repeats=3, seed=5)))
    assert not torch.equal(splits[0][2], split_indices(11, folds=2, repeats=1, seed=6)[0][2])


def test_schema_and_aggregates():
    z, y = data()
    cv = cross_validate(TemperatureScaling, z, y, repeats=3, seed=1)
    assert set(cv) == {*METRICS, "uncalibrated", "splits", "folds", "repeats", "seed", "catastrophic_splits"}
    assert len(cv["splits"]) == 6 and cv["folds"] == 2 and cv["repeats"] == 3
    for name in METRICS:
        values = np.array([s["calibrated"][name] for s in cv["splits"]])
        assert cv[name]["mean"] == pytest.approx(float(values.mean()))
        assert cv[name]["std"] == pytest.approx(float(values.std()))
        assert cv[name]["median"] == pytest.approx(float(np.median(values)))  # numpy: mean of the middle two
        assert set(cv["uncalibrated"][name]) == {"mean", "std", "median"}
    assert cv["catastrophic_splits"] == 0 and not any(s["catastrophic"] for s in cv["splits"])
    for s in cv["splits"]:
        assert s["n_fit"] + s["n_eval"] == 200 and s["temperature"] > 1
    # Temperature scaling keeps the argmax: same accuracy on the same splits; it fixes the overconfidence.
    assert cv["accuracy"] == cv["uncalibrated"]["accuracy"]
    assert cv["nll"]["mean"] < cv["uncalibrated"]["nll"]["mean"]
    assert cv["ece"]["mean"] < cv["uncalibrated"]["ece"]["mean"]


def test_held_out_scores_are_computed_on_the_held_out_half():
    z, y = data(seed=2)
    cv = cross_validate(TemperatureScaling, z, y, repeats=1, seed=3)
    for (_, _, held), s in zip(split_indices(200, folds=2, repeats=1, seed=3), cv["splits"]):
        fit = torch.ones(200, dtype=torch.bool)
        fit[held] = False
        ts = TemperatureScaling().fit(z[fit], y[fit])
        assert s["temperature"] == ts.temperature_
        probs = ts(z[held]).softmax(1)
        assert s["calibrated"]["nll"] == pytest.approx(metrics.nll(probs, y[held]))
        assert s["calibrated"]["ece"] == pytest.approx(metrics.ece(probs, y[held], n_bins=15))
        assert s["uncalibrated"]["brier"] == pytest.approx(metrics.brier(z[held].softmax(1), y[held]))


def test_segmentation_is_split_by_image_never_by_pixel():
    g = torch.Generator().manual_seed(4)
    z = torch.randn(6, 3, 4, 5, generator=g)
    y = torch.randint(0, 3, (6, 4, 5), generator=g)
    y[1, 0] = 255
    Spy.calls = []
    cv = cross_validate(lambda: Spy(), z, y, repeats=2, seed=0, ignore_index=255)
    assert len(Spy.calls) == 4
    for logits, labels, ignore in Spy.calls:
        assert logits.shape == (3, 3, 4, 5) and labels.shape == (3, 4, 5) and ignore == 255
        for image in logits:  # every fitted image is a whole image of the input
            assert any(torch.equal(image, z[i]) for i in range(6))
    assert all(s["n_fit"] == 3 and s["n_eval"] == 3 for s in cv["splits"])
    # The spy is the identity: "calibrated" equals "uncalibrated" split by split.
    assert all(s["calibrated"] == s["uncalibrated"] for s in cv["splits"])


def test_segmentation_with_real_calibrator_and_ignore_index():
    g = torch.Generator().manual_seed(5)
    z = 4 * torch.randn(8, 3, 4, 4, generator=g)
    y = torch.multinomial(z.movedim(1, -1).reshape(-1, 3).div(4).softmax(1), 1, generator=g).view(8, 4, 4)
    y[:, 0, 0] = -1
    cv = cross_validate(TemperatureScaling, z, y, repeats=2, ignore_index=-1)
    assert cv["nll"]["mean"] < cv["uncalibrated"]["nll"]["mean"]


def test_accepts_class_factory_and_unfitted_instance():
    z, y = data(120, 3, seed=6)
    a = cross_validate(VectorScaling, z, y, repeats=1)
    b = cross_validate(lambda: VectorScaling(), z, y, repeats=1)
    c = cross_validate(VectorScaling(), z, y, repeats=1)
    assert a["nll"] == b["nll"] == c["nll"]
    d = cross_validate(MatrixScaling(odir=(1.0, 1.0)), z, y, repeats=1, folds=3)
    assert len(d["splits"]) == 3 and all(s["n_eval"] == 40 for s in d["splits"])


def test_deterministic_given_seed():
    z, y = data(seed=7)
    assert (
        cross_validate(TemperatureScaling, z, y, repeats=2, seed=9)["nll"]
        == cross_validate(TemperatureScaling, z, y, repeats=2, seed=9)["nll"]
    )


@pytest.mark.parametrize(
    "kwargs, match, exc",
    [
        ({"folds": 1}, "`folds` must be an integer >= 2, got 1", ValueError),
        ({"repeats": 0}, "`repeats` must be an integer >= 1, got 0", ValueError),
        ({"n_bins": 0}, "`n_bins` must be a positive integer", ValueError),
        ({"seed": 1.5}, "`seed` must be an int", TypeError),
    ],
)
def test_argument_errors(kwargs, match, exc):
    z, y = data(20, 3)
    with pytest.raises(exc, match=match):
        cross_validate(TemperatureScaling, z, y, **kwargs)


def test_calibrator_and_data_errors():
    z, y = data(20, 3)
    with pytest.raises(ValueError, match="got a fitted TemperatureScaling"):
        cross_validate(TemperatureScaling().fit(z, y), z, y)
    with pytest.raises(TypeError, match="must be a class or a zero-argument factory"):
        cross_validate(lambda x: TemperatureScaling(), z, y)
    with pytest.raises(TypeError, match="must be a class or a zero-argument factory"):
        cross_validate("temperature", z, y)
    with pytest.raises(ValueError, match="at least folds=3 examples"):
        cross_validate(TemperatureScaling, z[:2], y[:2], folds=3)
    with pytest.raises(ValueError, match=r"`labels` must be integers in \[0, 3\)"):
        cross_validate(TemperatureScaling, z, y + 5)
    # Two images, one of them all ignore_index: whichever half is held out first, the split fails clearly.
    first_held = int(split_indices(2, folds=2, repeats=1, seed=0)[0][2])
    seg_z = torch.randn(2, 3, 2, 2)
    for ignored, match in (
        (first_held, "repeat 0, fold 0: every held-out label equals ignore_index=9"),
        (1 - first_held, "repeat 0, fold 0: `labels` must contain at least one value other than ignore_index=9"),
    ):
        seg_y = torch.ones(2, 2, 2, dtype=torch.long)
        seg_y[ignored] = 9
        with pytest.raises(ValueError, match=match):
            cross_validate(TemperatureScaling, seg_z, seg_y, ignore_index=9, repeats=1)


def test_max_samples_subsamples_each_fit_but_scores_every_pixel():
    g = torch.Generator().manual_seed(3)
    z = 3.0 * torch.randn(12, 4, 6, 6, generator=g)
    y = torch.multinomial(z.movedim(1, -1).reshape(-1, 4).softmax(1), 1, generator=g).reshape(12, 6, 6)
    y[:, 0, 0] = 255
    seen = []

    class Recorder(TemperatureScaling):
        def fit(self, logits, labels, **kwargs):
            seen.append(kwargs)
            return super().fit(logits, labels, **kwargs)

    a = cross_validate(Recorder, z, y, repeats=2, ignore_index=255, max_samples=50)
    assert [kw["max_samples"] for kw in seen] == [50] * 4
    assert len({kw["seed"] for kw in seen}) == 4  # a different subsample per split, from the seed
    b = cross_validate(TemperatureScaling, z, y, repeats=2, ignore_index=255, max_samples=50)
    assert a["nll"] == b["nll"]  # seeded: the same subsamples again
    # Held-out scores use every valid pixel of the held-out images, whatever max_samples is.
    full = cross_validate(TemperatureScaling, z, y, repeats=2, ignore_index=255)
    assert a["uncalibrated"] == full["uncalibrated"]
    assert [s["n_eval"] for s in a["splits"]] == [s["n_eval"] for s in full["splits"]]


class Sharpen:
    """A harmful 'calibrator': multiplies the logits by a factor that depends on the fit half."""

    def fit(self, logits, labels, **kwargs):
        self.k = 1.0 if int(labels[0]) % 2 else 20.0  # harmful on some splits only
        return self

    def __call__(self, logits):
        return logits * self.k


def test_median_and_catastrophic_splits_count_what_they_define():
    from netuq.calibration.crossval import CATASTROPHIC_FACTOR

    z, y = data(scale=1.0)
    cv = cross_validate(Sharpen, z, y, repeats=4, seed=3)
    rows = cv["splits"]
    expected = [r["calibrated"]["nll"] > CATASTROPHIC_FACTOR * r["uncalibrated"]["nll"] for r in rows]
    assert [r["catastrophic"] for r in rows] == expected
    assert cv["catastrophic_splits"] == sum(expected) and 0 < sum(expected) < len(rows)
    nll = np.array([r["calibrated"]["nll"] for r in rows])
    assert cv["nll"]["median"] == pytest.approx(float(np.median(nll))) and cv["nll"]["median"] < cv["nll"]["mean"]
