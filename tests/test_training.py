"""Tests of netuq.training.fit: seeding, model selection, early stopping, callbacks, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from netuq._modes import eval_mode, restore_modes
from netuq.training import Callback, History, evaluate_loss, fit, make_loader


def _data(n: int = 48, d: int = 4, c: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x @ torch.randn(d, c, generator=g)).argmax(1)
    return x, y


def _net(seed: int = 0, d: int = 4, c: int = 3) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, c))


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _hist(h: History) -> dict:
    d = h.to_dict()
    d.pop("seconds")
    return d


def test_seeded_run_is_reproducible_and_seed_matters():
    x, y = _data()
    a, b, c = _net(), _net(), _net()
    ha = fit(a, (x, y), val_data=(x, y), epochs=3, batch_size=8, seed=7)
    hb = fit(b, (x, y), val_data=(x, y), epochs=3, batch_size=8, seed=7)
    fit(c, (x, y), val_data=(x, y), epochs=3, batch_size=8, seed=8)
    assert _same_weights(a, b)
    assert _hist(ha) == _hist(hb)
    assert not _same_weights(a, c)  # shuffling and dropout masks follow the seed


def test_global_rng_state_is_untouched():
    x, y = _data()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    fit(_net(), (x, y), epochs=2, batch_size=8, seed=0)
    assert torch.equal(torch.get_rng_state(), before)


def _diverging_case():
    """Validation labels are a permutation of the training labels: fitting the training data makes
    the validation loss rise after the first epochs."""
    x, y = _data(n=64, seed=1)
    return (x, y), (x, (y + 1) % 3)


def test_best_validation_checkpoint_is_restored():
    train, val = _diverging_case()
    model = _net(2)
    h = fit(model, train, val_data=val, epochs=8, batch_size=16, lr=0.05, seed=0)
    assert h.best_epoch == min(range(len(h.val_loss)), key=h.val_loss.__getitem__)
    assert h.val_loss[-1] > h.best_val_loss  # the case really diverges
    assert h.best_epoch < h.epochs_run - 1
    # the restored weights are those of the best epoch: rerun up to it without restoring
    ref = _net(2)
    fit(ref, train, val_data=val, epochs=h.best_epoch + 1, batch_size=16, lr=0.05, seed=0, restore_best=False)
    assert _same_weights(model, ref)
    model.eval()
    with torch.no_grad():
        assert nn.functional.cross_entropy(model(val[0]), val[1]).item() == pytest.approx(h.best_val_loss, rel=1e-6)
    # without restore_best the last epoch's weights stay
    last = _net(2)
    fit(last, train, val_data=val, epochs=8, batch_size=16, lr=0.05, seed=0, restore_best=False)
    assert not _same_weights(model, last)


def test_patience_stops_early():
    train, val = _diverging_case()
    model = _net(2)
    h = fit(model, train, val_data=val, epochs=40, batch_size=16, lr=0.05, seed=0, patience=2)
    assert h.stopped_early
    assert h.epochs_run == h.best_epoch + 3
    assert len(h.val_loss) == len(h.train_loss) == h.epochs_run


class _TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(3, 8)
        self.mu = nn.Linear(8, 1)
        self.log_var = nn.Linear(8, 1)

    def forward(self, x):
        h = torch.relu(self.body(x))
        return self.mu(h).squeeze(-1), self.log_var(h).squeeze(-1)


def test_custom_loss_receives_the_whole_tuple_output():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g)
    y = x[:, 0] * 2.0 + 0.1 * torch.randn(64, generator=g)
    seen = []

    def gaussian_nll(out, target):
        seen.append(type(out))
        mu, log_var = out
        return nn.functional.gaussian_nll_loss(mu, target, log_var.exp())

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = _TwoHeads()
    h = fit(model, (x, y), val_data=(x, y), loss=gaussian_nll, epochs=15, lr=0.05, batch_size=16)
    assert set(seen) == {tuple}
    assert h.train_loss[-1] < h.train_loss[0]
    assert h.best_val_loss == min(h.val_loss)


class _Recorder(Callback):
    def __init__(self, stop_at: int | None = None) -> None:
        self.batches: list[tuple[float, tuple, int]] = []
        self.epochs: list[tuple[int, dict]] = []
        self.stop_at = stop_at

    def on_batch_end(self, loss, output, target):
        self.batches.append((loss, tuple(output.shape), len(target)))

    def on_epoch_end(self, epoch, logs):
        self.epochs.append((epoch, dict(logs)))
        return self.stop_at is not None and epoch >= self.stop_at


def test_callbacks_are_called_per_step_and_can_stop():
    x, y = _data(n=50)
    rec = _Recorder()
    h = fit(_net(), (x, y), val_data=(x, y), epochs=3, batch_size=16, callbacks=[rec])
    assert len(rec.batches) == 3 * math.ceil(50 / 16)
    assert [n for *_, n in rec.batches[:4]] == [16, 16, 16, 2]
    assert all(isinstance(loss, float) and shape == (n, 3) for loss, shape, n in rec.batches)
    assert [e for e, _ in rec.epochs] == [0, 1, 2]
    assert [logs["train_loss"] for _, logs in rec.epochs] == h.train_loss
    assert [logs["val_loss"] for _, logs in rec.epochs] == h.val_loss

    stopper, watcher = _Recorder(stop_at=1), _Recorder()
    h = fit(_net(), (x, y), epochs=10, batch_size=16, callbacks=[stopper, watcher])
    assert h.epochs_run == 2 and h.stopped_early
    assert len(watcher.epochs) == 2  # every callback still sees the last epoch


def test_model_mode_is_restored_and_dataloader_input_works():
    x, y = _data()
    model = _net().eval()
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    h = fit(model, loader, val_data=DataLoader(TensorDataset(x, y), batch_size=8), epochs=2)
    assert not model.training
    assert h.epochs_run == 2
    model.train()
    fit(model, (x, y), epochs=1)
    assert model.training


def _bn_net() -> nn.Sequential:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def test_evaluate_loss_restores_each_module_flag_exactly():
    """Regression: evaluate_loss restored with model.train(was), unfreezing a BatchNorm the user froze."""
    x, y = _data()
    model = _bn_net().train()
    model[1].eval()
    evaluate_loss(model, [(x, y)], nn.functional.cross_entropy, torch.device("cpu"))
    assert [m.training for m in model] == [True, False, True, True] and model.training


def test_fit_keeps_a_frozen_batchnorm_frozen_and_restores_every_flag():
    x, y = _data()
    model = _bn_net().train()
    model[1].eval()
    stats = model[1].running_mean.clone()
    fit(model, (x, y), val_data=(x, y), epochs=2, batch_size=16)
    assert torch.equal(model[1].running_mean, stats)  # never switched to train mode, not even after validation
    assert [m.training for m in model] == [True, False, True, True] and model.training
    # a model given in eval mode is trained in train mode (BatchNorm statistics move) and handed back in eval mode
    model = _bn_net().eval()
    fit(model, (x, y), epochs=1, batch_size=16)
    assert not torch.equal(model[1].running_mean, torch.zeros(8))
    assert not any(m.training for m in model.modules())


def test_mode_helpers_restore_on_error():
    model = _bn_net().train()
    model[1].eval()
    with pytest.raises(RuntimeError, match="boom"), eval_mode(model):
        assert not any(m.training for m in model.modules())
        raise RuntimeError("boom")
    assert [m.training for m in model] == [True, False, True, True]
    with pytest.raises(RuntimeError, match="boom"), restore_modes(model):
        model.train()
        raise RuntimeError("boom")
    assert [m.training for m in model] == [True, False, True, True]


def test_val_loss_is_the_selection_criterion():
    x, y = _data()
    calls = []

    def constant_then_lower(out, target):
        calls.append(1)
        return torch.tensor(1.0 / len(calls))  # decreases with every batch: the last epoch wins

    h = fit(_net(), (x, y), val_data=(x, y), val_loss=constant_then_lower, epochs=3, batch_size=64)
    assert h.best_epoch == 2
    assert h.val_loss == pytest.approx([1.0, 0.5, 1 / 3])


def test_error_paths():
    x, y = _data()
    with pytest.raises(ValueError, match="`epochs` must be a positive integer, got 0"):
        fit(_net(), (x, y), epochs=0)
    with pytest.raises(ValueError, match="`patience` must be a positive integer or None, got 0"):
        fit(_net(), (x, y), patience=0)
    with pytest.raises(ValueError, match="`train_data` must not be empty, got 0 samples"):
        fit(_net(), (x[:0], y[:0]), epochs=1)
    with pytest.raises(ValueError, match="`val_data` must not be empty"):
        fit(_net(), (x, y), val_data=(x[:0], y[:0]), epochs=1)
    with pytest.raises(ValueError, match=r"`train_data` tensors must have the same length, got lengths \[48, 47\]"):
        fit(_net(), (x, y[:-1]), epochs=1)
    with pytest.raises(TypeError, match=r"`train_data` given as a tuple must be \(x, y, ...\) tensors"):
        fit(_net(), (x, [0, 1]), epochs=1)
    with pytest.raises(TypeError, match="`train_data` must be a Dataset, DataLoader or an"):
        fit(_net(), "data", epochs=1)
    with pytest.raises(TypeError, match="`val_data` must be a Dataset"):
        make_loader(42, batch_size=4, shuffle=False, name="val_data")
    model = _net().eval()
    with pytest.raises(FloatingPointError, match="training loss became nan at epoch 0"):
        fit(model, (x, y), loss=lambda out, t: out.sum() * float("nan"), epochs=2)
    assert not model.training  # restored even after the error


class _Rows(torch.utils.data.Dataset):
    """A plain map-style Dataset (no tensors attribute): fit batches it with a DataLoader."""

    def __init__(self, x, y) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def test_sliced_in_memory_batches_equal_the_dataloader_path():
    """In-memory tensors are batched by slicing; that must reproduce the DataLoader exactly (same order,
    same random draws, hence the same dropout masks after each validation pass and the same weights)."""
    x, y = _data(n=50)
    xv, yv = _data(n=20, seed=3)
    runs = []
    for train, val in (((x, y), (xv, yv)), (TensorDataset(x, y), TensorDataset(xv, yv)), (_Rows(x, y), _Rows(xv, yv))):
        model = _net(4)
        h = fit(model, train, val_data=val, epochs=4, batch_size=16, lr=0.05, seed=11)
        runs.append((model, _hist(h)))
    (ref, ref_h), *others = runs
    for model, h in others:
        assert _same_weights(ref, model)
        assert h == ref_h


def test_on_device_loss_sums_give_the_same_history(monkeypatch):
    """The CUDA path (losses summed on the device, no per-step sync) checked on the CPU: same weights,
    same losses, NaN still raises (at the end of the epoch)."""
    import netuq.training as training

    x, y = _data()
    eager = _net(1)
    h_eager = fit(eager, (x, y), val_data=(x, y), epochs=3, batch_size=8, seed=2)
    monkeypatch.setattr(training, "_sums_on_device", lambda device: True)
    lazy = _net(1)
    h_lazy = fit(lazy, (x, y), val_data=(x, y), epochs=3, batch_size=8, seed=2)
    assert _same_weights(eager, lazy)
    assert _hist(h_lazy) == _hist(h_eager)
    with pytest.raises(FloatingPointError, match="training loss became nan at epoch 0"):
        fit(_net(), (x, y), loss=lambda out, t: out.sum() * float("nan"), epochs=2)
