"""netuq._files: the one atomic writer (no partial files, never through a symlink, usual mode)."""

from __future__ import annotations

import os
import stat

import pytest

from netuq._files import atomic_write, atomic_write_json, atomic_write_text, inside


def test_replaces_a_symlink_and_leaves_its_target(tmp_path):
    target = tmp_path / "elsewhere.txt"
    target.write_text("keep me")
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.md").symlink_to(target)
    atomic_write_text(run / "report.md", "new")
    assert target.read_text() == "keep me"
    assert not (run / "report.md").is_symlink() and (run / "report.md").read_text() == "new"


def test_error_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.json"
    atomic_write_json(path, {"a": 1})

    def broken(fh):
        fh.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, broken)
    assert path.read_text().replace(" ", "").replace("\n", "") == '{"a":1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    with pytest.raises(ValueError):
        atomic_write_json(tmp_path / "nan.json", {"x": float("nan")})
    assert not (tmp_path / "nan.json").exists()


def test_written_files_get_the_usual_mode(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "r.html", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "r.html").stat().st_mode) == 0o644


def test_inside_refuses_paths_that_leave_the_folder(tmp_path):
    root = tmp_path / "run"
    (root / "figures").mkdir(parents=True)
    assert inside(root, "figures", "roc.png") == root / "figures" / "roc.png"
    with pytest.raises(ValueError, match="outside the folder"):
        inside(root, "..", "x.png")
    (tmp_path / "out").mkdir()
    (root / "linked").symlink_to(tmp_path / "out")
    with pytest.raises(ValueError, match="outside the folder"):
        inside(root, "linked", "roc.png")


@pytest.mark.parametrize("suffix", [".npz", ".pt", ".npy", ".safetensors"])
def test_save_arrays_never_writes_through_a_symlink(tmp_path, suffix):
    import torch

    from netuq.io import load_arrays, save_arrays

    target = tmp_path / f"target{suffix}"
    target.write_bytes(b"precious")
    link = tmp_path / f"preds{suffix}"
    link.symlink_to(target)
    save_arrays(link, logits=torch.randn(4, 3), labels=torch.tensor([0, 1, 2, 0]))
    assert target.read_bytes() == b"precious" and not link.is_symlink()
    kwargs = {"kind": "logits", "labels_path": tmp_path / "preds_labels.npy"} if suffix == ".npy" else {}
    assert load_arrays(link, **kwargs) is not None


def test_confidence_budget_checks_ignore_index():
    from netuq.methods.confidence import ConfidenceBudget

    with pytest.raises(TypeError, match="ignore_index"):
        ConfidenceBudget(ignore_index=2.5)
