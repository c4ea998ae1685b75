"""Review of the channels-last default (netuq._layout): cases the first-forward check got wrong."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netuq
from netuq import tta
from netuq._layout import InputLayout
from netuq.models import SmallUNet


def _cl(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and x.stride()[1] == 1


class EvalNoise(nn.Module):
    """Stochastic in eval mode (the MC-dropout idiom ``F.dropout(x, p, training=True)``): its
    layouts never agree, and the check's extra forward must not draw from the random stream."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 5)

    def forward(self, x):
        y = F.dropout(F.relu(self.conv(x)), 0.5, training=True)
        return self.fc(y.mean((2, 3)))


class OneBuffer(nn.Module):
    """Writes every output into the same buffer (as a static-graph runtime does) after a layout
    bug (reads the convolution's memory as if contiguous): the check must compare against a copy
    of the first output, not against itself."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.out: torch.Tensor | None = None

    def forward(self, x):
        y = self.conv(x)
        flat = torch.as_strided(y, (y.numel(),), (1,)).view(y.shape)
        if self.out is None or self.out.shape != flat.shape:
            self.out = torch.empty(flat.shape)
        return self.out.copy_(flat)


def _draw_after(make, x: torch.Tensor) -> float:
    torch.manual_seed(5)
    make()(x)
    return torch.rand(()).item()


@pytest.mark.parametrize("kind", ["layout", "tta", "ensemble", "predict"])
def test_the_check_leaves_the_random_stream_as_one_forward_does(kind):
    torch.manual_seed(0)
    model = EvalNoise().eval()
    x = torch.randn(4, 3, 8, 8)

    def make(setting):
        if kind == "layout":
            layout = InputLayout(setting)
            return lambda v: layout.forward(model, v, "key", model)
        if kind == "tta":
            return tta.TTA(model, tta.d4(), channels_last=setting)
        if kind == "ensemble":
            return netuq.Ensemble([model], channels_last=setting, vectorize=False)
        return lambda v: netuq.predict(model, [v])

    if kind == "predict":  # no channels_last argument: compare with the stream of one plain forward
        torch.manual_seed(5)
        with torch.no_grad():
            model(x)
        want = torch.rand(()).item()
    else:
        want = _draw_after(lambda: make(False), x)
    assert _draw_after(lambda: make(None), x) == want


def test_a_model_returning_one_buffer_is_checked_against_a_copy():
    torch.manual_seed(0)
    model = OneBuffer().eval()
    x = torch.randn(2, 3, 5, 5)
    layout = InputLayout(None)
    out = layout.forward(model, x, "key", model)
    assert layout.decided == {"key": False}  # channels-last reads the wrong memory
    torch.testing.assert_close(out, model.conv(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("merge", ["gmean", "max", "tsharpen"])
def test_segmentation_merges_return_contiguous_results_equal_to_the_contiguous_run(merge):
    torch.manual_seed(0)
    unet = SmallUNet(3, 4, width=4).eval()
    x = torch.randn(2, 3, 16, 24)  # non-square: rotated views run in the transposed frame
    cl = tta.TTA(unet, tta.d4(), task="segmentation", merge=merge)
    got, want = cl(x), tta.TTA(unet, tta.d4(), task="segmentation", merge=merge, channels_last=False)(x)
    assert all(cl._layout.decided.values()) and cl._layout.decided  # the views did run channels-last
    for name in ("probs", "log_probs"):
        a, b = getattr(got, name), getattr(want, name)
        assert a.is_contiguous(), name
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    for name, score in got.scores.items():
        assert score.is_contiguous(), name
        torch.testing.assert_close(score, want.scores[name], rtol=0, atol=1e-5)


def test_channels_last_inputs_reach_the_model_in_the_gmean_test():
    """The merge test above exercises the channels-last path (not a contiguous fallback)."""
    torch.manual_seed(0)
    seen: list[bool] = []
    unet = SmallUNet(3, 4, width=4).eval()
    hook = unet.register_forward_pre_hook(lambda _, args: seen.append(_cl(args[0])))
    try:
        t = tta.TTA(unet, tta.d4(), task="segmentation", merge="gmean")
        t(torch.randn(1, 3, 8, 12))
        seen.clear()
        t(torch.randn(1, 3, 8, 12))
    finally:
        hook.remove()
    assert seen and all(seen)


class ViewsWhenWide(nn.Module):
    """``.view(N, -1)`` of a convolution's output only for wide images (raises channels-last)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        flat = y.view(y.shape[0], -1) if y.shape[-1] >= 16 else y.flatten(1)
        return flat[:, :5]


def test_images_of_many_sizes_are_not_each_run_twice():
    """Each new input shape used to run the model twice (the check): a loop over images of many
    sizes ran every forward twice. After :data:`CHECKS` agreeing shapes, new shapes run once."""
    from netuq._layout import CHECKS

    torch.manual_seed(0)
    net = SmallUNet(3, 4, width=4).eval()
    calls: list[bool] = []
    hook = net.register_forward_pre_hook(lambda _, args: calls.append(_cl(args[0])))
    sizes = [(8 + 4 * i, 8 + 4 * i) for i in range(CHECKS + 3)]  # square: one frame per shape
    wrapper, ref = tta.TTA(net, tta.flips(), task="segmentation"), tta.TTA(net, tta.flips(), task="segmentation",
                                                                            channels_last=False)  # fmt: skip
    try:
        for h, w in sizes:
            x = torch.randn(1, 3, h, w)
            got = wrapper(x)
            hook.remove()
            torch.testing.assert_close(got.probs, ref(x).probs, rtol=0, atol=1e-5)
            hook = net.register_forward_pre_hook(lambda _, args: calls.append(_cl(args[0])))
    finally:
        hook.remove()
    # one contiguous forward (the check's reference) per checked shape, then channels-last only
    assert calls.count(False) == CHECKS and all(calls[2 * CHECKS :]) and len(calls) > 2 * CHECKS
    assert all(wrapper._layout.decided.values()) and len(wrapper._layout.decided) == len(sizes)


def test_a_shape_after_the_checks_that_raises_channels_last_runs_contiguous():
    from netuq._layout import CHECKS

    torch.manual_seed(0)
    model = ViewsWhenWide().eval()
    layout = InputLayout(None)
    with torch.no_grad():
        for w in range(4, 4 + CHECKS):  # narrow: both layouts agree
            layout.forward(model, torch.randn(2, 3, 5, w), w, model)
        x = torch.randn(2, 3, 5, 16)
        out = layout.forward(model, x, "wide", model)
        torch.testing.assert_close(out, model(x), rtol=0, atol=1e-6)
    assert layout.decided["wide"] is False and all(layout.decided[w] for w in range(4, 4 + CHECKS))


def test_after_a_refusal_later_shapes_stay_contiguous_without_a_check():
    from netuq._layout import CHECKS

    model = OneBuffer().eval()  # reads the wrong memory channels-last: every check refuses
    layout, seen = InputLayout(None), []
    hook = model.register_forward_pre_hook(lambda _, args: seen.append(_cl(args[0])))
    try:
        with torch.no_grad():
            for w in range(3, 3 + CHECKS + 2):
                x = torch.randn(2, 3, 4, w)
                torch.testing.assert_close(layout.forward(model, x, w, model), model.conv(x), rtol=0, atol=1e-6)
    finally:
        hook.remove()
    assert not any(layout.decided.values())
    assert seen == [False, True] * CHECKS + [False] * 2


def test_ensemble_members_are_families_of_their_own():
    """Member 1 refuses channels-last: the other members keep it for every shape, with checks
    counted per member."""
    from netuq._layout import CHECKS
    from netuq.models import SmallCNN

    torch.manual_seed(0)
    members = [SmallCNN(3, 5, width=4).eval(), OneBufferClassifier().eval()]
    ens, ref = netuq.Ensemble(members, vectorize=False), netuq.Ensemble(members, vectorize=False, channels_last=False)
    for w in range(6, 6 + CHECKS + 2):
        x = torch.randn(2, 3, 6, w)
        torch.testing.assert_close(ens(x).probs, ref(x).probs, rtol=0, atol=1e-5)
    decided = ens._layout.decided
    assert all(v for (k, *_), v in decided.items() if k == 0) and not any(v for (k, *_), v in decided.items() if k == 1)


class OneBufferClassifier(OneBuffer):
    """:class:`OneBuffer` pooled to (N, 5) logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 1)

    def forward(self, x):
        return super().forward(x).mean((2, 3))
