"""Atomic, verified, resumable checkpoints: model, optimizer state, PRNG key, step and data position.

A checkpoint is `ckpt-<step>.eqx` (the train state) and its sidecar `ckpt-<step>.json` (the `Position`, the
payload's size and SHA-256) in `<run>/checkpoints/`. Each is written to a temporary file and renamed into place,
the payload first, so a run killed mid-write leaves the previous checkpoints intact and a checkpoint counts only
once its sidecar exists. `restore` verifies the SHA-256 and falls back to the newest intact checkpoint, naming the
damaged ones it skipped (truncated, bit-flipped, unreadable); `set_aside` renames those to `*.damaged`.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, fields
from pathlib import Path

import equinox as eqx
from jaxtyping import PyTree

from ode_nets.errors import CheckpointError
from ode_nets.training.storage import atomic_write_bytes, writing


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


def atomic_save_tree(path: Path, tree: PyTree) -> bytes:
    """`eqx.tree_serialise_leaves` to `path`, atomically; returns the bytes written."""
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, tree)
    atomic_write_bytes(path, buffer.getvalue())
    return buffer.getvalue()


def load_tree(path: Path, like: PyTree) -> PyTree:
    """`eqx.tree_deserialise_leaves` with a clear error for missing, truncated or mismatched files."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        return eqx.tree_deserialise_leaves(path, like)
    except Exception as e:  # noqa: BLE001 - equinox/numpy raise various errors for bad files
        raise CheckpointError(f"{path} is corrupt or does not match the config ({type(e).__name__}: {e})") from None


def save_checkpoint(folder: Path, state: PyTree, position: Position, keep: int) -> Path:
    """Save `state` (model, optimizer state, key) and `position`; keep only the newest `keep` checkpoints.

    The payload goes first, then the sidecar with its SHA-256; older checkpoints are removed only after both are
    in place, so a failed write (a `StorageError`) leaves the previous checkpoint intact and loadable."""
    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ckpt-{position.step:09d}.eqx"
    payload = atomic_save_tree(path, state)
    sidecar = {**position.__dict__, "bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    atomic_write_bytes(path.with_suffix(".json"), json.dumps(sidecar).encode())
    for old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
        old.with_suffix(".json").unlink(missing_ok=True)
    return path


def checkpoint_step(path: Path) -> int:
    """The global step of `ckpt-<step>.eqx` (or its `.json`)."""
    return int(path.stem.split("-")[1])


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoint files with a sidecar, oldest first."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("ckpt-*.eqx") if p.with_suffix(".json").is_file())


def read_sidecar(path: Path) -> tuple[Position, dict]:
    """The `Position` and the recorded size and SHA-256 ({} for sidecars written before they were recorded) of
    checkpoint `path`; a `CheckpointError` if the sidecar is unreadable or does not belong to `path`."""
    sidecar = path.with_suffix(".json")
    try:
        record = json.loads(sidecar.read_text())
        position = Position(**{f.name: record[f.name] for f in fields(Position) if f.name in record})
    except (OSError, ValueError, TypeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"its sidecar {sidecar.name} is unreadable ({type(e).__name__}: {e})") from None
    if position.step != checkpoint_step(path):
        raise CheckpointError(f"its sidecar {sidecar.name} names step {position.step}")
    return position, {k: record[k] for k in ("bytes", "sha256") if k in record}


def _verified_payload(path: Path, expected: dict) -> bytes:
    """The bytes of `path`, checked against the size and SHA-256 its sidecar recorded."""
    try:
        payload = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"unreadable ({e.strerror or e})") from None
    if "bytes" in expected and len(payload) != expected["bytes"]:
        raise CheckpointError(f"truncated or extended: {len(payload)} bytes, {expected['bytes']} written")
    if "sha256" in expected and hashlib.sha256(payload).hexdigest() != expected["sha256"]:
        raise CheckpointError("SHA-256 mismatch: its content changed after it was written")
    return payload


class MismatchError(CheckpointError):
    """An intact checkpoint that does not fit the model: the config changed, not the file (no fallback)."""


def load_checkpoint(path: Path, like: PyTree) -> tuple[PyTree, Position]:
    """Checkpoint `path`, verified against its sidecar and restored into the structure of `like`.

    A damaged one (sidecar, size or SHA-256 wrong, or an unverified one that does not deserialise) raises a
    `CheckpointError` with the reason; an intact one that does not fit `like` raises `MismatchError`."""
    position, expected = read_sidecar(path)
    payload = _verified_payload(path, expected)
    try:
        return eqx.tree_deserialise_leaves(io.BytesIO(payload), like), position
    except Exception as e:  # noqa: BLE001 - equinox/numpy raise various errors for bad files
        reason = f"{type(e).__name__}: {e}"
        if "sha256" in expected:
            raise MismatchError(f"checkpoint {path} is intact (SHA-256 verified) but does not match the model of "
                                f"the config ({reason}); was the model changed since it was written?") from None
        raise CheckpointError(f"does not deserialise ({reason})") from None


@dataclass(frozen=True)
class Restored:
    """The newest intact checkpoint (`state`, `position`, `path`) and the newer, damaged ones skipped, as
    (path, reason) pairs, newest first."""

    state: PyTree
    position: Position
    path: Path
    skipped: tuple[tuple[Path, str], ...] = ()


def restore(folder: Path, like: PyTree) -> Restored | None:
    """The newest checkpoint of `folder` that verifies, restored into `like`; None if there is no checkpoint.
    One `CheckpointError` naming every checkpoint and why, if all are damaged."""
    skipped: list[tuple[Path, str]] = []
    for path in reversed(list_checkpoints(folder)):
        try:
            state, position = load_checkpoint(path, like)
        except MismatchError:
            raise
        except CheckpointError as e:
            skipped.append((path, str(e)))
            continue
        return Restored(state, position, path, tuple(skipped))
    if skipped:
        raise CheckpointError(f"every checkpoint in {folder} is damaged: " +
                              "; ".join(f"{p.name}: {reason}" for p, reason in skipped))
    return None


def load_latest(folder: Path, like: PyTree) -> tuple[PyTree, Position]:
    """The newest intact checkpoint in `folder` (state, position), restored into the structure of `like`."""
    restored = restore(folder, like)
    if restored is None:
        raise CheckpointError(f"no checkpoint in {folder} to resume from")
    return restored.state, restored.position


def set_aside(damaged: tuple[tuple[Path, str], ...]) -> list[Path]:
    """Rename damaged checkpoints (and their sidecars) to `*.damaged`: kept for inspection, out of the way of
    the run that continues from an older one. Returns the new paths."""
    moved = []
    for path, _ in damaged:
        for file in (path, path.with_suffix(".json")):
            if file.exists():
                target = file.with_name(file.name + ".damaged")
                with writing(target):
                    file.replace(target)
                moved.append(target)
    return moved
