"""Test-time augmentation: invertible transforms, exact sizes, ttach parity, merges, batching."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference.tta_reference import tta_reference
from torch import nn

import netuq
from netuq import tta
from netuq.models import SmallCNN, SmallUNet

ttach = pytest.importorskip("ttach")


class Softmaxed(nn.Module):
    """ttach merges raw outputs: give it probabilities to compare with netuq's merge of softmax."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).softmax(1)


class Counting(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.rows: list[int] = []

    def forward(self, x):
        self.rows.append(x.shape[0])
        return self.model(x)


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return SmallCNN(3, 5, width=4).eval()


def _unet() -> nn.Module:
    torch.manual_seed(0)
    return SmallUNet(3, 4, width=4).eval()


def _pixelwise() -> nn.Module:
    torch.manual_seed(0)
    return nn.Conv2d(3, 4, 1).eval()


# ----------------------------------------------------------------------------- transforms
def test_identity_only_compose_equals_model():
    x = torch.randn(2, 3, 8, 12)
    ident = tta.Compose([tta.Rotate90([0]), tta.Multiply([1]), tta.Scale([1])])
    assert len(ident) == 1 and ident.views[0].is_identity
    for model, task in ((_cnn(), "classification"), (_unet(), "segmentation")):
        ref = model(x).log_softmax(1)
        pred = netuq.TTA(model, ident, task=task, channels_last=False)(x)  # the model's own layout
        assert torch.equal(pred.log_probs, ref)
        assert pred.num_samples == 1
        # by default the views run channels-last on CPU: the same function, rounded differently
        torch.testing.assert_close(netuq.TTA(model, ident, task=task)(x).log_probs, ref, rtol=0, atol=1e-5)


def test_identity_is_always_included_first():
    assert tta.HorizontalFlip().params == (False, True)
    assert tta.Rotate90([90, 270]).params == (0, 90, 270)
    assert tta.Scale([0.5, 2]).params == (1, 0.5, 2)
    assert tta.Multiply([0.9]).params == (1, 0.9)
    assert tta.Add([0.1]).params == (0, 0.1)
    assert tta.Shift([2, (1, -3)]).params == ((0, 0), (2, 2), (1, -3))
    c = tta.Compose([tta.HorizontalFlip(), tta.Scale([0.5]), tta.Add([1.0])])
    assert len(c) == 8 and c.views[0].is_identity and not c.views[1].is_identity


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 1, 4, 9), (1, 2, 6, 6)])
def test_every_d4_element_is_inverted_exactly(shape):
    x = torch.randn(shape)
    seen = set()
    for v in tta.d4():
        y = v.augment(x)
        assert y.shape[-2:] == v.output_size(shape[-2:])
        assert torch.equal(v.deaugment(y, shape[-2:]), x)
        seen.add(tuple(y.flatten().tolist()))
    assert len(seen) == 8  # eight distinct images: the whole group


@settings(max_examples=25)
@given(
    h=st.integers(1, 7),
    w=st.integers(1, 7),
    dy=st.integers(-9, 9),
    dx=st.integers(-9, 9),
    flip=st.booleans(),
    angle=st.sampled_from([0, 90, 180, 270, -90, 450]),
)
def test_chains_with_circular_shift_invert_exactly(h, w, dy, dx, flip, angle):
    x = torch.arange(2 * h * w, dtype=torch.float32).reshape(1, 2, h, w)
    v = tta.View([tta.VerticalFlip(), tta.Rotate90([angle]), tta.Shift([(dy, dx)])], [flip, angle, (dy, dx)])
    assert torch.equal(v.deaugment(v.augment(x), (h, w)), x)


def test_rotate90_matches_torch_direction_and_ttach():
    x = torch.randn(1, 1, 3, 4)
    for angle in (90, 180, 270):
        ours = tta.Rotate90([angle]).augment(x, angle)
        assert torch.equal(ours, ttach.Rotate90([angle]).apply_aug_image(x, angle=angle))
        assert torch.equal(ours, torch.rot90(x, angle // 90, (2, 3)))


def test_shift_zero_padding():
    x = torch.arange(1.0, 13.0).reshape(1, 1, 3, 4)
    s = tta.Shift([(1, -1)], mode="zeros")
    y = s.augment(x, (1, -1))
    assert y[0, 0].tolist() == [[0, 0, 0, 0], [2, 3, 4, 0], [6, 7, 8, 0]]
    back = s.deaugment(y, (1, -1), (3, 4))
    # the shifted-out first column and last row copy the nearest predicted pixel
    assert back[0, 0].tolist() == [[2, 2, 3, 4], [6, 6, 7, 8], [6, 6, 7, 8]]


def test_scale_returns_exact_original_size():
    x = torch.randn(1, 3, 224, 224)
    s = tta.Scale([0.9, 1.1, 0.75])
    for scale in s.params:
        y = s.augment(x, scale)
        assert y.shape[-2:] == (round(224 * scale),) * 2
        assert s.deaugment(y, scale, (224, 224)).shape[-2:] == (224, 224)
    # ttach's 1/s rescaling turns 224 into 223 (int(201 / 0.9) = 223)
    t = ttach.Scale([0.9], interpolation="bilinear")
    assert t.apply_deaug_mask(t.apply_aug_image(x, scale=0.9), scale=0.9).shape[-1] == 223
    pred = netuq.TTA(_pixelwise(), s, task="segmentation")(x)
    assert pred.probs.shape == (1, 4, 224, 224)


def test_scale_and_rotation_on_non_square_images_come_back_to_the_frame():
    x = torch.randn(2, 3, 13, 21)
    c = tta.Compose([tta.Rotate90([90]), tta.Scale([0.5, 1.3]), tta.HorizontalFlip()])
    pred = netuq.TTA(_pixelwise(), c, task="segmentation")(x)
    assert pred.probs.shape == (2, 4, 13, 21) and pred.num_samples == 12
    # a per-pixel model on a constant image gives the same probabilities at every pixel and view
    const = torch.ones(1, 3, 13, 21)
    ref = _pixelwise()(const).softmax(1)
    torch.testing.assert_close(netuq.TTA(_pixelwise(), c, task="segmentation")(const).probs, ref)


def _conv3() -> nn.Module:
    torch.manual_seed(0)
    return nn.Conv2d(3, 4, 3, padding=1).eval()


@pytest.mark.parametrize("scale", [0.5, 1.5])
def test_scale_view_interpolates_probabilities_not_logits(scale):
    """Regression: METHODS.md wants Scale undone bilinearly on probabilities (softmax first)."""
    model = _conv3()
    x = torch.randn(2, 3, 8, 10)
    pred = netuq.TTA(model, tta.Scale([scale]), task="segmentation", keep_samples=True)(x)
    with torch.no_grad():
        small = model(nn.functional.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False))
    expected = nn.functional.interpolate(small.softmax(1), size=(8, 10), mode="bilinear", align_corners=False)
    from_logits = nn.functional.interpolate(small, size=(8, 10), mode="bilinear", align_corners=False).softmax(1)
    assert float((expected - from_logits).abs().max()) > 1e-3  # the two orders really differ here
    torch.testing.assert_close(pred.samples[1], expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(pred.samples[1].sum(1), torch.ones(2, 8, 10))
    with torch.no_grad():
        direct = model(x).softmax(1)
    torch.testing.assert_close(pred.probs, (direct + expected) / 2, atol=1e-6, rtol=0)


def test_scale_matches_ttach_on_softmax_where_sizes_round_trip():
    """ttach de-augments what the model returns: with softmax outputs and 8 -> 4 -> 8 it is a reference."""
    model = _conv3()
    x = torch.randn(2, 3, 8, 8)
    tt = ttach.Compose([ttach.HorizontalFlip(), ttach.Scale([0.5], interpolation="bilinear")])
    with torch.no_grad():
        expected = ttach.SegmentationTTAWrapper(Softmaxed(model), tt, merge_mode="mean")(x)
    ours = netuq.TTA(model, tta.Compose([tta.HorizontalFlip(), tta.Scale([0.5])]), task="segmentation")(x)
    torch.testing.assert_close(ours.probs, expected, atol=2e-6, rtol=0)
    gm = netuq.TTA(model, tt, task="segmentation", merge="gmean")(x)
    torch.testing.assert_close(gm.probs.sum(1), torch.ones(2, 8, 8))


def test_deaugment_log_probs_of_tiny_probabilities_stays_finite():
    log_p = torch.log_softmax(torch.tensor([0.0, -200.0]).view(1, 2, 1, 1).expand(1, 2, 4, 4).clone(), 1)
    out = tta.Compose([tta.Scale([2])]).views[1].deaugment_log_probs(log_p, (2, 2))
    assert bool(torch.isfinite(out).all())
    torch.testing.assert_close(out, log_p[..., :2, :2])


# ----------------------------------------------------------------------------- the wrapper
@pytest.mark.parametrize(
    "transforms",
    [tta.d4(), tta.flips(), tta.Compose([tta.Shift([(1, 2), -3])])],
    ids=["d4", "flips", "shift"],
)
def test_pixelwise_model_is_equivariant_so_tta_mean_equals_model(transforms):
    model = _pixelwise()
    x = torch.randn(2, 3, 6, 10)
    pred = netuq.TTA(model, transforms, task="segmentation")(x)
    torch.testing.assert_close(pred.probs, model(x).softmax(1), atol=1e-6, rtol=0)
    assert float(pred.epistemic.max()) < 1e-5


@pytest.mark.parametrize(
    "make",
    [
        lambda m: [m.HorizontalFlip(), m.VerticalFlip()],
        lambda m: [m.Rotate90(angles=[0, 90, 180, 270])],
        lambda m: [m.HorizontalFlip(), m.Multiply(factors=[0.9, 1.1])],
        lambda m: [m.Add(values=[-0.2, 0.3]), m.Rotate90(angles=[180])],
    ],
    ids=["flips", "rot90", "flip-multiply", "add-rot180"],
)
@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_mean_equals_ttach_merge_of_softmax(make, task):
    model = _cnn() if task == "classification" else _unet()
    wrapper = ttach.ClassificationTTAWrapper if task == "classification" else ttach.SegmentationTTAWrapper
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = wrapper(Softmaxed(model), ttach.Compose(make(ttach)), merge_mode="mean")(x)
    ours = netuq.TTA(model, tta.Compose(make(tta)), task=task)(x)
    from_ttach = netuq.TTA(model, ttach.Compose(make(ttach)), task=task)(x)
    torch.testing.assert_close(ours.probs, expected, atol=2e-6, rtol=0)
    torch.testing.assert_close(from_ttach.probs, expected, atol=2e-6, rtol=0)


@pytest.mark.parametrize("merge", ["gmean", "tsharpen", "max"])
def test_other_merges_equal_renormalised_ttach(merge):
    model = _unet()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        raw = ttach.SegmentationTTAWrapper(Softmaxed(model), ttach.aliases.d4_transform(), merge_mode=merge)(x)
    expected = raw / raw.sum(1, keepdim=True)  # ttach does not renormalise
    pred = netuq.TTA(model, tta.d4(), task="segmentation", merge=merge)(x)
    torch.testing.assert_close(pred.probs, expected, atol=2e-6, rtol=1e-5)
    assert pred.num_samples == 1
    views = netuq.TTA(model, tta.d4(), task="segmentation")(x)
    torch.testing.assert_close(pred.scores["view_epistemic"], views.epistemic)
    torch.testing.assert_close(pred.uncertainty("view_aleatoric"), views.aleatoric)
    torch.testing.assert_close(pred.scores["view_variation_ratio"], views.variation_ratio)


def test_gmean_and_tsharpen_stay_finite_where_ttach_does_not():
    class Sharp(nn.Module):
        def forward(self, x):
            return 300.0 * x[:, :3].flatten(1)

    x = torch.randn(4, 3, 1, 1)
    compose = ttach.Compose([ttach.Multiply([-1])])
    with torch.no_grad():
        on_logits = ttach.ClassificationTTAWrapper(Sharp(), compose, merge_mode="gmean")(x)
        on_probs = ttach.ClassificationTTAWrapper(Softmaxed(Sharp()), compose, merge_mode="gmean")(x)
    assert bool(torch.isnan(on_logits).any())  # square root of a product of negative logits
    assert bool((on_probs.sum(1) == 0).all())  # the product of probabilities underflowed
    for merge in ("gmean", "tsharpen", "max", "mean"):
        pred = netuq.TTA(Sharp(), tta.Multiply([-1]), merge=merge)(x)
        assert bool(torch.isfinite(pred.log_probs).all()) and bool(torch.isfinite(pred.entropy).all())
        torch.testing.assert_close(pred.probs.sum(1), torch.ones(4))


def test_generic_ttach_transform_five_crops():
    model = _cnn()
    x = torch.randn(2, 3, 10, 10)
    compose = ttach.Compose([ttach.HorizontalFlip(), ttach.FiveCrops(6, 6)])
    with torch.no_grad():
        expected = ttach.ClassificationTTAWrapper(Softmaxed(model), compose)(x)
    pred = netuq.TTA(model, compose)(x)
    torch.testing.assert_close(pred.probs, expected, atol=2e-6, rtol=0)
    assert pred.num_samples == 10


def test_mean_decomposition_across_views_by_hand():
    model = _cnn()
    x = torch.randn(3, 3, 8, 8)
    pred = netuq.TTA(model, tta.d4(), keep_samples=True)(x)
    p = torch.stack([model(v.augment(x)).softmax(1) for v in tta.d4()]).detach()
    torch.testing.assert_close(pred.samples, p, atol=1e-6, rtol=0)
    p_bar = p.mean(0)
    total = -(p_bar * p_bar.log()).sum(1)
    aleatoric = -(p * p.log()).sum(2).mean(0)
    torch.testing.assert_close(pred.probs, p_bar, atol=1e-6, rtol=0)
    torch.testing.assert_close(pred.entropy, total, atol=1e-5, rtol=0)
    torch.testing.assert_close(pred.aleatoric, aleatoric, atol=1e-5, rtol=0)
    torch.testing.assert_close(pred.epistemic, (total - aleatoric).clamp_min(0), atol=1e-5, rtol=0)


def test_keep_samples_in_compose_order_on_non_square_inputs():
    model = _unet()
    x = torch.randn(1, 3, 8, 12)
    pred = netuq.TTA(model, tta.d4(), task="segmentation", keep_samples=True)(x)
    expected = torch.stack([v.deaugment(model(v.augment(x)), (8, 12)).softmax(1) for v in tta.d4()]).detach()
    torch.testing.assert_close(pred.samples, expected, atol=1e-6, rtol=0)


def test_views_are_batched_and_bounded_by_max_batch():
    model = Counting(_pixelwise())
    square, wide = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 12)
    wrapper = netuq.TTA(model, tta.d4(), task="segmentation")
    ref = wrapper(square)
    assert model.rows == [2, 16]  # the probe (one view, the user's 2 rows: measures only), then all 8 views
    model.rows.clear()
    assert torch.equal(wrapper(square).probs, ref.probs) and model.rows == [16]  # all 8 views of 2 images
    model.rows.clear()
    wrapper(wide)
    assert model.rows == [2, 8, 2, 8]  # 0/180° views and 90/270° views have different sizes: a probe each
    model.rows.clear()
    wrapper(wide)
    assert model.rows == [8, 8]
    for max_batch, rows in ((2, [2] * 8), (5, [4, 4, 4, 4]), (1, [1] * 16)):
        capped = netuq.TTA(model, tta.d4(), task="segmentation", max_batch=max_batch)
        capped(square)
        model.rows.clear()
        pred = capped(square)
        assert model.rows == rows
        torch.testing.assert_close(pred.probs, ref.probs, atol=1e-6, rtol=0)
        torch.testing.assert_close(pred.epistemic, ref.epistemic, atol=1e-6, rtol=0)


def test_model_mode_is_left_alone():
    model = _cnn().train()
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    netuq.TTA(model, tta.flips())(torch.randn(2, 3, 8, 8))
    assert all(m.training for m in model.modules())  # TTA runs the model as it is given
    # BatchNorm on batch statistics: one forward per view on the user's rows, in the mode the user chose
    assert int(bn.num_batches_tracked) == len(tta.flips())
    model.eval()
    netuq.TTA(model, tta.flips())(torch.randn(2, 3, 8, 8))
    assert not any(m.training for m in model.modules())


def test_transform_arguments_accepted():
    model = _cnn()
    x = torch.randn(1, 3, 8, 8)
    a = netuq.TTA(model, tta.HorizontalFlip())(x)
    b = netuq.TTA(model, [tta.HorizontalFlip()])(x)
    c = netuq.TTA(model, tta.Compose([tta.HorizontalFlip()]))(x)
    assert torch.equal(a.probs, b.probs) and torch.equal(b.probs, c.probs)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("make", "err", "match"),
    [
        (lambda: tta.Rotate90([45]), ValueError, "`angles` must be integer multiples of 90, got 45"),
        (lambda: tta.Scale([0]), ValueError, "`scales` must be positive finite numbers, got 0"),
        (lambda: tta.Scale([2], interpolation="cubic"), ValueError, "`interpolation` must be one of"),
        (lambda: tta.Multiply([float("nan")]), ValueError, "`factors` must be finite numbers"),
        (lambda: tta.Add(["a"]), ValueError, "`values` must be finite numbers, got 'a'"),
        (lambda: tta.Shift([(1, 2, 3)]), ValueError, r"`pixels` must be ints or \(dy, dx\) pairs"),
        (lambda: tta.Shift([1], mode="reflect"), ValueError, "`mode` must be one of"),
        (lambda: tta.Compose([]), ValueError, "`transforms` must contain at least one transform"),
        (lambda: tta.Compose([tta.HorizontalFlip, 1]), TypeError, "must be netuq.tta.Transform instances"),
        (lambda: tta.as_compose("d4"), TypeError, "`transforms` must be a netuq.tta.Compose"),
        (lambda: tta.Rotate90([]), ValueError, "`params` of Rotate90 must not be empty"),
    ],
)
def test_transform_errors(make, err, match):
    with pytest.raises(err, match=match):
        make()


def test_shift_zeros_too_large():
    with pytest.raises(ValueError, match="`pixels` must be smaller than the image"):
        tta.Shift([5], mode="zeros").augment(torch.zeros(1, 1, 4, 4), (5, 5))


def test_wrapper_errors():
    model = _cnn()
    with pytest.raises(ValueError, match="`merge` must be one of \\['mean', 'gmean', 'max', 'tsharpen'\\], got 'sum'"):
        netuq.TTA(model, tta.flips(), merge="sum")
    with pytest.raises(ValueError, match="`task` must be one of"):
        netuq.TTA(model, tta.flips(), task="detection")
    with pytest.raises(ValueError, match="`keep_samples=True` needs merge='mean'"):
        netuq.TTA(model, tta.flips(), merge="gmean", keep_samples=True)
    with pytest.raises(ValueError, match="`max_batch` must be an integer >= 1 or None"):
        netuq.TTA(model, tta.flips(), max_batch=0)
    with pytest.raises(TypeError, match="`model` must be callable"):
        netuq.TTA(3, tta.flips())
    t = netuq.TTA(model, tta.flips())
    with pytest.raises(ValueError, match=r"`x` must have shape \(N, C, H, W\) with N >= 1, got shape \(3, 8, 8\)"):
        t(torch.zeros(3, 8, 8))
    with pytest.raises(TypeError, match="`x` must be a tensor"):
        t("image")
    with pytest.raises(ValueError, match=r"must return \(N, C, H, W\) logits for task='segmentation'"):
        netuq.TTA(model, tta.flips(), task="segmentation")(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="with N = 8 rows, got"):
        netuq.TTA(lambda x: x.flatten(1)[:1], tta.flips())(torch.zeros(2, 3, 2, 2))
    with pytest.raises(ValueError, match="`logits` must (not contain NaN|be finite or -inf)"):
        netuq.TTA(lambda x: x.flatten(1) / 0.0, tta.flips())(torch.zeros(1, 3, 2, 2))

    def shrinking(x):  # outputs whose size depends on the view in a way de-augmentation cannot undo
        return torch.zeros(x.shape[0], 2, x.shape[-2] // 2, x.shape[-1])

    with pytest.raises(ValueError, match="`model` outputs must have the same shape for every view"):
        netuq.TTA(shrinking, tta.d4(), task="segmentation")(torch.zeros(1, 3, 4, 8))


# ----------------------------------------------------------------------------- streaming merges (issue 14)
def _assert_same_prediction(pred, ref, atol=1e-6):
    assert pred.num_samples == ref.num_samples
    for name in ("log_probs", "probs", "entropy", "aleatoric", "epistemic", "variation_ratio"):
        torch.testing.assert_close(getattr(pred, name).double(), getattr(ref, name), atol=atol, rtol=1e-5, msg=name)


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 3, 8, 12)], ids=["square", "wide"])
@pytest.mark.parametrize("max_batch", [None, 1, 3])
def test_streaming_sums_equal_prediction_of_every_view(shape, max_batch):
    """The in-place sums (linear sum, layout-matched buffers, uint8 votes) build the same Prediction
    as adding every de-augmented view to a Prediction, in float64."""
    model, x = _unet(), torch.randn(shape)
    transforms = tta.Compose([tta.HorizontalFlip(), tta.Rotate90([0, 90, 180, 270]), tta.Shift([(1, -2)])])
    pred = netuq.TTA(model, transforms, task="segmentation", max_batch=max_batch)(x)
    _assert_same_prediction(pred, tta_reference(model, transforms, x))
    cat = netuq.Prediction.cat([pred, pred])  # the sums are a well-formed Prediction
    torch.testing.assert_close(cat.variation_ratio, torch.cat([pred.variation_ratio] * 2))


class Sharp(nn.Module):
    """Per-pixel logits scaled by ``scale``: classes far below the top underflow float32."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.conv, self.scale = _pixelwise(), scale

    def forward(self, x):
        return self.scale * self.conv(x)


@pytest.mark.parametrize("scale", [30.0, 400.0], ids=["few-underflow", "most-underflow"])
def test_log_probs_stay_exact_where_every_view_underflows(scale):
    """log Σ_v p_v where p_v < 1e-31 in every view: gathered (few) or whole-tensor (many) log space."""
    model, x = Sharp(scale), torch.randn(2, 3, 6, 6)
    pred = netuq.TTA(model, tta.d4(), task="segmentation")(x)
    ref = tta_reference(model, tta.d4(), x)
    underflow = ref.log_probs < -72  # probability below float32's linear floor (~1e-31)
    assert bool(underflow.any())
    assert bool(torch.isfinite(pred.log_probs).all())
    torch.testing.assert_close(pred.log_probs.double(), ref.log_probs, atol=1e-4, rtol=1e-6)
    torch.testing.assert_close(pred.entropy.double(), ref.entropy, atol=1e-5, rtol=0)


def test_tied_logits_vote_for_the_first_class_like_prediction():
    class Tied(nn.Module):
        def forward(self, x):  # classes 0 and 1 tie on half the pixels, class 2 wins elsewhere
            z = torch.zeros(x.shape[0], 3, *x.shape[-2:])
            z[:, 2] = torch.where(x[:, 0] > 0, -1.0, 1.0)
            return z

    x = torch.randn(2, 3, 4, 6)
    pred = netuq.TTA(Tied(), tta.d4(), task="segmentation")(x)
    _assert_same_prediction(pred, tta_reference(Tied(), tta.d4(), x))


@pytest.mark.parametrize("hw", [(3, 5), (4, 4)], ids=["wide", "square"])
def test_pixel_form_equals_the_transform_chain_for_every_flip_and_rotation_view(hw):
    """deaugment_all folds flips and rotations into one transpose and one flip: exactly the chain."""
    composes = [
        tta.Compose([tta.HorizontalFlip(), tta.VerticalFlip(), tta.Rotate90([90, 180, 270]), tta.Multiply([0.9])]),
        tta.Compose([tta.Rotate90([90, 180, 270]), tta.HorizontalFlip(), tta.Rotate90([90]), tta.VerticalFlip()]),
    ]
    forms = set()
    for compose in composes:
        for v in compose.views:
            y = torch.randn(2, 3, *v.output_size(hw))
            chain = y
            sizes = [hw]
            for t, p in zip(v.transforms, v.params):
                sizes.append(t.output_size(sizes[-1], p))
            for i in reversed(range(len(v.transforms))):
                chain = v.transforms[i].deaugment(chain, v.params[i], sizes[i])
            assert v.pixel_form is not None
            forms.add(v.pixel_form)
            (out,) = v.deaugment_all([y], hw)
            assert torch.equal(out, chain) and out.shape == (2, 3, *hw), v
    assert len(forms) == 8  # the eight elements of the dihedral group
    assert tta.Compose([tta.Shift([(1, 0)])]).views[1].pixel_form is None  # not a flip or rotation
    assert tta.Compose([tta.Scale([2])]).views[1].pixel_form is None


def test_fast_pass_runs_each_view_once_and_reruns_exactly_only_on_ties_or_non_finite_logits():
    """The default pass checks ties and finiteness once at the end; a batch it refuses is run
    again with per-view checks (so the result and the error are those of the exact pass)."""
    x = torch.randn(2, 3, 4, 6)
    model = Counting(_pixelwise())
    wrapper = netuq.TTA(model, tta.d4(), task="segmentation")
    wrapper(x)
    assert sum(model.rows) == 2 * 2 + 8 * 2  # a probe per view size (measures only), then every view once
    model.rows.clear()
    pred = wrapper(x)
    assert sum(model.rows) == 8 * 2  # 8 views of 2 images, each once
    _assert_same_prediction(pred, tta_reference(model, tta.d4(), x))

    class Tied(nn.Module):
        def forward(self, x):
            return torch.zeros(x.shape[0], 3, *x.shape[-2:])  # every class ties everywhere

    tied = Counting(Tied())
    wrapper = netuq.TTA(tied, tta.d4(), task="segmentation")
    wrapper(x)
    tied.rows.clear()
    pred = wrapper(x)
    assert sum(tied.rows) == 2 * 8 * 2  # refused by the end check, run again exactly
    assert bool((pred.variation_ratio == 0).all())  # one vote per view, all for class 0
    torch.testing.assert_close(pred.probs, torch.full_like(pred.probs, 1 / 3))

    class Poisoned(nn.Module):  # finite everywhere but one pixel of one view
        def forward(self, x):
            z = x[:, :2].clone()
            if x.shape[0] > 2:
                z[3, 0, 1, 2] = float("nan")
            return z

    with pytest.raises(ValueError, match="`logits` must (not contain NaN|be finite or -inf)"):
        netuq.TTA(Poisoned(), tta.d4(), task="segmentation")(x)
    with pytest.raises(TypeError, match="`logits` must be a floating-point tensor"):
        netuq.TTA(lambda x: torch.ones(x.shape[0], 2, dtype=torch.long), tta.flips())(x)


def test_no_grad_false_backpropagates_like_the_plain_computation():
    net = _pixelwise()
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    pred = netuq.TTA(net, tta.d4(), task="segmentation", no_grad=False)(x)
    pred.probs.sum(1).mul(torch.arange(20.0).view(4, 5)).sum().backward()  # weights: not constant per pixel
    got, x.grad = x.grad.clone(), None
    ref = torch.stack([v.deaugment(torch.softmax(net(v.augment(x)), 1), (4, 5)) for v in tta.d4()]).mean(0)
    ref.sum(1).mul(torch.arange(20.0).view(4, 5)).sum().backward()
    torch.testing.assert_close(got, x.grad)
    torch.testing.assert_close(pred.probs.detach(), ref.detach())


def test_half_logits_run_the_exact_pass_once_remembered():
    net = Counting(_pixelwise())
    t = netuq.TTA(lambda x: net(x).half(), tta.flips(), task="segmentation")
    x = torch.randn(2, 3, 4, 4)
    pred = t(x)
    first = sum(net.rows)
    net.rows.clear()
    t(x)
    # the probe (one view: measures only), the fast pass refuses half logits, the exact pass; later: exact at once
    assert first == 2 + 2 * 4 * 2 and sum(net.rows) == 4 * 2  # the probe, the fast pass, the exact pass
    ref = tta_reference(lambda v: net(v).half().float(), tta.flips(), x)
    _assert_same_prediction(pred, ref, atol=1e-5)


def test_rotations_by_full_turns_and_overflowing_logit_spreads():
    net, x = _pixelwise(), torch.randn(1, 3, 4, 4)
    full = netuq.TTA(net, tta.Compose([tta.Rotate90([0, 360, -720])]), task="segmentation")(x)
    torch.testing.assert_close(full.probs, net(x).softmax(1).detach())  # every view is the identity
    assert full.variation_ratio.abs().max() == 0

    def wide(x):  # finite float32 logits whose spread (max - min) overflows to inf
        z = torch.zeros(x.shape[0], 3, *x.shape[-2:])
        z[:, 0], z[:, 1] = 3e38, -3e38
        return z

    pred = netuq.TTA(wide, tta.d4(), task="segmentation")(x)
    assert bool(torch.isfinite(pred.entropy).all()) and float(pred.entropy.abs().max()) < 1e-6


def test_resampling_views_check_every_view_even_where_interpolation_skips_a_pixel():
    def poisoned(x):  # NaN at one pixel of the 3x view only: the resize back to 6 x 6 never reads it
        z = x[:, :2].clone()
        if x.shape[-1] == 18:
            z[0, 0, 0, 0] = float("nan")
        return z

    with pytest.raises(ValueError, match="`logits` must (not contain NaN|be finite or -inf)"):
        netuq.TTA(poisoned, tta.Compose([tta.Scale([3])]), task="segmentation")(torch.randn(1, 3, 6, 6))


def test_float64_models_stay_float64_and_match_the_reference():
    model, x = _unet().double(), torch.randn(1, 3, 8, 8, dtype=torch.float64)
    pred = netuq.TTA(model, tta.flips(), task="segmentation")(x)
    assert pred.log_probs.dtype == torch.float64
    _assert_same_prediction(pred, tta_reference(model, tta.flips(), x), atol=1e-12)


def test_classification_blocks_of_views_equal_prediction_of_every_view():
    model, x = _cnn(), torch.randn(5, 3, 8, 8)
    for max_batch in (None, 5, 10):
        pred = netuq.TTA(model, tta.d4(), max_batch=max_batch)(x)
        _assert_same_prediction(pred, tta_reference(model, tta.d4(), x, task="classification"))


def test_views_per_forward_on_cpu_batches_only_small_inputs():
    model = Counting(_pixelwise())
    netuq.TTA(model, tta.d4(), task="segmentation")(torch.randn(4, 3, 32, 32))  # 12288 elements per view
    assert model.rows == [4] * 8  # one view per call: ttach's batching and memory
    model.rows.clear()
    small = netuq.TTA(model, tta.d4(), task="segmentation")
    small(torch.randn(1, 3, 16, 16))  # 768 per view
    assert model.rows == [1, 8]  # the probe, then all views at once
    model.rows.clear()
    small(torch.randn(1, 3, 16, 16))
    assert model.rows == [8]


def test_one_home_for_tta():
    from netuq.methods import tta as methods_tta

    assert netuq.TTA is tta.TTA is methods_tta.TTA is netuq.methods.TTA
    assert tta.MERGES == ("mean", "gmean", "max", "tsharpen") and tta.TSHARPEN_T == 0.5
    for name in tta.__all__:
        assert hasattr(tta, name), name


def test_buffers_are_reused_across_calls_and_replaced_for_a_new_shape():
    """The per-thread workspace keeps one shape's buffers between calls: results equal a fresh
    wrapper's bit for bit, whatever shapes came before, and the buffers stay those of one shape."""
    model, transforms = _unet(), tta.d4()
    wrapper = netuq.TTA(model, transforms, task="segmentation")
    a, b = torch.randn(2, 3, 8, 8), torch.randn(1, 3, 8, 12)
    for x in (a, b, a, a, b):
        fresh = netuq.TTA(model, transforms, task="segmentation")(x)
        pred = wrapper(x)
        for name in ("probs", "aleatoric", "variation_ratio"):
            assert torch.equal(getattr(pred, name), getattr(fresh, name)), name
        n, _, h, w = x.shape  # the logits' frames: (n, 4, h, w) and, for rotated views, (n, 4, w, h)
        kept = wrapper._workspace()._buffers
        assert {k[1] for k in kept} == {(n, 4, h, w), (n, 4, w, h)}  # this call's frames only
        assert {k[0] for k in kept} <= {"shifted", "floats", "argmax"}
        assert len(kept) <= 3 * (1 if h == w else 2)  # one buffer per name and frame


def test_large_workspaces_are_not_kept(monkeypatch):
    from netuq.tta.wrapper import _Workspace

    monkeypatch.setattr(_Workspace, "KEEP_BYTES", 1024)
    wrapper = netuq.TTA(_unet(), tta.flips(), task="segmentation")
    wrapper(torch.randn(2, 3, 8, 8))
    assert wrapper._workspace()._buffers == {}


def test_wrapper_pickles_without_its_buffers():
    import pickle

    wrapper = netuq.TTA(_unet(), tta.d4(), task="segmentation")
    x = torch.randn(1, 3, 8, 8)
    before = wrapper(x).probs
    again = pickle.loads(pickle.dumps(wrapper))
    torch.testing.assert_close(again(x).probs, before, atol=1e-6, rtol=0)


def test_rows_per_forward_follow_the_measured_largest_activation(monkeypatch):
    """The first forward of a shape measures its largest activation; later forwards split their
    rows to keep it under the device budget, with the same results."""
    from netuq import _batching

    model, x = Counting(_cnn()), torch.randn(12, 3, 8, 8)
    ref = netuq.TTA(model, tta.flips(), max_batch=12)(x)  # one view of 12 rows per call
    monkeypatch.setitem(_batching.ACTIVATION_ELEMENTS, "cpu", 5 * 4 * 8 * 8)  # 5 rows of the first conv (4 x 8 x 8)
    model.rows.clear()
    wrapper = netuq.TTA(model, tta.flips())
    pred = wrapper(x)
    assert model.rows[0] == 12  # the first forward (one view of the 12 small images) measures
    assert model.rows[1:] == [4] * 12  # then one view a call, its 12 rows split in 3 (at most 5 each)
    _assert_same_prediction(pred, tta_reference(model.model, tta.flips(), x, "classification"), atol=1e-5)
    torch.testing.assert_close(pred.probs, ref.probs, atol=1e-6, rtol=0)
    model.rows.clear()
    wrapper(x)
    assert max(model.rows) <= 5  # the plan is kept: no second measurement
    model.rows.clear()
    netuq.TTA(model, tta.flips(), max_batch=12)(x)
    assert model.rows == [12] * 4  # the user's max_batch wins


def test_linear_sums_serve_probs_without_a_log_and_take_more_samples():
    """A TTA prediction whose sums stayed linear gives probs as sum / V; asking for log_probs,
    concatenating, moving and adding samples behave as for any Prediction."""
    model, x = _unet(), torch.randn(2, 3, 8, 8)
    pred = netuq.TTA(model, tta.d4(), task="segmentation")(x)
    assert pred._linear_sum is not None and pred._log_sum_value is None
    probs = pred.probs
    assert pred._log_sum_value is None  # probs needed no log
    torch.testing.assert_close(pred.log_probs.exp(), probs, atol=1e-7, rtol=1e-6)
    assert len(pred) == 2 and "shape=(2, 4, 8, 8)" in repr(pred)
    cat = netuq.Prediction.cat([pred, pred.to("cpu")])
    assert cat._linear_sum is not None
    torch.testing.assert_close(cat.probs, torch.cat([probs, probs]))
    extra = torch.softmax(torch.randn(2, 4, 8, 8), 1)
    ref = tta_reference(model, tta.d4(), x)
    pred.add(extra)
    ref.add(extra.double())
    _assert_same_prediction(pred, ref)


def test_a_model_in_training_mode_keeps_the_users_rows():
    """Outputs of a training-mode model depend on the batch (BatchNorm): no measured row split."""
    from netuq import _batching

    model = Counting(_cnn().train())
    x = torch.randn(12, 3, 8, 8)
    old = _batching.ACTIVATION_ELEMENTS["cpu"]
    _batching.ACTIVATION_ELEMENTS["cpu"] = 4 * 8 * 8  # one row: every forward would split
    try:
        wrapper = netuq.TTA(model, tta.flips())
        wrapper(x)
        wrapper(x)
    finally:
        _batching.ACTIVATION_ELEMENTS["cpu"] = old
    assert model.rows == [12] * 8  # one view per forward, the user's 12 rows, both calls
    assert all(plan.coupled for plan in wrapper._plans.values())


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 4), c=st.integers(1, 6), hw=st.integers(1, 5), scale=st.floats(0.1, 30.0), seed=st.integers(0, 99)
)
def test_softmax_parts_match_scipy_softmax_and_entropy(n, c, hw, scale, seed):
    """merges.softmax_parts against scipy: e / S is the softmax, log S − Σ e·s / S its entropy, the
    mask the argmax; the same numbers with reused buffers and computed in place."""
    from scipy.special import softmax
    from scipy.stats import entropy

    from netuq.tta.merges import softmax_parts

    z = scale * torch.randn(n, c, hw, hw, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    s, e, total, mask = softmax_parts(z.clone())
    p_ref = softmax(z.numpy(), axis=1)
    torch.testing.assert_close(e / total, torch.from_numpy(p_ref), atol=1e-12, rtol=1e-9)
    h = (total.log() - (s * e).sum(1, keepdim=True) / total).squeeze(1)
    torch.testing.assert_close(h, torch.from_numpy(entropy(p_ref, axis=1)), atol=1e-9, rtol=1e-7)
    assert torch.equal(mask, torch.nn.functional.one_hot(z.argmax(1), c).movedim(-1, 1).bool())
    kept: dict = {}
    reuse = lambda name, like, dtype=None: kept.setdefault(name, torch.empty_like(like, dtype=dtype))  # noqa: E731
    for _ in range(2):  # buffers reused across calls
        again = softmax_parts(z, reuse)
        assert all(torch.equal(a, b) for a, b in zip(again, (s, e, total, mask)))
    mine = z.clone()
    in_place = softmax_parts(mine, own=True)
    assert in_place[0].data_ptr() == mine.data_ptr() and torch.equal(in_place[0], s)


# ----------------------------------------------------------------------------- issue 22: rows that mix
class _CenterRows(nn.Module):
    def forward(self, x):
        return x - x.mean(0, keepdim=True)


class _BatchStats(nn.Module):
    def forward(self, x):
        return torch.nn.functional.batch_norm(x, None, None, training=True)


class _ScaleByBatchMax(nn.Module):
    def forward(self, x):
        return x / x.abs().amax()


MIXING = {
    "bn_eval_without_running_stats": lambda: nn.BatchNorm2d(4, track_running_stats=False).eval(),
    "bn_training": lambda: nn.BatchNorm2d(4).train(),
    "f_batch_norm_training": _BatchStats,
    "center_rows": _CenterRows,
    "scale_by_batch_max": _ScaleByBatchMax,
}


def _net(norm: nn.Module, task: str) -> nn.Module:
    torch.manual_seed(0)
    pooled = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)]
    head = pooled if task == "classification" else [nn.Conv2d(4, 5, 1)]
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), norm, nn.ReLU(), *head)


@pytest.mark.parametrize("kind", sorted(MIXING))
@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_models_whose_rows_mix_run_one_view_per_forward(kind, task):
    """Issue 22 item 7: views were stacked into one batch unless a BatchNorm was in training mode;
    BatchNorm2d(track_running_stats=False) in eval mode then gave |Δp| 1.4e-3 against one view per
    forward. Decided by what the model does (the probe forward), for every kind of row mixing."""
    x = torch.randn(2, 3, 6, 6)  # tiny: all 8 views would be stacked into one forward
    model = Counting(_net(MIXING[kind](), task))
    wrapper = netuq.TTA(model, tta.d4(), task=task)
    for _ in range(2):
        model.rows.clear()
        train = [m.training for m in model.modules()]
        got = wrapper(x)
        assert model.rows == [2] * 8  # every view alone, on the user's rows
        for m, flag in zip(model.modules(), train):
            m.training = flag  # (a training-mode BatchNorm: the reference runs the same mode)
        _assert_same_prediction(got, tta_reference(model.model, tta.d4(), x, task), atol=1e-6)


def test_models_whose_rows_do_not_mix_still_stack_views():
    norms = nn.Sequential(nn.InstanceNorm2d(4), nn.GroupNorm(2, 4), nn.BatchNorm2d(4).eval(), nn.LayerNorm([6, 6]))
    model = Counting(_net(norms, "segmentation").eval())
    wrapper = netuq.TTA(model, tta.d4(), task="segmentation")
    x = torch.randn(2, 3, 6, 6)
    wrapper(x)
    model.rows.clear()
    _assert_same_prediction(wrapper(x), tta_reference(model.model, tta.d4(), x), atol=1e-5)
    assert model.rows == [16]


# ----------------------------------------------------------------------------- issue 22: a masked class
class _Masked(nn.Module):
    """Logits with class 2 masked to -inf (e.g. a class absent from a deployment)."""

    def __init__(self, task: str, value: float = float("-inf"), rows: str = "one") -> None:
        super().__init__()
        self.conv, self.task, self.value, self.rows = nn.Conv2d(3, 4, 1), task, value, rows

    def forward(self, x):
        z = self.conv(x)
        z = z.mean((2, 3)) if self.task == "classification" else z
        z = z.clone()
        z[:, 2] = self.value
        if self.rows == "all":
            z[:1] = float("-inf")
        return z


def _entry_points(model, task, x):
    yield "from_logits", lambda: netuq.Prediction.from_logits(model(x).detach())
    yield "predict", lambda: netuq.predict(model, [x])[0] if isinstance(netuq.predict(model, [x]), tuple) else None
    yield "ensemble", lambda: netuq.Ensemble([model, model])(x)
    yield "mc_dropout", lambda: netuq.MCDropout(nn.Sequential(nn.Dropout(0.0), model), samples=3, seed=0)(x)
    for merge in tta.MERGES:
        yield f"tta_{merge}", lambda merge=merge: netuq.TTA(model, tta.flips(), merge=merge, task=task)(x)
    yield "tta_scale", lambda: netuq.TTA(model, tta.Compose([tta.Scale([1, 2])]), task=task)(x)
    yield "tta_grad", lambda: netuq.TTA(model, tta.flips(), task=task, no_grad=False)(x)


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_a_class_masked_to_minus_inf_is_one_rule_at_every_entry_point(task):
    """Issue 22 item 11: TTA refused logits that Prediction.from_logits, predict, MCDropout and
    Ensemble accept. Accepted everywhere: probability 0 for the masked class, the rest the softmax
    of the others; refused everywhere: NaN, +inf, a row with every class at -inf."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 4)
    model = _Masked(task).eval()
    z = model(x).detach()
    want = torch.cat([z[:, :2], z[:, 3:]], 1).softmax(1)
    for name, run in _entry_points(model, task, x):
        pred = run()
        if pred is None:
            continue
        probs = pred.probs.detach()
        # 0 (a resampled view's log-probabilities are clamped at the smallest normal number)
        assert float(probs[:, 2].max()) <= torch.finfo(probs.dtype).tiny, name
        if name == "tta_scale":  # resampling changes the pixels: the masked class is what is checked here
            continue
        expected = want.sqrt() / want.sqrt().sum(1, keepdim=True) if name == "tta_tsharpen" else want  # p^0.5
        # (the model is flip-equivariant: every view gives the same probabilities)
        torch.testing.assert_close(torch.cat([probs[:, :2], probs[:, 3:]], 1), expected, atol=1e-6, rtol=0, msg=name)
    for value, rows, match in (
        (float("nan"), "one", "must not contain NaN"),
        (float("inf"), "one", r"must be finite or -inf \(a masked class\), got \d+ \+Inf"),
        (float("-inf"), "all", "must have a finite entry in every row over the class dimension"),
    ):
        bad = _Masked(task, value, rows).eval()
        for name, run in _entry_points(bad, task, x):
            if name in ("tta_max", "tta_tsharpen", "tta_gmean", "tta_scale"):
                continue  # the same exact pass as tta_mean
            with pytest.raises(ValueError, match=match):
                out = run()
                if out is None:
                    raise ValueError("predict: " + match)
