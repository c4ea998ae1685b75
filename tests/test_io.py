"""netuq.io: reading and writing logits/probs + labels in .npz, .npy, .pt and .safetensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from netuq.io import load_arrays, save_arrays

LOGITS = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
LABELS = torch.tensor([1, 2])


@pytest.mark.parametrize("suffix", [".npz", ".pt", ".pth", ".safetensors", ".npy"])
def test_round_trip_logits(tmp_path, suffix):
    path = save_arrays(tmp_path / f"preds{suffix}", LABELS, logits=LOGITS)
    data = load_arrays(path)
    assert data.kind == "logits" and torch.equal(data.values, LOGITS) and torch.equal(data.logits, LOGITS)
    assert data.probs is None and data.labels.dtype == torch.int64 and torch.equal(data.labels, LABELS)


@pytest.mark.parametrize("suffix", [".npz", ".pt", ".safetensors"])
def test_probs_are_detected_by_name_and_logits_win(tmp_path, suffix):
    probs = LOGITS.softmax(1)
    data = load_arrays(save_arrays(tmp_path / f"p{suffix}", LABELS, probs=probs))
    assert data.kind == "probs" and torch.equal(data.probs, probs) and data.logits is None
    both = save_arrays(tmp_path / f"b{suffix}", LABELS, logits=LOGITS, probs=probs)
    assert load_arrays(both).kind == "logits"
    assert load_arrays(both, kind="probs").kind == "probs"


def test_custom_keys_and_segmentation_shapes(tmp_path):
    z, y = torch.randn(2, 3, 4, 5), torch.randint(0, 3, (2, 4, 5))
    path = tmp_path / "seg.npz"
    np.savez(path, out=z.numpy(), gt=y.numpy().astype(np.uint8))
    data = load_arrays(path, logits_key="out", labels_key="gt")
    assert data.values.shape == (2, 3, 4, 5) and torch.equal(data.labels, y) and set(data.keys) == {"out", "gt"}


def test_npy_labels_conventions(tmp_path):
    np.save(tmp_path / "logits.npy", LOGITS.numpy())
    with pytest.raises(ValueError, match="a .npy file holds one array; pass the labels file"):
        load_arrays(tmp_path / "logits.npy")
    np.save(tmp_path / "labels.npy", LABELS.numpy())
    assert torch.equal(load_arrays(tmp_path / "logits.npy").labels, LABELS)  # labels.npy beside it
    np.save(tmp_path / "logits_labels.npy", LABELS.numpy()[::-1].copy())  # <stem>_labels.npy wins
    assert load_arrays(tmp_path / "logits.npy").labels.tolist() == [2, 1]
    np.save(tmp_path / "other.npy", np.array([0, 0]))
    assert load_arrays(tmp_path / "logits.npy", labels_path=tmp_path / "other.npy").labels.tolist() == [0, 0]
    assert load_arrays(tmp_path / "logits.npy", kind="probs").kind == "probs"
    with pytest.raises(FileNotFoundError, match="no such labels file"):
        load_arrays(tmp_path / "logits.npy", labels_path=tmp_path / "missing.npy")


def test_float_labels_that_are_whole_numbers_are_accepted(tmp_path):
    path = tmp_path / "f.npz"
    np.savez(path, logits=LOGITS.numpy(), labels=np.array([1.0, 2.0]))
    assert load_arrays(path).labels.tolist() == [1, 2]
    np.savez(path, logits=LOGITS.numpy(), labels=np.array([1.5, 2.0]))
    with pytest.raises(ValueError, match="labels must be integers, got non-integer values"):
        load_arrays(path)


def test_missing_keys_list_what_is_there(tmp_path):
    path = tmp_path / "k.npz"
    np.savez(path, scores=LOGITS.numpy(), labels=LABELS.numpy())
    with pytest.raises(ValueError, match="no array named 'logits' or 'probs'; the file holds 'scores', 'labels'"):
        load_arrays(path)
    np.savez(path, logits=LOGITS.numpy(), target=LABELS.numpy())
    with pytest.raises(ValueError, match="no array named 'labels'; the file holds 'logits', 'target'"):
        load_arrays(path)
    with pytest.raises(ValueError, match="no array named 'probs'"):
        load_arrays(path, kind="probs", labels_key="target")


def test_shape_and_dtype_errors(tmp_path):
    path = tmp_path / "s.npz"
    np.savez(path, logits=LOGITS.numpy(), labels=np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"labels 'labels' must have shape \(2,\) to match logits of shape \(2, 3\)"):
        load_arrays(path)
    np.savez(path, logits=np.array([1, 2]), labels=np.array([0, 1]))
    with pytest.raises(ValueError, match="must be floating point"):
        load_arrays(path)
    np.savez(path, logits=np.array([1.0, 2.0]), labels=np.array([0, 1]))
    with pytest.raises(ValueError, match=r"must have shape \(N, C\) or \(N, C, ...\)"):
        load_arrays(path)
    np.savez(path, logits=LOGITS.numpy(), labels=np.array([True, False]))
    with pytest.raises(ValueError, match="labels must be integers, got dtype torch.bool"):
        load_arrays(path)


def test_unreadable_and_unsupported_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_arrays(tmp_path / "nope.npz")
    for name in ("bad.npz", "bad.pt", "bad.safetensors", "bad.npy"):
        (tmp_path / name).write_bytes(b"this is not an array file")
        (tmp_path / "bad_labels.npy").write_bytes(b"x")
        with pytest.raises(ValueError, match=f"{name}: cannot read file"):
            load_arrays(tmp_path / name)
    (tmp_path / "a.csv").write_text("1,2")
    with pytest.raises(ValueError, match="unsupported file type '.csv'"):
        load_arrays(tmp_path / "a.csv")
    with pytest.raises(ValueError, match="is a folder"):
        load_arrays(tmp_path)
    torch.save([LOGITS, LABELS], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="expected a dict of tensors"):
        load_arrays(tmp_path / "list.pt")
    with pytest.raises(ValueError, match="`kind` must be None, 'logits' or 'probs'"):
        load_arrays(tmp_path / "list.pt", kind="scores")


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, logits=np.array([{"a": 1}], dtype=object), labels=np.array([0]))
    with pytest.raises(ValueError, match="cannot read file"):
        load_arrays(path)


def test_save_arrays_errors(tmp_path):
    with pytest.raises(ValueError, match="needs `logits` or `probs`"):
        save_arrays(tmp_path / "x.npz", LABELS)
    with pytest.raises(ValueError, match="a .npy file holds one array"):
        save_arrays(tmp_path / "x.npy", LABELS, logits=LOGITS, probs=LOGITS.softmax(1))
    with pytest.raises(ValueError, match="unsupported file type '.txt'"):
        save_arrays(tmp_path / "x.txt", LABELS, logits=LOGITS)
