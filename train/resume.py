"""Which settings define a run, and what a resume may change.

A checkpoint resumes only a run with the same identity: every config key except those in
MAY_CHANGE (the model, the data and its order, the objective, the optimiser and its schedule). The
keys in MAY_CHANGE say where and how the run executes, how it reports and saves, and when it stops;
a resume may change them, and every resume is recorded with what it changed (the checkpoint's
history["resumes"] and a "resume" row of metrics.jsonl), so config.yaml, which always holds the
settings in force, never hides the original ones. A key added to Config later is an identity key
unless it is listed here: the safe default.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

MAY_CHANGE = frozenset({
    "name", "output_dir", "data", "cache_dir", "num_workers", "device", "precision", "channels_last",
    "compile", "whitening_backend", "max_steps", "ckpt_every", "ckpt_minutes", "log_every",
    "knn_every", "knn_k", "knn_metric", "spectrum_every", "collapse_rank", "collective_timeout",
})  # fmt: skip

ABSENT = "<absent>"  # a key the checkpoint's config does not have (written by an older version)


def _differences(saved: dict[str, Any], current: dict[str, Any], identity: bool) -> dict[str, tuple]:
    keys = [key for key in current if (key not in MAY_CHANGE) == identity]
    return {
        key: (saved.get(key, ABSENT), current[key]) for key in keys if saved.get(key, ABSENT) != current[key]
    }


def identity_differences(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple]:
    """{key: (saved, current)} for the identity keys on which two configs disagree."""
    return _differences(saved, current, identity=True)


def allowed_changes(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple]:
    """{key: (saved, current)} for the MAY_CHANGE keys on which two configs disagree."""
    return _differences(saved, current, identity=False)


def describe(differences: dict[str, tuple], before: str = "checkpoint", after: str = "now") -> str:
    return "; ".join(f"{key}: {before} {a!r}, {after} {b!r}" for key, (a, b) in differences.items())


def check_identity(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """A clear error when the checkpoint at `path` belongs to a run with another identity."""
    different = identity_differences(saved, current)
    if different:
        raise RuntimeError(
            f"checkpoint {path} belongs to a different run ({describe(different)}); these keys define "
            f"a run and cannot change on resume (only {', '.join(sorted(MAY_CHANGE))} can): use the "
            "checkpoint's settings or another --output-dir"
        )


def resume_record(step: int, changes: dict[str, tuple]) -> dict[str, Any]:
    """What a resume appends to the run's history: when, at which step, and what it changed."""
    return {"step": step, "time": time.time(), "changed": {k: [a, b] for k, (a, b) in changes.items()}}
