"""A calibrator and a score defined in the user's own script (here), not in netuq, reach compare's
results and the rendered report — with their labels and traits — and leave the registries as found."""

import pytest
import torch

import netuq
from netuq.calibration import Calibrator, registry
from netuq.report import render_report, to_markdown
from netuq.scores import SCORES, Score, register, unregister


@pytest.fixture
def user_vocabulary():
    class HalfScaling(Calibrator):
        """Logits times a fitted factor chosen from a small grid (keeps the predicted class)."""

        name = "half_user"
        label = "user half scaling"
        changes_prediction = False
        _param_names = ()

        def _fitted_shapes(self, num_classes):
            return {"factor_": ()}

        def _fit(self, z, y, image, seed, owned):
            self.factor_ = min((0.25, 0.5, 1.0, 2.0),
                               key=lambda f: float(torch.nn.functional.cross_entropy(z * f, y)))

        def _transform(self, z):
            return z * self.factor_

    score = register(Score("user_margin", "user: 1 − top-2 margin",
                           lambda p: 1 - (p.probs.topk(2, 1).values[:, 0] - p.probs.topk(2, 1).values[:, 1])))
    yield HalfScaling, score
    registry.unregister("half_user")
    unregister("user_margin")


def _loaders():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(80, 6, generator=g)
    y = (x[:, :3] * 2 + torch.randn(80, 3, generator=g)).argmax(1)
    ood = torch.randn(30, 6, generator=g) * 4
    return [(x[i:i + 20], y[i:i + 20]) for i in range(0, 80, 20)], [ood[:15], ood[15:]]


def test_user_calibrator_and_score_reach_results_and_report(user_vocabulary, tmp_path):
    half, _ = user_vocabulary
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    test, ood = _loaders()
    res = netuq.compare({"net": net}, test, ood=ood, calibrators=("none", "temperature", "half_user"), repeats=2)
    m = res["methods"]["net"]
    # The calibrator: in the 2-fold protocol, at its place in the display order, against a direct computation.
    assert list(m["in_distribution"]) == ["none", "temperature", "half_user"]
    assert res["vocabulary"]["calibrators"]["half_user"] == {"label": "user half scaling", "changes_prediction": False}
    x = torch.cat([b[0] for b in test])
    y = torch.cat([b[1] for b in test])
    with torch.no_grad():
        z = net(x)
    ref = netuq.calibration.cross_validate(half, z, y, repeats=2, seed=0)
    assert m["in_distribution"]["half_user"]["nll"]["mean"] == pytest.approx(ref["nll"]["mean"], rel=1e-6)
    # The score: misclassification and OOD detection, against sklearn-free closed forms of the same ranking.
    assert "user_margin" in m["misclassification"] and "user_margin" in m["ood"]
    top2 = z.softmax(1).topk(2, 1).values
    u_in = 1 - (top2[:, 0] - top2[:, 1])
    with torch.no_grad():
        zo = net(torch.cat(ood))
    t2 = zo.softmax(1).topk(2, 1).values
    u_out = 1 - (t2[:, 0] - t2[:, 1])
    pairs = (u_out[:, None] > u_in[None, :]).double() + 0.5 * (u_out[:, None] == u_in[None, :]).double()
    assert m["ood"]["user_margin"]["auroc"] == pytest.approx(float(pairs.mean()), abs=1e-9)
    # The report: labels from the results (rendered, HTML and Markdown), and the class-change trait.
    html = render_report(res, tmp_path, dpi=20).read_text()
    md = to_markdown(res)
    for text in (html, md):
        assert "user half scaling" in text and "user: 1 − top-2 margin" in text
    assert "keep every predicted class" in md
    # Rendering later, without the user's classes, still shows their labels (the results carry them).
    registry.unregister("half_user")
    unregister("user_margin")
    try:
        assert "user half scaling" in to_markdown(res) and "user: 1 − top-2 margin" in to_markdown(res)
    finally:
        registry.CALIBRATORS["half_user"] = half
        SCORES["user_margin"] = user_vocabulary[1]
