"""The benchmark's reference network per data set: global average pooling on 8 x 8 digits, a 4 x 4
grid of region averages on 28 x 28 images (global pooling kept Fashion-MNIST at ~0.75 accuracy)."""

import pytest
import torch

from netuq.benchmark.config import load_config
from netuq.benchmark.recipes import make_network, method_notes, pooling_grid
from netuq.models import SmallCNN


def _object(shift: int) -> torch.Tensor:
    """A 28 x 28 image: zero background and one 6 x 6 object, ``shift`` pixels right of column 8."""
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 10:16, 8 + shift : 14 + shift] = torch.rand(6, 6, generator=g) + 0.5
    return x


def _trained_like(net: SmallCNN) -> SmallCNN:
    """Non-trivial BatchNorm statistics (a constant background maps to a non-zero feature)."""
    torch.manual_seed(1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return net.eval()


def test_global_pooling_cannot_see_where_an_object_is_and_the_grid_can():
    # Convolutions and 2x2 max-pooling commute with even shifts away from the border, so global
    # average pooling maps an object and the object moved 8 pixels to the same features: it only
    # knows which patches are present, not where (a shirt and a pullover differ by shape).
    torch.manual_seed(0)
    gap = _trained_like(SmallCNN(1, 10, width=8, grid=1))
    torch.manual_seed(0)
    grid = _trained_like(SmallCNN(1, 10, width=8, grid=4))
    with torch.no_grad():
        a, b = _object(0), _object(8)
        torch.testing.assert_close(gap.embed(a), gap.embed(b), rtol=1e-5, atol=1e-5)
        assert (grid.embed(a) - grid.embed(b)).abs().max() > 1e-2  # ~1e-7 would be float noise
        assert grid.embed(a).shape == (1, 2 * 8 * 16) and grid(a).shape == (1, 10)


def test_the_grid_is_region_averages_of_the_trunk():
    torch.manual_seed(0)
    net = _trained_like(SmallCNN(1, 10, width=4, grid=2))
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        maps = net.features[:4](x)  # (3, 8, 14, 14): the conv trunk before pooling
        expected = torch.stack([maps[..., :7, :7], maps[..., :7, 7:], maps[..., 7:, :7], maps[..., 7:, 7:]], -1)
        expected = expected.mean((-3, -2)).flatten(1)  # (3, 8 * 4), channel-major as nn.Flatten
        torch.testing.assert_close(net.embed(x), expected)


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, "4"])
def test_grid_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match=r"`grid` must be a positive integer, got"):
        SmallCNN(1, 10, grid=bad)


def test_benchmark_network_per_data_set(tmp_path):
    digits = load_config()
    fashion = load_config(dataset="fashionmnist", data_dir=str(tmp_path))
    assert pooling_grid(digits) == 1 and pooling_grid(fashion) == 4
    net = make_network(digits, 10)
    assert net.feature_dim == 2 * digits.width and net(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    net = make_network(fashion, 10)
    assert net.feature_dim == 2 * fashion.width * 16 and net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert any("4 × 4 grid" in n for n in method_notes(fashion))
    assert any("global average pooling" in n for n in method_notes(digits))


def test_digits_network_is_unchanged():
    # grid=1 (the digits default) builds exactly the previous layout: same parameters, same draws.
    torch.manual_seed(0)
    new = SmallCNN(1, 10, width=16, dropout=0.3)
    assert new.feature_dim == 32 and new.head[1].in_features == 32
    assert isinstance(new.features[4], torch.nn.AdaptiveAvgPool2d) and new.features[4].output_size == 1


def test_method_notes_describe_the_network_of_the_task():
    cls = method_notes(load_config(quick=True))
    seg = method_notes(load_config(task="segmentation", quick=True))
    assert any(n.startswith("MC dropout") and "before the classifier (p = 0.3)" in n for n in cls)
    assert any(n.startswith("MC dropout") and "Dropout2d layers (p = 0.1 in every block)" in n for n in seg)
    assert any(n.startswith("Networks: SmallUNet") for n in seg) and not any("SmallUNet" in n for n in cls)
    assert "once (2 folds)" in cls[0] and "× repeated" not in cls[0]
