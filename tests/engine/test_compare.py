"""netuq.compare against in-memory references (netuq.predict + functional metrics, cross_validate,
scikit-learn), for classification and streamed segmentation; bounded memory; bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

import netuq
from netuq import metrics as M
from netuq.calibration import TemperatureScaling, VectorScaling, cross_validate
from netuq.engine._sample import Reservoir

SRC = Path(__file__).resolve().parents[2] / "src"
EXACT = ("accuracy", "nll", "brier", "ece", "mce", "classwise_ece")


def _classifier(c: int = 4) -> nn.Module:
    net = nn.Sequential(nn.Dropout(0.2), nn.Linear(c, c))
    with torch.no_grad():
        net[1].weight.copy_(2.0 * torch.eye(c))
        net[1].bias.zero_()
    return net


def _cls_data(n: int, c: int = 4, seed: int = 0, shift: float = 0.0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (n,), generator=g)
    x = torch.randn(n, c, generator=g) * (1.0 + shift) + 1.5 * nn.functional.one_hot(y, c)
    return x, y


def _batches(*tensors, size=50):
    return [tuple(t[i : i + size] for t in tensors) for i in range(0, len(tensors[0]), size)]


def _auroc(pos, neg) -> float:
    scores = torch.cat([pos, neg]).double().numpy()
    labels = [1] * len(pos) + [0] * len(neg)
    return roc_auc_score(labels, scores)


@pytest.fixture(scope="module")
def cls_run():
    net = _classifier()
    x, y = _cls_data(300)
    xs, ys = _cls_data(200, seed=1, shift=1.0)
    test = _batches(x, y)
    ood = {"noise": [torch.randn(60, 4, generator=torch.Generator().manual_seed(2)) * 0.3],
           "far": _batches(torch.full((40, 4), 0.25))}
    methods = {"plain": net, "mc": netuq.MCDropout(net, samples=6, seed=0)}
    res = netuq.compare(methods, test, calibrators=("none", "temperature", "vector"), ood=ood,
                        shifts={"noise": {2: _batches(xs, ys)}}, repeats=2)
    return res, net, x, y, xs, ys, ood


def test_classification_matches_in_memory_references(cls_run, tmp_path):
    res, net, x, y, xs, ys, ood = cls_run
    assert res["task"] == "classification" and list(res["methods"]) == ["plain", "mc"]
    part = res["methods"]["plain"]
    pred, labels = netuq.predict(net, _batches(x, y))
    ref = M.evaluate(pred.probs, labels)
    for key in EXACT:
        assert part["metrics"][key] == pytest.approx(ref[key], abs=1e-7), key
    for key in ("adaptive_ece", "aurc"):  # fine-histogram approximations of the streamed metric
        assert part["metrics"][key] == pytest.approx(ref[key], abs=2e-3), key
    # The 2-fold protocol: the very numbers of cross_validate (same splits, seeds, scores).
    for name, cls in (("temperature", TemperatureScaling), ("vector", VectorScaling)):
        cv = cross_validate(cls, pred.log_probs, labels, repeats=2)
        for metric in ("nll", "ece", "brier", "accuracy"):
            assert part["in_distribution"][name][metric]["mean"] == pytest.approx(cv[metric]["mean"], abs=1e-6)
            assert part["in_distribution"][name][metric]["std"] == pytest.approx(cv[metric]["std"], abs=1e-6)
            assert part["in_distribution"]["none"][metric]["mean"] == pytest.approx(
                cv["uncalibrated"][metric]["mean"], abs=1e-6)
    # Detection against scikit-learn.
    wrong = pred.prediction != labels
    u = pred.entropy
    assert part["misclassification"]["entropy"]["auroc"] == pytest.approx(_auroc(u[wrong], u[~wrong]), abs=1e-9)
    outs = {k: netuq.predict(net, v)[0].entropy for k, v in ood.items()}
    for kind, u_out in outs.items():
        assert part["ood_kinds"][kind]["entropy"]["auroc"] == pytest.approx(_auroc(u_out, u), abs=1e-9)
    pooled = torch.cat(list(outs.values()))
    assert part["ood"]["entropy"]["auroc"] == pytest.approx(_auroc(pooled, u), abs=1e-9)
    assert part["counts"] == {"test": 300, "errors": int(wrong.sum())}
    # Shift rows; ece_temperature uses temperature scaling fitted on the whole (clean) test set.
    ps, _ = netuq.predict(net, _batches(xs, ys))
    row = part["shift"]["noise"][0]
    ev = M.evaluate(ps.probs, ys)
    assert row["severity"] == 2 and row["accuracy"] == pytest.approx(ev["accuracy"])
    assert row["ece"] == pytest.approx(ev["ece"], abs=1e-9) and row["nll"] == pytest.approx(ev["nll"], abs=1e-9)
    ts = TemperatureScaling().fit(pred.log_probs, labels)
    assert part["temperature"] == pytest.approx(ts.temperature_, rel=1e-6)
    assert row["ece_temperature"] == pytest.approx(M.ece(ts.predict_proba(ps.log_probs), ys), abs=1e-6)
    assert row["entropy_mean"] == pytest.approx(float(ps.entropy.mean()), abs=1e-6)
    # The report renders it as it is.
    json.dumps(res, allow_nan=False)
    netuq.report.render_report(res, tmp_path)
    assert (tmp_path / "report.html").is_file() and (tmp_path / "results.csv").is_file()


def test_every_method_gets_the_scores_it_offers(cls_run):
    res = cls_run[0]
    logit = {"energy", "max_logit"}  # every sample came as logits
    assert set(res["methods"]["plain"]["ood"]) == {"max_prob", "entropy"} | logit
    assert set(res["methods"]["mc"]["ood"]) == {"max_prob", "entropy", "mutual_information"} | logit

    class Body(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 8)

        def forward(self, x):
            return self.lin(x)

    torch.manual_seed(0)
    net = _classifier()
    het = netuq.HeteroscedasticClassifier(Body(), netuq.HeteroscedasticHead(8, 4))
    conf = netuq.ConfidenceClassifier(Body(), nn.Linear(8, 4), netuq.ConfidenceHead(8))

    def noisy(x):
        return netuq.Prediction.from_samples(torch.stack([net.eval()(x), net(x) + 1.0]), logits=True)

    noisy.epistemic = False
    ens = netuq.Ensemble([_classifier(), _classifier()])
    x, y = _cls_data(100)
    res = netuq.compare({"het": het, "conf": conf, "noisy": noisy, "ens": ens}, _batches(x, y), repeats=1,
                        ood=[torch.zeros(10, 4)])
    m = res["methods"]
    assert set(m["het"]["ood"]) == {"max_prob", "entropy", "sigma"} | logit  # no MI: logit noise is aleatoric
    assert set(m["conf"]["misclassification"]) == {"max_prob", "entropy", "confidence"} | logit
    assert set(m["noisy"]["ood"]) == {"max_prob", "entropy"} | logit
    assert set(m["ens"]["ood"]) == {"max_prob", "entropy", "mutual_information"} | logit
    assert len(m["ens"]["members"]) == 2 and "members" not in m["het"]


def test_calibration_loader_is_fitted_on_and_scored_on_test():
    net = _classifier()
    x, y = _cls_data(200)
    xc, yc = _cls_data(150, seed=5)
    res = netuq.compare({"plain": net}, _batches(x, y), calibration=_batches(xc, yc))
    part = res["methods"]["plain"]
    pc, lc = netuq.predict(net, _batches(xc, yc))
    pt, lt = netuq.predict(net, _batches(x, y))
    ts = TemperatureScaling().fit(pc.log_probs, lc)
    got = part["in_distribution"]["temperature"]
    assert got["ece"]["mean"] == pytest.approx(M.ece(ts.predict_proba(pt.log_probs), lt), abs=1e-9)
    assert got["nll"]["mean"] == pytest.approx(M.nll(ts.predict_proba(pt.log_probs), lt), abs=1e-6)
    assert got["ece"]["std"] is None and part["temperature"] == pytest.approx(ts.temperature_)
    assert part["in_distribution"]["none"]["ece"]["mean"] == pytest.approx(M.ece(pt.probs, lt), abs=1e-9)
    assert res["data"]["calibration"] == 150


# ---------------------------------------------------------------------------------------- segmentation
def _segmenter(c: int = 5) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Dropout2d(0.2), nn.Conv2d(8, c, 1))


def _seg_batches(n: int, size: int = 12, batch: int = 4, seed: int = 0, c: int = 5):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, n, batch):
        k = min(batch, n - i)
        y = torch.randint(0, c, (k, size, size), generator=g)
        x = (y.float() / c + 0.3 * torch.randn(k, size, size, generator=g)).unsqueeze(1)
        anomaly = torch.zeros(k, size, size, dtype=torch.bool)
        anomaly[:, :3, :3] = True
        x[anomaly.unsqueeze(1)] += 2.0
        y = y.masked_fill(anomaly, 255)
        y[:, -1, :2] = 255  # a few ignored pixels that are not anomalies
        out.append((x, y, anomaly))
    return out


def test_streamed_segmentation_equals_in_memory_metrics():
    net = _segmenter()
    mc = netuq.MCDropout(net, samples=3, seed=0)
    test = _seg_batches(10)
    res = netuq.compare({"mc": mc}, test, ignore_index=255, repeats=2, examples=3)
    part = res["methods"]["mc"]
    assert res["task"] == "segmentation"
    pred, y = netuq.predict(mc, test)
    anomaly = torch.cat([b[2] for b in test])
    ref = M.evaluate(pred.probs, y, ignore_index=255)
    for key in EXACT:
        assert part["metrics"][key] == pytest.approx(ref[key], abs=1e-7), key
    cv = cross_validate(TemperatureScaling, pred.log_probs, y, ignore_index=255, repeats=2)
    for metric in ("nll", "ece", "brier", "accuracy"):
        assert part["in_distribution"]["temperature"][metric]["mean"] == pytest.approx(cv[metric]["mean"], abs=1e-5)
    valid = y != 255
    wrong = (pred.prediction != y) & valid
    right = (pred.prediction == y) & valid
    u = pred.entropy
    assert part["misclassification"]["entropy"]["auroc"] == pytest.approx(_auroc(u[wrong], u[right]), abs=1e-7)
    assert part["ood_kinds"]["anomaly"]["mutual_information"]["auroc"] == pytest.approx(
        _auroc(pred.epistemic[anomaly], pred.epistemic[valid & ~anomaly]), abs=1e-7)
    assert part["counts"] == {"test": int(valid.sum()), "errors": int(wrong.sum())}
    ex = part["segmentation_examples"]
    assert torch.tensor(ex["label"]).shape == (3, 12, 12) and ex["epistemic"] is not None
    assert torch.equal(torch.tensor(ex["prediction"]), pred.prediction[:3])


def test_segmentation_images_of_varying_size_batch_size_1():
    # Issue 22 item 10: VOC / ADE20K validation sets hold images of different sizes, one per batch;
    # compare crashed after the whole evaluation in torch.cat of the kept example images.
    net = _segmenter().train()  # compare evaluates in eval mode (dropout off), as the reference below
    sizes = [(12, 12), (10, 14), (12, 12), (9, 11), (12, 12), (16, 8)]
    test = []
    for i, (h, w) in enumerate(sizes):
        g = torch.Generator().manual_seed(i)
        y = torch.randint(0, 5, (1, h, w), generator=g)
        x = (y.float() / 5 + 0.3 * torch.randn(1, h, w, generator=g)).unsqueeze(1)
        y[:, 0, 0] = 255
        test.append((x, y))
    res = netuq.compare({"plain": net}, test, ignore_index=255, repeats=2, examples=4)
    part = res["methods"]["plain"]
    # Every pixel of every size is scored: the metrics equal the per-pixel reference on all images.
    with torch.no_grad():
        logp = torch.cat([net.eval()(x).log_softmax(1).permute(0, 2, 3, 1).reshape(-1, 5) for x, _ in test])
    y_all = torch.cat([y.reshape(-1) for _, y in test])
    keep = y_all != 255
    ref = M.evaluate(logp[keep].exp(), y_all[keep])
    for key in ("accuracy", "nll", "brier", "ece"):
        assert part["metrics"][key] == pytest.approx(ref[key], abs=1e-6), key
    assert part["counts"]["test"] == int(keep.sum())
    # The examples stack (K, H, W): the first kept image's size only, in order.
    ex = part["segmentation_examples"]
    assert torch.tensor(ex["label"]).shape == (3, 12, 12)
    assert torch.equal(torch.tensor(ex["label"]), torch.cat([test[i][1] for i in (0, 2, 4)]))
    # The report draws them.
    from netuq.report.figures import figure_blocks

    fig = figure_blocks(res)["segmentation"][0].draw()
    assert len(fig.axes) >= 3 * 4


def test_pixel_sample_is_seeded_and_leaves_streamed_metrics_exact():
    net = _segmenter()
    test = _seg_batches(10)
    a = netuq.compare({"net": net}, test, ignore_index=255, repeats=1, max_pixels=300)
    b = netuq.compare({"net": net}, test, ignore_index=255, repeats=1, max_pixels=300)
    full = netuq.compare({"net": net}, test, ignore_index=255, repeats=1)
    pa, pb, pf = (r["methods"]["net"] for r in (a, b, full))
    assert pa["in_distribution"] == pb["in_distribution"] and pa["ood"] == pb["ood"]
    assert pa["metrics"] == pf["metrics"]  # streamed over every pixel, whatever the sample size
    assert pa["in_distribution"]["temperature"]["ece"]["mean"] == pytest.approx(
        pf["in_distribution"]["temperature"]["ece"]["mean"], abs=0.05)


def test_reservoir_is_uniform_without_replacement():
    n, cap, trials = 20, 5, 1500
    counts = torch.zeros(n)
    for seed in range(trials):
        r = Reservoir(cap, seed)
        for lo, hi in ((0, 3), (3, 10), (10, 20)):
            r.offer(hi - lo, lambda idx, lo=lo: {"row": idx + lo})
        rows = r.get("row")
        assert len(rows) == cap and len(set(rows.tolist())) == cap
        counts[rows] += 1
    freq = counts / trials
    assert torch.all((freq - cap / n).abs() < 0.05), freq  # 0.25 each; 5 sd is about 0.056


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, torch, netuq
    from torch import nn
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 19, 1))

    def loader(n):
        g = torch.Generator().manual_seed(0)
        for _ in range(n // 4):
            yield torch.rand(4, 3, 64, 64, generator=g), torch.randint(0, 19, (4, 64, 64), generator=g)

    peaks = []
    for n in (4, 4, 24):
        netuq.compare({"net": net}, loader(n), repeats=1, max_pixels=20000, examples=1)
        peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    print(json.dumps(peaks))
    """
)


def test_peak_memory_does_not_grow_with_the_number_of_images():
    out = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT], capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    _, small, large = json.loads(out.stdout.strip().splitlines()[-1])
    # Holding the predictions of the 20 extra images would take 20 * 19 * 64 * 64 * 9 bytes (log-sum,
    # votes, probs) ~ 14 MB; the streamed comparison's peak may not grow by a tenth of that.
    held = 20 * 19 * 64 * 64 * 9
    assert large - small < 0.1 * held, (small, large)


# ---------------------------------------------------------------------------------------- bad input
def test_bad_input_is_refused_with_a_clear_message():
    net = _classifier()
    x, y = _cls_data(40)
    with pytest.raises(TypeError, match="`methods` must be a non-empty dict"):
        netuq.compare([net], _batches(x, y))
    with pytest.raises(ValueError, match="`calibrators` must be a non-empty subset"):
        netuq.compare({"a": net}, _batches(x, y), calibrators=("platt",))
    with pytest.raises(ValueError, match="`test_loader` batch 0 has no labels"):
        netuq.compare({"a": net}, [x])
    with pytest.raises(ValueError, match="`test_loader` yielded no batches"):
        netuq.compare({"a": net}, [])
    with pytest.raises(ValueError, match="`test_loader` batch 1: the labels must have shape"):
        netuq.compare({"a": net}, [(x[:5], y[:5]), (x[:5], y[:4].repeat(2)[:5].view(5, 1).expand(5, 2))])
    with pytest.raises(ValueError, match=r"`calibration` batch 0 has no labels"):
        netuq.compare({"a": net}, _batches(x, y), calibration=[x])
