"""Adversarial checks of TTA's fast segmentation pass, kept buffers, row splitting and linear sums
(commit 4bc010e), each against the plain reference: Prediction.add_log_probs over every
de-augmented view, in float64."""

from __future__ import annotations

import copy
import pickle
import threading

import pytest
import torch
from reference.tta_reference import tta_reference
from torch import nn

import netuq
from netuq import _batching, tta
from netuq.models import SmallCNN


def _views_log_probs(model, transforms, x):
    with torch.no_grad():
        return torch.stack([v.deaugment(model(v.augment(x)).double().log_softmax(1), x.shape[-2:]) for v in transforms])


def _merged(log_p, merge):
    """gmean / max / tsharpen of (V, N, C, ...) log-probabilities, renormalised over C."""
    if merge == "gmean":
        acc = log_p.mean(0)
    elif merge == "max":
        acc = log_p.amax(0)
    else:
        acc = torch.logsumexp(tta.TSHARPEN_T * log_p, 0)
    return torch.softmax(acc, 1)


def _assert_same(pred, ref, atol=1e-6):
    assert pred.num_samples == ref.num_samples
    for name in ("log_probs", "probs", "entropy", "aleatoric", "epistemic", "variation_ratio"):
        got = getattr(pred, name).double()
        torch.testing.assert_close(got, getattr(ref, name), atol=atol, rtol=1e-5, msg=name)


def _conv() -> nn.Module:
    torch.manual_seed(0)
    return nn.Conv2d(3, 4, 3, padding=1).eval()


CONV = _conv()


class ChannelsLast(nn.Module):
    def forward(self, x):
        return CONV(x).contiguous(memory_format=torch.channels_last)


class TransposedLayout(nn.Module):  # (N, C, H, W) logits stored as (N, C, W, H): x.mT-contiguous
    def forward(self, x):
        return CONV(x.mT.contiguous()).mT


class ChannelSlice(nn.Module):  # a non-dense view of a bigger tensor
    def forward(self, x):
        return torch.cat([x, 2 * x], 1)[:, 1:5]


class Downsampled(nn.Module):  # outputs at half resolution, a strided view
    def forward(self, x):
        return CONV(x)[..., ::2, ::2]


class OneClass(nn.Module):
    def forward(self, x):
        return 3 * x[:, :1]


class TwoClasses(nn.Module):
    def forward(self, x):
        return 3 * x[:, :2]


MODELS = {
    "conv": CONV, "channels_last": ChannelsLast(), "transposed": TransposedLayout(), "slice": ChannelSlice(),
    "downsampled": Downsampled(), "C=1": OneClass(), "C=2": TwoClasses(),
}  # fmt: skip
COMPOSES = {
    "d4": tta.d4,
    "flip-rot-shift": lambda: tta.Compose([tta.HorizontalFlip(), tta.Rotate90([90, 180, 270]), tta.Shift([(1, -2)])]),
    "zeros-shift": lambda: tta.Compose([tta.VerticalFlip(), tta.Rotate90([90, 270]), tta.Shift([(1, -1)], "zeros")]),
    "rotation-first": lambda: tta.Compose([tta.Rotate90([270, 0]), tta.HorizontalFlip(), tta.Multiply([0.9])]),
}


@pytest.mark.parametrize("compose", list(COMPOSES))
@pytest.mark.parametrize("model", list(MODELS))
def test_fast_pass_equals_reference_for_odd_layouts_and_view_orders(model, compose):
    """Non-square and N=1 inputs, outputs in channels_last / transposed / strided / sliced layouts,
    one or two classes, a rotated view first (its terms start the transposed buffers)."""
    net, transforms = MODELS[model], COMPOSES[compose]()
    for x in (torch.randn(1, 3, 5, 7, generator=torch.Generator().manual_seed(1)), torch.randn(2, 3, 6, 6)):
        _assert_same(netuq.TTA(net, transforms, task="segmentation")(x), tta_reference(net, transforms, x))
        kept = netuq.TTA(net, transforms, task="segmentation", keep_samples=True)(x)
        _assert_same(kept, tta_reference(net, transforms, x))
        torch.testing.assert_close(kept.samples.double(), _views_log_probs(net, transforms, x).exp(), atol=1e-6, rtol=0)


class Tied(nn.Module):
    """Classes 0 and 1 tie on part of the pixels (the fast pass must fall back to the exact one)."""

    def forward(self, x):
        z = torch.zeros(x.shape[0], 3, *x.shape[-2:])
        z[:, 2] = torch.where(x[:, 0] > 0, -1.0, 1.0)
        z[:, 1] = torch.where(x[:, 1] > 0, z[:, 0], z[:, 0] - 2 * x[:, 2].abs())
        return z


@pytest.mark.parametrize("merge", ["gmean", "max", "tsharpen"])
@pytest.mark.parametrize("model", ["conv", "transposed", "tied"])
def test_other_merges_through_the_fast_pass_equal_the_plain_merge(merge, model):
    net = Tied() if model == "tied" else MODELS[model]
    transforms, x = COMPOSES["flip-rot-shift"](), torch.randn(2, 3, 5, 7)
    pred = netuq.TTA(net, transforms, task="segmentation", merge=merge)(x)
    want = _merged(_views_log_probs(net, transforms, x), merge)
    torch.testing.assert_close(pred.probs.double(), want, atol=1e-6, rtol=0)
    ref = tta_reference(net, transforms, x)
    for name in ("aleatoric", "epistemic", "variation_ratio"):
        torch.testing.assert_close(pred.scores[f"view_{name}"].double(), getattr(ref, name), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("merge", ["mean", "gmean", "max", "tsharpen"])
@pytest.mark.parametrize("max_batch", [None, 1])
def test_nan_in_one_view_of_a_rotated_group_is_refused_for_every_merge(merge, max_batch):
    def poisoned(x):  # NaN at one pixel of the last view of the 5 x 7 group only
        z = CONV(x)
        if x.shape[-1] == 7:
            z[-1, 1, 2, 3] = float("nan")
        return z

    with pytest.raises(ValueError, match="`logits` must (not contain NaN|be finite or -inf)"):
        netuq.TTA(poisoned, tta.d4(), task="segmentation", merge=merge, max_batch=max_batch)(torch.randn(1, 3, 5, 7))


def test_kept_buffers_never_leak_between_shapes_channels_and_dtypes():
    """One wrapper (and thread) alternating N, H x W, class counts and dtypes: every call equals a
    fresh wrapper's bit for bit."""
    wrapper = netuq.TTA(lambda x: 2 * x, tta.d4(), task="segmentation")
    shapes = [(2, 3, 5, 7), (2, 3, 7, 5), (1, 3, 5, 7), (2, 5, 5, 7), (3, 3, 6, 6), (2, 3, 5, 7)]
    for i, shape in enumerate(shapes * 2):
        x = torch.randn(shape, dtype=torch.float64 if i % 3 == 2 else torch.float32)
        pred, fresh = wrapper(x), netuq.TTA(lambda x: 2 * x, tta.d4(), task="segmentation")(x)
        for name in ("probs", "aleatoric", "variation_ratio"):
            assert torch.equal(getattr(pred, name), getattr(fresh, name)), (shape, name)
        _assert_same(pred, tta_reference(lambda x: 2 * x, tta.d4(), x))


def test_models_returning_their_input_or_broadcast_views_leave_the_input_alone():
    x = torch.randn(2, 3, 5, 7)
    x0 = x.clone()
    pred = netuq.TTA(lambda t: t, tta.d4(), task="segmentation")(x)  # the identity view's logits are x itself
    assert torch.equal(x, x0)
    _assert_same(pred, tta_reference(lambda t: t, tta.d4(), x0))

    def expanded(t):  # stride-0 spatial dims: one logit vector per image
        return CONV(t)[:, :, :1, :1].expand(-1, -1, *t.shape[-2:])

    _assert_same(netuq.TTA(expanded, tta.d4(), task="segmentation")(x), tta_reference(expanded, tta.d4(), x))


def test_more_than_255_views_count_votes_in_int32():
    transforms = tta.Compose([tta.Multiply([1 + i / 1000 for i in range(1, 256)]), tta.Rotate90([90])])
    x = torch.randn(1, 3, 2, 3)
    pred = netuq.TTA(CONV, transforms, task="segmentation")(x)
    assert pred.num_samples == 512 and pred._votes.dtype == torch.int32
    _assert_same(pred, tta_reference(CONV, transforms, x), atol=1e-5)  # 512 float32 terms per sum


class StaticOutput(nn.Module):
    """Writes its logits into one preallocated buffer and returns a slice of it, as CUDA-graph
    replays, torch.compile(mode="reduce-overhead") and IO-bound runtimes (ONNX/TensorRT) do."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(3 * 4 * 4, 5)
        self.register_buffer("out", torch.empty(1024, 5))

    def forward(self, x):
        return self.out[: x.shape[0]].copy_(self.linear(x.flatten(1)))


def test_split_rows_are_copied_before_the_next_forward(monkeypatch):
    """DEFECT: TTA._forward keeps every part of a split forward and concatenates them at the end;
    a model that returns the same memory every call has by then overwritten all parts but the last."""
    monkeypatch.setitem(_batching.ACTIVATION_ELEMENTS, "cpu", 40)  # a few rows per forward once measured
    model, x = StaticOutput().eval(), torch.randn(12, 3, 4, 4)
    wrapper = netuq.TTA(model, tta.flips())
    ref = tta_reference(model, tta.flips(), x, task="classification")
    _assert_same(wrapper(x), ref)  # the first call measures: one forward per chunk, no split
    _assert_same(wrapper(x), ref)  # later calls split the rows


@pytest.mark.parametrize("case", ["underflowing-class", "max-merge"])
def test_no_grad_false_backpropagates_where_sums_leave_linear_space(case):
    """DEFECT (before 4bc010e too): with gradients on, LogSum's log-space parts and merge="max"
    update their accumulators with out=, which autograd refuses."""
    torch.manual_seed(0)
    net = nn.Conv2d(3, 3, 1)

    def spiky(x):  # one pixel where classes 1 and 2 get ~exp(-200) < float32's linear floor
        z = net(x)
        bump = torch.zeros_like(z)
        bump[:, 0, 0, 0] = 200.0 if case == "underflowing-class" else 0.0
        return z + bump

    x = torch.randn(1, 3, 4, 5, requires_grad=True)
    merge = "max" if case == "max-merge" else "mean"
    pred = netuq.TTA(spiky, tta.flips(), task="segmentation", merge=merge, no_grad=False)(x)
    pred.probs[:, 0].sum().backward()
    got = x.grad.clone()
    x.grad = None
    log_p = torch.stack([v.deaugment(spiky(v.augment(x)).log_softmax(1), (4, 5)) for v in tta.flips()])
    ref = log_p.exp().mean(0) if merge == "mean" else torch.softmax(log_p.amax(0), 1)
    ref[:, 0].sum().backward()
    torch.testing.assert_close(got, x.grad)


@pytest.mark.parametrize("merge", ["mean", "gmean", "tsharpen"])
def test_no_grad_false_gradients_of_entropies_through_the_transposed_buffers(merge):
    torch.manual_seed(0)
    net, transforms = nn.Conv2d(3, 4, 3, padding=1), COMPOSES["flip-rot-shift"]()
    x, weights = torch.randn(2, 3, 3, 5, requires_grad=True), torch.randn(2, 3, 5)
    pred = netuq.TTA(net, transforms, task="segmentation", merge=merge, no_grad=False)(x)
    aleatoric = pred.aleatoric if merge == "mean" else pred.scores["view_aleatoric"]
    ((aleatoric + pred.probs[:, 0]) * weights).sum().backward()
    got = x.grad.clone()
    x.grad = None
    log_p = torch.stack([v.deaugment(net(v.augment(x)).log_softmax(1), (3, 5)) for v in transforms])
    merged = log_p.exp().mean(0) if merge == "mean" else _merged(log_p, merge)
    ((-(log_p.exp() * log_p).sum(2).mean(0) + merged[:, 0]) * weights).sum().backward()
    torch.testing.assert_close(got, x.grad)


class _Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * x

    @staticmethod
    def backward(ctx, grad):
        return 2 * grad


class Exotic(nn.Module):
    """Torch functions returning tuples, namedtuples, nested tuples (LSTM), sizes and a custom
    autograd Function: what LargestTensor sees while it measures the first forward."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lstm, self.linear = nn.LSTM(4, 5, batch_first=True), nn.Linear(5, 3)

    def forward(self, x):
        a, _ = x.flatten(2).chunk(2, 1)
        top, where = torch.max(x, 1)
        seq = _Square.apply(x.mean(1)).flatten(1)[:, :16].reshape(x.size(0), 4, 4)
        out, (_, _) = self.lstm(seq)
        return self.linear(out[:, -1]) + top.mean((1, 2))[:, None] + where.float().mean((1, 2))[:, None] + a.mean()


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_largest_tensor_measures_models_with_tuple_results_and_scripted_models():
    x = torch.randn(3, 3, 4, 4)
    model = Exotic().eval()
    with _batching.LargestTensor() as probe:
        model(x)
    assert probe.largest == 3 * 3 * 16  # x.flatten(2) (or x itself: the mode sees Tensor methods too)
    wrapper = netuq.TTA(model, tta.d4())
    for _ in range(2):  # measured, then planned
        _assert_same(wrapper(x), tta_reference(model, tta.d4(), x, task="classification"))
    scripted = torch.jit.script(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval())
    x = torch.randn(2, 3, 6, 5)
    wrapper = netuq.TTA(scripted, tta.d4(), task="segmentation")
    for _ in range(2):  # the mode cannot see inside TorchScript: the input size is the floor
        _assert_same(wrapper(x), tta_reference(scripted, tta.d4(), x))
    assert len(wrapper._plans) == 2  # one per augmented size (6 x 5 and 5 x 6)


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_concurrent_first_calls_measure_only_their_own_forward(task):
    """LargestTensor is a thread-local mode: threads measuring at once get the plans of a lone call;
    each thread has its own buffers (a shared wrapper gives every thread a lone call's results)."""
    torch.manual_seed(0)
    model = SmallCNN(3, 5, width=4).eval() if task == "classification" else CONV
    inputs = [torch.randn(4 * (i + 1), 3, 8 + 4 * i, 8) for i in range(3)]
    shared = netuq.TTA(model, tta.d4(), task=task)
    results: dict[int, torch.Tensor] = {}

    def work(i):
        for _ in range(3):
            results[i] = shared(inputs[i]).probs

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, x in enumerate(inputs):
        alone = netuq.TTA(model, tta.d4(), task=task)
        want = alone(x).probs
        assert {k: v for k, v in shared._plans.items() if k[0] == tuple(x.shape)} == alone._plans
        torch.testing.assert_close(results[i], want, atol=1e-6, rtol=0)


def test_linear_sum_predictions_pickle_copy_concatenate_and_cross_processes():
    from netuq import distributed

    x = torch.randn(2, 3, 5, 7)
    pred = netuq.TTA(CONV, tta.d4(), task="segmentation")(x)
    ref = tta_reference(CONV, tta.d4(), x)
    assert pred._linear_sum is not None
    _assert_same(pickle.loads(pickle.dumps(pred)), ref)
    _assert_same(copy.deepcopy(pred), ref)
    other = netuq.Prediction.from_samples(torch.softmax(torch.randn(8, 1, 4, 5, 7), 2))  # log-space sums
    mixed = netuq.Prediction.cat([pred, other])
    torch.testing.assert_close(mixed.probs, torch.cat([pred.probs, other.probs]))
    torch.testing.assert_close(mixed.aleatoric, torch.cat([pred.aleatoric, other.aleatoric]))
    batch = type("Batch", (), {"x": x, "y": None, "anomaly": None})()
    cols = distributed._pack(batch, pred, [])  # reads p._log_sum (taken from the linear sum)
    _, back, _ = distributed._unpack(cols, {"p": (pred.num_samples, False)}, 0)  # sets it
    assert back._linear_sum is None
    _assert_same(back, ref)


def test_objects_pickled_before_linear_sums_and_plans_still_load():
    """A Prediction holding `_log_sum` and a TTA without `_plans` (the layout before 4bc010e) load."""
    import pickle

    from netuq import Prediction

    pred = Prediction(torch.tensor([[0.25, 0.75]]))
    state = dict(pred.__dict__)
    state["_log_sum"] = state.pop("_log_sum_value")
    state.pop("_linear_sum")
    old = Prediction.__new__(Prediction)
    old.__setstate__(state)
    again = pickle.loads(pickle.dumps(old))
    torch.testing.assert_close(again.probs, torch.tensor([[0.25, 0.75]]))

    wrapper = netuq.TTA(nn.Conv2d(3, 2, 1).eval(), tta.flips(), task="segmentation")
    x = torch.randn(1, 3, 4, 4)
    want = wrapper(x).probs
    state = wrapper.__getstate__()
    assert "_plans" not in state  # what was measured on this machine is not pickled
    plan = ((1, 3, 4, 4), (4, 4), torch.float32, "cpu")
    for old_plans in (None, {plan: 4096}):  # before 4bc010e: no plans; before issue 22: rows as an int
        if old_plans is not None:
            state["_plans"] = old_plans
        loaded = netuq.TTA.__new__(netuq.TTA)
        loaded.__setstate__(dict(state))
        torch.testing.assert_close(loaded(x).probs, want)
