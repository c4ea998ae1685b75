"""methods/_structure.py through MCDropout: the stochastic tail found from the model's own execution
(cached only when proven, bit-identical seeded samples), attention dropout read from a module's
training flag, stochastic depth, and never silently identical samples."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import netuq
from netuq.methods._structure import Findings


def _whole(mc):
    mc._findings = Findings()  # sample the whole model: the uncached path
    return mc


class Net(nn.Module):
    """A custom forward (not a Sequential) with dropout before the classifier."""

    def __init__(self, post=None):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh())
        self.drop = nn.Dropout(0.4)
        self.fc = nn.Linear(16, 3)
        self.post = post

    def forward(self, x):
        h = self.body(x)
        out = self.fc(self.drop(h))
        return out if self.post is None else self.post(self, h, out)


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.4)
        self.fc = nn.Linear(16, 3)

    def forward(self, h):
        return self.fc(self.drop(h))


class HeadNet(Net):
    def __init__(self, post=None):
        super().__init__(post)
        self.head = Head()

    def forward(self, x):
        h = self.body(x)
        out = self.head(h)
        return out if self.post is None else self.post(self, h, out)


def test_tail_found_and_samples_bit_identical():
    torch.manual_seed(0)
    model = HeadNet().eval()
    x = torch.randn(5, 6)
    mc = netuq.MCDropout(model, samples=7, seed=3, keep_samples=True)
    got = mc(x)
    assert mc.caches_trunk and mc.tail == "head"
    ref = _whole(netuq.MCDropout(model, samples=7, seed=3, keep_samples=True))(x)
    assert torch.equal(got.samples, ref.samples)


@settings(max_examples=12)
@given(samples=st.integers(1, 8), n=st.integers(1, 4), max_batch=st.sampled_from([None, 1, 3, 40]))
def test_tail_equals_whole_model_property(samples, n, max_batch):
    torch.manual_seed(1)
    model = HeadNet().eval()
    x = torch.linspace(-1, 1, n * 6).reshape(n, 6)
    mb = None if max_batch is None else max(max_batch, n)
    got = netuq.MCDropout(model, samples=samples, seed=2, keep_samples=True, max_batch=mb)(x)
    ref = _whole(netuq.MCDropout(model, samples=samples, seed=2, keep_samples=True, max_batch=mb))(x)
    # stacked samples: the whole model's trunk runs on k·N rows, where a GEMM may round differently
    torch.testing.assert_close(got.samples, ref.samples, atol=1e-6, rtol=0)
    # one sample per forward (the user's own loop): bit-identical
    one = netuq.MCDropout(model, samples=samples, seed=2, keep_samples=True, max_batch=n)(x)
    loop = _whole(netuq.MCDropout(model, samples=samples, seed=2, keep_samples=True, max_batch=n))(x)
    assert torch.equal(one.samples, loop.samples)
    torch.testing.assert_close(one.samples, got.samples, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("post", "why"),
    [
        (lambda self, h, out: out.mul_(2), "output modified in place after the head"),
        (lambda self, h, out: out + 0.0, "output computed after the head"),
        (lambda self, h, out: self.head(h), "head called twice"),
        (lambda self, h, out: out if h.sum() > -1e9 else h, "returns the head output: tail proven"),
    ],
)
def test_tail_only_when_proven(post, why):
    torch.manual_seed(0)
    model = HeadNet(post).eval()
    x = torch.randn(4, 6)
    mc = netuq.MCDropout(model, samples=5, seed=0, keep_samples=True, max_batch=4)  # one sample per forward
    got = mc(x)
    assert (mc.tail == "head") == (why == "returns the head output: tail proven"), why
    ref = _whole(netuq.MCDropout(model, samples=5, seed=0, keep_samples=True, max_batch=4))(x)
    assert torch.equal(got.samples, ref.samples)


def test_no_tail_with_hooks_on_the_model_or_dropout_in_the_root_forward():
    torch.manual_seed(0)
    model = HeadNet().eval()
    handle = model.register_forward_hook(lambda m, a, o: o * 2)
    mc = netuq.MCDropout(model, samples=3, seed=0)
    mc(torch.randn(2, 6))
    assert mc.tail is None and not mc.caches_trunk
    handle.remove()

    class Functional(Net):
        def forward(self, x):
            return self.fc(F.dropout(self.body(x), 0.3, training=self.training))

    mc = netuq.MCDropout(Functional().eval(), samples=3, seed=0)
    mc(torch.randn(2, 6))
    assert mc.tail is None  # the first dropout is the root's own call: no module holds the tail


def test_tail_not_reached_falls_back_to_the_whole_model():
    class Branchy(HeadNet):
        def forward(self, x):
            h = self.body(x)
            return self.head(h) if x.shape[0] > 1 else self.fc(self.drop(h))

    torch.manual_seed(0)
    model = Branchy().eval()
    mc = netuq.MCDropout(model, samples=4, seed=0, keep_samples=True)
    mc(torch.randn(3, 6))
    assert mc.tail == "head"
    one = torch.randn(1, 6)
    got = mc(one)  # this path never calls `head`: the cache is given up, the result stays right
    assert not mc.caches_trunk
    ref = _whole(netuq.MCDropout(model, samples=4, seed=0, keep_samples=True))(one)
    assert torch.equal(got.samples, ref.samples)


# --------------------------------------------------------------------------- attention dropout
class Attention(nn.Module):
    """Like timm's fused Attention: dropout_p read from the module's own training flag."""

    def __init__(self, p=0.3, extra=False):
        super().__init__()
        self.qkv = nn.Linear(8, 24)
        self.p = p
        self.extra = extra

    def forward(self, x):
        q, k, v = self.qkv(x).reshape(x.shape[0], x.shape[1], 3, 2, 4).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.p if self.training else 0.0)
        out = out.transpose(1, 2).reshape(x.shape)
        return out * 2 if (self.extra and self.training) else out


class Tokens(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.attn = Attention(**kw)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.attn(x).mean(1))


def test_attention_dropout_is_sampled_seeded_and_invariant_to_chunking():
    torch.manual_seed(0)
    model = Tokens().eval()
    x = torch.randn(3, 5, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ref = netuq.MCDropout(model, samples=6, seed=1, keep_samples=True)(x)
    assert float(ref.samples.std(0).max()) > 1e-4
    for mb in (3, 6, 12):
        got = netuq.MCDropout(model, samples=6, seed=1, keep_samples=True, max_batch=mb)(x)
        torch.testing.assert_close(got.samples, ref.samples, atol=1e-6, rtol=0)
    assert not model.attn.training  # restored


def test_attention_whose_flag_changes_more_is_not_sampled_and_said():
    torch.manual_seed(0)
    model = Tokens(extra=True).eval()
    with pytest.warns(UserWarning, match=r"cannot sample attn \(Attention: attention dropout p=0.3; its training flag "
                      r"changes more than dropout\)"):
        mc = netuq.MCDropout(model, samples=3)
        with pytest.raises(ValueError, match="every MC sample would be identical"):  # nothing else samples
            mc(torch.randn(2, 5, 8))


# ----------------------------------------------------------------------------- stochastic depth
class DropPath(nn.Module):
    """timm's stochastic depth: one Bernoulli draw per row, scaled."""

    def __init__(self, drop_prob):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        if not self.training or self.drop_prob == 0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.drop_prob)
        return x * keep / (1 - self.drop_prob)


class Residual(nn.Module):
    def __init__(self, rate):
        super().__init__()
        self.block = nn.Linear(6, 6)
        self.path = DropPath(rate)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(x + self.path(self.block(x)))


def test_drop_path_is_sampled_per_row_and_seeded():
    torch.manual_seed(0)
    model = Residual(0.5).eval()
    x = torch.randn(4, 6)
    ref = netuq.MCDropout(model, samples=8, seed=0, keep_samples=True)(x)
    assert float(ref.samples.std(0).max()) > 1e-3
    got = netuq.MCDropout(model, samples=8, seed=0, keep_samples=True, max_batch=4)(x)
    torch.testing.assert_close(got.samples, ref.samples, atol=1e-6, rtol=0)
    assert not model.path.training


def test_stochastic_depth_batch_mode_is_said_not_sampled():
    tv_ops = pytest.importorskip("torchvision.ops")

    class Batchy(Residual):
        def __init__(self):
            super().__init__(0.0)
            self.path = tv_ops.StochasticDepth(0.3, "batch")

    with pytest.warns(UserWarning, match=r"cannot sample path \(StochasticDepth, p=0.3, one draw per batch\)"):
        netuq.MCDropout(Batchy().eval(), samples=2)


def test_all_p0_warns_instead_of_identical_samples_silently():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.0), nn.Linear(4, 2)).eval()
    with pytest.warns(UserWarning, match=r"all 4 samples of this batch are identical \(Sequential: its 1 dropout "
                      r"module\(s\) all have p = 0\)"):
        pred = netuq.MCDropout(model, samples=4)(torch.randn(3, 4))
    assert float(pred.epistemic.max()) == 0


def test_declared_trunk_accepts_p0_dropout_but_refuses_live_dropout():
    trunk = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.0))
    head = nn.Sequential(nn.Dropout(0.3), nn.Linear(4, 2))
    model = nn.Sequential(trunk, head).eval()
    mc = netuq.MCDropout(model, samples=3, trunk=trunk, head=head)
    assert mc(torch.randn(2, 4)).probs.shape == (2, 2)
    with pytest.raises(ValueError, match=r"`trunk` must not contain dropout modules .* got Dropout\(p=0.3\)"):
        netuq.MCDropout(model, samples=3, trunk=head, head=trunk)
