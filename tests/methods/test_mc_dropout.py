"""MC dropout: only dropout sampled, state restored, batching/caching/seeding exact, decomposition."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.checkpoint import checkpoint, checkpoint_sequential

import netuq
from netuq.methods.mc_dropout import dropout_active, stochastic_modules
from netuq.models import SmallCNN, SmallUNet


def _mlp(p: float = 0.5, with_bn: bool = True) -> nn.Sequential:
    torch.manual_seed(0)
    layers = [nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16) if with_bn else nn.Identity(), nn.ReLU())]
    layers += [nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Dropout(p), nn.Linear(16, 4))]
    return nn.Sequential(*layers)


class Wrap(nn.Module):
    """A non-Sequential wrapper: no automatic trunk detection."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


class CountRows(nn.Module):
    """Identity that records the rows of every call."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[int] = []

    def forward(self, x):
        self.rows.append(x.shape[0])
        return x


def _randomise_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


# ----------------------------------------------------------------------------- eval semantics
def test_p0_gives_eval_output_even_with_batchnorm_in_train_mode():
    model = _mlp(p=0.0)
    _randomise_bn(model)
    x = torch.randn(5, 6)
    expected = model.eval()(x).log_softmax(1)
    model.train()  # the classic bug would use batch statistics here
    pred = netuq.MCDropout(model, samples=1)(x)
    assert torch.equal(pred.log_probs, expected)
    pred = netuq.MCDropout(model, samples=7)(x)
    torch.testing.assert_close(pred.log_probs, expected, atol=1e-6, rtol=0)
    assert float(pred.epistemic.max()) < 1e-6
    assert all(m.training for m in model.modules())


def test_p0_smallcnn_with_declared_trunk_equals_eval():
    torch.manual_seed(0)
    model = SmallCNN(1, 5, width=4, dropout=0.0, block_dropout=True)
    _randomise_bn(model)
    x = torch.randn(3, 1, 8, 8)
    expected = model.eval()(x).softmax(1)
    for kwargs in ({}, {"trunk": "features", "head": "head"}):
        model.train()
        pred = netuq.MCDropout(model, samples=4, **kwargs)(x)
        torch.testing.assert_close(pred.probs, expected, atol=1e-6, rtol=0)


def test_running_stats_and_flags_unchanged():
    model = _mlp()
    model.train()
    model[0][1].eval()  # a mixed state must come back as it was
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    netuq.MCDropout(model, samples=5, seed=0)(torch.randn(4, 6))
    netuq.MCDropout(model, samples=5)(torch.randn(4, 6))
    assert [m.training for m in model.modules()] == flags
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


class Boom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(3)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        self.drop(self.bn(x))
        raise RuntimeError("boom inside forward")


@pytest.mark.parametrize("seed", [None, 3])
def test_state_restored_after_exception(seed):
    model = Boom().train()
    model.bn.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    x = torch.randn(4, 3)
    rng = torch.get_rng_state()
    with pytest.raises(RuntimeError, match="boom inside forward"):
        netuq.MCDropout(model, samples=3, seed=seed)(x)
    assert [m.training for m in model.modules()] == flags
    assert "forward" not in model.drop.__dict__  # the seeded patch is gone
    assert not netuq.nn.mc_active()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    if seed is not None:
        assert torch.equal(torch.get_rng_state(), rng)


def test_dropout_active_context_manager():
    model = _mlp().train()
    with dropout_active(model) as drops:
        assert drops == [model[1][2]]
        assert [m.training for m in model.modules()] == [isinstance(m, nn.Dropout) for m in model.modules()]
        assert netuq.nn.mc_active()
    assert all(m.training for m in model.modules())
    assert not netuq.nn.mc_active()


# ----------------------------------------------------------------------------- what is sampled
@pytest.mark.parametrize(
    "layer",
    [nn.Dropout2d(0.5), nn.AlphaDropout(0.5), nn.FeatureAlphaDropout(0.5), nn.Dropout1d(0.5), netuq.nn.MCDropout(0.5)],
    ids=lambda m: type(m).__name__,
)
@pytest.mark.parametrize("seed", [None, 0])
def test_dropout_kinds_are_sampled(layer, seed):
    torch.manual_seed(0)
    conv = nn.Conv1d(2, 6, 1)
    shape = [nn.Unflatten(2, (5, 1))] if isinstance(layer, nn.Dropout2d) else []  # Dropout2d wants (N, C, H, W)
    model = nn.Sequential(conv, nn.BatchNorm1d(6), *shape, layer, nn.Flatten(), nn.Linear(6 * 5, 3)).eval()
    x = torch.randn(4, 2, 5)
    pred = netuq.MCDropout(model, samples=20, keep_samples=True, seed=seed)(x)
    assert pred.samples.shape == (20, 4, 3)
    assert float(pred.samples.std(0).min()) > 0  # every example varies across samples
    assert float(pred.epistemic.min()) > 0
    assert not model.training and not layer.training  # still in eval afterwards
    torch.testing.assert_close(model(x), model(x))  # plain eval is deterministic


@pytest.mark.parametrize("seed", [None, 5])
def test_seeded_masks_follow_dropout_semantics(seed):
    """Dropout(0.5) on ones gives 0 or 2 per element, each with frequency ~1/2, independent per row."""
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return x.sum(1, keepdim=True).expand(-1, 2)

    model = nn.Sequential(nn.Dropout(0.5), Probe())
    netuq.MCDropout(model, samples=40, seed=seed)(torch.ones(8, 25))
    masks = torch.cat(seen[1:])  # seen[0]: the dry run that measures the activations (once per shape)
    assert masks.shape == (320, 25)
    assert set(masks.unique().tolist()) <= {0.0, 2.0}
    assert abs(float((masks == 0).float().mean()) - 0.5) < 0.05
    assert masks.unique(dim=0).shape[0] == 320  # no two rows share a mask


@pytest.mark.parametrize("inplace", [False, True])
def test_seeded_feature_masks_are_per_channel(inplace):
    """Dropout2d drops whole channels: each (row, channel) map is all 0 or all 1/(1 - p)."""
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return x.flatten(1)[:, :3]

    model = nn.Sequential(nn.Dropout2d(0.25, inplace=inplace), Probe())
    netuq.MCDropout(model, samples=30, seed=0)(torch.ones(4, 16, 3, 5))
    maps = torch.cat(seen[1:]).flatten(2)  # (120, 16, 15); seen[0] is the one-sample dry run
    assert torch.equal(maps.amin(2), maps.amax(2))
    torch.testing.assert_close(maps.unique(), torch.tensor([0.0, 4 / 3]))
    assert abs(float((maps[..., 0] == 0).float().mean()) - 0.25) < 0.05


def _inplace_net(inplace: bool) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.5, inplace=inplace), nn.Linear(16, 3)).eval()


@pytest.mark.parametrize("max_batch", [8, 16, None])
def test_inplace_dropout_equals_out_of_place(max_batch):
    """Regression: with one sample per forward the cached trunk output was passed itself and in-place
    dropout wrote into it, so later samples were dropped on top of earlier ones."""
    x = torch.randn(8, 4)
    ref = netuq.MCDropout(_inplace_net(False), 50, seed=0, keep_samples=True)(x)
    got = netuq.MCDropout(_inplace_net(True), 50, max_batch=max_batch, seed=0, keep_samples=True)(x)
    torch.testing.assert_close(got.samples, ref.samples, atol=1e-6, rtol=0)


@pytest.mark.parametrize("seed", [None, 1])
@pytest.mark.parametrize("max_batch", [2, None])
def test_inplace_dropout_leaves_the_input_untouched(seed, max_batch):
    net = nn.Sequential(nn.Dropout(0.5, inplace=True), nn.Linear(4, 3)).eval()
    x = torch.ones(2, 4)
    netuq.MCDropout(net, 5, max_batch=max_batch, seed=seed)(x)
    assert torch.equal(x, torch.ones(2, 4))


def test_unseeded_inplace_dropout_does_not_accumulate_on_the_cached_trunk():
    """Every sample drops about half the units, not 1 - 0.5**(s + 1) of them."""
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return x[:, :3]

    net = nn.Sequential(nn.Linear(4, 200), nn.Softplus(), nn.Dropout(0.5, inplace=True), Probe()).eval()
    netuq.MCDropout(net, 6, max_batch=10)(torch.randn(10, 4))
    assert len(seen) == 6
    for rows in seen:
        assert abs(float((rows == 0).float().mean()) - 0.5) < 0.05


def test_functional_dropout_layer():
    layer = netuq.nn.MCDropout(0.5)
    x = torch.ones(4, 100)
    assert torch.equal(layer.eval()(x), x)
    assert bool((layer.train()(x) == 0).any())
    layer.eval()
    with netuq.nn.mc_sampling():
        assert bool((layer(x) == 0).any())
    with pytest.raises(ValueError, match="dropout probability"):
        netuq.nn.MCDropout(1.5)


class FunctionalNet(nn.Module):
    """Where users would write F.dropout(x, p, training=True) in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(3, 8), nn.Linear(8, 2)
        self.drop = netuq.nn.MCDropout(0.5)

    def forward(self, x):
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


def test_netuq_layer_in_custom_forward_is_sampled():
    torch.manual_seed(0)
    model = FunctionalNet().eval()
    x = torch.randn(6, 3)
    assert torch.equal(model(x), model(x))
    pred = netuq.MCDropout(model, samples=30, keep_samples=True, seed=1)(x)
    assert float(pred.samples.std(0).min()) > 0


# ----------------------------------------------------------------------------- seeds, caching, chunking
def test_same_seed_same_result_and_global_rng_untouched():
    model = _mlp().eval()
    x = torch.randn(5, 6)
    rng = torch.get_rng_state()
    a = netuq.MCDropout(model, samples=10, seed=7, keep_samples=True)(x)
    assert torch.equal(torch.get_rng_state(), rng)
    b = netuq.MCDropout(model, samples=10, seed=7, keep_samples=True)(x)
    c = netuq.MCDropout(model, samples=10, seed=8, keep_samples=True)(x)
    assert torch.equal(a.samples, b.samples)
    assert not torch.equal(a.samples, c.samples)
    torch.manual_seed(3)
    d = netuq.MCDropout(model, samples=10, keep_samples=True)(x)
    torch.manual_seed(3)
    e = netuq.MCDropout(model, samples=10, keep_samples=True)(x)
    assert torch.equal(d.samples, e.samples)


def test_sequential_trunk_auto_detected_and_equal_to_uncached():
    model = _mlp().eval()
    _randomise_bn(model)
    cached = netuq.MCDropout(model, samples=12, seed=4, keep_samples=True)
    uncached = netuq.MCDropout(Wrap(model), samples=12, seed=4, keep_samples=True)
    assert cached.caches_trunk and not uncached.caches_trunk
    # trunk = block 0 + Linear + ReLU of block 1 (recursed into the nested Sequential)
    assert [type(m).__name__ for m in cached._trunk.modules] == ["Sequential", "Linear", "ReLU"]
    assert [type(m).__name__ for m in cached._head.modules] == ["Dropout", "Linear"]
    x = torch.randn(5, 6)
    a, b = cached(x), uncached(x)
    torch.testing.assert_close(a.samples, b.samples, atol=1e-6, rtol=0)
    torch.testing.assert_close(a.epistemic, b.epistemic, atol=1e-6, rtol=0)


def test_trunk_runs_once_and_head_once_per_chunk():
    trunk_probe, head_probe = CountRows(), CountRows()
    model = nn.Sequential(nn.Linear(3, 4), trunk_probe, nn.Dropout(0.3), head_probe, nn.Linear(4, 2)).eval()
    netuq.MCDropout(model, samples=50)(torch.randn(8, 3))
    # first call for this shape: one dry run of the head measures its activations, then one chunk
    assert trunk_probe.rows == [8] and head_probe.rows == [8, 400]
    trunk_probe.rows.clear(), head_probe.rows.clear()
    netuq.MCDropout(model, samples=50)(torch.randn(8, 3))  # measured once per (model, shape): no dry run
    assert trunk_probe.rows == [8] and head_probe.rows == [400]
    trunk_probe.rows.clear(), head_probe.rows.clear()
    netuq.MCDropout(model, samples=50, max_batch=100)(torch.randn(8, 3))
    assert trunk_probe.rows == [8] and head_probe.rows == [80] * 5  # <= 100 rows, chunks balanced


@pytest.mark.parametrize("block_dropout", [False, True])
def test_declared_trunk_head_equal_to_uncached(block_dropout):
    torch.manual_seed(0)
    model = SmallCNN(1, 4, width=4, dropout=0.3, block_dropout=block_dropout).eval()
    _randomise_bn(model)
    x = torch.randn(3, 1, 8, 8)
    plain = netuq.MCDropout(model, samples=9, seed=2, keep_samples=True)
    assert not plain.caches_trunk
    b = plain(x)
    if block_dropout:  # the trunk holds dropout: it cannot be cached
        with pytest.raises(ValueError, match="`trunk` must not contain dropout"):
            netuq.MCDropout(model, trunk="features", head="head")
        return
    for trunk, head in (("features", "head"), (model.features, model.head), (model.embed, model.head)):
        a = netuq.MCDropout(model, samples=9, seed=2, keep_samples=True, trunk=trunk, head=head)(x)
        torch.testing.assert_close(a.samples, b.samples, atol=1e-6, rtol=0)


@pytest.mark.parametrize("max_batch", [4, 8, 12, 13, 40, 1000])
@pytest.mark.parametrize("cached", [True, False])
def test_max_batch_does_not_change_seeded_result(max_batch, cached):
    model = _mlp().eval()
    if not cached:
        model = Wrap(model)
    x = torch.randn(4, 6)
    ref = netuq.MCDropout(model, samples=10, seed=11, keep_samples=True)(x)
    got = netuq.MCDropout(model, samples=10, seed=11, keep_samples=True, max_batch=max_batch)(x)
    torch.testing.assert_close(got.samples, ref.samples, atol=1e-6, rtol=0)
    torch.testing.assert_close(got.aleatoric, ref.aleatoric, atol=1e-6, rtol=0)


def test_default_chunks_keep_the_stacked_input_under_the_cpu_budget():
    probe = CountRows()
    model = nn.Sequential(nn.Dropout(0.1), probe, nn.Flatten(), nn.LazyLinear(2)).eval()
    netuq.MCDropout(model, samples=50)(torch.randn(4, 1, 64, 64))
    # largest activation 4 x 4096 per sample -> 2**20 / 16384 = 64 samples; the memory cap (2**18
    # input elements) allows 16 -> 4 balanced chunks of 13 samples; the dry run (4 rows) comes first
    assert probe.rows == [4, 52, 52, 52, 44]


def test_default_chunks_follow_the_largest_activation_not_the_input():
    """Issue 14: the input of "dropout in every block" is small, its activations are not."""
    probe = CountRows()
    model = nn.Sequential(nn.Dropout(0.1), nn.Conv2d(1, 32, 3, padding=1), probe, nn.Flatten(), nn.LazyLinear(2))
    # (channels_last=False: no layout check, whose extra forward tests/test_layout.py counts)
    netuq.MCDropout(model.eval(), samples=50, channels_last=False)(torch.randn(8, 1, 28, 28))
    # input: 2**18 / (8 x 784) = 41 samples would fit; the conv output (8 x 32 x 784 per sample)
    # allows 2**20 / 200704 = 5 samples (40 rows) per forward
    assert probe.rows == [8] + [40] * 10
    probe.rows.clear()
    netuq.MCDropout(model, samples=50, channels_last=False)(torch.randn(8, 1, 28, 28))
    assert probe.rows == [40] * 10  # measured once per (model, device, shape)


def test_max_batch_smaller_than_batch_splits_rows():
    probe = CountRows()
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.3), probe, nn.Linear(4, 2)).eval()
    pred = netuq.MCDropout(model, samples=6, max_batch=3, seed=0)(torch.randn(8, 3))
    assert max(probe.rows) <= 3 and sum(probe.rows) == 48
    assert pred.probs.shape == (8, 2) and pred.num_samples == 6


@settings(max_examples=15)
@given(samples=st.integers(1, 9), n=st.integers(1, 5), max_batch=st.integers(1, 60))
def test_seeded_result_invariant_to_chunking_property(samples, n, max_batch):
    model = _mlp(with_bn=False).eval()
    x = torch.linspace(-1, 1, n * 6).reshape(n, 6)
    ref = netuq.MCDropout(model, samples=samples, seed=1, keep_samples=True)(x)
    got = netuq.MCDropout(model, samples=samples, seed=1, keep_samples=True, max_batch=max(max_batch, n))(x)
    torch.testing.assert_close(got.samples, ref.samples, atol=1e-6, rtol=0)
    assert got.num_samples == samples


# ----------------------------------------------------------------------------- numbers and shapes
def test_decomposition_by_hand():
    """Dropout(0.5) on a single input 1: logits (0, 0.5) when dropped, (2, 1.5) kept; closed forms."""
    lin = nn.Linear(1, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        lin.bias.copy_(torch.tensor([0.0, 0.5]))
    model = nn.Sequential(nn.Dropout(0.5), lin).eval()
    S = 40
    pred = netuq.MCDropout(model, samples=S, seed=0, keep_samples=True)(torch.ones(1, 1))
    kept = int((pred.samples[:, 0, 0] > 0.5).sum())  # samples whose unit survived (scaled to 2)
    assert 0 < kept < S
    p_drop = [1 / (1 + math.exp(0.5)), 1 - 1 / (1 + math.exp(0.5))]  # softmax(0, 0.5)
    p_keep = [1 / (1 + math.exp(-(2 - (-1.5)))), 0.0]  # softmax(2, -1.5)
    p_keep[1] = 1 - p_keep[0]
    p_bar = [((S - kept) * p_drop[c] + kept * p_keep[c]) / S for c in range(2)]

    def h(p):
        return -sum(q * math.log(q) for q in p)

    total = h(p_bar)
    aleatoric = ((S - kept) * h(p_drop) + kept * h(p_keep)) / S
    assert pred.probs[0].tolist() == pytest.approx(p_bar, abs=1e-6)
    assert float(pred.entropy[0]) == pytest.approx(total, abs=1e-6)
    assert float(pred.aleatoric[0]) == pytest.approx(aleatoric, abs=1e-6)
    assert float(pred.epistemic[0]) == pytest.approx(total - aleatoric, abs=1e-6)
    assert float(pred.variation_ratio[0]) == pytest.approx(1 - max(kept, S - kept) / S, abs=1e-6)


def test_segmentation_shapes_and_memory_mode():
    torch.manual_seed(0)
    model = SmallUNet(1, 3, width=4, dropout=0.2).eval()
    x = torch.randn(2, 1, 8, 8)
    pred = netuq.MCDropout(model, samples=5, keep_samples=True, seed=0)(x)
    assert pred.probs.shape == (2, 3, 8, 8)
    assert pred.entropy.shape == pred.aleatoric.shape == pred.epistemic.shape == (2, 8, 8)
    assert pred.samples.shape == (5, 2, 3, 8, 8)
    torch.testing.assert_close(pred.probs.sum(1), torch.ones(2, 8, 8))
    lean = netuq.MCDropout(model, samples=5, seed=0, max_batch=4)(x)
    assert lean.samples is None
    torch.testing.assert_close(lean.probs, pred.probs, atol=1e-6, rtol=0)


def test_gradients_when_requested():
    model = _mlp(with_bn=False).eval()
    x = torch.randn(3, 6, requires_grad=True)
    assert not netuq.MCDropout(model, samples=4)(x).log_probs.requires_grad
    pred = netuq.MCDropout(model, samples=4, no_grad=False, seed=0)(x)
    pred.log_probs[:, 0].sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_half_precision_computed_in_float32():
    model = _mlp(with_bn=False).eval().to(torch.bfloat16)
    pred = netuq.MCDropout(model, samples=4, seed=0)(torch.randn(3, 6, dtype=torch.bfloat16))
    assert pred.probs.dtype == torch.float32


# ----------------------------------------------------------------------------- errors
def test_model_without_dropout_raises():
    with pytest.raises(ValueError, match="`model` must contain a dropout module .* got none in Sequential"):
        netuq.MCDropout(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    with pytest.raises(ValueError, match="must contain a dropout module"):
        with dropout_active(nn.Linear(2, 2)):
            pass


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"samples": 0}, ValueError, "`samples` must be an integer >= 1, got 0"),
        ({"samples": 2.5}, ValueError, "`samples` must be an integer >= 1"),
        ({"max_batch": 0}, ValueError, "`max_batch` must be an integer >= 1 or None, got 0"),
        ({"seed": "a"}, TypeError, "`seed` must be an integer or None, got str"),
        ({"trunk": "features"}, ValueError, "`trunk` and `head` must be given together"),
        ({"trunk": "nope", "head": "head"}, ValueError, "`trunk` must name an attribute of the model, got 'nope'"),
        ({"trunk": "feature_dim", "head": "head"}, TypeError, "`trunk` must be a module, a callable"),
        ({"trunk": "features", "head": "features"}, ValueError, "`head` must contain a dropout module"),
    ],
)
def test_argument_errors(kwargs, err, match):
    model = SmallCNN(1, 3, width=4)
    with pytest.raises(err, match=match):
        netuq.MCDropout(model, **kwargs)


def test_call_errors():
    mc = netuq.MCDropout(_mlp(), samples=2)
    with pytest.raises(TypeError, match="`x` must be a tensor, got list"):
        mc([[1.0] * 6])
    with pytest.raises(ValueError, match=r"`x` must have shape \(N, ...\) with N >= 1"):
        mc(torch.zeros(0, 6))
    with pytest.raises(TypeError, match="`model` must be a torch.nn.Module, got function"):
        netuq.MCDropout(lambda x: x)

    class Pool(nn.Module):
        def __init__(self):
            super().__init__()
            self.drop = nn.Dropout(0.1)

        def forward(self, x):
            return self.drop(x).mean(0, keepdim=True)

    # (a mean over the rows mixes them: one sample per forward, the user's 3 rows)
    with pytest.raises(ValueError, match=r"`model` must return logits of shape \(N, C, ...\) with N = 3 rows"):
        netuq.MCDropout(Pool(), samples=2)(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="`trunk` must return a tensor with the batch"):
        netuq.MCDropout(Pool(), samples=2, trunk=lambda x: x[:1], head=Pool())(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="`logits` must (be finite|not contain NaN)"):
        netuq.MCDropout(nn.Sequential(nn.Dropout(0.1)), samples=2)(torch.full((2, 3), float("nan")))


def test_stochastic_modules_lists_each_once():
    shared = nn.Dropout(0.1)
    model = nn.Sequential(shared, nn.Linear(2, 2), shared, nn.Sequential(nn.Dropout3d(0.2)))
    assert [type(m).__name__ for m in stochastic_modules(model)] == ["Dropout", "Dropout3d"]


# ----------------------------------------------------------------------------- issue 22: layouts of the dropout input
class Layouts(nn.Module):
    """(N, T, F) input; the dropout input in one of several layouts the model moves its batch to."""

    def __init__(self, layout: str, drop: str, t: int = 5) -> None:
        super().__init__()
        self.layout, self.how, self.t = layout, drop, t
        self.lin, self.out = nn.Linear(6, 6), nn.Linear(6, 3)
        self.drop = {"module": nn.Dropout(0.5), "alpha": nn.AlphaDropout(0.5), "feature": nn.Dropout1d(0.5)}.get(drop)

    def _dropout(self, h: torch.Tensor) -> torch.Tensor:
        if self.how == "functional":
            return F.dropout(h, 0.5, self.training)
        return self.drop(h)

    def forward(self, x):  # x (N, T, F)
        h = self.lin(x)
        n = h.shape[0]
        if self.layout == "batch_first":  # (N, T, F)
            h = self._dropout(h)
        elif self.layout == "sequence_first":  # (T, N, F): nn.Transformer/RNN batch_first=False style
            h = self._dropout(h.transpose(0, 1)).transpose(0, 1)
        elif self.layout == "sequence_first_copy":  # (T, N, F) made contiguous
            h = self._dropout(h.transpose(0, 1).contiguous()).transpose(0, 1)
        elif self.layout == "flattened":  # (N·T, F): no dimension of N rows
            h = self._dropout(h.reshape(-1, 6)).reshape(n, -1, 6)
        elif self.layout == "feature_last":  # (F, T, N)
            h = self._dropout(h.permute(2, 1, 0).contiguous()).permute(2, 1, 0)
        return self.out(h).mean(1)


LAYOUTS = ["batch_first", "sequence_first", "sequence_first_copy", "flattened", "feature_last"]


def _one_per_forward(model: nn.Module, x: torch.Tensor, samples: int) -> torch.Tensor:
    """The reference: every sample in a forward of its own (nothing to split between samples)."""
    return netuq.MCDropout(model, samples=samples, seed=7, keep_samples=True, max_batch=len(x))(x).samples


@settings(max_examples=12)
@given(
    layout=st.sampled_from(LAYOUTS),
    drop=st.sampled_from(["module", "functional", "alpha", "feature"]),
    n=st.integers(1, 4),
    max_batch=st.integers(1, 40),
)
def test_seeded_masks_do_not_depend_on_max_batch_in_any_layout(layout, drop, n, max_batch):
    """Issue 22 item 9: a sequence-first dropout input (T, N, F) gave 0.30772 / 0.30767 / 0.30591
    for three max_batch values. Every sample's masks must be those it gets alone in a forward."""
    torch.manual_seed(0)
    model = Layouts(layout, drop).eval()
    x = torch.randn(n, 5, 6)
    ref = _one_per_forward(model, x, 7)
    got = netuq.MCDropout(model, samples=7, seed=7, keep_samples=True, max_batch=max(max_batch, n))(x).samples
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)
    default = netuq.MCDropout(model, samples=7, seed=7, keep_samples=True)(x).samples  # max_batch=None
    torch.testing.assert_close(default, ref, atol=1e-6, rtol=0)


def test_a_sequence_as_long_as_the_stacked_rows_is_not_mistaken_for_them():
    """T = k·N: two dimensions of k·N rows. Which is the batch cannot be told, so those samples run
    one per forward rather than drawing masks that depend on the grouping."""
    torch.manual_seed(0)
    model = Layouts("sequence_first", "module", t=8).eval()
    x = torch.randn(2, 8, 6)  # 4 samples per forward: 8 rows = T
    ref = _one_per_forward(model, x, 8)
    got = netuq.MCDropout(model, samples=8, seed=7, keep_samples=True, max_batch=8)(x).samples
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)


def test_seeded_sequence_first_masks_differ_between_samples():
    """Independent masks per sample (not one mask repeated): the samples are not all equal."""
    torch.manual_seed(0)
    model = Layouts("sequence_first", "module").eval()
    samples = netuq.MCDropout(model, samples=6, seed=1, keep_samples=True, max_batch=24)(torch.randn(4, 5, 6)).samples
    assert all(not torch.equal(samples[0], samples[s]) for s in range(1, 6))


# ----------------------------------------------------------------------------- gradients
class Checkpointed(nn.Module):
    """``block`` under torch.utils.checkpoint (``reentrant`` True / False; None: no checkpoint)."""

    def __init__(self, block: nn.Module, reentrant: bool | None) -> None:
        super().__init__()
        self.block, self.reentrant = block, reentrant
        self.head = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5), nn.Linear(8, 3))

    def forward(self, x):
        h = self.block(x) if self.reentrant is None else checkpoint(self.block, x, use_reentrant=self.reentrant)
        return self.head(h)


def _input_grad(model: nn.Module, x: torch.Tensor, seed: int | None = 0) -> torch.Tensor:
    x = x.clone().requires_grad_()
    torch.manual_seed(3)  # the global stream, for seed=None
    pred = netuq.MCDropout(model, samples=6, seed=seed, no_grad=False, max_batch=12)(x)  # no dry run
    pred.probs[:, 0].sum().backward()
    return x.grad


@pytest.mark.parametrize("reentrant", [True, False])
@pytest.mark.parametrize("seed", [0, None])
def test_checkpointing_a_deterministic_block_gives_the_reference_gradient(reentrant, seed):
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
    x = torch.randn(5, 4)
    model = Checkpointed(block, None).eval()
    ref = _input_grad(model, x, seed)
    model.reentrant = reentrant
    got = _input_grad(model, x, seed)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)
    assert got.abs().amax() > 1e-3  # a gradient that says something


@pytest.mark.parametrize("reentrant", [True, False, "sequential"])
@pytest.mark.parametrize("seed", [0, None])
def test_checkpointing_around_dropout_is_refused_not_differentiated_wrong(reentrant, seed):
    """Issue 22 item 8: backward recomputes the checkpointed block after sampling has switched
    dropout off: wrong input gradients (reentrant, off by 0.015) or torch's CheckpointError."""
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 8))
    if reentrant == "sequential":

        class Seq(Checkpointed):
            def forward(self, x):
                return self.head(checkpoint_sequential(self.block, 2, x, use_reentrant=False))

        model = Seq(block, None).eval()
    else:
        model = Checkpointed(block, reentrant).eval()
    flags = [m.training for m in model.modules()]
    with pytest.raises(RuntimeError, match=r"no_grad=False\)` cannot keep gradients through activation checkpointing"):
        _input_grad(model, torch.randn(5, 4), seed)
    assert [m.training for m in model.modules()] == flags  # modes restored on the error
    # the same model without a graph samples as usual (nothing is recomputed)
    pred = netuq.MCDropout(model, samples=4, seed=0)(torch.randn(5, 4))
    assert pred.probs.shape == (5, 3)


def test_checkpointing_functional_dropout_and_switched_batchnorm_is_refused():
    """Also a functional dropout call in the checkpointed block, and a BatchNorm in training mode
    there (sampling runs it in eval mode; the recompute would not)."""

    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 8)

        def forward(self, x):
            return F.dropout(self.lin(x), 0.3, self.training)

    x = torch.randn(5, 4)
    for block, train in ((Functional(), False), (nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8)), True)):
        model = Checkpointed(block, False).train(train)
        with pytest.raises(RuntimeError, match="activation checkpointing"):
            _input_grad(model, x)


# ----------------------------------------------------------------------------- issue 22: rows that mix
class CenterRows(nn.Module):
    """Subtracts the batch mean (a reduction over dim 0): each row's output depends on the others."""

    def forward(self, x):
        return x - x.mean(0, keepdim=True)


class BatchStats(nn.Module):
    """A custom layer normalising with the batch's statistics through F.batch_norm."""

    def forward(self, x):
        return F.batch_norm(x, None, None, training=True)


class ScaleByBatchMax(nn.Module):
    def forward(self, x):
        return x / x.abs().amax()


MIXING = {
    "bn_without_running_stats": lambda: nn.BatchNorm1d(8, track_running_stats=False),
    "center_rows": CenterRows,
    "f_batch_norm_training": BatchStats,
    "scale_by_batch_max": ScaleByBatchMax,
}


@pytest.mark.parametrize("kind", sorted(MIXING))
@pytest.mark.parametrize("max_batch", [None, 40])
@pytest.mark.parametrize("whole", [False, True])
def test_models_whose_rows_mix_are_sampled_one_sample_per_forward(kind, max_batch, whole):
    """Issue 22 item 7 (same pattern as TTA): stacked samples saw each other's rows through
    batch statistics or reductions over dim 0 (BatchNorm1d(track_running_stats=False): |Δp| 0.14).
    Every sample must be what it is in a forward of its own (max_batch = N)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.Dropout(0.3), MIXING[kind](), nn.ReLU(), nn.Linear(8, 3)).eval()
    model = Wrap(net) if whole else net
    x = torch.randn(4, 5)
    ref = netuq.MCDropout(model, samples=10, seed=0, keep_samples=True, max_batch=4)(x).samples
    got = netuq.MCDropout(model, samples=10, seed=0, keep_samples=True, max_batch=max_batch)(x).samples
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)


def test_models_whose_rows_do_not_mix_still_stack_samples():
    probe = CountRows()
    norms = nn.Sequential(nn.LayerNorm(8), nn.GroupNorm(2, 8), nn.BatchNorm1d(8).eval())
    model = nn.Sequential(nn.Linear(5, 8), nn.Dropout(0.3), norms, probe, nn.Linear(8, 3)).eval()
    netuq.MCDropout(model, samples=10, seed=0)(torch.randn(4, 5))
    assert max(probe.rows) > 4  # several samples per forward
