"""netuq._outputs: the one rule that reads logits from a model's output, and its overrides."""

from __future__ import annotations

from collections import OrderedDict
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import netuq
from netuq._outputs import check_output_rule, logits_of, stacked_shape

Z = torch.arange(6.0).reshape(2, 3)


class HFLike(OrderedDict):
    """A mapping with attribute access, like transformers' ModelOutput."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


@pytest.mark.parametrize(
    "out",
    [Z, {"out": Z, "aux": Z + 1}, {"logits": Z}, HFLike(logits=Z, hidden_states=None), SimpleNamespace(logits=Z)],
)
def test_default_rule_finds_the_logits(out):
    assert logits_of(out) is Z


@pytest.mark.parametrize(
    ("out", "why"),
    [
        ({"logits": Z, "out": Z}, "both 'logits' and 'out' are present"),
        ({"aux": Z}, r"neither a 'logits' nor an 'out' entry"),
        ((Z, Z), r"got a tuple of 2 elements \(tensor \(2, 3\), tensor \(2, 3\)\)"),
        (SimpleNamespace(logits=[1, 2]), "not a tensor, a mapping"),
        ({"out": [1]}, "neither a 'logits' nor an 'out' entry holding a tensor"),
    ],
)
def test_ambiguous_or_missing_logits_are_refused_naming_what_was_found(out, why):
    with pytest.raises(TypeError, match=why + ".*pass output="):
        logits_of(out, name="model")


def test_overrides_key_attribute_index_callable():
    assert logits_of({"out": Z, "aux": Z + 1}, "aux")[0, 0] == 1
    assert logits_of(SimpleNamespace(scores=Z), "scores") is Z
    assert logits_of((Z + 2, Z), 0)[0, 0] == 2
    assert logits_of((Z, Z + 5), -1)[0, 0] == 5
    assert logits_of({"a": {"b": Z}}, lambda o: o["a"]["b"]) is Z
    with pytest.raises(TypeError, match=r"no key 'x' \(output='x'\)"):
        logits_of({"out": Z}, "x")
    with pytest.raises(TypeError, match=r"no element 2 \(output=2\)"):
        logits_of((Z, Z), 2)
    with pytest.raises(TypeError, match=r"chosen by output='n' must be a tensor, got a int"):
        logits_of({"n": 3}, "n")


def test_check_output_rule():
    for ok in (None, "out", 0, len):
        assert check_output_rule(ok) is ok
    for bad in (True, 1.5, ["out"]):
        with pytest.raises(TypeError, match="`output` must be None, a key or attribute name"):
            check_output_rule(bad)


def test_stacked_shape_quotes_the_users_batch():
    msg = stacked_shape(torch.zeros(12, 3), n=4, k=3)
    assert "N = 4 inputs" in msg and "(4, 3) per copy" in msg and "3 samples stacked as 12 rows" in msg
    assert stacked_shape(torch.zeros(5, 3), n=4, k=3) == "for the batch of N = 4 inputs, got shape (5, 3)"


class DictNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.drop = nn.Dropout(0.3)

    def forward(self, x):
        z = self.fc(self.drop(x))
        return {"out": z, "aux": -z}


def test_every_entry_point_reads_the_same_logits():
    """predict, MCDropout, TTA, Ensemble and fit all read a dict output the same way."""
    torch.manual_seed(0)
    net = DictNet().eval()
    x = torch.randn(5, 4)
    with torch.no_grad():
        ref = net(x)["out"].softmax(1)
    p, _ = netuq.predict(net, [x])
    torch.testing.assert_close(p.probs, ref)
    torch.testing.assert_close(netuq.Ensemble([net]).__call__(x).probs, ref)
    assert netuq.MCDropout(net, samples=3, seed=0)(x).probs.shape == (5, 3)
    img = DictConv().eval()
    xi = torch.randn(2, 1, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(netuq.TTA(img, netuq.tta.flips(), task="segmentation")(xi).probs,
                                   img(xi)["out"].softmax(1), atol=1e-6, rtol=0)  # fmt: skip
    aux, _ = netuq.predict(net, [x], output="aux")
    torch.testing.assert_close(aux.probs, (-net(x)["out"]).softmax(1).detach())
    h = netuq.training.fit(DictNet(), (x, torch.tensor([0, 1, 2, 0, 1])), epochs=1)
    assert h.epochs_run == 1


class DictConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 1)

    def forward(self, x):
        return {"out": self.conv(x)}


def test_compare_reads_plain_modules_by_output_and_ensemble_members_by_the_ensembles_rule():
    """compare(output=...) for plain modules; an Ensemble's members, scored alone, by Ensemble(output=...)."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    a, b = DictNet().eval(), DictNet().eval()
    x, y = torch.randn(8, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    res = netuq.compare({"plain": a, "ens": netuq.Ensemble([a, b], output="aux")}, [(x, y)], calibrators=("none",),
                        repeats=1, output="aux")  # fmt: skip
    with torch.no_grad():
        aux = [a(x)["aux"].double(), b(x)["aux"].double()]
    assert res["methods"]["plain"]["metrics"]["nll"] == pytest.approx(float(F.cross_entropy(aux[0], y)), rel=1e-5)
    members = res["methods"]["ens"]["members"]
    for m, z in zip(members, aux):
        assert m["nll"] == pytest.approx(float(F.cross_entropy(z, y)), rel=1e-5)
    mix = torch.stack([z.softmax(1) for z in aux]).mean(0)
    want = float(-mix[torch.arange(8), y].log().mean())
    assert res["methods"]["ens"]["metrics"]["nll"] == pytest.approx(want, rel=1e-5)
