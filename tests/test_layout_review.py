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
