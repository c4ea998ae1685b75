"""Method traits (netuq.traits): the protocol the methods implement, read by the engine and the report."""

import pytest
import torch
from torch import nn

import netuq
from netuq.traits import FAMILIES, Method, Traits, family_label, register_family, traits_of, with_traits


def _cnn():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Dropout(0.5), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3))


def test_every_method_class_declares_its_traits():
    from netuq.methods.confidence import ConfidenceHead
    from netuq.methods.heteroscedastic import HeteroscedasticHead

    got = {
        "mc": traits_of(netuq.MCDropout(_cnn(), samples=3, seed=1)),
        "mc_unseeded": traits_of(netuq.MCDropout(_cnn(), samples=3)),
        "ens": traits_of(netuq.Ensemble([_cnn(), _cnn(), _cnn()])),
        "tta": traits_of(netuq.TTA(_cnn(), netuq.tta.flips())),
        "het": traits_of(netuq.HeteroscedasticClassifier(nn.Linear(2, 4), HeteroscedasticHead(4, 3))),
        "conf": traits_of(netuq.ConfidenceClassifier(nn.Linear(2, 4), nn.Linear(4, 3), ConfidenceHead(4))),
        "plain": traits_of(nn.Linear(2, 3)),
        "callable": traits_of(lambda x: netuq.Prediction.from_logits(x)),
    }
    assert got["mc"] == Traits("mc_dropout", epistemic=True, seeded=True)
    assert got["mc_unseeded"].seeded is False
    assert got["ens"] == Traits("ensemble", epistemic=True, members=3)
    assert got["tta"].family == "tta" and got["tta"].epistemic
    assert got["het"] == Traits("heteroscedastic", epistemic=False, seeded=True)
    assert got["conf"] == Traits("confidence", epistemic=False)
    assert got["plain"] == Traits("deterministic", epistemic=False)
    assert got["callable"] == Traits("custom", epistemic=True)
    for obj in (netuq.MCDropout(_cnn(), samples=2), netuq.Ensemble([_cnn(), _cnn()])):
        assert isinstance(obj, Method)


def test_legacy_epistemic_attribute_and_with_traits():
    def fn(x):
        return netuq.Prediction.from_logits(x)

    fn.epistemic = False
    assert traits_of(fn).epistemic is False
    t = Traits("ensemble", members=2)
    assert traits_of(with_traits(lambda x: x, t)) is t
    with pytest.raises(TypeError, match="`traits` must be a netuq.traits.Traits"):
        with_traits(fn, {"family": "x"})

    class Bad:
        def netuq_traits(self):
            return "ensemble"

    with pytest.raises(TypeError, match=r"`netuq_traits\(\)` of Bad must return netuq.traits.Traits, got str"):
        traits_of(Bad())


@pytest.mark.parametrize("kwargs, match", [
    ({"family": ""}, "`family` must be a non-empty string"),
    ({"members": 0}, "`members` must be a positive int or None"),
    ({"members": True}, "`members` must be a positive int or None"),
    ({"epistemic": 1}, "must be bools"),
])
def test_bad_traits(kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        Traits(**kwargs)


def test_family_labels():
    assert family_label("ensemble") == "deep ensemble" and family_label("my_thing") == "my thing"
    register_family("bnn_vi", "variational BNN")
    try:
        assert Traits("bnn_vi").label == "variational BNN"
    finally:
        FAMILIES.pop("bnn_vi")


def test_compare_records_traits_and_the_report_recognises_an_ensemble_by_them():
    from netuq.report.findings import ensemble_best_nll

    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 4, generator=g)
    y = (x[:, 0] + 0.3 * x[:, 1] > 0).long()
    torch.manual_seed(0)
    members = [nn.Linear(4, 2) for _ in range(3)]
    for k, m in enumerate(members):
        with torch.no_grad():
            m.weight.copy_(torch.tensor([[-2.0, -0.5, 0, 0], [2.0, 0.5, 0, 0]]) * (1 + 0.2 * k))
    single = nn.Linear(4, 2)
    with torch.no_grad():
        single.weight.copy_(torch.tensor([[-9.0, 0, 0, 0], [9.0, 0, 0, 0]]))
    test = [(x[i:i + 20], y[i:i + 20]) for i in range(0, 60, 20)]
    res = netuq.compare({"deep ensemble": netuq.Ensemble(members), "single": single}, test, repeats=1)
    methods = res["methods"]
    assert methods["deep ensemble"]["traits"] == {"family": "ensemble", "epistemic": True, "members": 3,
                                                  "seeded": False}
    assert methods["single"]["traits"]["family"] == "deterministic"
    assert len(methods["deep ensemble"]["members"]) == 3  # members scored alone, through netuq_members()
    # The claim is measured (True or False, never "not measured") although no key starts with "ensemble".
    assert ensemble_best_nll(methods) is not None
    assert ensemble_best_nll({"x": methods["single"]}) is None
