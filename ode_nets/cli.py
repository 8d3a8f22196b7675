"""Shared entry-point behaviour for scripts/: user errors become one line on stderr and exit code 2.

Only the project's own user-error types (`ode_nets.errors.UserError`: ConfigError, DataError,
CheckpointError, RunDirError) are reported that way, and `TrainingError` (`StorageError` included: a full
disk) with exit code 1. Anything else, a bare `ValueError` or `FileNotFoundError` included, is a bug and
propagates with its traceback. A run stopped by SIGTERM, SIGINT or SIGUSR1 after writing its checkpoint exits
with `RESUMABLE_EXIT` (75, sysexits' EX_TEMPFAIL): continue it with `--resume`. Every job first keeps freed
host memory in the process (`host_memory.retain_freed_memory`: no page faults on XLA's per-step buffers).
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Optional

from ode_nets.errors import StorageError, TrainingError, UserError
from ode_nets.host_memory import retain_freed_memory

USER_ERROR_EXIT = 2
FAILURE_EXIT = 1
RESUMABLE_EXIT = 75  # stopped by a signal with a checkpoint written: --resume continues it


def user_error_types() -> tuple[type[BaseException], ...]:
    """Errors caused by the user's config, data, run folder or checkpoint (not bugs)."""
    return (UserError,)


def run_cli(job: Callable[[], Optional[int]]) -> int:
    """Run `job` (set ODE_NETS_DEBUG=1 for tracebacks) and return its exit code (None: 0); a user error prints
    `error: <message>` (no traceback) and returns 2, a training failure (non-finite loss, solver failure, a write
    that failed) returns 1; any other exception propagates."""
    retain_freed_memory()
    if os.environ.get("ODE_NETS_DEBUG"):  # full tracebacks for developers
        return job() or 0
    try:
        return job() or 0
    except StorageError as e:
        print(f"error: {e}", file=sys.stderr)
        return FAILURE_EXIT
    except TrainingError as e:
        print(f"error: training stopped: {e}", file=sys.stderr)
        return FAILURE_EXIT
    except user_error_types() as e:
        print(f"error: {e}", file=sys.stderr)
        return USER_ERROR_EXIT
