"""Atomic checkpoints: a kill at any moment loses at most the work since the last one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

# Settings that define the model and the data order: a checkpoint only resumes a run that agrees.
IDENTITY_KEYS = (
    "dataset", "augment", "image_size", "backbone", "stem", "projector", "method", "axis",
    "iterations", "batch_size", "epochs", "seed",
)  # fmt: skip


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes it private; a checkpoint is a normal file
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def load_checkpoint(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint at `path`, checked against the run's config; never silently ignored."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise RuntimeError(
            f"cannot read checkpoint {path} ({type(exc).__name__}: {exc}); refusing to start from "
            "scratch over it: move it away or choose another --output-dir"
        ) from None
    required = ("model", "optimizer", "step", "config")
    if not isinstance(state, dict) or any(key not in state for key in required):
        raise RuntimeError(f"{path} is not an intl-kernels training checkpoint (needs {', '.join(required)})")
    different = {
        key: (state["config"].get(key), config[key])
        for key in IDENTITY_KEYS
        if state["config"].get(key) != config[key]
    }
    if different:
        listed = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in different.items())
        raise RuntimeError(
            f"checkpoint {path} belongs to a different run ({listed}); use another --output-dir"
        )
    return state
