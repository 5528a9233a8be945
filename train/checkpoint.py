"""Atomic, checksummed checkpoints: a kill at any moment loses at most the work since the last one,
and a checkpoint that changed on disk since it was written is an error, never a silent resume."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from train.resume import check_identity

# What the trainer writes into a checkpoint (besides "checksum"); a resume needs every one.
REQUIRED_KEYS = ("model", "optimizer", "step", "config", "history", "rng_torch")


def _temporary_prefix(path: Path) -> str:
    return f".{path.name}."


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`. The
    temporaries that killed saves left behind (a whole checkpoint each) are removed first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for orphan in path.parent.glob(f"{_temporary_prefix(path)}*"):
        orphan.unlink(missing_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=_temporary_prefix(path), dir=path.parent)
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


def _feed(value: Any, digest: Any) -> None:
    """Hash a nested checkpoint value: tensors by dtype, shape and bytes, containers item by item,
    everything else by its repr (the keys, numbers and strings a checkpoint holds)."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"tensor {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, dict):
        digest.update(f"dict {len(value)}".encode())
        for key, item in value.items():
            _feed(key, digest)
            _feed(item, digest)
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__} {len(value)}".encode())
        for item in value:
            _feed(item, digest)
    else:
        digest.update(f"{type(value).__name__} {value!r}".encode())


def checksum(state: dict[str, Any]) -> str:
    """SHA-256 of a checkpoint's contents (independent of how torch.save lays out the file)."""
    digest = hashlib.sha256()
    _feed({key: value for key, value in state.items() if key != "checksum"}, digest)
    return digest.hexdigest()


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """`state` (with every REQUIRED_KEYS entry) and its checksum, written atomically to `path`."""
    save_atomic({**state, "checksum": checksum(state)}, path)


def load_checkpoint(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint at `path`, whole, intact and of this run (train.resume); never silently ignored."""
    refusal = "refusing to start from scratch over it: move it away or choose another --output-dir"
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise RuntimeError(
            f"cannot read checkpoint {path} ({type(exc).__name__}: {exc}); {refusal}"
        ) from None
    if not isinstance(state, dict) or "config" not in state:
        raise RuntimeError(f"{path} is not an intl-kernels training checkpoint (it has no config); {refusal}")
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise RuntimeError(f"checkpoint {path} is incomplete: it lacks {', '.join(missing)}; {refusal}")
    if "checksum" in state and checksum(state) != state["checksum"]:
        raise RuntimeError(
            f"checkpoint {path} is corrupt: its contents do not match the checksum written with them "
            f"(the file changed on disk after it was saved); {refusal}"
        )
    check_identity(state["config"], config, path)
    return state
