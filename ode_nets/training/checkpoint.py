"""Atomic, resumable checkpoints: model, optimizer state, PRNG key, step and data position.

A checkpoint is one file `ckpt-<step>.eqx` in `<run>/checkpoints/`, written to a temporary
file and renamed into place, so a run killed mid-write leaves the previous checkpoints intact.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import equinox as eqx
from jaxtyping import PyTree


from ode_nets.errors import CheckpointError  # noqa: E402  (re-exported)


@dataclass(frozen=True)
class Position:
    """Where training stands: global step, epoch, batches already done in that epoch, and the
    training wall time spent so far over all sessions of the run (seconds)."""

    step: int
    epoch: int
    batch: int
    elapsed_s: float = 0.0  # absent in older position files


def train_state(model: PyTree, opt_state: PyTree, key: PyTree) -> dict:
    """What a checkpoint holds besides its position: model, optimizer state and PRNG key."""
    return {"model": model, "opt_state": opt_state, "key": key}


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same folder and `os.replace`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save_tree(path: Path, tree: PyTree) -> None:
    """`eqx.tree_serialise_leaves` to `path`, atomically."""
    import io

    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, tree)
    atomic_write_bytes(path, buffer.getvalue())


def load_tree(path: Path, like: PyTree) -> PyTree:
    """`eqx.tree_deserialise_leaves` with a clear error for missing, truncated or mismatched files."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        return eqx.tree_deserialise_leaves(path, like)
    except Exception as e:  # noqa: BLE001 - equinox/numpy raise various errors for bad files
        raise CheckpointError(f"checkpoint {path} is corrupt or does not match the config ({type(e).__name__}: "
                              f"{e}); delete it to resume from an earlier one") from None


def save_checkpoint(folder: Path, state: PyTree, position: Position, keep: int) -> Path:
    """Save `state` (model, optimizer state, key) and `position`; keep only the newest `keep` checkpoints."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ckpt-{position.step:09d}.eqx"
    atomic_save_tree(path, state)
    atomic_write_bytes(folder / f"ckpt-{position.step:09d}.json", json.dumps(position.__dict__).encode())
    for old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
        old.with_suffix(".json").unlink(missing_ok=True)
    return path


def checkpoint_step(path: Path) -> int:
    """The global step of `ckpt-<step>.eqx` (or its `.json`)."""
    return int(path.stem.split("-")[1])


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoint files with a position file, oldest first."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("ckpt-*.eqx") if p.with_suffix(".json").is_file())


def load_latest(folder: Path, like: PyTree) -> tuple[PyTree, Position]:
    """The newest checkpoint in `folder`, restored into the structure of `like`."""
    checkpoints = list_checkpoints(folder)
    if not checkpoints:
        raise CheckpointError(f"no checkpoint in {folder} to resume from")
    path = checkpoints[-1]
    try:
        position = Position(**json.loads(path.with_suffix(".json").read_text()))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint position file {path.with_suffix('.json')} is corrupt ({e})") from None
    return load_tree(path, like), position

