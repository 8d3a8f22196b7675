"""Writing files of a run folder: atomic replacement, appended lines, and write failures as one clear error.

Every file a run writes (checkpoints, their sidecars, `metrics.jsonl`, `config.yaml`, `model.eqx`, `results.json`,
figures) goes through `atomic_write_bytes` or `append_line`. An `OSError` on the way (disk full ENOSPC, quota EDQUOT,
I/O error EIO, no permission) becomes a `StorageError` naming the path, and leaves what was there before intact: an
atomic write never replaces the old file with a partial one, and a failed append is cut back to the last whole line.
"""

from __future__ import annotations

import errno
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

from ode_nets.errors import StorageError


def describe(path: Path, error: OSError) -> str:
    """'cannot write <path>: No space left on device (ENOSPC)'."""
    code = errno.errorcode.get(error.errno or 0)
    reason = error.strerror or str(error) or type(error).__name__
    return f"cannot write {path}: {reason}" + (f" ({code})" if code else "")


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn an `OSError` raised inside the block into a `StorageError` naming `path`."""
    try:
        yield
    except OSError as e:
        raise StorageError(describe(path, e)) from None


def _write(f: BinaryIO, data: bytes, path: Path) -> None:
    """The one place bytes reach a run folder's files (tests replace it to simulate a full disk)."""
    f.write(data)
    f.flush()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same folder, fsync and `os.replace`: `path` holds either
    its old or its new content, never a partial one. An `OSError` becomes a `StorageError` naming `path`."""
    path = Path(path)
    tmp = None
    with writing(path):
        try:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                _write(f, data, path)
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            raise


def append_line(path: Path, line: str) -> None:
    """Append `line` and a newline to `path`; if the write fails, the file is cut back to its previous length
    (no half line left behind) and a `StorageError` names `path`."""
    with writing(path), open(path, "ab") as f:
        start = f.tell()
        try:
            _write(f, (line + "\n").encode(), path)
        except OSError:
            try:
                f.truncate(start)
            except OSError:
                pass  # the reader skips a broken last line (`complete_lines`)
            raise


def complete_lines(text: str) -> list[str]:
    """The non-empty lines of a JSON-lines file, without a last line cut short by a crash (no trailing newline)."""
    lines = text.split("\n")
    if lines and lines[-1]:  # the last write did not end with its newline: it was interrupted
        lines = lines[:-1]
    return [line for line in lines if line.strip()]


def remove_stale_temporaries(folder: Path) -> None:
    """Delete temporary files (`.<name>.*.tmp`) left by a process killed in the middle of an atomic write."""
    if folder.is_dir():
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
