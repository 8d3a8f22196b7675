"""Training over several processes (on one machine or several) with JAX's own distributed runtime.

Every process runs the same command. `initialize` connects them with `jax.distributed.initialize`: the coordinator
address (process 0's host and a free port), the number of processes and this process's id come from flags, from the
environment (`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`), or from JAX's cluster auto-detection
(SLURM, Open MPI, mpi4py). Afterwards `jax.devices()` lists the devices of every process;
`ode_nets.training.parallel` builds one mesh over them, each process feeds only its rows of every global batch
(`jax.make_array_from_process_local_data`), the parameters are replicated, and the jitted step runs over the global
mesh: XLA inserts the all-reduce of the gradient (on CPU through gloo collectives).

Process 0 owns the run folder. It alone reads the config of a resumed run and its checkpoints, and writes
`config.yaml`, metrics, checkpoints, the model, results and figures (atomically, as a single-process run does);
`share_text` and `ProcessRunDir.restore` hand what it read to the other processes, which write nothing. The
checkpoint holds the global position (step, epoch, batch), so a run resumed by another number of processes
continues the same run.

A process that loses its peers (killed, crashed, network down) stops with `TrainingError` instead of waiting:
a collective with a dead peer fails at once (gloo reports the closed connection), a silent peer is declared dead
by the coordinator after `heartbeat_timeout_s`, and the runtime then ends every process.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import PyTree

from ode_nets.errors import ConfigError, TrainingError, UserError
from ode_nets.training import parallel
from ode_nets.training.checkpoint import Position, Restored
from ode_nets.training.run_dir import MetricsLog, RunDir

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"  # read by jax.distributed itself as well
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
DETECTION_METHODS = ("auto", "slurm", "ompi", "mpi4py", "gke_tpu", "gce_tpu", "k8s")
# Substrings of the runtime's errors when a peer process is gone (gloo collectives, coordination service).
_PEER_LOST = ("gloo", "connection closed", "connection reset", "heartbeat", "coordination service", "unavailable",
              "deadline exceeded", "broken pipe")


@dataclass(frozen=True)
class Cluster:
    """How this process joins a multi-process run: the coordinator `host:port` (process 0's machine), the number of
    processes and this process's id (0 .. n-1), or `detect`: JAX's cluster auto-detection ("auto" tries SLURM and
    Open MPI; or a method name) for whatever is not given. Timeouts in seconds: connecting to the coordinator, and
    the silence after which a process is declared dead."""

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    detect: str | None = None
    init_timeout_s: int = 300
    heartbeat_timeout_s: int = 100

    def check(self) -> None:
        """`ConfigError` naming the flag and the environment variable of a missing or impossible setting."""
        if self.detect is not None and self.detect not in DETECTION_METHODS:
            raise ConfigError(f"--cluster {self.detect}: unknown cluster detection; one of {', '.join(DETECTION_METHODS)}")
        wanted = {"--coordinator": (self.coordinator, ENV_COORDINATOR),
                  "--num-processes": (self.num_processes, ENV_NUM_PROCESSES),
                  "--process-id": (self.process_id, ENV_PROCESS_ID)}
        missing = [f"{flag} (or {env})" for flag, (value, env) in wanted.items() if value is None]
        if missing and self.detect is None:
            raise ConfigError(f"multi-process training needs {', '.join(missing)}, or --cluster auto to detect them "
                              f"(SLURM, Open MPI)")
        if self.coordinator is not None and not self.coordinator.rpartition(":")[2].isdigit():
            raise ConfigError(f"--coordinator {self.coordinator}: expected host:port, e.g. 10.0.0.1:12345")
        if self.num_processes is not None and self.num_processes < 1:
            raise ConfigError(f"--num-processes must be >= 1, got {self.num_processes}")
        if None not in (self.num_processes, self.process_id) and not 0 <= self.process_id < self.num_processes:
            raise ConfigError(f"--process-id must be in 0 .. {self.num_processes - 1}, got {self.process_id}")
        for name in ("init_timeout_s", "heartbeat_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0 seconds, got {getattr(self, name)}")


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r}: expected an integer") from None


def cluster_from(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
                 detect: str | None = None, environ: Mapping[str, str] | None = None, **timeouts: int) -> Cluster | None:
    """The `Cluster` of this process from flags, else the environment; None if nothing asks for several processes
    (the single-process path, where `jax.distributed` is not used at all)."""
    environ = os.environ if environ is None else environ
    cluster = Cluster(coordinator or environ.get(ENV_COORDINATOR) or None,
                      num_processes if num_processes is not None else _env_int(environ, ENV_NUM_PROCESSES),
                      process_id if process_id is not None else _env_int(environ, ENV_PROCESS_ID), detect, **timeouts)
    if detect is None and (cluster.coordinator, cluster.num_processes, cluster.process_id) == (None, None, None):
        return None
    cluster.check()
    return cluster


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The multi-process flags of the training scripts (`cluster_from_args` reads them back)."""
    group = parser.add_argument_group("multi-process training (jax.distributed; every process runs the same command)")
    group.add_argument("--coordinator", metavar="HOST:PORT", help=f"process 0's address and a free port [{ENV_COORDINATOR}]")
    group.add_argument("--num-processes", type=int, metavar="N", help=f"number of processes [{ENV_NUM_PROCESSES}]")
    group.add_argument("--process-id", type=int, metavar="I", help=f"this process, 0 .. N-1 [{ENV_PROCESS_ID}]")
    group.add_argument("--cluster", choices=DETECTION_METHODS, help="detect the three settings above (SLURM, Open MPI)")
    group.add_argument("--init-timeout", type=int, default=300, metavar="S", help="seconds to wait for all processes")
    group.add_argument("--heartbeat-timeout", type=int, default=100, metavar="S",
                       help="seconds of silence after which a process is declared dead and the run stops")


def cluster_from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Cluster | None:
    """`cluster_from` with the flags of `add_flags`."""
    return cluster_from(args.coordinator, args.num_processes, args.process_id, args.cluster, environ,
                        init_timeout_s=args.init_timeout, heartbeat_timeout_s=args.heartbeat_timeout)


def initialize(cluster: Cluster | None) -> None:
    """Join the multi-process run (`jax.distributed.initialize`, CPU collectives through gloo); nothing for None.
    Must come before any JAX computation."""
    if cluster is None:
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    explicit = None not in (cluster.coordinator, cluster.num_processes, cluster.process_id)
    detect = "deactivate" if explicit and cluster.detect is None else (None if cluster.detect == "auto" else cluster.detect)
    if explicit:
        print(f"process {cluster.process_id} of {cluster.num_processes}: connecting to {cluster.coordinator} "
              f"(waits up to {cluster.init_timeout_s} s for the others)", flush=True)
    try:
        jax.distributed.initialize(cluster.coordinator, cluster.num_processes, cluster.process_id,
                                   cluster_detection_method=detect, initialization_timeout=cluster.init_timeout_s,
                                   heartbeat_timeout_seconds=cluster.heartbeat_timeout_s)
    except ValueError as e:  # auto-detection found nothing, or an incomplete setting
        raise ConfigError(f"cannot start multi-process training: {e} (no SLURM or Open MPI job detected? give "
                          f"--coordinator, --num-processes and --process-id)") from None


def is_main() -> bool:
    """True on process 0 (and in a single-process run): the process that reads and writes the run folder."""
    return jax.process_index() == 0


def share_text(text: str | None) -> str:
    """Process 0's `text` on every process (the others pass anything, e.g. None); a collective: all must call it."""
    if jax.process_count() == 1:
        return text
    data = np.frombuffer(text.encode(), np.uint8) if is_main() else np.zeros(0, np.uint8)
    size = int(multihost_utils.broadcast_one_to_all(np.int32(len(data))))
    padded = np.zeros(size, np.uint8)
    padded[:len(data)] = data
    return bytes(np.asarray(multihost_utils.broadcast_one_to_all(padded))).decode()


_USER_ERRORS = {cls.__name__: cls for cls in (UserError, *UserError.__subclasses__())}


def from_main(read: Callable[[], str]) -> str:
    """`read()` run on process 0 only, and its text on every process. A `UserError` there (config, run folder,
    checkpoint) is raised on every process, marked `on_every_process` so that they can shut down together."""
    if jax.process_count() == 1:
        return read()
    reply = None
    if is_main():
        try:
            reply = json.dumps({"text": read()})
        except UserError as e:
            reply = json.dumps({"error": type(e).__name__, "message": str(e)})
    shared = json.loads(share_text(reply))
    if "error" in shared:
        error = _USER_ERRORS.get(shared["error"], UserError)(shared["message"])
        error.on_every_process = True
        raise error
    return shared["text"]


def any_process(flag: bool) -> bool:
    """Whether `flag` is set on any process (e.g. Ctrl-C reached only some); a collective in a multi-process run, so
    every process must ask at the same point, and all get the same answer."""
    if jax.process_count() == 1:
        return flag
    sharding, reduce = _flag_reduction()
    return bool(reduce(jax.make_array_from_process_local_data(sharding, np.full(1, flag, np.int32))))


@functools.cache
def _flag_reduction() -> tuple[NamedSharding, Callable]:
    """One int per process on a mesh of one device per process, and its jitted max (a ~2 ms all-reduce on CPU; the
    general `multihost_utils.process_allgather` took three times as long)."""
    mesh = Mesh(np.asarray(parallel.mesh_devices(1)), ("process",))
    return NamedSharding(mesh, PartitionSpec("process")), jax.jit(jnp.max, out_shardings=NamedSharding(mesh, PartitionSpec()))


def broadcast_tree(tree: PyTree) -> PyTree:
    """Process 0's array leaves of `tree` on every process (same structure everywhere), as local arrays."""
    if jax.process_count() == 1:
        return tree
    arrays, static = eqx.partition(tree, eqx.is_array)
    arrays = multihost_utils.broadcast_one_to_all(arrays)
    return eqx.combine(jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a)), arrays), static)


class _NoLog(MetricsLog):
    """The metrics log of a process other than 0: records are dropped (process 0 writes the same ones)."""

    def __init__(self) -> None:
        self.path = None

    def write(self, record: dict) -> None:
        pass


def _main_only(name: str) -> Callable:
    """A `RunDir` method that runs on process 0 and does nothing (returns None) on the others."""
    def method(self: "ProcessRunDir", *args: Any, **kwargs: Any) -> Any:
        return getattr(RunDir, name)(self, *args, **kwargs) if self.main else None

    method.__doc__ = f"`RunDir.{name}` on process 0 only."
    return method


class ProcessRunDir(RunDir):
    """The run folder as one of several processes sees it: process 0 reads and writes it, the others write nothing
    and receive what process 0 reads (the folder need not exist on their machines)."""

    def __init__(self, path: str | Path, main: bool):
        super().__init__(path)
        self.main = main

    write_config = _main_only("write_config")
    save_checkpoint = _main_only("save_checkpoint")
    save_model = _main_only("save_model")
    write_results = _main_only("write_results")

    def record_resume(self, config: dict | str) -> dict:
        return super().record_resume(config) if self.main else {}

    def metrics_log(self, resume_step: int | None = None) -> MetricsLog:
        return super().metrics_log(resume_step) if self.main else _NoLog()

    def restore(self, like: PyTree) -> Restored | None:
        """Process 0's `RunDir.restore` (it alone sets damaged checkpoints aside), on every process."""
        found = {"state": like}

        def read() -> str:
            restored = RunDir.restore(self, like)
            if restored is None:
                return "null"
            found["state"] = restored.state
            return json.dumps({"position": restored.position.__dict__, "path": str(restored.path),
                               "skipped": [[str(p), why] for p, why in restored.skipped]})

        shared = json.loads(from_main(read))
        state = broadcast_tree(found["state"])
        if shared is None:
            return None
        return Restored(state, Position(**shared["position"]), Path(shared["path"]),
                        tuple((Path(p), why) for p, why in shared["skipped"]))


def process_run_dir(run_dir: RunDir | str | Path) -> RunDir:
    """`run_dir` for this process: unchanged in a single-process run, else a `ProcessRunDir`."""
    if jax.process_count() == 1:
        return run_dir
    return ProcessRunDir(run_dir.path if isinstance(run_dir, RunDir) else run_dir, main=is_main())


def lost_peer(error: BaseException) -> bool:
    """Whether `error` is the runtime's report of a peer process gone (in a multi-process run)."""
    text = str(error).lower()
    return (jax.process_count() > 1 and not isinstance(error, (UserError, TrainingError))
            and any(marker in text for marker in _PEER_LOST))


def run_job(job: Callable[[], Any], run_cli: Callable[[Callable[[], Any]], int]) -> int:
    """`run_cli(job)` (one-line errors, exit codes) for one process of a run, then `finalize`. The runtime's error
    for a lost peer process becomes a one-line `TrainingError`. Errors that every process raises at the same point
    (a `from_main` error; a `TrainingError` of the loop, whose metrics are the same on every process) let the
    processes shut down together."""
    together: list[bool] = []

    def guarded() -> Any:
        try:
            return job()
        except Exception as e:  # noqa: BLE001 - XLA reports a failed collective as various runtime errors
            if not lost_peer(e):
                together.append(getattr(e, "on_every_process", False) or isinstance(e, TrainingError))
                raise
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise TrainingError(f"process {jax.process_index()} of {jax.process_count()} lost contact with another "
                                f"process of the run (killed, crashed or unreachable; see its output): {first}"
                                ) from None

    return finalize(run_cli(guarded), together=any(together))


def finalize(code: int, together: bool = False) -> int:
    """End this process's part of a multi-process run: after success (or an error all processes share, `together`)
    the runtime is shut down with the others; after any other failure the process exits at once with `code` (the
    runtime's shutdown barrier would wait for, then abort on, peers that are gone or still training). Returns
    `code` in a single-process run."""
    if jax.distributed.is_initialized():
        if code == 0 or together:
            jax.distributed.shutdown()
        else:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return code
