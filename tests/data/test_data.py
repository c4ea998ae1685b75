"""netuq.data: embedded digits, shifts, OOD images, digit scenes and the local vision readers."""

import gzip
import pickle
import re
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from scipy import ndimage
from sklearn.datasets import load_digits as sk_load_digits

from netuq import data as D
from netuq.data.ood import resize, resize_matrix
from netuq.data.shifts import SEVERITY_PARAMS

# ----------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits():
    return D.load_digits(seed=0)


def test_load_digits_shapes_ranges_and_content(digits):
    sk = sk_load_digits()
    n = sum(len(s.y) for s in (digits.train, digits.val, digits.test))
    assert n == len(sk.target) == 1797
    assert len(digits.test.y) == round(0.3 * 1797) and len(digits.val.y) == round(0.15 * 1797)
    for split in (digits.train, digits.val, digits.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert split.x.shape[1:] == (1, 8, 8) and len(split.x) == len(split.y)
        assert float(split.x.min()) == 0.0 and float(split.x.max()) == 1.0
    assert digits.num_classes == 10 and digits.class_names == tuple("0123456789")
    assert digits.input_shape == (1, 8, 8)
    # Every image is a scikit-learn digit / 16 with its own label (multiset equality).
    ours = sorted(
        (bytes((s.x[i, 0] * 16).round().to(torch.uint8).numpy()), int(s.y[i]))
        for s in (digits.train, digits.val, digits.test)
        for i in range(len(s.y))
    )
    ref = sorted((bytes(img.astype(np.uint8)), int(t)) for img, t in zip(sk.images, sk.target))
    assert ours == ref


def test_load_digits_stratified_and_seeded(digits):
    total = torch.bincount(torch.cat([digits.train.y, digits.val.y, digits.test.y]), minlength=10).double()
    for split in (digits.train, digits.val, digits.test):
        frac = torch.bincount(split.y, minlength=10).double() / len(split.y)
        assert torch.allclose(frac, total / total.sum(), atol=0.01)
    again = D.load_digits(seed=0)
    other = D.load_digits(seed=1)
    assert torch.equal(again.test.x, digits.test.x) and torch.equal(again.train.y, digits.train.y)
    assert not torch.equal(other.test.x, digits.test.x)
    x, y = digits.train  # a Split unpacks like a tuple (and feeds netuq.training.fit)
    assert x is digits.train.x and y is digits.train.y


def test_load_digits_counts_and_errors():
    ds = D.load_digits(val_size=100, test_size=200)
    assert (len(ds.val.y), len(ds.test.y), len(ds.train.y)) == (100, 200, 1497)
    with pytest.raises(ValueError, match=r"`test_size` must be in \(0, 1\) as a fraction, got 1.5"):
        D.load_digits(test_size=1.5)
    with pytest.raises(ValueError, match=r"`val_size` \+ `test_size` must leave training samples"):
        D.load_digits(val_size=0.6, test_size=0.5)
    with pytest.raises(TypeError, match="`val_size` must be a float in"):
        D.load_digits(val_size="0.1")
    with pytest.raises(ValueError, match="`val_size` must select between 1 and"):
        D.load_digits(val_size=0)


@given(
    n=st.integers(10, 200),
    seed=st.integers(0, 10),
    n_strata=st.integers(1, 5),
    val=st.floats(0.05, 0.4),
    test=st.floats(0.05, 0.4),
)
def test_split_indices_partition(n, seed, n_strata, val, test):
    strata = np.arange(n) % n_strata
    tr, va, te = D.split_indices(n, strata=strata, val_size=val, test_size=test, seed=seed)
    assert sorted(np.concatenate([tr, va, te]).tolist()) == list(range(n))
    assert len(te) == max(1, round(test * n)) and len(va) == max(1, round(val * n))


def test_split_indices_falls_back_when_a_stratum_is_tiny():
    strata = np.array([0] * 9 + [1])  # class 1 has one member: stratification impossible
    tr, va, te = D.split_indices(10, strata=strata, val_size=2, test_size=3, seed=0)
    assert (len(tr), len(va), len(te)) == (5, 2, 3)
    with pytest.raises(ValueError, match=r"`strata` must have shape \(10,\), got \(9,\)"):
        D.split_indices(10, strata=strata[:9])
    with pytest.raises(ValueError, match="`n` must be an integer >= 3, got 2"):
        D.split_indices(2)


# ----------------------------------------------------------------------------- shifts


@pytest.mark.parametrize("kind", D.SHIFTS)
def test_corrupt_severity_is_monotonic_and_clipped(digits, kind):
    x = digits.test.x
    change = []
    for severity in range(6):
        y = D.corrupt(x, kind, severity, seed=3)
        assert y.shape == x.shape and y.dtype == x.dtype
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
        change.append(float((y - x).abs().mean()))
    assert change[0] == 0.0
    assert all(a < b for a, b in zip(change, change[1:])), change
    assert torch.equal(x, digits.test.x)  # input untouched


@pytest.mark.parametrize("kind", D.SHIFTS)
def test_corrupt_deterministic_any_size_and_channels(kind):
    x = torch.rand(12, 3, 12, 20, generator=torch.Generator().manual_seed(0))
    a = D.corrupt(x, kind, 4, seed=7)
    b = D.corrupt(x, kind, 4, seed=7)
    assert a.shape == (12, 3, 12, 20) and torch.equal(a, b)
    if kind != "blur":  # blur has no randomness
        assert not torch.equal(a, D.corrupt(x, kind, 4, seed=8))
    h = D.corrupt(x.half(), kind, 2, seed=1)
    assert h.dtype == torch.float16
    assert torch.allclose(h.float(), D.corrupt(x.half().float(), kind, 2, seed=1), atol=2e-3)
    d = D.corrupt(x.double(), kind, 2, seed=1)
    assert d.dtype == torch.float64


def test_rotation_by_90_degrees_is_rot90():
    x = torch.rand(16, 2, 9, 9, generator=torch.Generator().manual_seed(1))
    y = D.corrupt(x, "rotation", 5, seed=0)  # severity 5 = ±90°
    assert SEVERITY_PARAMS["rotation"][4] == 90.0
    signs = set()
    for i in range(len(x)):
        ccw, cw = torch.rot90(x[i], 1, (1, 2)), torch.rot90(x[i], -1, (1, 2))
        if torch.allclose(y[i], ccw, atol=1e-5):
            signs.add(1)
        else:
            assert torch.allclose(y[i], cw, atol=1e-5)
            signs.add(-1)
    assert signs == {1, -1}  # the sign is drawn per image


def test_blur_matches_scipy_gaussian_filter():
    x = torch.rand(2, 1, 10, 14, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for severity in (1, 3, 5):
        sigma = SEVERITY_PARAMS["blur"][severity - 1] * 10 / 8
        radius = int(np.ceil(3 * sigma))
        ref = np.stack([ndimage.gaussian_filter(im[0], sigma, mode="nearest", truncate=radius / sigma)
                        for im in x.numpy()])
        out = D.corrupt(x, "blur", severity)
        np.testing.assert_allclose(out[:, 0].numpy(), ref, atol=1e-12)


def test_gaussian_noise_and_pixel_dropout_statistics():
    gray = torch.full((40, 1, 16, 16), 0.5)
    noisy = D.corrupt(gray, "gaussian_noise", 2, seed=0)  # σ = 0.08: clipping never triggers
    assert abs(float((noisy - gray).std()) - SEVERITY_PARAMS["gaussian_noise"][1]) < 0.003
    assert abs(float((noisy - gray).mean())) < 0.003
    ones = torch.ones(50, 3, 16, 16)
    masks = [D.corrupt(ones, "pixel_dropout", s, seed=5) == 0 for s in range(1, 6)]
    for s, m in enumerate(masks):
        p = SEVERITY_PARAMS["pixel_dropout"][s]
        assert abs(float(m.float().mean()) - p) < 4 * np.sqrt(p * (1 - p) / m[:, 0].numel())
        assert torch.equal(m[:, 0], m[:, 1]) and torch.equal(m[:, 0], m[:, 2])  # whole pixels
    for a, b in zip(masks, masks[1:]):
        assert bool((a <= b).all())  # nested: a pixel dropped at severity s stays dropped


def test_corrupt_errors():
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"`kind` must be one of \('rotation'"):
        D.corrupt(x, "fog", 1)
    with pytest.raises(ValueError, match=r"`severity` must be an integer in \[0, 5\], got 6"):
        D.corrupt(x, "blur", 6)
    with pytest.raises(ValueError, match=r"`severity` must be an integer in \[0, 5\], got True"):
        D.corrupt(x, "blur", True)
    with pytest.raises(ValueError, match=r"`x` must have shape \(N, C, H, W\), got shape \(1, 8, 8\)"):
        D.corrupt(x[0], "blur", 1)
    with pytest.raises(TypeError, match="`x` must be floating point, got torch.int64"):
        D.corrupt(torch.zeros(1, 1, 8, 8, dtype=torch.long), "blur", 1)
    with pytest.raises(TypeError, match="`x` must be a tensor, got ndarray"):
        D.corrupt(np.zeros((1, 1, 8, 8)), "blur", 1)


# ----------------------------------------------------------------------------- OOD images


@pytest.mark.parametrize("shape", [(8, 8), (12, 20), (3, 50)])
def test_resize_matches_torch_antialiased_bilinear(shape):
    x = torch.rand(3, 17, 23, generator=torch.Generator().manual_seed(0))
    ref = F.interpolate(x[None], size=shape, mode="bilinear", antialias=True, align_corners=False)[0]
    np.testing.assert_allclose(resize(x.numpy(), shape), ref.numpy(), atol=1e-5)
    assert np.allclose(resize_matrix(5, 11).sum(1), 1.0)


def test_ood_images_shapes_kinds_and_determinism():
    x, kind = D.ood_images(40, size=(8, 8), seed=0)
    assert x.shape == (40, 1, 8, 8) and x.dtype == torch.float32 and len(kind) == 40
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert {k: kind.count(k) for k in set(kind)} == {"china": 10, "flower": 10, "uniform": 10, "gaussian": 10}
    photo = x[torch.tensor([k in ("china", "flower") for k in kind])]
    assert torch.allclose(photo.amin((1, 2, 3)), torch.zeros(20))
    assert torch.allclose(photo.amax((1, 2, 3)), torch.ones(20))
    uniform = x[torch.tensor([k == "uniform" for k in kind])]
    assert abs(float(uniform.mean()) - 0.5) < 0.05
    x2, kind2 = D.ood_images(40, size=(8, 8), seed=0)
    assert torch.equal(x, x2) and kind == kind2
    assert not torch.equal(x, D.ood_images(40, size=(8, 8), seed=1)[0])


def test_ood_images_colour_sizes_and_errors():
    x, kind = D.ood_images(7, size=(12, 20), seed=2, kinds=("flower", "noise"), channels=3)
    assert x.shape == (7, 3, 12, 20) and set(kind) <= {"flower", "uniform", "gaussian"}
    assert D.sample_image("flower", channels=3).shape == (3, 427, 640)
    with pytest.raises(ValueError, match=r"`kinds` must be values in .*got 'mnist'"):
        D.ood_images(4, kinds=("mnist",))
    with pytest.raises(ValueError, match="`n` must be a positive integer, got 0"):
        D.ood_images(0)
    with pytest.raises(ValueError, match="`channels` must be 1 or 3, got 2"):
        D.ood_images(4, channels=2)
    with pytest.raises(ValueError, match=r"`name` must be one of \('china', 'flower'\), got 'lena'"):
        D.sample_image("lena")


# ----------------------------------------------------------------------------- digit scenes


@pytest.fixture(scope="module")
def scenes():
    return D.digit_scenes(300, size=32, anomaly_prob=0.5, seed=0)


def test_digit_scenes_shapes_and_label_consistency(scenes):
    n = 300
    assert scenes.images.shape == (n, 1, 32, 32) and scenes.images.dtype == torch.float32
    assert scenes.labels.shape == (n, 32, 32) and scenes.labels.dtype == torch.int64
    assert scenes.anomaly.shape == (n, 32, 32) and scenes.anomaly.dtype == torch.bool
    assert float(scenes.images.min()) >= 0 and float(scenes.images.max()) <= 1
    values = set(torch.unique(scenes.labels).tolist())
    assert values <= set(range(11)) | {255} and {0, 255} < values and len(values) == 12
    img = scenes.images[:, 0]
    digit = (scenes.labels >= 1) & (scenes.labels <= 10)
    assert bool((img[digit] > 0.3).all())  # digit pixels are the bright ones
    assert float(img[scenes.labels == 0].mean()) < 0.05  # background is (nearly) black
    assert torch.equal(scenes.anomaly, scenes.labels == 255)  # unknown objects are exactly the ignored pixels
    assert float(img[scenes.anomaly].min()) >= 0.2  # and visible
    has = scenes.anomaly.flatten(1).any(1)
    assert 0.35 < float(has.float().mean()) < 0.65
    # Dominant class recomputed independently.
    for i in range(0, n, 7):
        counts = np.bincount(scenes.labels[i].numpy().ravel(), minlength=256)[1:11]
        assert int(scenes.dominant[i]) == (int(counts.argmax()) + 1 if counts.sum() else 0)


def test_digit_scenes_deterministic_options_and_sources(scenes):
    again = D.digit_scenes(300, size=32, anomaly_prob=0.5, seed=0)
    assert torch.equal(again.images, scenes.images) and torch.equal(again.labels, scenes.labels)
    assert not torch.equal(D.digit_scenes(300, seed=1).labels, scenes.labels)
    clean = D.digit_scenes(20, anomaly_prob=0.0, seed=0)
    assert not clean.anomaly.any() and not bool((clean.labels == 255).any())
    full = D.digit_scenes(20, anomaly_prob=1.0, seed=0)
    assert bool(full.anomaly.flatten(1).any(1).all())
    sk = sk_load_digits()
    sevens = sk.images[sk.target == 7][:, None] / 16.0
    only7 = D.digit_scenes(10, source=(sevens, np.full(len(sevens), 7)), anomaly_prob=0.0, seed=0)
    assert set(torch.unique(only7.labels).tolist()) == {0, 8} and set(only7.dominant.tolist()) == {8}
    one = D.digit_scenes(30, digits_per_scene=1, anomaly_prob=0.0, seed=0)
    assert all(len(set(torch.unique(lab).tolist()) - {0}) == 1 for lab in one.labels)
    big = D.digit_scenes(5, size=64, digits_per_scene=(4, 6), seed=0)
    assert big.images.shape == (5, 1, 64, 64)
    sub = scenes[torch.tensor([3, 5])]
    assert len(sub) == 2 and torch.equal(sub.labels[1], scenes.labels[5])
    assert len(scenes[3]) == 1 and scenes[3].images.shape == (1, 1, 32, 32) and len(scenes[10:20]) == 10
    assert sub.split.x.shape == (2, 1, 32, 32)


def test_digit_scenes_errors():
    with pytest.raises(ValueError, match="`size` 16 must fit 3 digits of 16 px in separate cells"):
        D.digit_scenes(2, size=16)
    with pytest.raises(ValueError, match=r"`digits_per_scene` must be a \(min, max\) pair with 1 <= min <= max"):
        D.digit_scenes(2, digits_per_scene=(3, 1))
    with pytest.raises(TypeError, match="`digit_size` must be an int or a"):
        D.digit_scenes(2, digit_size="big")
    with pytest.raises(ValueError, match=r"`anomaly_prob` must be in \[0, 1\], got 2"):
        D.digit_scenes(2, anomaly_prob=2)
    with pytest.raises(ValueError, match="`n` must be a positive integer, got 0"):
        D.digit_scenes(0)
    with pytest.raises(ValueError, match=r"`source` labels must be integers in \[0, 10\), got values in \[0, 12\]"):
        D.digit_scenes(2, source=(np.zeros((2, 1, 8, 8)), np.array([0, 12])))
    with pytest.raises(ValueError, match=r"`source` must be \(x \(M, 1, h, w\), y \(M,\)\)"):
        D.digit_scenes(2, source=(np.zeros((2, 8, 8)), np.array([0, 1])))


def test_split_scenes_by_image_stratified(scenes):
    tr, va, te = D.split_scenes(scenes, val_size=0.2, test_size=0.3, seed=0)
    assert (len(tr), len(va), len(te)) == (150, 60, 90)
    pool = {bytes(s.numpy()) for s in scenes.labels}
    parts = [{bytes(s.numpy()) for s in p.labels} for p in (tr, va, te)]
    assert set.union(*parts) == pool and sum(map(len, parts)) == len(pool)
    ref = torch.bincount(scenes.dominant, minlength=11).double() / len(scenes)
    frac = torch.bincount(te.dominant, minlength=11).double() / len(te)
    assert torch.allclose(frac, ref, atol=0.02)
    with pytest.raises(TypeError, match="`scenes` must be Scenes, got tuple"):
        D.split_scenes((scenes.images, scenes.labels))


def test_load_digit_scenes_disjoint_pools_and_clean_training():
    sd = D.load_digit_scenes(120, size=32, seed=0)
    assert (len(sd.train.y), len(sd.val.y), len(sd.test.y)) == (66, 18, 36)
    assert sd.num_classes == 11 and sd.ignore_index == 255 and len(sd.class_names) == 11
    assert not sd.train_anomaly.any() and sd.test_anomaly.any()
    assert torch.equal(sd.test_anomaly, sd.test.y == 255)
    assert sd.train_strata.shape == (66,) and sd.val_strata.shape == (18,) and sd.test_strata.shape == (36,)
    again = D.load_digit_scenes(120, size=32, seed=0)
    assert torch.equal(again.test.x, sd.test.x)
    with_train = D.load_digit_scenes(120, seed=0, train_anomalies=True)
    assert with_train.train_anomaly.any()
    with pytest.raises(ValueError, match=r"`val_size` \+ `test_size` must leave training scenes"):
        D.load_digit_scenes(10, val_size=5, test_size=5)


# ----------------------------------------------------------------------------- local vision data sets


def _idx(array: np.ndarray) -> bytes:
    return struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def _fake_mnist(root, folder="MNIST", n_train=60, n_test=20, gz=False):
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        for stem, arr in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
            if gz:
                with gzip.open(raw / (stem + ".gz"), "wb") as fh:
                    fh.write(_idx(arr))
            else:
                (raw / stem).write_bytes(_idx(arr))
        out[prefix] = (images, labels)
    return out


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_reader_round_trip(tmp_path, gz):
    fake = _fake_mnist(tmp_path, gz=gz)
    images, labels = D.read_mnist(tmp_path, train=False)
    assert np.array_equal(images, fake["t10k"][0]) and np.array_equal(labels, fake["t10k"][1])
    assert labels.dtype == np.int64
    ds = D.load_torchvision("mnist", tmp_path, backend="builtin", val_size=10, seed=0)
    assert ds.name == "mnist" and ds.num_classes == 10 and ds.class_names[3] == "3"
    assert ds.train.x.shape == (50, 1, 28, 28) and ds.val.x.shape == (10, 1, 28, 28)
    assert ds.test.x.dtype == torch.float32
    assert torch.allclose(ds.test.x[:, 0] * 255, torch.from_numpy(fake["t10k"][0]).float(), atol=1e-4)
    assert torch.equal(ds.test.y, torch.from_numpy(fake["t10k"][1].astype(np.int64)))
    assert torch.bincount(ds.val.y, minlength=10).tolist() == [1] * 10  # stratified validation split
    # Every training image keeps its label.
    lookup = {bytes(img): int(lab) for img, lab in zip(*fake["train"])}
    for split in (ds.train, ds.val):
        for xi, yi in zip(split.x, split.y):
            assert lookup[bytes((xi[0] * 255).round().to(torch.uint8).numpy())] == int(yi)


def test_fashion_mnist_and_subsampling(tmp_path):
    _fake_mnist(tmp_path, folder="FashionMNIST", n_train=100, n_test=40)
    ds = D.load_torchvision("fashion-mnist", tmp_path, backend="builtin", val_size=0.2, max_train=50, max_test=20)
    assert ds.class_names[0] == "T-shirt/top" and ds.name == "fashionmnist"
    assert (len(ds.train.y), len(ds.val.y), len(ds.test.y)) == (40, 10, 20)
    assert torch.bincount(ds.test.y, minlength=10).tolist() == [2] * 10


def _fake_cifar(root, n=20, protocol=pickle.DEFAULT_PROTOCOL):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        with open(folder / name, "wb") as fh:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [b"x.png"] * n}, fh, protocol=protocol)
        batches[name] = (data, labels)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": names, b"num_vis": 3072}, fh, protocol=protocol)
    return batches


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_reader_round_trip(tmp_path, protocol):
    batches = _fake_cifar(tmp_path, protocol=protocol)
    x, y, names = D.read_cifar10(tmp_path, train=False)
    data, labels = batches["test_batch"]
    assert x.shape == (20, 3, 32, 32) and names[9] == "truck"
    assert np.array_equal(x[:, 0].reshape(20, -1), data[:, :1024])  # red plane first, row-major
    assert np.array_equal(x[:, 2].reshape(20, -1), data[:, 2048:])
    assert y.tolist() == labels
    ds = D.load_torchvision("cifar10", tmp_path, backend="builtin", val_size=0.1)
    assert ds.train.x.shape == (90, 3, 32, 32) and ds.val.x.shape == (10, 3, 32, 32) and ds.test.x.shape[0] == 20
    assert np.array_equal((ds.test.x * 255).round().to(torch.uint8).numpy().reshape(20, -1), data)
    assert ds.input_shape == (3, 32, 32)


def test_cifar_reader_refuses_arbitrary_pickles(tmp_path):
    _fake_cifar(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as fh:
        pickle.dump({b"data": Evil(), b"labels": []}, fh)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    with pytest.raises(ValueError, match=rf"{path}: .*refusing to unpickle builtins.print"):
        D.read_cifar10(tmp_path, train=False)
    data = (tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(ValueError, match=rf"{path}: not a CIFAR-10 python batch \(\w+Error"):
        D.read_cifar10(tmp_path, train=False)
    with open(path, "wb") as fh:
        pickle.dump({b"data": np.zeros((3, 100), np.uint8), b"labels": [0, 1, 2]}, fh)
    with pytest.raises(ValueError, match=rf"{path}: bad CIFAR batch"):
        D.read_cifar10(tmp_path, train=False)


def test_read_idx_errors(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="is not an IDX file"):
        D.read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(_idx(np.arange(10, dtype=np.uint8))[:-3])
    with pytest.raises(ValueError, match="truncated or corrupt: expected 10 data bytes, got 7"):
        D.read_idx(short)
    wide = tmp_path / "wide"
    values = np.array([[-5, 70000], [3, 2**30]], dtype=">i4")
    wide.write_bytes(struct.pack(">BBBB", 0, 0, 0x0C, 2) + struct.pack(">2I", 2, 2) + values.tobytes())
    out = D.read_idx(wide)
    assert out.tolist() == values.tolist() and out.dtype == np.int32


def test_load_torchvision_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"pip install netuq\[vision\]"):
        D.load_torchvision("mnist", tmp_path, backend="builtin")
    with pytest.raises(FileNotFoundError, match=r"no data_batch_1 in .*pip install netuq\[vision\]"):
        D.load_torchvision("cifar10", tmp_path, backend="builtin")
    with pytest.raises(ValueError, match=r"`name` must be one of \('mnist', 'fashionmnist', 'cifar10'\), got 'svhn'"):
        D.load_torchvision("svhn", tmp_path)
    with pytest.raises(ValueError, match=r"`backend` must be one of"):
        D.load_torchvision("mnist", tmp_path, backend="pil")
    _fake_mnist(tmp_path / "m")
    with pytest.raises(ValueError, match="`max_train` must be a positive integer or None, got 0"):
        D.load_torchvision("mnist", tmp_path / "m", backend="builtin", max_train=0)
    with pytest.raises(ValueError, match="`download=True` needs the torchvision backend"):
        D.load_torchvision("mnist", tmp_path, backend="builtin", download=True)
    try:
        import torchvision  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"pip install netuq\[vision\]"):
            D.load_torchvision("mnist", tmp_path, backend="torchvision")
        _fake_mnist(tmp_path)
        assert D.load_torchvision("mnist", tmp_path).name == "mnist"  # auto falls back to the reader


# ------------------------------------------------------------------- Fashion-MNIST: every layout, no real data
_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _fake_fashion(folder, *, gz: bool, n_train=50, n_test=20, seed=3):
    """The four IDX files in ``folder`` (created), .gz or plain; returns the arrays written."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        arrays[f"{prefix}-images-idx3-ubyte"] = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        arrays[f"{prefix}-labels-idx1-ubyte"] = (rng.permutation(n) % 10).astype(np.uint8)
    for stem, arr in arrays.items():
        if gz:
            (folder / (stem + ".gz")).write_bytes(gzip.compress(_idx(arr)))
        else:
            (folder / stem).write_bytes(_idx(arr))
    return arrays


LAYOUTS = {  # where the files go under the folder passed as data_dir
    "flat .gz (Debian package)": ("", True),
    "flat uncompressed": ("", False),
    "raw/ .gz": ("raw", True),
    "raw/ uncompressed": ("raw", False),
    "FashionMNIST/raw/ .gz (torchvision root)": ("FashionMNIST/raw", True),
    "FashionMNIST/raw/ uncompressed (torchvision root)": ("FashionMNIST/raw", False),
}


class _NoTorchvision:
    """Stands in for an installed torchvision whose dataset classes must not be needed."""

    class datasets:  # noqa: N801 - mirrors torchvision.datasets
        def __getattr__(self, name):  # pragma: no cover - reached only on failure
            raise AssertionError("torchvision's reader was used for an IDX layout it cannot read")


@pytest.mark.parametrize("torchvision_installed", [False, True])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_fashion_mnist_every_layout_with_or_without_torchvision(tmp_path, monkeypatch, layout, torchvision_installed):
    sub, gz = LAYOUTS[layout]
    arrays = _fake_fashion(tmp_path / sub if sub else tmp_path, gz=gz)
    import sys

    if torchvision_installed:
        monkeypatch.setitem(sys.modules, "torchvision", _NoTorchvision())
        monkeypatch.setitem(sys.modules, "torchvision.datasets", _NoTorchvision.datasets())
    else:
        monkeypatch.setitem(sys.modules, "torchvision", None)  # import fails
    images, labels = D.read_mnist(tmp_path, train=False, folder="FashionMNIST")
    assert np.array_equal(images, arrays["t10k-images-idx3-ubyte"]) and labels.dtype == np.int64
    assert np.array_equal(labels, arrays["t10k-labels-idx1-ubyte"])
    ds = D.load_torchvision("fashionmnist", tmp_path, val_size=10)  # backend "auto"
    assert ds.class_names[0] == "T-shirt/top" and ds.input_shape == (1, 28, 28)
    assert (len(ds.train.y), len(ds.val.y), len(ds.test.y)) == (40, 10, 20)
    expected = torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float()[:, None] / 255
    assert torch.equal(ds.test.x, expected)
    assert torch.equal(ds.test.y, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"].astype(np.int64)))


def test_fashion_mnist_default_folder_is_the_debian_path(tmp_path, monkeypatch):
    from netuq.data import vision

    assert vision.DEFAULT_DIRS["fashionmnist"] == (vision.Path("/usr/share/datasets/fashion-mnist"),)
    missing = tmp_path / "nowhere"
    monkeypatch.setitem(vision.DEFAULT_DIRS, "fashionmnist", (missing, tmp_path / "pkg"))
    with pytest.raises(FileNotFoundError, match=rf"not in {missing}, {tmp_path / 'pkg'}; `apt-get install "
                                                 r"dataset-fashion-mnist`"):
        D.load_torchvision("fashionmnist")
    arrays = _fake_fashion(tmp_path / "pkg", gz=True)
    ds = D.load_torchvision("fashion-mnist", val_size=5, backend="builtin")
    assert len(ds.test.y) == 20 and torch.equal(ds.test.y, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]).long())
    with pytest.raises(ValueError, match=r"`data_dir` must name the folder holding 'mnist', got None"):
        D.load_torchvision("mnist")
    with pytest.raises(ValueError, match="`download=True` needs a `data_dir`"):
        D.load_torchvision("fashionmnist", download=True)


def test_missing_files_name_every_folder_searched(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "train-images-idx3-ubyte.gz").write_bytes(b"")  # the labels are missing
    with pytest.raises(FileNotFoundError) as exc:
        D.read_mnist(tmp_path, folder="FashionMNIST")
    for folder in D.idx_folders(tmp_path, "FashionMNIST"):
        assert str(folder) in str(exc.value)


def test_corrupt_idx_files_are_value_errors_naming_the_file(tmp_path):
    good = _idx(np.arange(12, dtype=np.uint8).reshape(3, 2, 2))
    cases = {
        "truncated.gz": (gzip.compress(good)[:-9], "truncated or corrupt gzip file"),
        "garbage.gz": (b"\x1f\x8b" + b"\x00" * 20, "truncated or corrupt gzip file"),
        "empty": (b"", "not an IDX file (bad magic number none: empty file)"),
        "header": (good[:9], "the header needs 16 bytes, got 9"),
        "long": (good + b"\x00", "expected 12 data bytes, got 13"),
        "text.gz": (gzip.compress(b"<html>not found</html>"), "not an IDX file"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ValueError, match=re.escape(message)) as exc:
            D.read_idx(path)
        assert str(exc.value).startswith(str(path))
    plain_named_gz = tmp_path / "plain.gz"  # compression is recognised by content, not by name
    plain_named_gz.write_bytes(good)
    assert D.read_idx(plain_named_gz).shape == (3, 2, 2)
    with pytest.raises(FileNotFoundError):
        D.read_idx(tmp_path / "absent")


def test_mismatched_mnist_files_name_the_file(tmp_path):
    arrays = _fake_fashion(tmp_path, gz=False)
    labels = tmp_path / "t10k-labels-idx1-ubyte"
    labels.write_bytes(_idx(arrays["t10k-labels-idx1-ubyte"][:-1]))
    with pytest.raises(ValueError, match=rf"{labels} holds 19 labels for the 20 images"):
        D.read_mnist(tmp_path, train=False)
    labels.write_bytes(_idx(np.full(20, 12, np.uint8)))
    with pytest.raises(ValueError, match=rf"{labels}: labels must be 0..9, got 12"):
        D.read_mnist(tmp_path, train=False)
    images = tmp_path / "t10k-images-idx3-ubyte"
    images.write_bytes(_idx(np.zeros((20, 784), np.uint8)))
    with pytest.raises(ValueError, match=rf"{images}: expected \(N, H, W\) uint8 images"):
        D.read_mnist(tmp_path, train=False)


def test_fashion_ood_sets():
    sets = D.fashion_ood(30, seed=1)
    assert list(sets) == list(D.FASHION_OOD_KINDS) == ["digits", "photos", "noise"]
    for x in sets.values():
        assert x.shape == (30, 1, 28, 28) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    again = D.fashion_ood(30, seed=1)
    assert all(torch.equal(sets[k], again[k]) for k in sets)
    other = D.fashion_ood(30, seed=2)
    assert not any(torch.equal(sets[k], other[k]) for k in sets)
    # Each "digits" image is one of scikit-learn's digits upscaled (torch's bilinear as the reference).
    pool = torch.from_numpy(sk_load_digits().images).float()[:, None] / 16
    up = F.interpolate(pool, size=(28, 28), mode="bilinear", align_corners=False).clamp(0, 1).flatten(1)
    dist = torch.cdist(sets["digits"].flatten(1), up, compute_mode="donot_use_mm_for_euclid_dist")
    assert float(dist.min(1).values.max()) < 1e-4
    assert len(set(dist.argmin(1).tolist())) == 30  # drawn without replacement
    # Photo crops are not noise: neighbouring pixels are strongly correlated, unlike the noise set.
    def neighbour_corr(x):
        a, b = x[..., :, :-1].flatten(), x[..., :, 1:].flatten()
        return float(torch.corrcoef(torch.stack([a, b]))[0, 1])

    assert neighbour_corr(sets["photos"]) > 0.5 > 0.1 > abs(neighbour_corr(sets["noise"]))
    x, kind = D.ood_images(6, size=(28, 28), kinds=("digits", "noise"), seed=0)
    assert x.shape == (6, 1, 28, 28) and set(kind) <= {"digits", "uniform", "gaussian"}
