"""Tests of netuq.methods.ensemble: splits, cross-validated training with resume, the Ensemble wrapper."""

from __future__ import annotations

import copy
import os
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from sklearn.model_selection import StratifiedKFold
from torch import nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    IterableDataset,
    SequentialSampler,
    TensorDataset,
    WeightedRandomSampler,
)

import netuq
from netuq.methods.ensemble import Ensemble, data, make_splits, train_ensemble, wrapper
from netuq.models import SmallCNN

# ------------------------------------------------------------------------------------ helpers


def _blobs(n: int = 90, c: int = 3, d: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % c
    centers = 2.0 * torch.randn(c, d, generator=g)
    return centers[y] + torch.randn(n, d, generator=g), y


def _mlp(d: int = 4, c: int = 3) -> nn.Module:
    return nn.Sequential(nn.Linear(d, 8), nn.ReLU(), nn.Linear(8, c))


def _weights_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _files(d) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(d.iterdir())}


# ------------------------------------------------------------------------------------- splits


@given(
    counts=st.lists(st.integers(5, 17), min_size=2, max_size=4),
    members=st.integers(2, 5),
    seed=st.integers(0, 10_000),
)
def test_kfold_folds_are_stratified_disjoint_and_cover_everything(counts, members, seed):
    labels = np.repeat(np.arange(len(counts)), counts)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(labels)
    n = len(labels)
    folds = make_splits(n, members=members, labels=labels, seed=seed)
    assert len(folds) == members
    vals = np.concatenate([v for _, v in folds])
    assert sorted(vals.tolist()) == list(range(n))  # every index validated exactly once
    for train, val in folds:
        assert np.intersect1d(train, val).size == 0
        assert sorted(np.concatenate([train, val]).tolist()) == list(range(n))
    for c, count in enumerate(counts):  # class proportions per fold within +-1
        per_fold = [int((labels[v] == c).sum()) for _, v in folds]
        assert max(per_fold) - min(per_fold) <= 1
        assert all(abs(p - count / members) < 1 for p in per_fold)
    # the reference: scikit-learn's StratifiedKFold with the same random state, fold k = member k
    ref = [v for _, v in StratifiedKFold(members, shuffle=True, random_state=seed).split(np.zeros(n), labels)]
    assert all(np.array_equal(v, r) for (_, v), r in zip(folds, ref))


def test_group_splits_never_split_a_group():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(20), rng.integers(1, 6, 20))
    labels = rng.integers(0, 3, len(groups))
    for stratify in (True, False):
        folds = make_splits(len(groups), members=4, labels=labels, groups=groups, stratify=stratify, seed=1)
        assert sorted(np.concatenate([v for _, v in folds]).tolist()) == list(range(len(groups)))
        for train, val in folds:
            assert set(groups[train]).isdisjoint(groups[val])
    # the unstratified group k-fold balances fold sizes and follows the seed
    sizes = [len(v) for _, v in make_splits(len(groups), members=4, groups=groups, stratify=False, seed=1)]
    assert max(sizes) - min(sizes) <= 5
    other = make_splits(len(groups), members=4, groups=groups, stratify=False, seed=2)
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(folds, other))


def test_bootstrap_and_full_splits():
    labels = np.array([0] * 30 + [1] * 10)
    boot = make_splits(40, members=4, split="bootstrap", labels=labels, seed=0)
    for train, oob in boot:
        assert len(train) == 40 and len(np.unique(train)) < 40  # drawn with replacement
        assert np.array_equal(oob, np.setdiff1d(np.arange(40), train))
        assert np.bincount(labels[train]).tolist() == [30, 10]  # stratified: class counts kept
    assert not np.array_equal(boot[0][0], boot[1][0])
    groups = np.repeat(np.arange(10), 4)
    for train, oob in make_splits(40, members=3, split="bootstrap", groups=groups, seed=0):
        assert set(groups[train]).isdisjoint(groups[oob])
        assert all(np.sum(groups[train] == g) % 4 == 0 for g in np.unique(groups[train]))  # whole groups
    full = make_splits(40, members=3, split="full", seed=0)
    assert all(np.array_equal(t, np.arange(40)) and v.size == 0 for t, v in full)


# ---------------------------------------------------------------------------------- training


class _IndexedDataset(Dataset):
    """A plain Dataset whose inputs carry their own index as the last feature."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x = torch.cat([x, torch.arange(len(x), dtype=x.dtype)[:, None]], 1)
        self.y = y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


class _Spy(nn.Module):
    """An MLP that ignores the index feature and records which indices it trained on."""

    log: list[tuple[int, list[int]]] = []
    member = -1

    def __init__(self) -> None:
        super().__init__()
        _Spy.member += 1
        self.k = _Spy.member
        self.net = _mlp()

    def forward(self, x):
        if self.training:
            _Spy.log.append((self.k, x[:, -1].long().tolist()))
        return self.net(x[:, :-1])


def test_a_member_never_trains_on_its_validation_fold():
    x, y = _blobs(60)
    _Spy.log, _Spy.member = [], -1
    ens = train_ensemble(_Spy, _IndexedDataset(x, y), members=4, epochs=2, seed=3, batch_size=16)
    ref = [v for _, v in StratifiedKFold(4, shuffle=True, random_state=3).split(np.zeros(60), y.numpy())]
    for k, (train, val) in enumerate(ens.splits_):
        seen = {i for m, idx in _Spy.log if m == k for i in idx}
        assert seen == set(train.tolist())  # every training index seen, nothing else
        assert seen.isdisjoint(val.tolist())
        assert np.array_equal(val, ref[k])
    assert [m for m, _ in _Spy.log] == sorted(m for m, _ in _Spy.log)  # one member after the other


def test_kfold_members_keep_their_best_validation_nll_and_out_of_fold_predictions():
    x, y = _blobs(90)
    ens = train_ensemble(_mlp, (x, y), members=3, epochs=4, lr=0.05, batch_size=16, seed=0)
    assert len(ens) == 3 and ens.oof_probs_.shape == (90, 3) and ens.oof_member_.shape == (90,)
    for k, (member, (_, val)) in enumerate(zip(ens.members, ens.splits_)):
        idx = torch.from_numpy(val)
        with torch.no_grad():
            logits = member(x[idx])
        nll = nn.functional.cross_entropy(logits, y[idx]).item()
        hist = ens.histories_[k]
        assert ens.val_nll_[k] == hist.best_val_loss == pytest.approx(min(hist.val_loss))
        assert nll == pytest.approx(ens.val_nll_[k], rel=1e-5)  # the restored weights are the best epoch's
        assert torch.allclose(ens.oof_probs_[idx], logits.softmax(1), atol=1e-6)
        assert bool((ens.oof_member_[idx] == k).all())
        assert ens.seeds_[k] == k
    assert torch.allclose(ens.oof_probs_.sum(1), torch.ones(90))
    # each member started from its own initialisation
    assert not torch.equal(ens.members[0][0].weight, ens.members[1][0].weight)


def test_ensemble_nll_is_at_most_the_mean_member_nll_on_digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data[:600], dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target[:600])
    xt = torch.tensor(digits.data[600:900], dtype=torch.float32) / 16.0
    yt = torch.tensor(digits.target[600:900])
    ens = train_ensemble(lambda: _mlp(64, 10), (x, y), members=3, epochs=3, lr=0.02, batch_size=32)
    pred = ens(xt)
    ens_nll = netuq.metrics.nll(pred.probs, yt)
    with torch.no_grad():
        member_nll = [nn.functional.cross_entropy(m(xt), yt).item() for m in ens.members]
    assert float(ens_nll) <= float(np.mean(member_nll)) + 1e-6  # convexity of -log
    assert float(netuq.metrics.accuracy(pred.probs, yt)) > 0.7


def test_same_seed_gives_the_same_ensemble_and_rng_is_untouched():
    x, y = _blobs(45)
    torch.manual_seed(5)
    state = torch.get_rng_state()
    a = train_ensemble(_mlp, (x, y), members=3, epochs=2, seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    b = train_ensemble(_mlp, (x, y), members=3, epochs=2, seed=4)
    c = train_ensemble(_mlp, (x, y), members=3, epochs=2, seed=5)
    assert all(_weights_equal(m, n) for m, n in zip(a.members, b.members))
    assert torch.equal(a.oof_probs_, b.oof_probs_)
    assert not _weights_equal(a.members[0], c.members[0])


class _Boom(RuntimeError):
    pass


def test_resume_after_a_crash_trains_only_the_missing_members(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("resumed")
    x, y = _blobs(60)
    calls = []

    def crashing_factory():
        calls.append(1)
        if len(calls) == 3:  # the third member's construction fails: a simulated crash
            raise _Boom("killed")
        return _mlp()

    with pytest.raises(_Boom):
        train_ensemble(crashing_factory, (x, y), members=5, epochs=2, checkpoint_dir=tmp_path, seed=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "member_0.pt", "member_1.pt"]
    before = _files(tmp_path)

    class CountFits(netuq.training.Callback):
        def __init__(self) -> None:
            self.epochs = 0

        def on_epoch_end(self, epoch, logs):
            self.epochs += 1

    counter = CountFits()
    ens = train_ensemble(_mlp, (x, y), members=5, epochs=2, checkpoint_dir=tmp_path, seed=1, callbacks=[counter])
    assert counter.epochs == 3 * 2  # members 3..5 trained, 2 epochs each
    after = _files(tmp_path)
    for name in before:  # finished files untouched: same bytes, same mtime
        assert after[name] == before[name]
    assert sorted(after) == ["manifest.json"] + [f"member_{k}.pt" for k in range(5)]
    # the resumed ensemble is the one an uninterrupted run builds
    fresh = train_ensemble(_mlp, (x, y), members=5, epochs=2, checkpoint_dir=tmp_path_factory.mktemp("fresh"), seed=1)
    assert all(_weights_equal(m, n) for m, n in zip(ens.members, fresh.members))
    assert torch.equal(ens.oof_probs_, fresh.oof_probs_)
    assert [h.val_loss for h in ens.histories_] == [h.val_loss for h in fresh.histories_]
    # a third call trains nothing
    counter.epochs = 0
    again = train_ensemble(_mlp, (x, y), members=5, epochs=2, checkpoint_dir=tmp_path, seed=1, callbacks=[counter])
    assert counter.epochs == 0 and _files(tmp_path) == after
    assert all(_weights_equal(m, n) for m, n in zip(again.members, fresh.members))


def test_interrupted_directory_cannot_be_loaded_as_an_ensemble(tmp_path):
    x, y = _blobs(30)

    class Stop(netuq.training.Callback):
        def __init__(self) -> None:
            self.n = 0

        def on_epoch_end(self, epoch, logs):
            self.n += 1
            if self.n == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_ensemble(_mlp, (x, y), members=3, epochs=1, checkpoint_dir=tmp_path, callbacks=[Stop()])
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(FileNotFoundError, match=r"missing member file\(s\) \['member_1.pt', 'member_2.pt'\] of 3"):
        Ensemble.load(tmp_path, _mlp)


def test_mismatched_configuration_in_checkpoint_dir_raises(tmp_path):
    x, y = _blobs(30)
    train_ensemble(_mlp, (x, y), members=3, epochs=1, checkpoint_dir=tmp_path, seed=0)
    differs = r"different configuration \(folds \(the content differs\); "
    with pytest.raises(ValueError, match=differs + r"members: 3 there, 4 now\)"):
        train_ensemble(_mlp, (x, y), members=4, epochs=1, checkpoint_dir=tmp_path, seed=0)
    with pytest.raises(ValueError, match=differs + r"seed: 0 there, 1 now\)"):
        train_ensemble(_mlp, (x, y), members=3, epochs=1, checkpoint_dir=tmp_path, seed=1)
    with pytest.raises(ValueError, match="lr"):
        train_ensemble(_mlp, (x, y), members=3, epochs=1, checkpoint_dir=tmp_path, seed=0, lr=0.5)
    with pytest.raises(ValueError, match=r"\(data \(the content differs\); labels \(the content differs\)\)"):
        train_ensemble(_mlp, (x, (y + 1) % 3), members=3, epochs=1, checkpoint_dir=tmp_path, seed=0)
    with pytest.raises(ValueError, match=r"\(data \(the content differs\)\)"):
        train_ensemble(_mlp, (x + 1, y), members=3, epochs=1, checkpoint_dir=tmp_path, seed=0)
    with pytest.raises(ValueError, match="epochs: 1 there, 2 now"):
        train_ensemble(_mlp, (x, y), members=3, epochs=2, checkpoint_dir=tmp_path, seed=0)
    # the device is not part of the configuration: resuming elsewhere is fine
    train_ensemble(_mlp, (x, y), members=3, epochs=1, checkpoint_dir=tmp_path, seed=0, device="cpu")


def test_bootstrap_and_full_training():
    x, y = _blobs(45)
    boot = train_ensemble(_mlp, (x, y), members=3, split="bootstrap", epochs=2, seed=0)
    assert boot.oof_probs_ is None and len(boot) == 3
    for (train, oob), h in zip(boot.splits_, boot.histories_):
        assert len(train) == 45 and np.intersect1d(train, oob).size == 0
        assert len(h.val_loss) == 2 and h.best_val_loss is not None  # validated on the out-of-bag samples
    full = train_ensemble(_mlp, (x, y), members=3, split="full", epochs=2, seed=0)
    assert full.oof_probs_ is None and full.val_nll_ == [None, None, None]
    assert all(len(t) == 45 and len(v) == 0 and not h.val_loss for (t, v), h in zip(full.splits_, full.histories_))
    assert not _weights_equal(full.members[0], full.members[1])  # own seed each
    # full mode accepts a user validation set for model selection
    sel = train_ensemble(_mlp, (x, y), members=2, split="full", epochs=2, val_data=(x[:9], y[:9]))
    assert all(len(h.val_loss) == 2 for h in sel.histories_)


class _TinySeg(nn.Module):
    def __init__(self, c: int = 3) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, c, 1))

    def forward(self, x):
        return self.net(x)


def test_segmentation_smoke(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(24, 1, 8, 8, generator=g)
    masks = (x[:, 0] * 3).long().clamp_max(2)
    masks[:, 0, :] = 255  # an ignored border row
    dominant = torch.stack([torch.bincount(m[m != 255], minlength=3).argmax() for m in masks])
    scenes = torch.arange(24) // 2
    with pytest.raises(ValueError, match="`labels` must be given to stratify a dataset whose targets are not one"):
        train_ensemble(_TinySeg, (x, masks), members=3, epochs=1, ignore_index=255)
    ens = train_ensemble(
        _TinySeg,
        (x, masks),
        members=3,
        epochs=1,
        labels=dominant,
        groups=scenes,
        ignore_index=255,
        batch_size=8,
        checkpoint_dir=tmp_path,
    )
    for train, val in ens.splits_:
        assert set(scenes[train].tolist()).isdisjoint(scenes[val].tolist())
    pred = ens(x[:5])
    assert pred.probs.shape == (5, 3, 8, 8) and pred.epistemic.shape == (5, 8, 8)
    assert ens.oof_probs_.shape == (24, 3, 8, 8)
    assert all(np.isfinite(v) for v in ens.val_nll_)
    loaded = Ensemble.load(tmp_path, _TinySeg)
    assert torch.allclose(loaded(x[:5]).probs, pred.probs, atol=1e-6)
    assert torch.equal(loaded.oof_probs_, ens.oof_probs_)


def test_train_ensemble_error_paths(tmp_path):
    x, y = _blobs(30)
    with pytest.raises(ValueError, match="`members` must be >= 2 for split='kfold', got 1"):
        train_ensemble(_mlp, (x, y), members=1)
    with pytest.raises(ValueError, match=r"`split` must be one of \['kfold', 'bootstrap', 'full'\], got 'loo'"):
        train_ensemble(_mlp, (x, y), split="loo")
    with pytest.raises(ValueError, match=r"`members` must be <= the number of samples \(30\)"):
        train_ensemble(_mlp, (x, y), members=31, stratify=False)
    with pytest.raises(ValueError, match=r"`labels` must have shape \(30,\) \(one value per sample\), got shape \(29,"):
        train_ensemble(_mlp, (x, y), labels=y[:-1])
    with pytest.raises(ValueError, match="`val_data` must not be given for split='kfold'"):
        train_ensemble(_mlp, (x, y), val_data=(x, y))
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['learning_rate'\]"):
        train_ensemble(_mlp, (x, y), learning_rate=0.1)
    with pytest.raises(ValueError, match="`epochs` must be a positive integer, got 0"):
        train_ensemble(_mlp, (x, y), epochs=0)
    with pytest.raises(ValueError, match="`seed` must be a non-negative integer, got -1"):
        train_ensemble(_mlp, (x, y), seed=-1)
    with pytest.raises(TypeError, match="`model_factory` must return an nn.Module, got str"):
        train_ensemble(lambda: "net", (x, y), members=2, epochs=1)
    with pytest.raises(TypeError, match="`model_factory` must be callable with no arguments.*got Sequential"):
        train_ensemble(_mlp(), (x, y))
    with pytest.raises(ValueError, match="`dataset` must not be empty, got 0 samples"):
        train_ensemble(_mlp, (x[:0], y[:0]))
    with pytest.raises(ValueError, match=r"`dataset` tensors must have the same length, got lengths \[30, 29\]"):
        train_ensemble(_mlp, (x, y[:-1]))
    with pytest.raises(TypeError, match="`dataset` must be a Dataset, DataLoader or an"):
        train_ensemble(_mlp, x.numpy())
    with pytest.raises(ValueError, match="`labels` are needed to stratify split='kfold'"):
        make_splits(10, members=2)
    (tmp_path / "manifest.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not a netuq ensemble manifest"):
        train_ensemble(_mlp, (x, y), members=2, epochs=1, checkpoint_dir=tmp_path)


# ----------------------------------------------------------------------------------- Ensemble


def _cnns(k: int = 4, seed: int = 0) -> list[nn.Module]:
    """SmallCNNs with non-trivial BatchNorm running statistics (eval mode must use them)."""
    models = []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for _ in range(k):
            m = SmallCNN(1, 5, width=4)
            for mod in m.modules():
                if isinstance(mod, nn.BatchNorm2d):
                    mod.running_mean.uniform_(-0.5, 0.5)
                    mod.running_var.uniform_(0.5, 2.0)
            models.append(m)
    return models


def test_vmap_equals_loop_and_the_hand_computed_mixture():
    models = _cnns()
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    vec = Ensemble(models, vectorize=True, keep_samples=True)
    loop = Ensemble(models, vectorize=False, keep_samples=True)
    assert vec.vectorized and not loop.vectorized
    a, b = vec(x), loop(x)
    for name in ("probs", "entropy", "aleatoric", "epistemic", "variation_ratio"):
        assert torch.allclose(getattr(a, name), getattr(b, name), atol=1e-5), name
    assert torch.allclose(a.samples, b.samples, atol=1e-5)
    # independent reference: mean of member softmaxes, entropy decomposition by hand
    with torch.no_grad():
        p = torch.stack([m.eval()(x).softmax(1) for m in models])
    mean = p.mean(0)
    total = -(mean * mean.log()).sum(1)
    aleatoric = -(p * p.log()).sum(2).mean(0)
    assert torch.allclose(a.probs, mean, atol=1e-6)
    assert torch.allclose(a.aleatoric, aleatoric, atol=1e-5)
    assert torch.allclose(a.epistemic, (total - aleatoric).clamp_min(0), atol=1e-5)
    assert a.num_samples == 4


def test_stacked_weights_follow_updates():
    models = _cnns(3)
    ens = Ensemble(models, vectorize=True)
    x = torch.rand(4, 1, 8, 8)
    first = ens(x).probs
    with torch.no_grad():
        models[1].head[1].weight.mul_(3.0)  # in-place change: the cached stack must be rebuilt
    assert not torch.allclose(ens(x).probs, first)
    assert torch.allclose(ens(x).probs, Ensemble(models, vectorize=False)(x).probs, atol=1e-5)


def test_identical_members_have_zero_mutual_information():
    m = _cnns(1)[0]
    x = torch.rand(8, 1, 8, 8)
    pred = Ensemble([m, copy.deepcopy(m), copy.deepcopy(m)])(x)
    assert torch.allclose(pred.epistemic, torch.zeros(8), atol=1e-6)
    assert torch.allclose(pred.aleatoric, pred.entropy, atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(pred.probs, m.eval()(x).softmax(1), atol=1e-6)
    assert bool((pred.variation_ratio == 0).all())


def test_call_is_eval_no_grad_and_restores_modes():
    models = _cnns(3)
    models[0].train()
    models[1].eval()
    models[2].train()
    models[2].head[0].eval()  # a mixed mode is restored module by module
    stats = [m.features[0][1].running_mean.clone() for m in models]
    x = torch.rand(6, 1, 8, 8)
    ens = Ensemble(models)
    a, b = ens(x), ens(x)
    assert torch.equal(a.probs, b.probs)  # dropout off
    assert not a.probs.requires_grad
    assert [m.training for m in models] == [True, False, True] and not models[2].head[0].training
    assert models[2].head[1].training
    assert all(torch.equal(s, m.features[0][1].running_mean) for s, m in zip(stats, models))  # BN not updated


class _Branchy(nn.Module):
    """Control flow on the weights: vmap (which batches the weights) cannot run it."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        if self.lin.weight.sum() > 0:
            return self.lin(x)
        return -self.lin(x)


def test_vmap_failure_falls_back_to_the_loop_and_mixed_members_loop(monkeypatch):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        models = [_Branchy() for _ in range(3)]
    x = torch.rand(5, 4)
    monkeypatch.setattr(wrapper, "prefers_vmap", lambda device: True)  # "auto" as on CUDA
    ens = Ensemble(models)
    assert ens.vectorized
    pred = ens(x)
    assert not ens.vectorized  # remembered
    assert torch.allclose(pred.probs, Ensemble(models, vectorize=False)(x).probs)
    with pytest.raises(RuntimeError):
        Ensemble(models, vectorize=True)(x)
    mixed = Ensemble([_mlp(), nn.Linear(4, 3)])
    assert not mixed.vectorized and mixed(x).probs.shape == (5, 3)
    with pytest.raises(ValueError, match="`vectorize=True` needs members of one architecture"):
        Ensemble([_mlp(), nn.Linear(4, 3)], vectorize=True)


def test_save_load_round_trip(tmp_path):
    models = _cnns(3)
    ens = Ensemble(models, keep_samples=True)
    ens.save(tmp_path)
    loaded = Ensemble.load(tmp_path, lambda: SmallCNN(1, 5, width=4), keep_samples=True)
    assert len(loaded) == 3 and loaded.keep_samples
    assert all(_weights_equal(m, n) for m, n in zip(models, loaded.members))
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(ens(x).probs, loaded(x).probs)
    assert loaded.splits_ is None and loaded.histories_ is None
    # trained ensembles keep their splits, histories and out-of-fold predictions
    xb, yb = _blobs(30)
    trained = train_ensemble(_mlp, (xb, yb), members=3, epochs=1)
    trained.save(tmp_path / "trained")
    back = Ensemble.load(tmp_path / "trained", _mlp)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(trained.splits_, back.splits_))
    assert torch.equal(back.oof_probs_, trained.oof_probs_) and back.val_nll_ == trained.val_nll_


def test_load_error_paths(tmp_path):
    Ensemble(_cnns(2)).save(tmp_path)
    with pytest.raises(ValueError, match="does not fit the model built by `model_factory`"):
        Ensemble.load(tmp_path, lambda: SmallCNN(1, 5, width=8))
    with pytest.raises(ValueError, match="holds a netuq.models.SmallCNN, but `model_factory` built a"):
        Ensemble.load(tmp_path, lambda: nn.Linear(4, 3))
    (tmp_path / "member_1.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="member_1.pt' cannot be read"):
        Ensemble.load(tmp_path, lambda: SmallCNN(1, 5, width=4))
    os.remove(tmp_path / "member_1.pt")
    with pytest.raises(FileNotFoundError, match=r"missing member file\(s\) \['member_1.pt'\]"):
        Ensemble.load(tmp_path, lambda: SmallCNN(1, 5, width=4))
    with pytest.raises(FileNotFoundError, match="got no manifest.json in"):
        Ensemble.load(tmp_path / "nowhere", lambda: SmallCNN(1, 5, width=4))
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="unreadable manifest.json"):
        Ensemble.load(tmp_path, lambda: SmallCNN(1, 5, width=4))


def test_ensemble_constructor_error_paths():
    with pytest.raises(ValueError, match="`models` must contain at least one nn.Module, got none"):
        Ensemble([])
    with pytest.raises(TypeError, match="`models` must contain only nn.Module objects, got int at position 1"):
        Ensemble([nn.Linear(2, 2), 3])
    with pytest.raises(TypeError, match="`models` must be an iterable of nn.Module members, got a single"):
        Ensemble(_mlp())  # an nn.Sequential is one model, not a list of members
    assert len(Ensemble(nn.ModuleList([_mlp(), _mlp()]))) == 2
    with pytest.raises(ValueError, match="`vectorize` must be 'auto', True or False, got 'yes'"):
        Ensemble([nn.Linear(2, 2)], vectorize="yes")

    class TwoOut(nn.Module):
        def forward(self, x):
            return x, x

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(TypeError, match=r"must return a logits tensor of shape \(N, C, ...\), got tuple"):
            Ensemble([TwoOut(), TwoOut()])(torch.zeros(2, 3))


# ------------------------------------------------------------------- inputs: Dataset / DataLoader / tuple


def _negate(batch):
    """A collate_fn that changes the data (so a test can see it was used): stack, negate x."""
    xs, ys = zip(*batch)
    return -torch.stack(xs), torch.stack(ys)


class _RecordingLoader(DataLoader):
    """A DataLoader that records the settings each member's loader was built with."""

    made: list[dict] = []

    def __init__(self, *args, **kwargs) -> None:
        _RecordingLoader.made.append(kwargs)
        super().__init__(*args, **kwargs)


def test_a_dataloader_trains_the_same_members_as_its_data_and_keeps_its_settings(monkeypatch, tmp_path):
    """A real DataLoader with 2 worker processes and its own collate_fn: the folds come from its dataset,
    every member loader keeps batch size / collate_fn / num_workers / pin_memory, and the result is the
    ensemble trained on the collated data itself (same weights, same out-of-fold predictions)."""
    x, y = _blobs(48)
    loader = _RecordingLoader(TensorDataset(x, y), batch_size=12, shuffle=True, num_workers=2, collate_fn=_negate)
    _RecordingLoader.made = []
    monkeypatch.setattr(data, "DataLoader", _RecordingLoader)
    ens = train_ensemble(_mlp, loader, members=3, epochs=2, seed=1, lr=0.05, checkpoint_dir=tmp_path / "loader")
    monkeypatch.undo()
    ref = train_ensemble(_mlp, (-x, y), members=3, epochs=2, seed=1, lr=0.05, batch_size=12)
    assert all(_weights_equal(a, b) for a, b in zip(ens.members, ref.members))
    assert torch.equal(ens.oof_probs_, ref.oof_probs_)  # validation and out-of-fold passes collated too
    assert [h.val_loss for h in ens.histories_] == [h.val_loss for h in ref.histories_]
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(ens.splits_, ref.splits_))  # folds of its dataset
    made = _RecordingLoader.made
    assert len(made) == 3 * 3  # per member: validation, training, out-of-fold
    assert all(m["batch_size"] == 12 and m["num_workers"] == 2 and m["collate_fn"] is _negate for m in made)
    assert [m["shuffle"] for m in made] == [False, True, False] * 3
    assert all(m["pin_memory"] is False for m in made)
    # the configuration records the loader's batch size: resuming with the same loader trains nothing
    again = train_ensemble(_mlp, loader, members=3, epochs=2, seed=1, lr=0.05, checkpoint_dir=tmp_path / "loader")
    assert all(_weights_equal(a, b) for a, b in zip(again.members, ens.members))


class _Plain(Dataset):
    """A map-style Dataset without `targets`: labels come from its items."""

    def __init__(self, x, y) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def test_dataset_dataloader_and_tuple_inputs_agree():
    x, y = _blobs(36)
    kwargs = {"members": 3, "epochs": 1, "seed": 2, "batch_size": 8}
    tup = train_ensemble(_mlp, (x, y), **kwargs)
    ds = train_ensemble(_mlp, _Plain(x, y), **kwargs)
    kwargs.pop("batch_size")
    dl = train_ensemble(_mlp, DataLoader(_Plain(x, y), batch_size=8, shuffle=True), **kwargs)
    for other in (ds, dl):
        assert all(_weights_equal(a, b) for a, b in zip(tup.members, other.members))
        assert torch.equal(tup.oof_probs_, other.oof_probs_)


def test_dataloader_inputs_that_cannot_be_split_raise_clear_errors():
    x, y = _blobs(30)
    ds = TensorDataset(x, y)
    with pytest.raises(ValueError, match=r"`batch_size` must match the DataLoader's batch size .* got batch_size=16"):
        train_ensemble(_mlp, DataLoader(ds, batch_size=8), members=2, epochs=1, batch_size=16)
    weighted = DataLoader(ds, batch_size=8, sampler=WeightedRandomSampler(torch.ones(30), 30))
    with pytest.raises(
        ValueError, match="must use shuffle=True or shuffle=False .* got a DataLoader with sampler Weig"
    ):
        train_ensemble(_mlp, weighted, members=2, epochs=1)
    batched = DataLoader(ds, batch_sampler=BatchSampler(SequentialSampler(ds), 8, False))
    with pytest.raises(ValueError, match="must batch with `batch_size` .* custom batch_sampler"):
        train_ensemble(_mlp, batched, members=2, epochs=1)

    class Stream(IterableDataset):
        def __iter__(self):
            return iter(zip(x, y))

    with pytest.raises(TypeError, match="`dataset` must be a map-style Dataset .* got the iterable-style Stream"):
        train_ensemble(_mlp, DataLoader(Stream(), batch_size=8), members=2, epochs=1)
    with pytest.raises(TypeError, match=r"`dataset` given as a tuple must be \(x, y, ...\) tensors"):
        train_ensemble(_mlp, (x.numpy(), y), members=2, epochs=1)


def test_members_come_back_in_eval_mode(tmp_path):
    """Regression: members came back in train mode, so calling one directly updated its BatchNorm statistics."""
    x = torch.rand(24, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(24) % 3
    ens = train_ensemble(lambda: SmallCNN(1, 3, width=4), (x, y), members=2, epochs=1, checkpoint_dir=tmp_path)
    loaded = Ensemble.load(tmp_path, lambda: SmallCNN(1, 3, width=4))
    for member in (*ens.members, *loaded.members):
        assert not any(m.training for m in member.modules())
        stats = member.features[0][1].running_mean.clone()
        member(x)
        assert torch.equal(member.features[0][1].running_mean, stats)


def test_calling_an_ensemble_on_a_non_tensor_is_a_clear_type_error():
    ens = Ensemble(_cnns(2))
    x = torch.rand(2, 1, 8, 8)
    for bad in (x.numpy(), x.tolist(), (x,)):
        with pytest.raises(
            TypeError, match=r"`x` must be a tensor of inputs of shape \(N, ...\), got " + type(bad).__name__
        ):
            ens(bad)
    with pytest.raises(ValueError, match="`x` must be a batch of inputs of shape"):
        ens(torch.tensor(1.0))


def test_auto_vectorizes_only_where_vmap_is_faster(monkeypatch):
    models = _cnns(3)
    assert not wrapper.prefers_vmap(torch.device("cpu")) and wrapper.prefers_vmap(torch.device("cuda"))
    assert not Ensemble(models).vectorized  # CPU members: the loop
    assert Ensemble(models, vectorize=True).vectorized
    monkeypatch.setattr(wrapper, "prefers_vmap", lambda device: device.type == "cpu")
    auto = Ensemble(models)
    assert auto.vectorized
    x = torch.rand(5, 1, 8, 8)
    assert torch.allclose(auto(x).probs, Ensemble(models, vectorize=False)(x).probs, atol=1e-5)


def test_distributed_argument_is_checked():
    x, y = _blobs(30)
    with pytest.raises(ValueError, match="`distributed=True` needs an initialised torch.distributed process group"):
        train_ensemble(_mlp, (x, y), members=2, epochs=1, distributed=True)
    with pytest.raises(ValueError, match="`distributed` must be None, True or False, got 'yes'"):
        train_ensemble(_mlp, (x, y), members=2, epochs=1, distributed="yes")
    assert len(train_ensemble(_mlp, (x, y), members=2, epochs=1, distributed=False)) == 2
