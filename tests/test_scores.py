"""The score vocabulary (netuq.scores): one registry read at call time by Prediction, compare and the report."""

import pytest
import torch

import netuq
from netuq import Prediction, measures
from netuq import scores as vocabulary
from netuq.scores import SCORES, Score, available, offered, register, unregister


@pytest.fixture
def temporary():
    added = []

    def add(score, **kw):
        added.append(score.name)
        return register(score, **kw)

    yield add
    for name in added:
        SCORES.pop(name, None)


def _pred(seed=0, s=4, n=6, c=3, **kw):
    g = torch.Generator().manual_seed(seed)
    return Prediction.from_samples(torch.randn(s, n, c, generator=g), logits=True, **kw)


def test_builtin_scores_are_the_predictions_measures():
    # Each built-in score against the independent measure it names (netuq.measures on the samples).
    g = torch.Generator().manual_seed(1)
    z = torch.randn(5, 7, 4, generator=g)
    pred = Prediction.from_samples(z, logits=True, scores={"sigma": torch.rand(7, generator=g),
                                                           "confidence": torch.rand(7, generator=g)})
    p = z.softmax(2)
    ref = {
        "max_prob": 1 - p.mean(0).amax(1),
        "entropy": measures.entropy(p.mean(0)),
        "mutual_information": measures.mutual_information(p),
        "sigma": pred.scores["sigma"],
        "confidence": 1 - pred.scores["confidence"],
        "aleatoric": measures.expected_entropy(p),
        "variation_ratio": measures.variation_ratio(p),
    }
    for name, want in ref.items():
        torch.testing.assert_close(SCORES[name](pred), want, atol=1e-5, rtol=0, msg=name)
        torch.testing.assert_close(pred.uncertainty(name), want, atol=1e-5, rtol=0, msg=name)


def test_display_order_and_labels():
    assert list(SCORES)[:5] == ["max_prob", "entropy", "mutual_information", "sigma", "confidence"]
    assert vocabulary.score_label("sigma") == "heteroscedastic σ"
    assert vocabulary.score_label("not_a_score") == "not a score"
    assert [s.name for s in SCORES.values() if s.kind == "aleatoric"] == ["sigma", "aleatoric", "view_aleatoric"]


def test_a_score_registered_later_is_accepted_by_prediction(temporary):
    pred = _pred()
    with pytest.raises(ValueError, match="got 'gini'"):
        pred.uncertainty("gini")
    temporary(Score("gini", "Gini impurity", lambda p: 1 - (p.probs ** 2).sum(1)))
    torch.testing.assert_close(pred.uncertainty("gini"), 1 - (pred.probs ** 2).sum(1))


def test_direction_is_applied_once(temporary):
    # A score growing with confidence is declared so and reported negated (higher = less sure).
    temporary(Score("top_logp", "max log-probability", lambda p: p.log_probs.amax(1), higher_is_uncertain=False))
    pred = _pred(2)
    torch.testing.assert_close(pred.uncertainty("top_logp"), -pred.log_probs.amax(1))
    # Same ranking as max_prob: monotone in the top probability.
    u, v = pred.uncertainty("top_logp"), pred.uncertainty("max_prob")
    assert torch.equal(u.argsort(), v.argsort())


def test_needs():
    one, many = _pred(s=1), _pred(s=3)
    mi = SCORES["mutual_information"]
    assert not available(mi, one, epistemic=True) and available(mi, many, epistemic=True)
    assert not available(mi, many, epistemic=False)
    assert available(mi, one, meaning=False)  # computable, only not meaningful
    sigma = SCORES["sigma"]
    assert not available(sigma, many) and available(sigma, _pred(scores={"sigma": torch.ones(6)}))
    assert offered(samples=False, epistemic=True) == ("max_prob", "entropy")
    assert offered(samples=True, epistemic=False, provides=("score:sigma",)) == ("max_prob", "entropy", "sigma")
    assert offered(samples=True, epistemic=True) == ("max_prob", "entropy", "mutual_information")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"name": "a b", "label": "x", "compute": abs}, ValueError, "`name` must be an identifier-like string"),
        ({"name": "a", "label": "", "compute": abs}, ValueError, "`label` must be a non-empty string"),
        ({"name": "a", "label": "x"}, ValueError, "give exactly one of `compute`"),
        ({"name": "a", "label": "x", "compute": abs, "needs": ("wings",)}, ValueError, "unknown need 'wings'"),
        ({"name": "a", "label": "x", "compute": abs, "needs": "samples"}, TypeError, "`needs` must be a tuple"),
        ({"name": "a", "label": "x", "compute": abs, "kind": "odd"}, ValueError, "`kind` must be one of"),
        ({"name": "a", "label": "x", "compute": 3}, TypeError, "`compute` must be callable"),
    ],
)
def test_bad_scores(kwargs, error, match):
    with pytest.raises(error, match=match):
        Score(**kwargs)


def test_register_refuses_taken_and_renamed_names(temporary):
    with pytest.raises(ValueError, match="score name 'entropy' is taken"):
        register(Score("entropy", "x", abs))
    with pytest.raises(ValueError, match="old name of 'mutual_information'"):
        register(Score("epistemic", "x", abs))
    with pytest.raises(TypeError, match="must be a netuq.scores.Score"):
        register("entropy")
    with pytest.raises(ValueError, match="must be a registered score"):
        unregister("nope")


def test_fitted_score_needs_its_fit():
    fitted = Score("dist", "distance", fit=lambda: None)
    with pytest.raises(ValueError, match="must be fitted first"):
        fitted(_pred())
    assert fitted.fitted and not SCORES["entropy"].fitted


def test_compare_reports_a_registered_score_and_warns_about_unregistered_keys(temporary):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, generator=g)
    y = (x[:, 0] > 0).long()
    net = torch.nn.Linear(3, 2)

    def method(xb):
        pred = Prediction.from_logits(net(xb))
        pred.scores["margin_raw"] = (pred.probs[:, 0] - pred.probs[:, 1]).abs()
        return pred

    test = [(x[i:i + 10], y[i:i + 10]) for i in range(0, 40, 10)]
    with pytest.warns(RuntimeWarning, match=r"pred.scores \['margin_raw'\] are not registered scores"):
        res = netuq.compare({"m": method}, test, repeats=1)
    assert list(res["methods"]["m"]["misclassification"]) == ["max_prob", "entropy", "energy", "max_logit"]
    temporary(Score("margin", "1 − margin", lambda p: 1 - p.scores["margin_raw"], needs=("score:margin_raw",)))
    res = netuq.compare({"m": method}, test, repeats=1)
    assert list(res["methods"]["m"]["misclassification"]) == ["max_prob", "entropy", "energy", "max_logit", "margin"]
    assert res["vocabulary"]["scores"]["margin"] == {"label": "1 − margin", "kind": "total"}
    # scores= picks (also a score not compared by default) and checks the names.
    res = netuq.compare({"m": method}, test, repeats=1, scores=["variation_ratio", "margin"])
    assert list(res["methods"]["m"]["misclassification"]) == ["margin"]  # variation ratio needs S > 1
    with pytest.raises(ValueError, match=r"`scores` must name registered scores.*got \['bogus'\]"):
        netuq.compare({"m": method}, test, scores=["bogus"])
