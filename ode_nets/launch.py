"""Start the N processes of a multi-process run on this machine (`scripts/launch_local.py`).

Each process gets the standard environment of `ode_nets.training.distributed`: `JAX_COORDINATOR_ADDRESS`
(127.0.0.1 and a free port), `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`, and CPU collectives through gloo. Their
output (stdout and stderr) is streamed line by line with a `[i]` prefix. The launcher returns 0 when every process
succeeded; as soon as one fails it stops the others and returns that process's exit code. No process outlives it:
each child runs in its own session and its whole process group is terminated (then killed) on the way out,
including on Ctrl-C (forwarded first as SIGINT, so training processes checkpoint) and SIGTERM.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO, Mapping, Sequence

from ode_nets.errors import ConfigError

GRACE_S = 10.0  # how long a stopped process may take to exit before it is killed


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on `host` (for the coordinator)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def process_env(process_id: int, num_processes: int, coordinator: str,
                base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of process `process_id`: `base` (default: this one) plus the distributed settings."""
    env = dict(os.environ if base is None else base)
    env.update({"JAX_COORDINATOR_ADDRESS": coordinator, "JAX_NUM_PROCESSES": str(num_processes),
                "JAX_PROCESS_ID": str(process_id), "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
                "PYTHONUNBUFFERED": "1"})
    return env


def command_line(command: Sequence[str]) -> list[str]:
    """`command` to execute: a `.py` script runs with this Python interpreter."""
    if not command:
        raise ConfigError("no command to launch; usage: launch_local.py -n N -- scripts/train.py --config ...")
    command = list(command)
    return [sys.executable, *command] if command[0].endswith(".py") else command


def _stream(process: subprocess.Popen, prefix: str, out: IO[str], lock: threading.Lock) -> None:
    """Copy `process`'s output to `out`, each line prefixed (tqdm's carriage returns end lines too)."""
    for line in process.stdout:
        with lock:
            out.write(f"{prefix}{line.rstrip()}\n")
            out.flush()


def start(command: Sequence[str], num_processes: int, *, port: int | None = None,
          env: Mapping[str, str] | None = None, out: IO[str] | None = None) -> tuple[list[subprocess.Popen], list]:
    """Start `num_processes` copies of `command` (processes 0 .. N-1, coordinator on 127.0.0.1), each in its own
    session, with threads streaming their prefixed output to `out`. Returns the processes and the threads."""
    if num_processes < 1:
        raise ConfigError(f"-n must be >= 1, got {num_processes}")
    argv = command_line(command)
    coordinator = f"127.0.0.1:{port or free_port()}"
    out, lock = out or sys.stdout, threading.Lock()
    processes, threads = [], []
    for i in range(num_processes):
        p = subprocess.Popen(argv, env=process_env(i, num_processes, coordinator, env), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, bufsize=1,
                             start_new_session=True)
        processes.append(p)
        thread = threading.Thread(target=_stream, args=(p, f"[{i}] ", out, lock), daemon=True)
        thread.start()
        threads.append(thread)
    return processes, threads


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)  # the child's session: it and anything it started
    except (ProcessLookupError, PermissionError):
        pass


def stop(processes: Sequence[subprocess.Popen], first: int = signal.SIGTERM, grace_s: float = GRACE_S) -> None:
    """Send `first` to the process group of every process still running, wait up to `grace_s`, then SIGKILL the
    groups of those still running; every process is reaped."""
    running = [p for p in processes if p.poll() is None]
    for p in running:
        _signal_group(p, first)
    deadline = time.monotonic() + grace_s
    for p in running:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            _signal_group(p, signal.SIGKILL)
            p.wait()


def wait(processes: Sequence[subprocess.Popen], poll_s: float = 0.1) -> int:
    """Wait until all processes succeeded (0) or one failed: then its exit code (the others are left running)."""
    while True:
        codes = [p.poll() for p in processes]
        failed = [c for c in codes if c not in (None, 0)]
        if failed:
            return failed[0] if failed[0] > 0 else 128 - failed[0]  # killed by a signal: 128 + signal number
        if all(c == 0 for c in codes):
            return 0
        time.sleep(poll_s)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def launch_local(command: Sequence[str], num_processes: int, *, port: int | None = None,
                 env: Mapping[str, str] | None = None, out: IO[str] | None = None, grace_s: float = GRACE_S) -> int:
    """Run `num_processes` processes of `command` on this machine; 0 if all succeed, else the first failure's exit
    code (the others are stopped). Ctrl-C and SIGTERM are forwarded (SIGINT: training checkpoints and stops)."""
    out = out or sys.stdout
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if threading.current_thread() is threading.main_thread() else None
    processes: list[subprocess.Popen] = []
    try:
        processes, threads = start(command, num_processes, port=port, env=env, out=out)
        code = wait(processes)
        if code:
            out.write(f"launch_local: a process failed (exit code {code}); stopping the others\n")
        stop(processes, grace_s=grace_s)
        for thread in threads:
            thread.join(timeout=5)
        return code
    except KeyboardInterrupt:
        stop(processes, first=signal.SIGINT, grace_s=grace_s)
        return 130
    finally:
        stop(processes, grace_s=1.0)  # after an unexpected error
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
