"""MC dropout for functional dropout calls and for dropout-free networks (netuq.nn.add_dropout).

References: the dropout laws (share of zeros, the 1/(1 − p) scale), a model with the same masks
run without trunk caching, and the plain eval-mode forward of the unmodified network.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netuq
from netuq.methods.mc_dropout import dropout_active
from netuq.models import SmallUNet


def _mode_on() -> bool:
    return torch._C._is_torch_function_mode_enabled()


class FunctionalNet(nn.Module):
    """The seed recipe's layout: F.dropout(x, p, training=self.training) in forward, BatchNorm."""

    def __init__(self, p: float = 0.5, fn=F.dropout) -> None:
        super().__init__()
        self.fc1, self.bn, self.fc2 = nn.Linear(6, 32), nn.BatchNorm1d(32), nn.Linear(32, 4)
        self.p, self.fn = p, fn

    def forward(self, x):
        h = torch.relu(self.bn(self.fc1(x)))
        return self.fc2(self.fn(h, self.p, training=self.training))


class Wrap(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


def test_functional_only_model_is_sampled_and_nothing_stays_on():
    torch.manual_seed(0)
    model = FunctionalNet().train()
    model.bn.eval()
    bn_state = copy.deepcopy(model.bn.state_dict())
    model.bn.train()
    x = torch.randn(5, 6)
    pred = netuq.MCDropout(model, samples=20, keep_samples=True)(x)
    assert float(pred.samples.std(0).min()) > 0 and float(pred.epistemic.min()) > 0
    for k, v in model.bn.state_dict().items():  # BatchNorm ran in eval mode: no statistic moved
        assert torch.equal(v, bn_state[k]), k
    assert model.training and model.bn.training and not _mode_on()
    model.eval()
    assert torch.equal(model(x), model(x))  # plain eval afterwards: deterministic again


def test_functional_seeded_reproducible_and_independent_of_max_batch():
    torch.manual_seed(0)
    model = FunctionalNet().eval()
    x = torch.randn(4, 6)
    state = torch.get_rng_state()
    ref = netuq.MCDropout(model, samples=12, seed=3, keep_samples=True)(x)
    assert torch.equal(torch.get_rng_state(), state)
    again = netuq.MCDropout(model, samples=12, seed=3, keep_samples=True)(x)
    assert torch.equal(again.samples, ref.samples)
    for max_batch in (4, 8, 20):
        got = netuq.MCDropout(model, samples=12, seed=3, keep_samples=True, max_batch=max_batch)(x)
        torch.testing.assert_close(got.samples, ref.samples, atol=1e-6, rtol=0)
    other = netuq.MCDropout(model, samples=12, seed=4, keep_samples=True)(x)
    assert not torch.allclose(other.samples, ref.samples)


class Both(nn.Module):
    """A dropout module and a functional call in series on ones: both sampled => 3/4 zeros."""

    def __init__(self, record: list) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.5)
        self.record = record

    def forward(self, x):
        h = F.dropout(self.drop(x), 0.5, training=self.training)
        self.record.append(h.clone())
        return h[:, :3]


@pytest.mark.parametrize("max_batch", [80, None])
@pytest.mark.parametrize("seed", [None, 0])
def test_model_with_both_samples_both(seed, max_batch):
    seen: list = []
    model = Both(seen).eval()
    for _ in range(2):  # default arguments: the dry run (1st call) finds the functional call, the mode stays on
        seen.clear()
        netuq.MCDropout(model, samples=10, seed=seed, max_batch=max_batch)(torch.ones(8, 500))
    h = torch.cat(seen)
    assert h.shape == (80, 500)
    assert abs(float((h == 0).float().mean()) - 0.75) < 0.02
    assert set(h.unique().tolist()) == {0.0, 4.0}  # kept units scaled by 1/(1 − p) twice


@pytest.mark.parametrize(
    ("fn", "shape", "feature"),
    [
        (F.dropout, (6, 40), False),
        (F.dropout1d, (6, 40, 3), True),
        (F.dropout2d, (6, 40, 2, 3), True),
        (F.dropout3d, (6, 40, 2, 1, 2), True),
        (lambda x, p, training: torch.dropout(x, p, training), (6, 40), False),
        (lambda x, p, training: torch.feature_dropout(x, p, training), (6, 40, 3), True),
        (F.alpha_dropout, (6, 40), None),
        (F.feature_alpha_dropout, (6, 40, 3), None),
    ],
)
def test_functional_kinds(fn, shape, feature):
    seen: list = []

    class Net(nn.Module):
        def forward(self, x):
            h = fn(x, 0.4, training=self.training)
            seen.append(h.clone())
            return h.flatten(1)[:, :3]

    x = torch.ones(shape)
    ref = netuq.MCDropout(Net().eval(), samples=10, seed=1, keep_samples=True, max_batch=60)(x)
    h = torch.cat(seen)
    if feature is not None:  # dropout law: 0 or 1/(1 − p), ~p zeros; feature kinds drop whole channels
        values = h.unique()
        assert values.numel() == 2 and values[0] == 0 and float(values[1]) == pytest.approx(1 / 0.6)
        assert abs(float((h == 0).float().mean()) - 0.4) < 0.08
        if feature:
            flat = h.flatten(2)
            assert torch.equal(flat.amin(2), flat.amax(2))
    else:  # alpha dropout: changes values, keeps mean ~0 … only check it is stochastic
        assert float(h.std()) > 0
    got = netuq.MCDropout(Net().eval(), samples=10, seed=1, keep_samples=True, max_batch=12)(x)
    torch.testing.assert_close(got.samples, ref.samples, atol=1e-6, rtol=0)


class FuncBlock(nn.Module):
    """A Sequential child with functional dropout: its trunk is not deterministic."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 16)

    def forward(self, x):
        return F.dropout(torch.relu(self.fc(x)), 0.5, training=self.training)


def test_functional_dropout_in_an_auto_trunk_gives_the_trunk_up():
    torch.manual_seed(0)
    model = nn.Sequential(FuncBlock(), nn.Linear(16, 16), nn.Dropout(0.3), nn.Linear(16, 3)).eval()
    mc = netuq.MCDropout(model, samples=8, seed=2, keep_samples=True)
    assert mc.caches_trunk  # found from the modules ...
    got = mc(torch.randn(4, 6))
    assert not mc.caches_trunk  # ... and given up once the trunk was seen calling dropout
    torch.manual_seed(1)
    x = torch.randn(4, 6)
    got = mc(x)
    ref = netuq.MCDropout(Wrap(model), samples=8, seed=2, keep_samples=True)(x)  # never cached
    torch.testing.assert_close(got.samples, ref.samples, atol=1e-6, rtol=0)
    assert float(got.samples.std(0).min()) > 0


def test_functional_dropout_in_a_declared_trunk_raises():
    model = nn.Sequential(FuncBlock(), nn.Dropout(0.3), nn.Linear(16, 3))
    mc = netuq.MCDropout(model, samples=4, trunk=model[0], head=nn.Sequential(model[1], model[2]))
    with pytest.raises(ValueError, match="`trunk` must be deterministic, but it called dropout"):
        mc(torch.randn(2, 6))
    assert not _mode_on() and model.training


def test_dropout_free_models_raise_and_point_to_add_dropout():
    class NoDrop(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(x)

    mc = netuq.MCDropout(NoDrop(), samples=3)  # a custom forward might call F.dropout: checked at the call
    with pytest.raises(ValueError, match=r"no functional dropout call was seen") as err:
        mc(torch.randn(2, 3))
    assert "netuq.nn.add_dropout" in str(err.value) and "TorchScript" in str(err.value)
    with pytest.raises(ValueError, match="add_dropout"):  # built-ins only: known at construction
        netuq.MCDropout(nn.Sequential(nn.Linear(3, 2)))
    with pytest.raises(ValueError, match="no functional dropout call was seen in the block"):
        with dropout_active(NoDrop()):
            NoDrop()(torch.randn(2, 3))
    assert not _mode_on()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_dropout_is_reported():
    class Inner(nn.Module):
        def forward(self, x):
            return F.dropout(x, 0.5, training=self.training)

    model = nn.Sequential(nn.Linear(3, 4), torch.jit.script(Inner()), nn.Linear(4, 2))
    with pytest.warns(UserWarning, match=r"TorchScript modules \(\w+\): dropout inside them cannot be switched"):
        mc = netuq.MCDropout(model, samples=3)
    with pytest.raises(ValueError, match="no functional dropout call was seen"):
        mc(torch.randn(2, 3))


def test_dropout_active_switches_functional_dropout_on_and_off():
    torch.manual_seed(0)
    model = FunctionalNet().eval()
    x = torch.randn(3, 6)
    with torch.no_grad(), dropout_active(model) as drops:
        outs = torch.stack([model(x) for _ in range(5)])
    assert drops == [] and float(outs.std(0).min()) > 0
    assert not _mode_on() and not model.training
    assert torch.equal(model(x), model(x))


# ----------------------------------------------------------------------------- add_dropout
class Block(nn.Module):
    """A torchvision-style BasicBlock: conv-BN-ReLU-conv-BN + identity, no dropout."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class TinyResNet(nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(Block(8), Block(8))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        x = self.layer1(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _trained_resnet() -> TinyResNet:
    torch.manual_seed(0)
    net = TinyResNet()
    net.train()
    with torch.no_grad():
        net(torch.randn(16, 1, 8, 8))  # BatchNorm statistics away from their defaults
    return net.eval()


def test_add_dropout_keeps_state_dict_and_eval_outputs():
    net = _trained_resnet()
    state = copy.deepcopy(net.state_dict())
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        y = net(x)
    assert netuq.nn.add_dropout(net, 0.3) is net  # in place, returned
    assert isinstance(net.fc.mc_dropout, netuq.nn.MCDropout) and net.fc.mc_dropout.p == 0.3
    assert list(net.state_dict()) == list(state)  # same keys, same order
    net.load_state_dict(state, strict=True)  # the original weights load into the modified model
    fresh = TinyResNet()
    fresh.load_state_dict(net.state_dict(), strict=True)  # and the modified model's into the original
    with torch.no_grad():
        assert torch.equal(net(x), y)  # eval mode: dropout is the identity
    clone = copy.deepcopy(net)
    with torch.no_grad():
        assert torch.equal(clone(x), y)


def test_add_dropout_makes_a_resnet_samplable_without_touching_batchnorm():
    net = netuq.nn.add_dropout(_trained_resnet(), 0.5)
    bn = copy.deepcopy(net.bn1.state_dict())
    x = torch.randn(3, 1, 8, 8)
    pred = netuq.MCDropout(net, samples=16, seed=0, keep_samples=True)(x)
    assert float(pred.samples.std(0).min()) > 0 and float(pred.epistemic.min()) > 0
    assert all(torch.equal(v, bn[k]) for k, v in net.bn1.state_dict().items())
    again = netuq.MCDropout(net, samples=16, seed=0, keep_samples=True, max_batch=6)(x)
    torch.testing.assert_close(again.samples, pred.samples, atol=1e-6, rtol=0)
    assert not net.training and not net.fc.mc_dropout.training
    # the inserted dropout drops the classifier's input: by hand with the same kept units
    feats = torch.flatten(net.avgpool(net.layer1(torch.relu(net.bn1(net.conv1(x))))), 1)
    with torch.no_grad(), netuq.nn.mc_sampling():
        torch.manual_seed(5)
        out = net.fc(feats)
        torch.manual_seed(5)
        ref = F.linear(F.dropout(feats, 0.5, training=True), net.fc.weight, net.fc.bias)
    torch.testing.assert_close(out, ref)


def test_add_dropout_default_targets_and_trunk_caching():
    unet = SmallUNet(1, 3, width=4, dropout=0.0)
    netuq.nn.add_dropout(unet, 0.1)
    assert isinstance(unet.head.mc_dropout, netuq.nn.MCDropout)  # the final 1x1 classifier
    seq = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    netuq.nn.add_dropout(seq, 0.2, before=["2", seq[4]])
    assert hasattr(seq[2], "mc_dropout") and hasattr(seq[4], "mc_dropout") and not hasattr(seq[0], "mc_dropout")
    mc = netuq.MCDropout(seq, samples=6, seed=0, keep_samples=True)
    assert mc.caches_trunk  # Linear + ReLU run once
    x = torch.randn(5, 4)
    ref = netuq.MCDropout(Wrap(seq), samples=6, seed=0, keep_samples=True)(x)
    torch.testing.assert_close(mc(x).samples, ref.samples, atol=1e-6, rtol=0)


def test_add_dropout_errors():
    net = TinyResNet()
    with pytest.raises(ValueError, match=r"`p` must be a probability in \[0, 1\), got 1.0"):
        netuq.nn.add_dropout(net, 1.0)
    with pytest.raises(ValueError, match="`before` must name submodules of the model .* got 'head'"):
        netuq.nn.add_dropout(net, 0.1, before="head")
    with pytest.raises(ValueError, match="`before` must be submodules of the model, got a Linear"):
        netuq.nn.add_dropout(net, 0.1, before=nn.Linear(2, 2))
    with pytest.raises(ValueError, match="`before` must name at least one layer"):
        netuq.nn.add_dropout(net, 0.1, before=[])
    with pytest.raises(TypeError, match="`before` must be layer names or modules, got int"):
        netuq.nn.add_dropout(net, 0.1, before=[3])
    with pytest.raises(ValueError, match="has no nn.Linear or 1x1 nn.Conv2d"):
        netuq.nn.add_dropout(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()), 0.1)
    with pytest.raises(TypeError, match="`model` must be a torch.nn.Module, got str"):
        netuq.nn.add_dropout("net", 0.1)
    netuq.nn.add_dropout(net, 0.1, before="layer1.0.conv2")
    with pytest.raises(ValueError, match="'layer1.0.conv2' already has MC dropout"):
        netuq.nn.add_dropout(net, 0.1, before="layer1.0.conv2")


def test_function_mode_only_where_functional_dropout_was_seen():
    """Modules only: the dry run finds no functional call, the forwards run without the mode (no per-op cost)."""
    seen: list = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(_mode_on())
            return x[:, :3]

    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), Probe()).eval()
    netuq.MCDropout(model, samples=6)(torch.randn(2, 4))
    assert seen[0] and not any(seen[1:])  # seen[0]: the dry run, always intercepted
    seen.clear()
    both = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), FuncTail(), Probe()).eval()
    netuq.MCDropout(both, samples=6)(torch.randn(2, 4))
    assert all(seen)


class FuncTail(nn.Module):
    def forward(self, x):
        return F.dropout(x, 0.1, training=self.training)


class _WholeModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body, self.drop, self.out = nn.Linear(6, 8), nn.Dropout(0.5), nn.Linear(8, 3)

    def forward(self, x):
        return self.out(self.drop(self.body(x)))


# ----------------------------------------------------------------------------- compiled models
@pytest.mark.slow  # torch.compile traces the model (dynamo): a few seconds
def test_a_compiled_model_is_sampled_as_the_uncompiled_one_and_not_reported():
    """The warning said dropout in compiled modules cannot be switched on; it is (through
    ``_orig_mod``), and seeded or unseeded the samples are the uncompiled model's (eager backend:
    the same kernels; inductor was measured bit-identical with a seed)."""
    import warnings

    torch.manual_seed(0)
    model = _WholeModel().eval()  # not a Sequential: sampled whole, as the compiled one
    compiled = torch.compile(model, backend="eager")
    x = torch.randn(3, 6)
    for seed in (0, None):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no warning
            torch.manual_seed(1)
            got = netuq.MCDropout(compiled, samples=6, seed=seed, keep_samples=True, max_batch=9)(x).samples
        torch.manual_seed(1)
        ref = netuq.MCDropout(model, samples=6, seed=seed, keep_samples=True, max_batch=9)(x).samples
        assert torch.equal(got, ref) and float(ref.std(0).amax()) > 0
