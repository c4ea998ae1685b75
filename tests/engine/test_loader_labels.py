"""One label check for every loader that compare scores: test, calibration and shifts (OOD loaders' labels unused).

``labels != ignore_index`` runs in the labels' dtype: -100 is 156 in uint8, so a calibration
loader of uint8 labels with ``ignore_index=-100`` silently dropped class 156 from the fit while
the same labels were refused as a test loader (issue 22.3). Every scored loader now passes the
same check, naming the loader and the batch.
"""

from __future__ import annotations

import pytest
import torch

import netuq
from netuq import Prediction

C = 200  # more than 156 classes: uint8 label 156 is a real class


def _identity(x: torch.Tensor) -> Prediction:
    return Prediction.from_logits(x)


def _data(n: int, seed: int, dtype=torch.int64):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(150, 160, (n,), generator=g)
    z = torch.randn(n, C, generator=g) + 4.0 * torch.nn.functional.one_hot(y, C)
    return z, y.to(dtype)


@pytest.mark.parametrize("where", ["test", "calibration", "shift"])
def test_a_label_dtype_that_cannot_hold_ignore_index_is_refused_in_every_loader(where):
    z, y = _data(40, 0)
    z8, y8 = _data(40, 1, torch.uint8)
    loaders = {"test": [(z, y)], "calibration": None, "shift": None}
    if where == "test":
        loaders["test"] = [(z8, y8)]
    elif where == "calibration":
        loaders["calibration"] = [(z8, y8)]
    else:
        loaders["shift"] = {"noise": {1: [(z8, y8)]}}
    name = {"test": "test_loader", "calibration": "calibration", "shift": r"shifts\['noise'\]\[1\]"}[where]
    with pytest.raises(ValueError, match=rf"`{name}` batch 0: `ignore_index` must be representable in the dtype of "
                                         r"`labels` \(torch.uint8, values in \[0, 255\]\), got -100"):
        netuq.compare({"m": _identity}, loaders["test"], calibration=loaders["calibration"],
                      shifts=loaders["shift"], ignore_index=-100, repeats=1)


def test_calibration_labels_out_of_range_name_the_loader():
    z, y = _data(40, 0)
    zc, yc = _data(20, 1)
    yc[3] = C + 5
    with pytest.raises(ValueError, match=rf"`calibration` batch 0: the labels must be integers in \[0, {C}\) "
                                         rf"\(or ignore_index=-1\) for the prediction's {C} classes, got values in "):
        netuq.compare({"m": _identity}, [(z, y)], calibration=[(zc, yc)], ignore_index=-1)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16, torch.uint8])
def test_every_label_dtype_that_holds_ignore_index_gives_the_same_results(dtype):
    z, y = _data(40, 0)
    zc, yc = _data(30, 1)
    yc[::4] = 255  # ignored in the calibration fit
    y[::5] = 255
    want = netuq.compare({"m": _identity}, [(z, y)], calibration=[(zc, yc)], ignore_index=255)
    got = netuq.compare({"m": _identity}, [(z, y.to(dtype))], calibration=[(zc, yc.to(dtype))], ignore_index=255)
    for res in (want, got):
        res.pop("runtime_s")
        for part in res["methods"].values():
            part.pop("runtime_s")
    assert got == want
    assert want["data"]["calibration"] == 30 and want["methods"]["m"]["counts"]["test"] == 32
