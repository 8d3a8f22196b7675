"""One run per folder: an advisory lock (`fcntl.flock`) on `<run>/.lock` while a process trains in it.

The lock belongs to the open file, so the kernel drops it when the process dies in any way (SIGKILL, crash, power
off of the job): a crashed run never leaves a stuck lock, only an unlocked `.lock` file that the next run takes
over. The file holds the holder's pid, host, start time and command line, for the message that refuses a second
process. Within one process the lock is re-entrant (`train.py` holds it around `fit`, which holds it too).
Locks on network file systems are only as good as the file system's `flock` (NFS: emulated by byte-range locks).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ode_nets.errors import RunDirError
from ode_nets.training.storage import writing

LOCK_NAME = ".lock"

_held: dict[Path, list] = {}  # lock file -> [open file, depth]: the locks this process holds (re-entrancy)


def lock_path(folder: Path) -> Path:
    return Path(folder) / LOCK_NAME


def holder(path: Path) -> str:
    """Who holds the lock at `path`, from the file's content ('process 123 on host (since ...: cmd)')."""
    try:
        info = json.loads(path.read_text())
        return (f"process {info['pid']} on {info['host']} (since {info['started']}: "
                f"{' '.join(info.get('argv', []))[:200]})")
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (its pid is not written yet)"


def _acquire(path: Path):
    """Open and `flock` the lock file (non-blocking); retry if the file was replaced between open and lock."""
    while True:
        f = open(path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise RunDirError(f"run folder {path.parent} is in use by {holder(path)}; wait for it to end or stop "
                              f"it (a crashed run leaves no lock)") from None
        try:
            same = os.fstat(f.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:  # its holder removed it while we waited to lock: take a fresh one
            same = False
        if same:
            return f
        f.close()


def _write_info(f) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "argv": sys.argv}
    try:
        f.seek(0)
        f.truncate()
        f.write(json.dumps(info) + "\n")
        f.flush()
    except OSError:
        pass  # the flock is the lock; the content only names the holder


def _release(path: Path, f, created_folder: bool) -> None:
    """Remove the lock file while still holding it (so no one can lock the old file after us), then unlock;
    remove the folder too if this lock created it and nothing else was written."""
    path.unlink(missing_ok=True)
    f.close()
    if created_folder:
        try:
            path.parent.rmdir()
        except OSError:
            pass  # the run wrote files: the folder stays


@contextmanager
def hold(folder: str | Path) -> Iterator[None]:
    """Hold `folder`'s run lock for the block (the folder is created if needed); a `RunDirError` naming the
    holder if another process holds it."""
    folder = Path(folder)
    path = lock_path(folder.resolve())
    if path in _held:
        _held[path][1] += 1
        try:
            yield
        finally:
            _held[path][1] -= 1
        return
    created_folder = not folder.exists()
    with writing(path):
        folder.mkdir(parents=True, exist_ok=True)
        f = _acquire(path)
    _write_info(f)
    _held[path] = [f, 1]
    try:
        yield
    finally:
        del _held[path]
        _release(path, f, created_folder)
