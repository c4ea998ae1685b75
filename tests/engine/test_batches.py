"""What the engine reads of a batch, and of a method (netuq.engine._batches), through predict and compare.

A tuple's third element is an anomaly mask only when it is a bool tensor (or a mapping's named
anomaly key); anything else is ignored, so results do not change with extra batch elements.
Results do not change with the batch size either. A module whose forward returns a Prediction is
a method; a model on the meta device and a one-shot iterator that would be read twice are refused
before any work, with the fix in the message.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import netuq
from netuq import Prediction

C = 4


def _logits_model(x: torch.Tensor) -> Prediction:
    """The input is the logits: the engine's pipeline alone, with no model arithmetic that could depend on batching."""
    return Prediction.from_logits(x)


def _cls_data(n: int = 48, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (n,), generator=g)
    z = 2.0 * torch.randn(n, C, generator=g) + 2.0 * nn.functional.one_hot(y, C)
    return z, y


def _split(n: int, size: int) -> list[slice]:
    return [slice(i, i + size) for i in range(0, n, size)]


def _plain(obj):
    """Results without run times, for equality."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items() if k not in ("runtime_s",)}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _assert_close(a, b, path=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_close(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b)):
            _assert_close(u, v, f"{path}[{i}]")
    elif isinstance(a, float) and not math.isnan(a):
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), (path, a, b)
    else:
        assert a == b or (a != a and b != b), path


def _compare(test, **kw):
    kw.setdefault("repeats", 1)
    kw.setdefault("calibrators", ("none", "temperature"))
    return _plain(netuq.compare({"logits": _logits_model}, test, **kw))


# ------------------------------------------------------------------------------- extra elements
def test_an_index_as_third_element_is_not_an_anomaly_mask():
    """Issue 22.1: (x, y, index) batches made compare declare almost every example OOD."""
    z, y = _cls_data()
    idx = torch.arange(len(y))
    plain = _compare([(z[s], y[s]) for s in _split(len(y), 16)])
    indexed = _compare([(z[s], y[s], idx[s]) for s in _split(len(y), 16)])
    assert "ood" not in indexed["methods"]["logits"] and not indexed["data"]["ood"]
    assert indexed == plain


def test_a_bool_third_element_is_the_anomaly_mask():
    z, y = _cls_data()
    flag = torch.arange(len(y)) % 5 == 0
    res = _compare([(z[s], y[s], flag[s]) for s in _split(len(y), 16)])
    assert res["data"]["ood"]["anomaly"] == int(flag.sum())
    assert "anomaly" in res["methods"]["logits"]["ood_kinds"]


def test_a_mapping_names_its_anomaly_mask_and_it_must_be_one():
    z, y = _cls_data()
    flag = (torch.arange(len(y)) % 5 == 0).to(torch.uint8)  # named explicitly: 0/1 integers are a mask
    keys = ("x", "y", "odd")
    res = _compare([{"x": z[s], "y": y[s], "odd": flag[s]} for s in _split(len(y), 16)], keys=keys)
    assert res["data"]["ood"]["anomaly"] == int(flag.sum())
    bad = [{"x": z[s], "y": y[s], "odd": torch.arange(len(y))[s]} for s in _split(len(y), 16)]
    with pytest.raises(ValueError, match=r"`test_loader` batch 0: the value of 'odd' must be an anomaly mask: a bool "
                                         r"tensor \(or integers 0/1\), got values in \[0, 15\]"):
        _compare(bad, keys=keys)


def test_predict_reads_no_anomaly_mask():
    """(img, mask, idx): predict complained about an "anomaly mask" it never uses."""
    g = torch.Generator().manual_seed(0)
    img, mask = torch.randn(3, 2, 5, 5, generator=g), torch.randint(0, 3, (3, 5, 5), generator=g)
    net = nn.Conv2d(2, 3, 1)
    pred, labels = netuq.predict(net, [(img, mask, torch.arange(3))])
    assert torch.equal(labels, mask) and pred.probs.shape == (3, 3, 5, 5)
    # the same with a bool third element of another shape: predict does not read it either
    pred2, _ = netuq.predict(net, [(img, mask, torch.ones(3, dtype=torch.bool))])
    assert torch.equal(pred.probs, pred2.probs)


def test_ood_loaders_read_no_labels():
    z, y = _cls_data()
    ood = [(torch.zeros(6, C), torch.full((6,), 999), torch.arange(6))]  # labels of another label set: unused
    res = _compare([(z, y)], ood=ood)
    assert res["data"]["ood"]["ood"] == 6


extras = st.lists(
    st.sampled_from(["index", "float", "paths", "none", "int-map"]), min_size=0, max_size=3)


def _extra(kind: str, rows: slice, n: int):
    idx = torch.arange(n)[rows]
    return {"index": idx, "float": idx.float() / 7, "paths": [f"img{i}.png" for i in idx.tolist()], "none": None,
            "int-map": torch.ones(len(idx), 3, dtype=torch.int64)}[kind]


@settings(max_examples=12)
@given(extra=extras, size=st.sampled_from([1, 5, 16, 48]), dtype=st.sampled_from(
    [torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8]))
def test_compare_is_unchanged_by_extra_elements_batch_size_and_label_dtype(extra, size, dtype):
    z, y = _cls_data()
    zc, yc = _cls_data(30, seed=1)
    ref_test = [(z[s], y[s]) for s in _split(len(y), 48)]
    ref_cal = [(zc, yc)]
    test = [(z[s], y[s].to(dtype), *(_extra(k, s, len(y)) for k in extra)) for s in _split(len(y), size)]
    cal = [(zc[s], yc[s].to(dtype), *(_extra(k, s, 30) for k in extra)) for s in _split(30, size)]
    for calibration in (None, (ref_cal, cal)):
        want = _compare(ref_test, calibration=None if calibration is None else calibration[0])
        got = _compare(test, calibration=None if calibration is None else calibration[1])
        _assert_close(want, got)


@settings(max_examples=8)
@given(size=st.sampled_from([1, 2, 3, 6]), dtype=st.sampled_from([torch.int64, torch.int16, torch.uint8]))
def test_segmentation_compare_is_unchanged_by_batch_size_extras_and_label_dtype(size, dtype):
    g = torch.Generator().manual_seed(3)
    z = 2.0 * torch.randn(6, 3, 4, 4, generator=g)
    y = torch.randint(0, 3, (6, 4, 4), generator=g)
    y[:, 0, :2] = 100  # ignored pixels (100 fits every dtype drawn)
    anomaly = torch.zeros(6, 4, 4, dtype=torch.bool)
    anomaly[::2, 2:, 2:] = True
    want = _compare([(z, y, anomaly)], ignore_index=100, examples=0)
    got = _compare([(z[s], y[s].to(dtype), anomaly[s], torch.arange(6)[s]) for s in _split(6, size)],
                   ignore_index=100, examples=0)
    _assert_close(want, got)


# ------------------------------------------------------------------------------- methods
class _ReturnsPrediction(nn.Module):
    """An MC-dropout-like method written as a module: its forward returns a Prediction."""

    def __init__(self):
        super().__init__()
        self.lin, self.drop = nn.Linear(4, 3), nn.Dropout(0.5)

    def forward(self, x):
        return Prediction.from_samples(torch.stack([self.lin(self.drop(x)) for _ in range(3)]), logits=True)


def test_a_module_returning_a_prediction_is_a_method():
    """It was refused with advice to wrap it in a callable returning a Prediction, which it is."""
    torch.manual_seed(0)
    method = _ReturnsPrediction()  # train mode: its dropout is on, as its author meant
    x = torch.randn(5, 4)
    torch.manual_seed(1)
    direct = [method(x[:3]), method(x[3:])]
    torch.manual_seed(1)
    pred, _ = netuq.predict(method, [x[:3], x[3:]])
    assert torch.equal(pred.probs, Prediction.cat(direct).probs)  # called as given, same random stream
    assert method.training and method.drop.training
    method.eval()
    pred, _ = netuq.predict(method, [x])
    assert torch.equal(pred.probs, method(x).probs)
    res = netuq.compare({"module": method}, [(x, torch.tensor([0, 1, 2, 0, 1]))], repeats=1)
    assert res["methods"]["module"]["counts"]["test"] == 5


def test_a_module_must_keep_to_one_kind_of_output():
    class Flips(nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            return Prediction.from_logits(x) if self.calls == 1 else x

    with pytest.raises(TypeError, match=r"returned a netuq.Prediction on its first batch, then Tensor"):
        netuq.predict(Flips(), [torch.randn(2, 3), torch.randn(2, 3)])

    class Strings(nn.Module):
        def forward(self, x):
            return "logits"

    with pytest.raises(TypeError, match=r"output must be a logits tensor \(N, C, ...\) or a netuq.Prediction"):
        netuq.predict(Strings(), [torch.randn(2, 3)])


def test_a_model_on_the_meta_device_is_refused_before_any_work():
    net = nn.Linear(4, 3, device="meta")
    read = []

    def loader():
        read.append(1)
        yield torch.randn(2, 4)

    with pytest.raises(ValueError, match=r"`method` has parameters on the meta device \(weight\).*to_empty"):
        netuq.predict(net, loader())
    with pytest.raises(ValueError, match=r"`methods\['m'\]` has parameters on the meta device"):
        netuq.compare({"m": netuq.MCDropout(nn.Sequential(nn.Dropout(0.1), net))}, [(torch.randn(2, 4),
                                                                                     torch.tensor([0, 1]))])
    assert not read


def test_a_one_shot_iterator_read_by_several_methods_is_refused_before_any_work():
    z, y = _cls_data()
    read = []

    def batches():
        read.append(1)
        yield z, y

    with pytest.raises(TypeError, match=r"`test_loader` is a one-shot iterator \(generator\) but is iterated 2 times "
                                        r"\(once per method: 2 methods\).*pass a DataLoader or a list of batches"):
        netuq.compare({"a": _logits_model, "b": _logits_model}, batches())
    with pytest.raises(TypeError, match=r"`ood\['far'\]` is a one-shot iterator"):
        netuq.compare({"a": _logits_model, "b": _logits_model}, [(z, y)], ood={"far": iter([z])})
    assert not read
    res = netuq.compare({"a": _logits_model}, batches(), repeats=1)  # one method: one pass, fine
    assert res["methods"]["a"]["counts"]["test"] == len(y)


def test_an_exhausted_iterator_says_it_was_consumed():
    it = iter([torch.randn(2, 3)])
    netuq.predict(_logits_model, it)
    with pytest.raises(ValueError, match=r"yielded no batches.*list_iterator is a one-shot iterator: was it consumed"):
        netuq.predict(_logits_model, it)
