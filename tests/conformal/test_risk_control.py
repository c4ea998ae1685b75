"""ConformalRiskControl: λ̂ equals a pixel-loop reference, the pass streams (batches = all at once),
and the risk is controlled in expectation over images on many random splits of digit scenes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from reference.conformal_reference import crc_threshold, image_loss

import netuq
from netuq.conformal import ConformalRiskControl, threshold_grid

IGNORE = 255


def _noisy_logits(labels: torch.Tensor, C: int, seed: int, signal: float = 2.0) -> torch.Tensor:
    """Spatially correlated logits that favour the true class: a stand-in segmentation model."""
    gen = torch.Generator().manual_seed(seed)
    onehot = F.one_hot(torch.where(labels == IGNORE, 0, labels), C).permute(0, 3, 1, 2).double()
    noise = torch.randn(onehot.shape, generator=gen, dtype=torch.float64)
    noise = F.avg_pool2d(noise, 3, stride=1, padding=1) * 3.0  # correlated within an image
    scale = 0.5 + torch.rand(labels.shape[0], 1, 1, 1, generator=gen, dtype=torch.float64) * 2  # easy/hard images
    return signal * scale * onehot + noise


def _small(seed: int, n: int = 12, C: int = 4, H: int = 6, W: int = 5):
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (n, H, W), generator=gen)
    y[torch.rand(n, H, W, generator=gen) < 0.1] = IGNORE
    y[0] = 1  # an image without the target class 0 (FNR 0) ...
    y[1] = IGNORE  # ... and one without valid pixels
    return _noisy_logits(y, C, seed + 1), y


@pytest.mark.parametrize("loss", ["fnr", "miscoverage"])
@pytest.mark.parametrize("alpha", [0.1, 0.3])
def test_threshold_equals_pixel_loop_reference(loss, alpha):
    z, y = _small(0, n=30)
    p = torch.softmax(z, 1)
    grid = torch.linspace(0, 1, 41, dtype=torch.float64)
    crc = ConformalRiskControl(loss=loss, alpha=alpha, target_class=0, thresholds=grid).fit(z, y, ignore_index=IGNORE)
    ref = crc_threshold(p.numpy(), y.numpy(), grid.tolist(), alpha, loss, 0, IGNORE)
    assert crc.threshold_ == ref and crc.lambda_ == 1.0 - ref
    losses = crc.risk(z, y, ignore_index=IGNORE)
    for i in range(len(y)):
        assert float(losses[i]) == pytest.approx(image_loss(p[i].numpy(), y[i].numpy(), ref, loss, 0, IGNORE),
                                                 abs=1e-15)


def test_streaming_batches_equal_all_at_once_and_loader_fit():
    z, y = _small(1, n=20)
    whole = ConformalRiskControl(loss="miscoverage", alpha=0.2).fit(z, y, ignore_index=IGNORE)
    batches = [(z[i:i + 3], y[i:i + 3]) for i in range(0, 20, 3)]
    loader = ConformalRiskControl(loss="miscoverage", alpha=0.2).fit(batches, ignore_index=IGNORE)
    streamed = ConformalRiskControl(loss="miscoverage", alpha=0.2)
    for zb, yb in reversed(batches):
        streamed.update(zb, yb, ignore_index=IGNORE)
    for other in (loader, streamed):
        assert other.threshold_ == whole.threshold_ and other.n_calibration_ == 20
        torch.testing.assert_close(other.risk_, whole.risk_, rtol=0, atol=1e-14)
    # the state is the grid, whatever the number of pixels
    assert whole._loss_sum.numel() == threshold_grid(2000).numel()


def test_inputs_logits_probs_prediction_agree_and_predict_shapes():
    z, y = _small(2)
    a = ConformalRiskControl(loss="fnr", target_class=2, alpha=0.2).fit(z, y, ignore_index=IGNORE)
    b = ConformalRiskControl(loss="fnr", target_class=2, alpha=0.2).fit(torch.softmax(z, 1), y, ignore_index=IGNORE)
    c = ConformalRiskControl(loss="fnr", target_class=2, alpha=0.2).fit(netuq.Prediction.from_logits(z), y,
                                                                         ignore_index=IGNORE)
    assert a.threshold_ == b.threshold_
    assert abs(a.threshold_ - c.threshold_) <= 0.01
    sets = a.predict(z)
    mask = a.predict_mask(z)
    assert sets.shape == z.shape and sets.dtype == torch.bool and mask.shape == y.shape
    assert torch.equal(mask, sets[:, 2])


def test_too_few_images_gives_the_trivial_threshold():
    z, y = _small(3, n=5)
    crc = ConformalRiskControl(loss="miscoverage", alpha=0.1).fit(z, y, ignore_index=IGNORE)  # 1/6 > 0.1
    assert crc.threshold_ == 0.0 and crc.lambda_ == 1.0 and not crc.certified_
    assert bool(crc.predict(z).all())


def test_errors():
    z, y = _small(4)
    with pytest.raises(ValueError, match="`target_class` must be given for loss='fnr'"):
        ConformalRiskControl(loss="fnr")
    with pytest.raises(ValueError, match="`loss` must be one of"):
        ConformalRiskControl(loss="iou", target_class=0)
    with pytest.raises(ValueError, match="`thresholds` must be strictly increasing"):
        ConformalRiskControl(loss="miscoverage", thresholds=[0.5, 0.2])
    with pytest.raises(netuq.NotFittedError):
        ConformalRiskControl(loss="miscoverage").predict(z)
    with pytest.raises(ValueError, match="`x` must have shape \\(N, C, H, W\\)"):
        ConformalRiskControl(loss="miscoverage").fit(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="`target_class` must be a class index in \\[0, 4\\)"):
        ConformalRiskControl(loss="fnr", target_class=7).fit(z, y, ignore_index=IGNORE)
    with pytest.raises(ValueError, match="`labels` must be given with tensors"):
        ConformalRiskControl(loss="miscoverage").fit(z)
    with pytest.raises(ValueError, match="`target_class` must be set"):
        ConformalRiskControl(loss="miscoverage").fit(z, y, ignore_index=IGNORE).predict_mask(z)


@pytest.fixture(scope="module")
def scenes():
    sc = netuq.data.digit_scenes(120, size=32, seed=0)
    return torch.softmax(_noisy_logits(sc.labels, sc.num_classes, seed=5), 1), sc.labels


@pytest.mark.parametrize("loss", ["fnr", "miscoverage"])
def test_risk_is_controlled_on_digit_scenes(loss, scenes):
    p, labels = scenes
    alpha, n = 0.1, 40
    gen = torch.Generator().manual_seed(6)
    risks = []
    for _ in range(60):
        perm = torch.randperm(len(labels), generator=gen)
        cal, test = perm[:n], perm[n:]
        crc = ConformalRiskControl(loss=loss, alpha=alpha, target_class=0, grid_size=500)
        crc.fit(p[cal], labels[cal], ignore_index=IGNORE, input="probs")
        risks.append(float(crc.risk(p[test], labels[test], ignore_index=IGNORE, input="probs").mean()))
    risks = np.array(risks)
    mean, se = risks.mean(), risks.std(ddof=1) / math.sqrt(len(risks))
    assert mean <= alpha + 4 * se, (mean, se)
    assert mean >= alpha - 2 / (n + 1) - 0.02, (mean, se)  # tight: the correction costs at most ~2B/(n+1)
