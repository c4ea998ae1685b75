"""netuq.predict: every method kind over tuple / dict / bare-tensor loaders equals the per-batch
concatenation; labels, devices, modes and bad loaders."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import netuq
from netuq import Prediction


def _conv(classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Dropout(0.3), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, classes))


class _Body(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(144, 8))

    def forward(self, x):
        return self.net(x)


def _methods() -> dict[str, object]:
    torch.manual_seed(0)
    net = _conv()
    members = [_conv() for _ in range(3)]
    for i, m in enumerate(members):
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.1 * i)
    return {
        "module": net,
        "mc_dropout": netuq.MCDropout(net, samples=5, seed=0),
        "tta": netuq.TTA(net, netuq.tta.Compose([netuq.tta.HorizontalFlip(), netuq.tta.Multiply([0.9, 1.1])])),
        "ensemble": netuq.Ensemble(members),
        "heteroscedastic": netuq.HeteroscedasticClassifier(_Body(), netuq.HeteroscedasticHead(8, 3)),
        "confidence": netuq.ConfidenceClassifier(_Body(), nn.Linear(8, 3), netuq.ConfidenceHead(8)),
        "callable": lambda x: Prediction.from_logits(net.eval()(x) * 2.0),
    }


def _data(n: int = 23):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def _reference(name: str, method, batches: list[torch.Tensor]) -> Prediction:
    """The loop a user would write by hand."""
    preds = []
    gen = torch.Generator().manual_seed(0)
    for xb in batches:
        with torch.no_grad():
            if name == "module":
                method.eval()
                preds.append(Prediction.from_logits(method(xb)))
            elif name == "heteroscedastic":
                preds.append(method.predict(xb, generator=gen))
            elif name == "confidence":
                preds.append(method.predict(xb))
            else:
                preds.append(method(xb))
    return Prediction.cat(preds)


@pytest.mark.parametrize("name", list(_methods()))
def test_predict_equals_the_per_batch_concatenation(name):
    method = _methods()[name]
    x, y = _data()
    sizes = [8, 8, 7]
    batches = list(torch.split(x, sizes))
    ref = _reference(name, method, batches)
    method = _methods()[name]  # fresh: same seeds as the reference
    pred, labels = netuq.predict(method, list(zip(batches, torch.split(y, sizes))))
    assert labels is not None and torch.equal(labels, y)
    assert pred.num_samples == ref.num_samples
    torch.testing.assert_close(pred.log_probs, ref.log_probs, rtol=0, atol=1e-6)
    torch.testing.assert_close(pred.aleatoric, ref.aleatoric, rtol=0, atol=1e-6)
    assert sorted(pred.scores) == sorted(ref.scores)
    for key in pred.scores:
        torch.testing.assert_close(pred.scores[key], ref.scores[key], rtol=0, atol=1e-6)
    assert pred.log_probs.device.type == "cpu"


def test_dict_tuple_list_and_bare_tensor_loaders_agree():
    net = _methods()["module"]
    x, y = _data()
    parts = list(zip(torch.split(x, 10), torch.split(y, 10)))
    as_tuple, _ = netuq.predict(net, parts)
    as_list, _ = netuq.predict(net, [[a, b] for a, b in parts])
    as_dict, labels = netuq.predict(net, [{"image": a, "label": b} for a, b in parts])
    other_keys, labels2 = netuq.predict(net, [{"input": a, "target": b} for a, b in parts], keys=("input", "target"))
    bare, none = netuq.predict(net, [a for a, _ in parts])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=10)
    dl, labels3 = netuq.predict(net, loader)
    for p in (as_list, as_dict, other_keys, bare, dl):
        torch.testing.assert_close(p.log_probs, as_tuple.log_probs, rtol=0, atol=0)
    assert torch.equal(labels, y) and torch.equal(labels2, y) and torch.equal(labels3, y)
    assert none is None  # no labels in the batches: None, not an empty tensor
    unlabelled, nolab = netuq.predict(net, [{"image": a} for a, _ in parts])
    assert nolab is None and len(unlabelled) == len(y)


def test_plain_module_runs_in_eval_mode_and_keeps_its_mode():
    net = _methods()["module"].train()
    x, _ = _data()
    pred, _ = netuq.predict(net, [x])
    assert net.training and all(m.training for m in net.modules())
    with torch.no_grad():
        expected = torch.log_softmax(net.eval()(x), 1)
    torch.testing.assert_close(pred.log_probs, expected, rtol=0, atol=1e-6)


def test_batches_move_to_the_requested_device_and_come_back_on_cpu():
    seen = []

    def method(xb):
        seen.append(xb.device)
        return Prediction.from_logits(torch.zeros(len(xb), 2, device=xb.device))

    pred, _ = netuq.predict(method, [torch.ones(3, 2)], device="cpu")
    assert seen == [torch.device("cpu")] and pred.probs.device.type == "cpu"


def test_library_is_quiet_and_progress_shows_a_bar(capsys):
    net = _methods()["module"]
    x, y = _data()
    netuq.predict(net, [(x, y)])
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    netuq.predict(net, [(x, y), (x, y)], progress=True)
    assert "batch" in capsys.readouterr().err


@pytest.mark.parametrize(
    "loader, error, match",
    [
        ([], ValueError, "yielded no batches"),
        ([(torch.ones(2, 1, 6, 6), torch.zeros(2, dtype=torch.long)), ("text", 1)], TypeError, "batch 1"),
        ([{"img": torch.ones(2, 1, 6, 6)}], ValueError, r"batch 0 is a mapping without the input key 'image'"),
        ([(torch.ones(2, 1, 6, 6), torch.zeros(2, 6, dtype=torch.long))], ValueError,
         r"batch 0: the labels must have shape \(2,\)"),
        ([(torch.ones(2, 1, 6, 6), torch.zeros(3, dtype=torch.long))], ValueError, "batch 0: the labels must have"),
        ([(torch.ones(2, 1, 6, 6), torch.zeros(2))], ValueError, "batch 0: the labels must be integers"),
        ([(torch.ones(2, 1, 6, 6), torch.zeros(2, dtype=torch.long)), torch.ones(2, 1, 6, 6)], ValueError,
         "batch 1 has no labels"),
        (torch.ones(3, 1, 6, 6), TypeError, "`loader` must be an iterable of batches"),
        ([42], TypeError, "batch 0 must be a tensor"),
    ],
)
def test_bad_loaders_name_the_batch(loader, error, match):
    with pytest.raises(error, match=match):
        netuq.predict(_methods()["module"], loader)


def test_bad_methods():
    with pytest.raises(TypeError, match="must be a netuq method"):
        netuq.predict(42, [torch.ones(2, 1, 6, 6)])
    with pytest.raises(TypeError, match="must return a netuq.Prediction"):
        netuq.predict(lambda x: x, [torch.ones(2, 1, 6, 6)])


def test_eval_mode_leaves_a_model_already_in_eval_alone_and_restores_mixed_flags():
    """``eval_mode`` sets no flag on a model already in eval mode (nn.Module.__setattr__ per module
    per call was ~2 ms of a 5-member ensemble's call), and still calls an overridden ``train`` when
    a module is in training mode; the flags come back exactly."""
    from netuq._modes import eval_mode

    class Tracked(torch.nn.Sequential):
        calls = 0

        def train(self, mode=True):
            Tracked.calls += 1
            return super().train(mode)

    net = Tracked(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    net.eval()
    Tracked.calls = 0
    with eval_mode(net):
        assert not any(m.training for m in net.modules())
    assert Tracked.calls == 0 and not any(m.training for m in net.modules())
    net.train()
    net[1].eval()  # mixed: a frozen BatchNorm
    Tracked.calls = 0
    with eval_mode(net):
        assert not any(m.training for m in net.modules())
    assert Tracked.calls == 1 and [m.training for m in net.modules()] == [True, True, False]
