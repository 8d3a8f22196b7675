"""Multi-process training with jax.distributed, several CPU processes on this machine (gloo collectives).

Two processes of one device each train circles model 2 to the same losses and parameters as one process with the
same global batch; only process 0 writes the run folder; a run resumed by another number of processes continues the
same run; a killed process makes the other stop with a clear error instead of hanging; the launcher leaves no
process behind. Every process is started by the test and killed in its `finally`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from ode_nets.build import load_run
from ode_nets.data import add_input_noise
from ode_nets.errors import ConfigError
from ode_nets.launch import free_port, launch_local, process_env, stop
from ode_nets.training.distributed import cluster_from

ROOT = Path(__file__).resolve().parents[1]
TRAIN = [str(ROOT / "scripts" / "train.py")]
# circles model 2 (input noise, AdamW, clipping, cosine schedule), 6 steps of the global batch of 40, checkpoints at 3, 6
ARGS = ["--config", str(ROOT / "configs" / "circles_model2.yaml"), "train.max_steps=6", "train.checkpoint_every=3",
        "train.keep_checkpoints=5", "train.log_every=1", "data.n_test=200", "--no-plots", "--no-progress"]
TIMEOUT_S = 110


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env.update({"JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT), "XLA_FLAGS": ""})
    return env


def _train_one(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *TRAIN, *args], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _finish(process: subprocess.Popen) -> str:
    try:
        output, _ = process.communicate(timeout=TIMEOUT_S)
    finally:
        stop([process], grace_s=0.0)
    assert process.returncode == 0, output[-3000:]
    return output


def _launch(n: int, args: list[str], log: Path) -> None:
    with log.open("w") as out:
        code = launch_local([*TRAIN, *args], n, env=_env(), out=out)
    assert code == 0, log.read_text()[-3000:]


def _train_records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["kind"] == "train"]


def _params(folder: Path) -> list[np.ndarray]:
    _, _, model = load_run(folder)
    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(model) if hasattr(leaf, "shape")]


def _assert_same_run(folder: Path, reference: Path) -> None:
    """Per-step losses and gradient norms, and final parameters, equal up to float32 summation order."""
    ours, theirs = _train_records(folder), _train_records(reference)
    assert [r["step"] for r in ours] == [r["step"] for r in theirs] == list(range(1, 7))  # one record a step
    for key in ("loss", "grad_norm"):
        np.testing.assert_allclose([r[key] for r in ours], [r[key] for r in theirs], rtol=1e-5, err_msg=key)
    for a, b in zip(_params(folder), _params(reference), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[int, Path]:
    """The same 6 steps trained by 1 process and by 2 processes (launcher), at the same time."""
    root = tmp_path_factory.mktemp("distributed")
    single = _train_one([*ARGS, "--run-dir", str(root / "one")])
    try:
        _launch(2, [*ARGS, "--run-dir", str(root / "two")], root / "two.log")
    finally:
        _finish(single)
    return {1: root / "one", 2: root / "two"}


def test_two_processes_train_like_one(runs):
    """2 processes x 1 device, each feeding 20 of the 40 examples of a batch: same run as 1 process; only process 0
    wrote the folder (one metrics record per step, the checkpoints of steps 3 and 6, the final model)."""
    _assert_same_run(runs[2], runs[1])
    assert sorted(p.name for p in (runs[2] / "checkpoints").iterdir()) == [
        "ckpt-000000003.eqx", "ckpt-000000003.json", "ckpt-000000006.eqx", "ckpt-000000006.json"]
    assert (runs[2] / "results.json").is_file() and (runs[2] / "model.eqx").is_file()
    log = (runs[2].parent / "two.log").read_text()
    assert "[0] epoch 1:" in log and "[1] epoch 1:" in log


@pytest.mark.parametrize("before, after", [(2, 1), (1, 2)])
def test_resume_with_another_number_of_processes(runs, tmp_path, before, after):
    """A run checkpointed at step 3 by `before` processes and resumed by `after` ends as the uninterrupted run."""
    folder = tmp_path / "resumed"
    shutil.copytree(runs[before], folder)
    for path in [*folder.glob("checkpoints/ckpt-000000006.*"), folder / "model.eqx", folder / "results.json"]:
        path.unlink()
    resume = ["--resume", str(folder), "--no-plots", "--no-progress"]
    if after == 1:
        _finish(_train_one(resume))
    else:
        _launch(after, resume, tmp_path / "resume.log")
    _assert_same_run(folder, runs[1])


def test_killed_process_stops_the_other(tmp_path):
    """Process 1 killed mid-training: process 0 stops with a one-line error within seconds instead of waiting,
    and its checkpoints stay loadable."""
    port, folder = free_port(), tmp_path / "run"
    args = [*TRAIN, *ARGS, "train.max_steps=100000", "train.epochs=10000", "--run-dir", str(folder),
            "--heartbeat-timeout", "10", "--init-timeout", "60"]
    processes = [subprocess.Popen([sys.executable, *args], env=process_env(i, 2, f"127.0.0.1:{port}", _env()),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
                 for i in range(2)]
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not list(folder.glob("checkpoints/ckpt-*.json")):  # training is under way (first checkpoint, step 3)
            assert time.monotonic() < deadline and all(p.poll() is None for p in processes), "training did not start"
            time.sleep(0.2)
        processes[1].kill()
        killed = time.monotonic()
        _, stderr = processes[0].communicate(timeout=60)
        assert time.monotonic() - killed < 60
        assert processes[0].returncode == 1, stderr[-3000:]
        assert "error: training stopped: process 0 of 2 lost contact with another process" in stderr, stderr[-3000:]
        assert "Traceback" not in stderr
        assert _params(folder)  # the newest checkpoint loads
    finally:
        stop(processes, grace_s=0.0)


def test_launcher_fails_when_one_process_fails_and_leaves_none_running(tmp_path):
    """Process 1 exits with 3 while process 0 would run a minute: the launcher stops it and returns 3, with the
    output prefixed per process."""
    log, pids = tmp_path / "log", tmp_path / "pids"
    code = ("import os, sys, time; i = os.environ['JAX_PROCESS_ID']; "
            f"open({str(pids)!r} + i, 'w').write(str(os.getpid())); "
            "print('process', i, 'of', os.environ['JAX_NUM_PROCESSES'], os.environ['JAX_COORDINATOR_ADDRESS']); "
            "sys.stdout.flush(); time.sleep(0.5); sys.exit(3) if i == '1' else time.sleep(60)")
    start = time.monotonic()
    with log.open("w") as out:
        assert launch_local([sys.executable, "-c", code], 2, out=out, grace_s=5) == 3
    assert time.monotonic() - start < 30
    text = log.read_text()
    assert "[0] process 0 of 2 127.0.0.1:" in text and "[1] process 1 of 2" in text
    for i in range(2):
        pid = int((tmp_path / f"pids{i}").read_text())
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_cluster_settings_from_flags_and_environment():
    """Flags win over JAX_* variables; nothing given: single process; incomplete or impossible: one-line errors."""
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
    cluster = cluster_from(process_id=0, environ=env)
    assert (cluster.coordinator, cluster.num_processes, cluster.process_id) == ("10.0.0.1:1234", 2, 0)
    assert cluster_from(environ={}) is None
    assert cluster_from(detect="auto", environ={}).detect == "auto"
    with pytest.raises(ConfigError, match="--num-processes .or JAX_NUM_PROCESSES."):
        cluster_from(coordinator="10.0.0.1:1234", process_id=0, environ={})
    with pytest.raises(ConfigError, match="process-id must be in 0 .. 1"):
        cluster_from(process_id=2, environ=env)
    with pytest.raises(ConfigError, match="host:port"):
        cluster_from(coordinator="10.0.0.1", environ=env)
    with pytest.raises(ConfigError, match="JAX_PROCESS_ID='x'"):
        cluster_from(environ={**env, "JAX_PROCESS_ID": "x"})


def test_input_noise_of_a_process_share_is_its_rows_of_the_whole_batch():
    """Each half of a batch gets exactly its rows of the noise one process draws for the whole batch."""
    x, key = np.arange(24, dtype=np.float32).reshape(8, 3), jax.random.PRNGKey(5)
    whole = np.asarray(add_input_noise(x, 0.3, key))
    for rows in (slice(0, 4), slice(4, 8)):
        np.testing.assert_array_equal(np.asarray(add_input_noise(x[rows], 0.3, key, rows, 8)), whole[rows])
