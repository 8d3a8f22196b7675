"""Shared entry-point behaviour for scripts/: user errors become one line on stderr and exit code 2.

Only the project's own user-error types (`ode_nets.errors.UserError`: ConfigError, DataError,
CheckpointError, RunDirError) are reported that way, and `TrainingError` with exit code 1. Anything else,
a bare `ValueError` or `FileNotFoundError` included, is a bug and propagates with its traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

from ode_nets.errors import TrainingError, UserError

USER_ERROR_EXIT = 2
FAILURE_EXIT = 1


def user_error_types() -> tuple[type[BaseException], ...]:
    """Errors caused by the user's config, data, run folder or checkpoint (not bugs)."""
    return (UserError,)


def run_cli(job: Callable[[], None]) -> int:
    """Run `job` (set ODE_NETS_DEBUG=1 for tracebacks); a user error prints `error: <message>` (no traceback) and returns 2,
    a training failure (non-finite loss, solver failure) returns 1; any other exception propagates."""
    if os.environ.get("ODE_NETS_DEBUG"):  # full tracebacks for developers
        job()
        return 0
    try:
        job()
    except TrainingError as e:
        print(f"error: training stopped: {e}", file=sys.stderr)
        return FAILURE_EXIT
    except user_error_types() as e:
        print(f"error: {e}", file=sys.stderr)
        return USER_ERROR_EXIT
    return 0
