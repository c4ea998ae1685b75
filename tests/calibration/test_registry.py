"""The calibrator registry read at call time: names, order, labels, whether the predicted class can change."""

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import netuq
from netuq.calibration import CALIBRATORS, Calibrator, MatrixScaling, TemperatureScaling, VectorScaling, load, registry


def test_names_labels_and_order():
    assert registry.names() == ("none", "temperature", "vector", "matrix", "histogram", "isotonic")
    assert registry.names(none=False) == ("temperature", "vector", "matrix", "histogram", "isotonic")
    assert [registry.label(n) for n in registry.names()] == [
        "uncalibrated", "temperature scaling", "vector scaling", "matrix scaling", "top-label histogram binning",
        "isotonic regression"]
    assert [registry.changes_prediction(n) for n in registry.names()] == [False, False, True, True, False, True]
    assert registry.label("uncalibrated") == "uncalibrated" and registry.label("my_cal") == "my cal"
    assert sorted(["matrix", "mystery", "none", "temperature"], key=registry.order_key) == [
        "none", "temperature", "matrix", "mystery"]
    assert isinstance(registry.make("vector"), VectorScaling)
    names = r"\['temperature', 'vector', 'matrix', 'histogram', 'isotonic'\]"
    with pytest.raises(ValueError, match=r"`calibrator` must be one of " + names):
        registry.make("platt")


def test_changes_prediction_trait():
    assert registry.changes_prediction("none") is False
    assert TemperatureScaling.changes_prediction is False
    assert VectorScaling.changes_prediction and MatrixScaling.changes_prediction
    assert registry.changes_prediction("unknown") is None
    assert registry.describe(("none", "vector")) == {
        "none": {"label": "uncalibrated", "changes_prediction": False},
        "vector": {"label": "vector scaling", "changes_prediction": True}}


@given(st.integers(0, 2**31 - 1), st.integers(2, 6))
def test_a_calibrator_that_says_it_keeps_the_class_keeps_it(seed, c):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(40, c, generator=g) * 3
    y = torch.randint(0, c, (40,), generator=g)
    for name in registry.names(none=False):
        if not CALIBRATORS[name].changes_prediction:
            cal = registry.make(name).fit(z, y)
            assert torch.equal(cal(z).argmax(1), z.argmax(1)), name


def test_vector_scaling_can_change_the_class():
    # Weights (1, 4): a row with logits (1, 0.5) flips from class 0 to class 1 — so the trait is True.
    vs = VectorScaling().fit(torch.randn(30, 2, generator=torch.Generator().manual_seed(0)), torch.arange(30) % 2)
    vs.weight_, vs.bias_ = torch.tensor([1.0, 4.0], dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    vs.__dict__.pop("_cache", None)
    z = torch.tensor([[1.0, 0.5]])
    assert z.argmax(1).item() == 0 and vs(z).argmax(1).item() == 1


@pytest.fixture
def shrink():
    """A user's calibrator defined after ``import netuq`` (removed from the registry afterwards)."""

    class Shrink(Calibrator):
        """A user's calibrator defined after ``import netuq``: logits times a fitted factor in (0, 1]."""

        name = "shrink_test"
        label = "shrink (test)"
        changes_prediction = False
        _param_names = ()

        def _fitted_shapes(self, num_classes):
            return {"factor_": ()}

        def _fit(self, z, y, image, seed, owned):
            best = min((float(torch.nn.functional.cross_entropy(z * f, y)), f) for f in (0.25, 0.5, 1.0))
            self.factor_ = best[1]

        def _transform(self, z):
            return z * self.factor_

    yield Shrink
    registry.unregister("shrink_test")


def test_a_calibrator_defined_after_import_works_everywhere(tmp_path, shrink):
    from netuq.benchmark import load_config
    from netuq.cli import build_parser

    assert "shrink_test" in registry.names() and registry.label("shrink_test") == "shrink (test)"
    g = torch.Generator().manual_seed(0)
    z = torch.randn(50, 3, generator=g) * 4
    y = torch.randint(0, 3, (50,), generator=g)
    cal = shrink().fit(z, y)
    path = cal.save(tmp_path / "shrink.json")
    assert json.loads(path.read_text())["class"] == "Shrink"
    assert load(path).factor_ == cal.factor_
    # The benchmark's configuration and the CLI's choices read the registry when they are made.
    assert "shrink_test" in load_config(quick=False).calibrators
    assert "shrink_test" in netuq.benchmark.CALIBRATORS
    args = build_parser().parse_args(["calibrate", "--method", "shrink_test", "x.npz"])
    assert args.method == "shrink_test"
