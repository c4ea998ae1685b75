"""An ensemble's files: the manifest and one file per member (format version 1, unchanged).

A directory written by :meth:`~netuq.Ensemble.save` or by :func:`~netuq.train_ensemble`
(``checkpoint_dir``) holds

* ``manifest.json``: ``{"format": "netuq-ensemble", "version": 1, "members": K,
  "files": ["member_0.pt", ...], "config": {...}}`` (``config``: the training configuration
  checked on resume, or ``None``);
* ``member_<k>.pt``: ``{"state_dict": ..., "meta": {"class": "module.Class", "index": k, ...}}``,
  loadable with ``torch.load(weights_only=True)``.

Every file is written atomically (:func:`netuq._files.atomic_write`): a killed run leaves either
a complete member file or none.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..._files import atomic_write, atomic_write_text
from ..._random import forked_rng

__all__ = ["MANIFEST", "member_file", "read_manifest", "write_manifest", "save_member", "load_member", "build"]

FORMAT = "netuq-ensemble"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def member_file(k: int) -> str:
    """The file name of member ``k`` (``member_<k>.pt``)."""
    return f"member_{k}.pt"


def read_manifest(directory: Path) -> dict:
    """The manifest of ``directory``, after checking its format and version."""
    path = directory / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"`directory` must hold an ensemble written by Ensemble.save or train_ensemble, got no {MANIFEST} in "
            f"{str(directory)!r}"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"`directory` {str(directory)!r} has an unreadable {MANIFEST}: {err}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"`directory` {str(directory)!r} has a {MANIFEST} that is not a netuq ensemble manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"`directory` {str(directory)!r} holds ensemble format version {manifest.get('version')!r}, "
            f"this netuq reads version {FORMAT_VERSION}"
        )
    return manifest


def write_manifest(directory: Path, members: int, config: dict | None) -> None:
    """Write ``manifest.json`` for ``members`` member files (sorted keys, two-space indent)."""
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "members": int(members),
        "files": [member_file(k) for k in range(members)],
        "config": config,
    }
    atomic_write_text(directory / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def qualname(model: nn.Module) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"


def member_payload(model: nn.Module, meta: dict[str, Any]) -> dict:
    """What a member file holds: CPU copies of the weights and the metadata."""
    return {
        "state_dict": {k: t.detach().to("cpu", copy=True) for k, t in model.state_dict().items()},
        "meta": {"class": qualname(model), **meta},
    }


def save_member(path: Path, payload: dict) -> None:
    """Write a :func:`member_payload` to ``path`` atomically."""
    atomic_write(path, lambda f: torch.save(payload, f))


def load_member(path: Path) -> dict:
    """Read a member file (weights only, onto the CPU); a truncated or foreign file raises ValueError."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which one
        raise ValueError(f"member file {str(path)!r} cannot be read ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or "state_dict" not in payload:
        raise ValueError(f"member file {str(path)!r} is not a netuq ensemble member (no 'state_dict')")
    payload.setdefault("meta", {})
    return payload


def build(model_factory: Callable[[], nn.Module], seed: int | None) -> nn.Module:
    """Call ``model_factory()`` under a forked, seeded RNG (the global state is left as it was)."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()  # a factory may build on the GPU
    with forked_rng("cuda" if cuda else None):
        if seed is not None:
            torch.manual_seed(seed)
        model = model_factory()
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model_factory` must return an nn.Module, got {type(model).__name__}")
    return model


def restore(model: nn.Module, payload: dict, where: str) -> None:
    """Load a member payload into ``model``; ``where`` names its origin in errors (a file, a rank)."""
    cls = payload["meta"].get("class")
    if cls is not None and cls != qualname(model):
        raise ValueError(f"member file {where!r} holds a {cls}, but `model_factory` built a {qualname(model)}")
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        raise ValueError(f"member file {where!r} does not fit the model built by `model_factory`: {err}") from err


def prepare_checkpoint_dir(ckdir: Path, config: dict) -> None:
    """Create the folder and its manifest, or check that an existing manifest has this config."""
    ckdir.mkdir(parents=True, exist_ok=True)
    for stale in ckdir.glob(".member_*.pt.*.tmp"):  # left by a run killed mid-write
        with contextlib.suppress(OSError):
            stale.unlink()
    if (ckdir / MANIFEST).exists():
        old = read_manifest(ckdir).get("config")
        if old != config:
            old = old or {}
            diffs = []
            for key in sorted(set(old) | set(config)):
                if old.get(key) != config.get(key):
                    if key.endswith("_sha256"):
                        diffs.append(f"{key[: -len('_sha256')]} (the content differs)")
                    else:
                        diffs.append(f"{key}: {old.get(key)!r} there, {config.get(key)!r} now")
            raise ValueError(
                f"`checkpoint_dir` {str(ckdir)!r} holds an ensemble trained with a different configuration "
                f"({'; '.join(diffs)}); use a new directory or delete this one"
            )
        return
    write_manifest(ckdir, config["members"], config)
