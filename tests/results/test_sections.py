"""Result sections (netuq.results.sections): a new family joins compare, validation, aggregation and the report."""

import pytest
import torch

import netuq
from netuq.report import aggregate_seeds, validate_results
from netuq.report.build import build_report
from netuq.report.model import Paragraph
from netuq.results import sections
from netuq.results.sections import Section


class _Coverage:
    """Top-k set coverage: the fraction of rows whose label is among the k most probable classes."""

    def __init__(self, k):
        self.k, self.hit, self.n = k, 0, 0

    def update(self, batch, pred, scores):
        top = pred.probs.topk(self.k, dim=1).indices
        self.hit += int((top == batch.y.unsqueeze(1)).any(1).sum())
        self.n += len(batch.y)

    def finish(self, part):
        return {"k": self.k, "coverage": self.hit / self.n, "accuracy_seen": part["metrics"]["accuracy"]}


def _validate(value, path):
    if not isinstance(value, dict) or not 0 <= value.get("coverage", -1) <= 1:
        raise ValueError(f"`{path}` must hold a coverage in [0, 1], got {value!r}")


@pytest.fixture
def topk():
    sec = sections.register(Section(
        "topk_sets", "Top-k sets", start=lambda ctx: _Coverage(ctx.options.get("k", 2)), validate=_validate,
        aggregate=lambda values: {"k": values[0]["k"], "coverage": sum(v["coverage"] for v in values) / len(values),
                                  "accuracy_seen": values[0]["accuracy_seen"]},
        render=lambda results: [Paragraph(f"{n}: top-{m['topk_sets']['k']} coverage {m['topk_sets']['coverage']:.3f}")
                                for n, m in results["methods"].items() if "topk_sets" in m]))
    yield sec
    sections.unregister("topk_sets")


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(48, 5, generator=g)
    y = (x[:, :4] + 0.7 * torch.randn(48, 4, generator=g)).argmax(1)
    return [(x[i:i + 12], y[i:i + 12]) for i in range(0, 48, 12)]


def test_a_registered_section_is_computed_validated_aggregated_and_rendered(topk):
    torch.manual_seed(0)
    net = torch.nn.Linear(5, 4)
    with torch.no_grad():
        net.weight[:, :4] += 2 * torch.eye(4)  # informative logits: calibration fits stay inside their bounds
    test = _data()
    res = netuq.compare({"net": net}, test, repeats=1)
    x = torch.cat([b[0] for b in test])
    y = torch.cat([b[1] for b in test])
    with torch.no_grad():
        ref = (net(x).topk(2, 1).indices == y[:, None]).any(1).double().mean().item()
    got = res["methods"]["net"]["topk_sets"]
    assert got["coverage"] == pytest.approx(ref, abs=1e-12)
    assert got["accuracy_seen"] == res["methods"]["net"]["metrics"]["accuracy"]
    # Options per section; the list form picks sections.
    assert netuq.compare({"net": net}, test, repeats=1, sections={"topk_sets": {"k": 4}})["methods"]["net"][
        "topk_sets"]["coverage"] == 1.0
    assert "topk_sets" not in netuq.compare({"net": net}, test, repeats=1, sections=[])["methods"]["net"]
    # Validation is the section's own.
    bad = {**res, "methods": {"net": {**res["methods"]["net"], "topk_sets": {"coverage": 2.0}}}}
    with pytest.raises(ValueError, match=r"`results\['methods'\]\['net'\]\['topk_sets'\]` must hold a coverage"):
        validate_results(bad)
    # Aggregation over seeds uses the section's rule.
    second = netuq.compare({"net": net}, _data(1), repeats=1, seed=1)
    res["config"]["seed"], second["config"]["seed"] = 0, 1
    agg = aggregate_seeds([res, second])
    want = (res["methods"]["net"]["topk_sets"]["coverage"] + second["methods"]["net"]["topk_sets"]["coverage"]) / 2
    assert agg["methods"]["net"]["topk_sets"]["coverage"] == pytest.approx(want)
    # The report shows it under its title.
    report = build_report(res)
    sec = next(s for s in report.sections if s.id == "topk_sets")
    assert sec.title == "Top-k sets" and "top-2 coverage" in sec.blocks[0].parts[0]


def test_section_declarations_are_checked(topk):
    with pytest.raises(ValueError, match="`key` 'ood' is a built-in MethodResults key"):
        Section("ood", "x")
    with pytest.raises(ValueError, match="`key` must be an identifier"):
        Section("a-b", "x")
    with pytest.raises(TypeError, match="`start` must be callable"):
        Section("a", "x", start=3)
    with pytest.raises(ValueError, match="section 'topk_sets' is already registered"):
        sections.register(Section("topk_sets", "again"))
    with pytest.raises(ValueError, match=r"`sections` must name registered sections.*got 'nope'"):
        netuq.compare({"net": torch.nn.Linear(5, 4)}, _data(), sections=["nope"])
    with pytest.raises(TypeError, match="`sections` must be a list of section keys"):
        sections.selected("topk_sets")
