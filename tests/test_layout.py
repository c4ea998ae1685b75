"""netuq._layout: channels-last views, the first forward's check, and TTA through it."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import netuq
from netuq import _batching, tta
from netuq._layout import InputLayout, outputs_agree, to_channels_last, worth_trying
from netuq.models import SmallCNN, SmallUNet


class Counting(nn.Module):
    """The model, recording the strides of every input it is given."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.strides: list[tuple[int, ...]] = []

    def forward(self, x):
        self.strides.append(x.stride())
        return self.model(x)


class ViewsActivation(nn.Module):
    """A LeNet-style model: ``.view(N, -1)`` of a convolution's output (raises on channels-last)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        y = self.conv(x)
        return self.fc(y.view(y.shape[0], -1))


class ReadsMemory(nn.Module):
    """A "custom op" that reads its input's memory as if it were contiguous (a layout bug that
    raises nothing): only the first forward's comparison can catch it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        y = self.conv(x)
        flat = torch.as_strided(y, (y.numel(),), (1,))  # memory order, whatever the layout
        return flat.view(y.shape)


def _unet() -> nn.Module:
    torch.manual_seed(0)
    return SmallUNet(3, 4, width=4).eval()


def _cl(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and x.stride()[1] == 1


@pytest.mark.parametrize("shape", [(2, 1, 4, 3), (3, 3, 5, 7), (1, 2, 1, 1)])
def test_to_channels_last_keeps_values_and_gives_unit_channel_stride(shape):
    x = torch.randn(shape)
    y = to_channels_last(x)
    assert torch.equal(y, x) and y.stride()[1] == 1 and y.is_contiguous(memory_format=torch.channels_last)
    assert y.data_ptr() != x.data_ptr()  # a copy: the caller's tensor is never aliased


@settings(max_examples=40, deadline=None)
@given(
    scale=st.floats(1e-3, 1e4),
    rel=st.floats(0.0, 1e-2),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_outputs_agree_is_the_tolerance_it_states(scale, rel, dtype):
    """max |ref - other| <= sqrt(eps) * max(1, max |ref|), exactly (a closed form)."""
    ref = torch.linspace(-scale, scale, 11, dtype=dtype)
    bound = max(1.0, scale)
    other = ref.clone()
    other[3] += rel * bound
    expected = float((other - ref).abs().max()) <= torch.finfo(dtype).eps ** 0.5 * bound
    assert outputs_agree(ref, other) == expected


def test_outputs_agree_refuses_other_kinds():
    a = torch.ones(2, 3)
    assert not outputs_agree(a, a.double())  # dtype
    assert not outputs_agree(a, torch.ones(3, 2))  # shape
    assert not outputs_agree(a, (a,))  # not a tensor
    assert not outputs_agree(torch.tensor([1.0, float("nan")]), torch.tensor([1.0, float("nan")]))  # not finite
    assert not outputs_agree(torch.ones(2, dtype=torch.int64), torch.ones(2, dtype=torch.int64))
    assert outputs_agree(a.requires_grad_(), a.detach() + 1e-7)  # grads: compared detached


def test_worth_trying_only_cpu_eval_conv_modules_on_4d_float_inputs():
    net, x = _unet(), torch.randn(1, 3, 8, 8)
    assert worth_trying(net, x)
    assert not worth_trying(net, x.double().to(torch.int64))
    assert not worth_trying(nn.Linear(8, 2).eval(), x)  # no convolution
    assert not worth_trying(lambda t: net(t), x)  # not an nn.Module: nothing to inspect
    assert not worth_trying(net, x[:, :, 0])  # 3-d
    net.enc1[3].train()  # one dropout layer in training mode: the check would draw random numbers
    assert not worth_trying(net, x)


def test_first_forward_of_a_key_checks_then_every_call_runs_one_layout():
    net, x = Counting(_unet()).eval(), torch.randn(2, 3, 8, 8)
    layout = InputLayout(None)
    with torch.no_grad():
        first = layout.forward(net, x, "k", net)
        assert [_cl(torch.empty_strided((2, 3, 8, 8), s)) for s in net.strides] == [False, True]
        assert layout.decided == {"k": True}
        again = layout.forward(net, x, "k", net)
    assert len(net.strides) == 3 and net.strides[-1] == net.strides[1]  # no second check
    assert torch.equal(first, again)  # the first call returns the channels-last result too
    torch.testing.assert_close(first, net.model(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("model", [ViewsActivation(), ReadsMemory()], ids=["raises", "wrong"])
def test_a_model_that_depends_on_the_layout_stays_contiguous(model):
    model.eval()
    x = torch.randn(2, 3, 6, 6)
    layout = InputLayout(None)
    with torch.no_grad():
        out = layout.forward(model, x, "k", model)
        assert layout.decided == {"k": False}
        assert torch.equal(out, model(x)) and torch.equal(layout.forward(model, x, "k", model), model(x))


def test_settings_true_and_false_skip_the_check():
    net, x = Counting(_unet()).eval(), torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        InputLayout(True).forward(net, x, "k", net)
        InputLayout(False).forward(net, x, "k", net)
    assert [s[1] == 1 for s in net.strides] == [True, False]
    with pytest.raises(TypeError, match="`channels_last` must be None, True or False, got 'yes'"):
        InputLayout("yes")


def test_tta_default_equals_the_contiguous_run_and_returns_contiguous_results():
    net, x = _unet(), torch.randn(2, 3, 8, 12)  # not square: rotated views form their own shape
    pooled = nn.Sequential(net, nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    for task, model in (("segmentation", net), ("classification", pooled)):
        ref = netuq.TTA(model, tta.d4(), task=task, channels_last=False)
        fast = netuq.TTA(model, tta.d4(), task=task)
        for _ in range(2):
            a, b = fast(x), ref(x)
            for name in ("probs", "aleatoric", "epistemic"):
                torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=1e-5)
                assert getattr(a, name).is_contiguous(), name
            assert torch.equal(a.votes, b.votes) if hasattr(a, "votes") else True
        assert set(fast._layout.decided.values()) == {True} and len(fast._layout.decided) == 2


def test_tta_views_reach_the_model_channels_last_and_split_rows_keep_it(monkeypatch):
    monkeypatch.setitem(_batching.ACTIVATION_ELEMENTS, "cpu", 40)  # a few rows per forward once measured
    net = Counting(_unet()).eval()
    x = torch.randn(4, 3, 8, 8)
    ref = netuq.TTA(net.model, tta.d4(), task="segmentation", channels_last=False)(x)
    wrapper = netuq.TTA(net, tta.d4(), task="segmentation")
    for _ in range(2):
        pred = wrapper(x)
        torch.testing.assert_close(pred.probs, ref.probs, rtol=0, atol=1e-5)
    later = net.strides[-8:]
    assert all(s[1] == 1 for s in later)  # every forward of the second call: channels-last, split rows


@pytest.mark.parametrize("kind", ["tta", "ensemble"])
def test_pickled_before_the_layout_existed_still_loads(kind):
    if kind == "tta":
        wrapper = netuq.TTA(_unet(), tta.flips(), task="segmentation")
        state = wrapper.__getstate__()
    else:
        wrapper = netuq.Ensemble([_unet() for _ in range(2)])
        state = dict(wrapper.__dict__)
    state.pop("_layout")
    old = type(wrapper).__new__(type(wrapper))
    old.__setstate__(pickle.loads(pickle.dumps(state)))
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(old(x).probs, wrapper(x).probs, rtol=0, atol=1e-5)


def test_tta_rejects_a_bad_channels_last():
    with pytest.raises(TypeError, match="`channels_last`"):
        netuq.TTA(_unet(), tta.flips(), task="segmentation", channels_last=1)


def test_classification_networks_agree_across_layouts():
    """SmallCNN (grid pooling, flatten): the check passes and the results agree."""
    torch.manual_seed(0)
    net = SmallCNN(1, 10, width=4, grid=4).eval()
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        layout = InputLayout(None)
        out = layout.forward(net, x, "k", net)
    assert layout.decided == {"k": True}
    torch.testing.assert_close(out, net(x), rtol=0, atol=1e-5)


def test_ensemble_checks_each_member_once_per_shape_and_agrees_with_the_contiguous_loop():
    torch.manual_seed(0)
    members = [Counting(SmallCNN(3, 5, width=4)), Counting(SmallCNN(3, 5, width=4)), ViewsActivation()]
    x = torch.randn(4, 3, 6, 6)
    ref = netuq.Ensemble(members, channels_last=False)(x)
    for m in members[:2]:
        m.strides.clear()
    ens = netuq.Ensemble(members)
    for _ in range(3):
        pred = ens(x)
        torch.testing.assert_close(pred.probs, ref.probs, rtol=0, atol=1e-5)
        torch.testing.assert_close(pred.epistemic, ref.epistemic, rtol=0, atol=1e-5)
    for m in members[:2]:  # first call: as given, then channels-last (the check); later: channels-last
        assert [s[1] == 1 for s in m.strides] == [False, True, True, True]
    assert ens._layout.decided == {(k, (4, 3, 6, 6), torch.float32, torch.device("cpu")): k < 2 for k in range(3)}
    assert all(m.training for m in members[0].modules())  # the members' own modes are restored


def test_fit_channels_last_none_checks_once_without_side_effects_and_trains_the_same():
    from netuq.training import fit

    torch.manual_seed(0)
    x, y = torch.randn(32, 1, 12, 12), torch.randint(0, 3, (32,))
    init = SmallCNN(1, 3, width=4).state_dict()
    runs = {}
    for setting in (False, None):
        net = Counting(SmallCNN(1, 3, width=4))
        net.model.load_state_dict(init)
        fit(net, (x, y), val_data=(x, y), epochs=2, batch_size=8, seed=0, channels_last=setting)
        runs[setting] = net
    plain, fast = runs[False], runs[None]
    assert all(s[1] != 1 for s in plain.strides)
    # the check (eval mode, no grad): one forward in each layout; then every batch channels-last
    assert [s[1] == 1 for s in fast.strides[:2]] == [False, True] and all(s[1] == 1 for s in fast.strides[2:])
    assert len(fast.strides) == len(plain.strides) + 2
    for k, v in plain.state_dict().items():  # dropout is on 2-d features: the same masks, rounding only
        torch.testing.assert_close(fast.state_dict()[k], v, rtol=1e-4, atol=1e-5, msg=k)


def test_fit_keeps_a_layout_dependent_model_contiguous():
    from netuq.training import fit

    torch.manual_seed(0)
    x, y = torch.randn(16, 3, 6, 6), torch.randint(0, 5, (16,))
    model = ViewsActivation()
    history = fit(model, (x, y), epochs=1, batch_size=8, seed=0, channels_last=None)
    assert history.epochs_run == 1 and model.training  # trained, mode restored
    with pytest.raises(TypeError, match="`channels_last`"):
        fit(model, (x, y), epochs=1, channels_last="auto")


def test_compare_and_predict_run_a_plain_conv_model_channels_last_with_the_same_results():
    """A plain nn.Module through the engine (netuq.predict / compare): checked once per batch
    shape, then fed channels-last; segmentation logits come back contiguous, results unchanged."""
    from torch.utils.data import DataLoader, TensorDataset

    net = Counting(_unet()).eval()
    x, y = torch.randn(10, 3, 8, 8), torch.randint(0, 4, (10, 8, 8))
    loader = DataLoader(TensorDataset(x, y), batch_size=4)  # shapes 4, 4, 2: two checks
    pred, labels = netuq.predict(net, loader)
    with torch.no_grad():
        ref = net.model(x).log_softmax(1)
    torch.testing.assert_close(pred.log_probs, ref, rtol=0, atol=1e-5)
    assert pred.log_probs.is_contiguous() and torch.equal(labels, y)
    assert [s[1] == 1 for s in net.strides] == [False, True, True, False, True]
    # segmentation ensembles: the members' channels-last logits are summed as (N, C, H, W)
    ens = netuq.Ensemble([_unet(), _unet()])
    torch.testing.assert_close(ens(x).probs, netuq.Ensemble([_unet(), _unet()], channels_last=False)(x).probs,
                               rtol=0, atol=1e-5)
    assert ens(x).probs.is_contiguous()


@pytest.mark.parametrize("how", ["declared", "sequential"])
def test_mc_dropout_runs_the_cached_trunk_channels_last_and_the_head_as_before(how):
    """Only the deterministic trunk changes layout: its output comes back contiguous, so the head's
    (element-wise) dropout masks at a seed are those of channels_last=False; results agree to
    rounding, every call after the first runs the trunk channels-last, and the modes stay."""
    torch.manual_seed(0)
    net = SmallCNN(1, 4, width=4, dropout=0.5).eval()
    if how == "declared":
        kwargs = {"trunk": "features", "head": "head"}
        model = net
    else:
        kwargs = {}
        model = nn.Sequential(*net.features, *net.head).eval()
    trunk_input = Counting(nn.Identity())
    model_in = nn.Sequential(trunk_input, model).eval() if how == "sequential" else model
    x = torch.randn(6, 1, 12, 12)
    ref = netuq.MCDropout(model_in, samples=8, seed=3, channels_last=False, **kwargs)(x)
    mc = netuq.MCDropout(model_in, samples=8, seed=3, **kwargs)
    for _ in range(2):
        pred = mc(x)
        assert mc.caches_trunk
        torch.testing.assert_close(pred.probs, ref.probs, rtol=0, atol=1e-5)
        torch.testing.assert_close(pred.epistemic, ref.epistemic, rtol=0, atol=1e-5)
    assert list(mc._layout.decided.values()) == [True]
    assert not any(m.training for m in model_in.modules())
    if how == "sequential":  # the trunk saw: as given (ref), then as given + channels-last (check), channels-last
        assert [s[1] == 1 for s in trunk_input.strides] == [False, False, True, True]


class ElementwiseBlocks(nn.Module):
    """Element-wise dropout on a 4-d activation: unseeded masks follow the memory order."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.drop, self.head = nn.Conv2d(1, 4, 3, padding=1), nn.Dropout(0.5), nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.drop(self.conv(x)).mean((2, 3)))


@pytest.mark.parametrize(
    "model, seed, expected",
    [("dropout2d", 0, True), ("dropout2d", None, True), ("elementwise", 0, True), ("elementwise", None, False)],
)
def test_mc_dropout_samples_a_whole_model_channels_last_only_where_the_samples_are_the_same(model, seed, expected):
    """The first sampled forward is replayed channels-last on the same random state: kept only if
    the samples agree (feature dropout, or netuq's seeded masks), else the run as given is returned
    and the global stream left as that run left it (bit-identical to channels_last=False)."""
    torch.manual_seed(0)
    net = SmallCNN(1, 4, width=4, block_dropout=True).eval() if model == "dropout2d" else ElementwiseBlocks().eval()
    x = torch.randn(3, 1, 8, 8)
    runs = {}
    for setting in (False, None):
        counted = Counting(copy.deepcopy(net)).eval()  # its own rows-per-forward plan: its own dry run
        torch.manual_seed(5)  # the global stream (used when seed is None)
        wrapper = netuq.MCDropout(counted, samples=6, seed=seed, keep_samples=True, channels_last=setting)
        runs[setting] = (wrapper(x), torch.rand(1), wrapper)
    (ref, ref_next, _), (got, got_next, wrapper) = runs[False], runs[None]
    assert list(wrapper._layout.decided.values()) == [expected]
    if expected:
        torch.testing.assert_close(got.samples, ref.samples, rtol=0, atol=1e-5)
        assert got.probs.is_contiguous() and counted.strides[-1][1] == 1  # the check's forward
    else:
        assert torch.equal(got.samples, ref.samples)  # the run as given, on the same stream
    assert torch.equal(got_next, ref_next)  # the global stream continues as without the check
    assert not any(m.training for m in net.modules())


class ChannelNoise(nn.Module):
    """Random in eval mode, one draw per (row, channel): the draws do not depend on the layout."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y + torch.randn(y.shape[0], y.shape[1], 1, 1)


def test_compare_layouts_replays_the_random_state_and_leaves_the_stream_as_one_run():
    from netuq._layout import compare_layouts

    net, x = ChannelNoise().eval(), torch.randn(2, 1, 6, 6)
    rewound = []
    with torch.no_grad():
        torch.manual_seed(1)
        plain = net(x)
        want_next = torch.rand(())
        torch.manual_seed(1)
        out, agree = compare_layouts(lambda: net(x), lambda: net(to_channels_last(x)), lambda: rewound.append(1))
        got_next = torch.rand(())
    assert agree and rewound == [1] and out.stride()[1] == 1  # the same draws, replayed: channels-last kept
    torch.testing.assert_close(out, plain, rtol=0, atol=1e-5)
    assert torch.equal(got_next, want_next)  # the stream as after the one run as given

    def fails():
        raise RuntimeError("view size is not compatible")

    torch.manual_seed(1)
    out, agree = compare_layouts(lambda: net(x), fails)
    assert not agree
    torch.testing.assert_close(out, plain, rtol=0, atol=0)  # the run as given, same draws
