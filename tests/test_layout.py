"""netuq._layout: the default feeds every input as given (bit-for-bit the user's own loop), and
``channels_last=True`` is an opt-in speed-up within its documented tolerance (issue 22 item 6)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netuq
from netuq import tta
from netuq._layout import as_layout, check_channels_last, to_channels_last
from netuq.models import SmallCNN, SmallUNet
from netuq.training import fit

# the documented tolerance of the opt-in: float rounding of convolutions summed in another order
OPT_IN_ATOL = 1e-4


def _cl(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and x.stride()[1] == 1


@pytest.mark.parametrize("shape", [(2, 1, 4, 3), (3, 3, 5, 7), (1, 2, 1, 1)])
def test_to_channels_last_keeps_values_and_gives_unit_channel_stride(shape):
    x = torch.randn(shape)
    y = to_channels_last(x)
    assert torch.equal(y, x) and _cl(y)
    assert y.data_ptr() != x.data_ptr()  # a copy: the caller's tensor is never aliased


def test_as_layout_touches_only_4d_float_inputs_when_asked():
    x = torch.randn(2, 3, 4, 4)
    assert as_layout(x, False) is x and _cl(as_layout(x, True))
    for other in (torch.randn(2, 3, 4), torch.ones(2, 3, 4, 4, dtype=torch.int64), "text"):
        assert as_layout(other, True) is other


def test_a_bad_channels_last_is_refused_everywhere_with_its_name():
    with pytest.raises(TypeError, match=r"`channels_last` must be True, False or None \(as given\), got 'yes'"):
        check_channels_last("yes")
    net, x, y = SmallCNN(3, 5, width=4), torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,))
    for make in (
        lambda: netuq.TTA(net, tta.flips(), channels_last=1),
        lambda: netuq.Ensemble([net], channels_last="auto"),
        lambda: netuq.MCDropout(net, channels_last=0),
        lambda: fit(net, (x, y), epochs=1, channels_last="auto"),
    ):
        with pytest.raises(TypeError, match="`channels_last`"):
            make()


# ----------------------------------------------------------------------------- the default: as given
class Standardise(nn.Module):
    """Standardises each image, then a convolution: on near-blank frames the standardisation
    amplifies the convolution's rounding, so channels-last differed by 0.037 in log-probability."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 5)

    def forward(self, x):
        y = self.conv(x)
        y = (y - y.mean((1, 2, 3), keepdim=True)) / (y.std((1, 2, 3), keepdim=True) + 1e-12)
        return self.fc(F.relu(y).mean((2, 3)))


class OwnNoise(nn.Module):
    """Eval-time noise from its own torch.Generator (the layout check's second forward advanced it)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 5)
        self.gen = torch.Generator().manual_seed(0)

    def forward(self, x):
        y = self.conv(x)
        y = y + torch.randn(y.shape, generator=self.gen)
        return self.fc(y.mean((2, 3)))


class ViewsActivation(nn.Module):
    """``.view(N, -1)`` of a convolution's output (raises on a channels-last one), only for wide
    images: the check passed on the first shape, and a later batch raised."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        flat = y.view(y.shape[0], -1) if y.shape[-1] >= 8 else y.flatten(1)
        return flat[:, :5]


MODELS = {"standardise": Standardise, "own_noise": OwnNoise, "views_activation": ViewsActivation}


class Recorder(nn.Module):
    """The model, recording the strides of every input and a copy of every output."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.strides, self.outputs = model, [], []

    def forward(self, x):
        self.strides.append(x.stride())
        out = self.model(x)
        self.outputs.append(out.detach().clone())
        return out


def _batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    frames = [torch.randn(3, 3, 6, 6, generator=g), 1e-3 * torch.randn(3, 3, 6, 6, generator=g)]  # near-blank
    return [*frames, torch.randn(2, 3, 6, 9, generator=g)]  # then a wide batch


def _reset(model: nn.Module) -> None:
    if isinstance(model, OwnNoise):
        model.gen.manual_seed(0)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("entry", ["predict", "ensemble", "tta", "mc_dropout"])
def test_the_default_is_the_users_own_loop_bit_for_bit(name, entry):
    """Every forward the model sees is the user's input, in its layout, once; its outputs are
    exactly those of the user's own loop (same inputs, same order, same generator draws)."""
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    rec = Recorder(model)
    batches = _batches()
    _reset(model)
    if entry == "predict":
        netuq.predict(rec, batches)
        inputs = batches
    elif entry == "ensemble":
        ens = netuq.Ensemble([rec], vectorize=False)
        for x in batches:
            ens(x)
        inputs = batches
    elif entry == "tta":  # one view per forward (max_batch = N): the user's loop over the views
        views = tta.flips().views
        for x in batches:
            netuq.TTA(rec, tta.flips(), max_batch=len(x))(x)
        inputs = [v.augment(x) for x in batches for v in views]
    else:  # MC dropout with a dropout added in front of the model, one sample per forward
        mc_model = nn.Sequential(nn.Dropout(0.0), rec)
        for x in batches:
            netuq.MCDropout(mc_model, samples=2, max_batch=len(x))(x)
        inputs = [x for x in batches for _ in range(2)]  # 2 samples (max_batch given: no dry run)
    assert rec.strides == [x.stride() for x in inputs]  # as given: no channels-last copy, no extra forward
    _reset(model)
    with torch.no_grad():
        own = [model(x) for x in inputs]
    assert len(own) == len(rec.outputs) and all(torch.equal(a, b) for a, b in zip(rec.outputs, own))


def test_a_data_dependent_view_raises_only_when_channels_last_is_asked_for():
    """The opt-in runs without a check: a model that assumes contiguous activations raises
    (its own error), where the default runs as the user's loop does."""
    model, x = ViewsActivation().eval(), _batches()[-1]
    netuq.TTA(model, tta.flips())(x)
    with pytest.raises(RuntimeError, match="view"):
        netuq.TTA(model, tta.flips(), channels_last=True)(x)


# ----------------------------------------------------------------------------- the opt-in
def _counted(model: nn.Module) -> tuple[nn.Module, list[bool]]:
    seen: list[bool] = []
    model.register_forward_pre_hook(lambda _, args: seen.append(_cl(args[0])))
    return model, seen


@pytest.mark.parametrize("task", ["classification", "segmentation"])
@pytest.mark.parametrize("merge", ["mean", "gmean"])
def test_tta_channels_last_is_within_its_tolerance_and_returns_contiguous_results(task, merge):
    torch.manual_seed(0)
    net = (SmallCNN(3, 5, width=8) if task == "classification" else SmallUNet(3, 4, width=4)).eval()
    x = torch.randn(2, 3, 16, 24)  # non-square: rotated views run in the transposed frame
    ref = netuq.TTA(net, tta.d4(), task=task, merge=merge)(x)
    net, seen = _counted(net)
    got = netuq.TTA(net, tta.d4(), task=task, merge=merge, channels_last=True)(x)
    assert seen and all(seen)  # the views did reach the model channels-last
    for name in ("probs", "log_probs", "epistemic"):
        a, b = getattr(got, name), getattr(ref, name)
        assert a.is_contiguous(), name
        torch.testing.assert_close(a, b, rtol=0, atol=OPT_IN_ATOL)


def test_ensemble_channels_last_is_within_its_tolerance():
    torch.manual_seed(0)
    members = [SmallCNN(3, 5, width=8).eval() for _ in range(3)]
    x = torch.randn(4, 3, 16, 16)
    ref = netuq.Ensemble(members, vectorize=False)(x)
    got = netuq.Ensemble([_counted(m)[0] for m in members], vectorize=False, channels_last=True)(x)
    torch.testing.assert_close(got.probs, ref.probs, rtol=0, atol=OPT_IN_ATOL)


@pytest.mark.parametrize("whole", [False, True])
def test_mc_dropout_channels_last_is_within_its_tolerance(whole):
    """Seeded: the masks are netuq's (drawn contiguously), so only rounding differs; a cached
    trunk runs channels-last and hands the head a contiguous tensor."""
    torch.manual_seed(0)
    net = SmallCNN(3, 5, width=8).eval()
    kwargs = {} if whole else {"trunk": "features", "head": "head"}
    x = torch.randn(4, 3, 16, 16)
    ref = netuq.MCDropout(net, samples=8, seed=3, keep_samples=True, **kwargs)(x)
    net, seen = _counted(net) if whole else (net, [])
    if not whole:
        net.features.register_forward_pre_hook(lambda _, args: seen.append(_cl(args[0])))
    got = netuq.MCDropout(net, samples=8, seed=3, keep_samples=True, channels_last=True, **kwargs)(x)
    assert seen and all(seen)
    torch.testing.assert_close(got.samples, ref.samples, rtol=0, atol=OPT_IN_ATOL)


def test_fit_channels_last_trains_to_within_rounding():
    torch.manual_seed(0)
    x, y = torch.randn(32, 3, 8, 8), torch.randint(0, 5, (32,))
    runs = []
    for setting in (False, True):
        torch.manual_seed(0)
        net = SmallCNN(3, 5, width=8, dropout=0.0)
        history = fit(net, (x, y), val_data=(x, y), epochs=2, batch_size=8, seed=0, channels_last=setting)
        runs.append((history.train_loss, net.eval()(x)))
    (loss_a, out_a), (loss_b, out_b) = runs
    assert loss_a == pytest.approx(loss_b, abs=1e-4)
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=1e-3)  # two epochs of Adam on rounded gradients
