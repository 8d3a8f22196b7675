"""Preemption: SIGTERM, SIGINT (Ctrl-C) and SIGUSR1 ask a training run to stop at the end of its current step.

Clusters stop jobs with SIGTERM (then SIGKILL after a grace period); SLURM can send SIGUSR1 ahead of time
(`sbatch --signal=USR1@120`). While `StopSignals` is active these signals only set `fired`; the loop finishes the
step, writes a checkpoint and returns, and `scripts/train.py` exits with `ode_nets.cli.RESUMABLE_EXIT` (75,
EX_TEMPFAIL of sysexits.h: "try again"), so a job script can tell a preempted run (`--resume` it) from a finished
(0) or failed (1, 2) one. A second Ctrl-C raises `KeyboardInterrupt` at once, for a step that hangs.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class StopSignals:
    """Context manager: the stop signals set `fired` (the signal's name) instead of ending the process."""

    def __init__(self) -> None:
        self.fired: str | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.fired == "SIGINT":
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.fired = signal.Signals(signum).name

    def __enter__(self) -> "StopSignals":
        for signum in STOP_SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._handler)
            except ValueError:  # not in the main thread: signals stay as they are
                break
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
