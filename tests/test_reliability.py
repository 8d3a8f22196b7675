"""Reliability: kill + resume is bit-identical, runs are deterministic, bad input gives one-line
errors with exit code 2, NaN and solver failures stop cleanly, stop signals checkpoint and exit 75,
damaged checkpoints are skipped, a full disk stops with the path named, one run per folder, bad data is
refused before training. The soak test (`-m slow`) interrupts one run 50 times."""

import errno
import hashlib
import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import without_wall_clock
from ode_nets.training import checkpoint as ckpt
from ode_nets.config import load_config
from ode_nets.data import DataError, Dataset, Split
from ode_nets.build import build_run, fit_run, prepare_folder
from ode_nets.cli import RESUMABLE_EXIT
from ode_nets.errors import RunDirError, StorageError
from ode_nets.training import Objective, RunDir, TrainingError
from ode_nets.training import loop as train_module
from ode_nets.training import storage
from ode_nets.training.lock import hold
from ode_nets.training.signals import StopSignals

ROOT = Path(__file__).parent.parent
CIRCLES = ROOT / "configs" / "circles_model2.yaml"
QUICK = ["train.epochs=3", "train.log_every=3", "train.checkpoint_every=4"]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_cli(argv, capsys, out: bool = False):
    code = load_script("train").main(argv)
    captured = capsys.readouterr()
    return (code, captured.err, captured.out) if out else (code, captured.err)


def records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def stable_metrics(folder: Path) -> list[dict]:
    """metrics.jsonl without wall-clock fields and without the records of interruptions and resumes."""
    return without_wall_clock([r for r in records(folder) if r["kind"] not in ("resume", "interrupted")])


def final_results(folder: Path) -> dict:
    return {k: v for k, v in json.loads((folder / "results.json").read_text()).items() if k != "train_wall_time_s"}


def quick_run(folder: Path, overrides=()) -> None:
    cfg = load_config(CIRCLES, [*QUICK, *overrides])
    prepare_folder(folder, cfg, overwrite=False, resume=False)
    fit_run(build_run(cfg, folder), progress=False)


@pytest.fixture(scope="module")
def quick_reference(tmp_path_factory) -> Path:
    """One uninterrupted QUICK run, the reference of the in-process interruption tests."""
    folder = tmp_path_factory.mktemp("quick") / "reference"
    quick_run(folder)
    return folder


def test_same_seed_gives_identical_runs(tmp_path):
    cfg = load_config(CIRCLES, QUICK)
    for name in ("a", "b"):
        prepare_folder(tmp_path / name, cfg, overwrite=False, resume=False)
        fit_run(build_run(cfg, tmp_path / name), progress=False)
    assert stable_metrics(tmp_path / "a") == stable_metrics(tmp_path / "b")
    assert (tmp_path / "a" / "model.eqx").read_bytes() == (tmp_path / "b" / "model.eqx").read_bytes()


def _train_cmd(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "scripts" / "train.py"), "--config", str(CIRCLES), "--run-dir", str(run_dir),
            "--no-progress", "--no-plots", *extra]


SLOW = ["train.epochs=12", "train.checkpoint_every=5", "train.log_every=5", "model.layers=200", "train.batch_size=20"]


def _wait_for_checkpoint(folder: Path, proc: subprocess.Popen, min_step: int, timeout: float = 300) -> None:
    start = time.time()
    while time.time() - start < timeout:
        steps = [ckpt.checkpoint_step(p) for p in (folder / "checkpoints").glob("ckpt-*.json")]
        if steps and max(steps) >= min_step:
            return
        assert proc.poll() is None, "training ended before it could be interrupted"
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


@pytest.fixture(scope="module")
def slow_reference(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("slow") / "reference"
    subprocess.run(_train_cmd(folder, *SLOW), check=True, env=ENV, capture_output=True)
    return folder


ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
RESUME = ["--no-progress", "--no-plots", "--resume"]


def _resume_cmd(folder: Path) -> list[str]:
    return [sys.executable, str(ROOT / "scripts" / "train.py"), *RESUME, str(folder)]


def test_sigkill_then_resume_is_bit_identical(tmp_path, slow_reference):
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(killed, *SLOW), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_checkpoint(killed, proc, min_step=30)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "model.eqx").exists(), "the run finished before the kill"
    newest = max((killed / "checkpoints").glob("ckpt-*.json"))
    position = json.loads(newest.read_text())
    assert position["elapsed_s"] > 0
    newest.write_text(json.dumps({**position, "elapsed_s": 1000.0}))  # wall time of earlier sessions is carried on
    subprocess.run(_resume_cmd(killed), check=True, env=ENV, capture_output=True)  # the dead run left no lock

    assert (killed / "model.eqx").read_bytes() == (slow_reference / "model.eqx").read_bytes()
    assert stable_metrics(killed) == stable_metrics(slow_reference)
    assert final_results(killed) == final_results(slow_reference)
    assert json.loads((killed / "results.json").read_text())["train_wall_time_s"] > 1000.0


def test_sigterm_at_a_random_step_checkpoints_exits_75_and_resumes_bit_identically(tmp_path, slow_reference):
    folder, delay = tmp_path / "run", random.uniform(0.0, 0.5)
    proc = subprocess.Popen(_train_cmd(folder, *SLOW), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _wait_for_checkpoint(folder, proc, min_step=5)
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == RESUMABLE_EXIT, (delay, out, err)
    stop = records(folder)[-1]
    assert stop["kind"] == "interrupted" and stop["signal"] == "SIGTERM", delay
    assert f"interrupted at step {stop['step']} (SIGTERM)" in out and f"--resume {folder}" in out
    assert RunDir(folder).latest_step() == stop["step"]  # the checkpoint of the step the signal interrupted
    assert not (folder / "model.eqx").exists() and not (folder / ".lock").exists()
    subprocess.run(_resume_cmd(folder), check=True, env=ENV, capture_output=True)
    assert (folder / "model.eqx").read_bytes() == (slow_reference / "model.eqx").read_bytes()
    assert stable_metrics(folder) == stable_metrics(slow_reference)
    assert final_results(folder) == final_results(slow_reference)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGUSR1], ids=["SIGINT", "SIGUSR1"])
def test_ctrl_c_and_sigusr1_write_a_checkpoint_and_exit_75(tmp_path, sig):
    folder = tmp_path / "run"
    proc = subprocess.Popen(_train_cmd(folder, *SLOW), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _wait_for_checkpoint(folder, proc, min_step=5)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == RESUMABLE_EXIT, err
    assert "interrupted at step" in out and f"({sig.name})" in out and "--resume" in out
    assert not (folder / "model.eqx").exists()
    steps = sorted(ckpt.checkpoint_step(p) for p in (folder / "checkpoints").glob("ckpt-*.json"))
    assert steps[-1] > 5  # the interrupt wrote a checkpoint beyond the periodic one


def test_stop_signals_set_a_flag_and_restore_the_handlers():
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.01)
        assert stop.fired == "SIGUSR1"
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert stop.fired == "SIGTERM"
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C stops at once
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
    assert {s: signal.getsignal(s) for s in before} == before


def _signal_at_step(monkeypatch, step: int, sig=signal.SIGTERM) -> None:
    """The stop signal arrives while optimizer step `step` (counted from 1) runs."""
    real_step, calls = train_module.train_step, []

    def step_then_signal(*args):
        calls.append(1)
        if len(calls) == step:
            os.kill(os.getpid(), sig)
        return real_step(*args)

    monkeypatch.setattr(train_module, "train_step", step_then_signal)


@pytest.mark.parametrize("step", [random.randint(1, 29), 20, 30], ids=["random", "epoch-end", "last"])
def test_sigterm_in_process_at_a_step_resumes_bit_identically(tmp_path, monkeypatch, quick_reference, step):
    """QUICK: 30 steps, 10 per epoch, checkpoints every 4 and at each epoch end. At the last step of an epoch the
    signal comes before the epoch's evaluation, which the resumed run does first."""
    _signal_at_step(monkeypatch, step)
    cfg = load_config(CIRCLES, QUICK)
    prepare_folder(tmp_path / "run", cfg, overwrite=False, resume=False)
    result = fit_run(build_run(cfg, tmp_path / "run"), progress=False)
    assert result == {"interrupted": True, "step": step, "signal": "SIGTERM"}
    assert RunDir(tmp_path / "run").latest_step() == step
    monkeypatch.undo()
    fit_run(build_run(cfg, tmp_path / "run"), resume=True, progress=False)
    assert (tmp_path / "run" / "model.eqx").read_bytes() == (quick_reference / "model.eqx").read_bytes(), step
    assert stable_metrics(tmp_path / "run") == stable_metrics(quick_reference), step


@pytest.mark.parametrize("overrides,expected", [
    (["model.layres=3"], "did you mean 'model.layers'"),
    (["model.layers=abc"], "model.layers: expected an integer"),
    (["model.layers=0"], "model.layers: must be a positive number"),
    (["loss.smoothness=-1"], "loss.smoothness: must be >= 0"),
    (["train.batch_size=5000"], "larger than the training set"),
])
def test_bad_config_is_one_line_exit_2(tmp_path, capsys, overrides, expected):
    code, err = train_cli(["--config", str(CIRCLES), "--run-dir", str(tmp_path / "r"), *overrides], capsys)
    assert code == 2
    assert expected in err and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_overrides_may_come_before_and_after_the_flags(tmp_path, capsys):
    argv = ["--config", str(CIRCLES), "train.epochs=1", "--run-dir", str(tmp_path / "r"), "model.layers=0"]
    code, err = train_cli(argv, capsys)
    assert code == 2 and "model.layers: must be a positive number" in err  # read as an override, not refused


def test_missing_config_file(tmp_path, capsys):
    code, err = train_cli(["--config", str(tmp_path / "missing.yaml")], capsys)
    assert code == 2 and "not found" in err


def test_existing_run_dir_is_refused_and_kept(tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "results.json").write_text("precious")
    code, err = train_cli(["--config", str(CIRCLES), "--run-dir", str(folder)], capsys)
    assert code == 2 and "--overwrite" in err and "--resume" in err
    assert (folder / "results.json").read_text() == "precious"


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_resume_skips_damaged_checkpoints_and_continues_bit_identically(tmp_path, capsys, quick_reference):
    folder = tmp_path / "run"
    quick_run(folder)  # 30 steps; keeps the checkpoints of steps 24, 28, 30
    newest, second, third = sorted((folder / "checkpoints").glob("ckpt-*.eqx"), reverse=True)
    sidecar = json.loads(newest.with_suffix(".json").read_text())
    assert sidecar["sha256"] == hashlib.sha256(newest.read_bytes()).hexdigest()
    flipped = bytearray(newest.read_bytes())
    flipped[len(flipped) // 2] ^= 0x10  # one bit, same length
    newest.write_bytes(bytes(flipped))
    second.write_bytes(second.read_bytes()[:100])  # truncated
    code, err = train_cli(["--resume", str(folder), "--no-progress", "--no-plots"], capsys)
    assert code == 0, err
    resume = [r for r in records(folder) if r["kind"] == "resume"]
    assert [(r["step"], r["checkpoint"]) for r in resume] == [(24, third.name)]
    reasons = {entry["checkpoint"]: entry["reason"] for entry in resume[0]["skipped"]}
    assert "SHA-256 mismatch" in reasons[newest.name] and "truncated" in reasons[second.name]
    assert (folder / "checkpoints" / (newest.name + ".damaged")).is_file()  # set aside, not deleted
    assert (folder / "model.eqx").read_bytes() == (quick_reference / "model.eqx").read_bytes()
    assert stable_metrics(folder) == stable_metrics(quick_reference)


def test_all_checkpoints_damaged_is_one_line_naming_them_and_changes_nothing(tmp_path, capsys):
    folder = tmp_path / "run"
    quick_run(folder)
    paths = sorted((folder / "checkpoints").glob("ckpt-*.eqx"))
    for path in paths:
        path.write_bytes(path.read_bytes()[:-1])
    before = _files(folder)
    code, err = train_cli(["--resume", str(folder), "--no-progress", "--no-plots"], capsys)
    assert code == 2 and err.count("\n") == 1 and "every checkpoint" in err
    assert all(p.name in err for p in paths)
    assert _files(folder) == before


def test_an_intact_checkpoint_of_another_model_is_not_skipped(tmp_path, capsys):
    folder = tmp_path / "run"
    quick_run(folder)
    before = _files(folder)
    code, err = train_cli(["--resume", str(folder), "--no-progress", "--no-plots", "model.layers=10"], capsys)
    assert code == 2 and "intact (SHA-256 verified) but does not match" in err
    assert _files(folder) == before


def test_resume_before_the_first_checkpoint_starts_from_step_0(tmp_path, capsys, quick_reference):
    folder = tmp_path / "run"
    prepare_folder(folder, load_config(CIRCLES, QUICK), overwrite=False, resume=False)  # killed before step 1
    code, err = train_cli(["--resume", str(folder), "--no-progress", "--no-plots"], capsys)
    assert code == 0, err
    assert (folder / "model.eqx").read_bytes() == (quick_reference / "model.eqx").read_bytes()


def _disk_full_on(monkeypatch, name: str, after: int = 0) -> None:
    """Writes to files called `name` fail with ENOSPC (after `after` successful ones), half written."""
    real, count = storage._write, []

    def write(f, data, path):
        if Path(path).name == name:
            count.append(1)
            if len(count) > after:
                f.write(data[:len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(f, data, path)

    monkeypatch.setattr(storage, "_write", write)


@pytest.mark.parametrize("name,after", [("ckpt-000000008.eqx", 0), ("ckpt-000000008.json", 0),
                                        ("metrics.jsonl", 1)])  # each fails between the checkpoints of steps 4, 8
def test_full_disk_stops_naming_the_file_and_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch, name, after,
                                                                       quick_reference):
    _disk_full_on(monkeypatch, name, after)
    folder = tmp_path / "run"
    code, err = train_cli(["--config", str(CIRCLES), "--run-dir", str(folder), "--no-progress", "--no-plots",
                           *QUICK], capsys)
    assert code == 1 and err.count("\n") == 1 and "No space left on device (ENOSPC)" in err
    assert f"cannot write {folder}" in err and name in err
    assert "the checkpoint of step 4 is intact" in err and f"--resume {folder}" in err
    assert not list(folder.rglob("*.tmp"))  # no temporary file left behind
    assert all(json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines())  # no half line
    assert RunDir(folder).latest_step() == 4
    monkeypatch.undo()
    code, err = train_cli(["--resume", str(folder), "--no-progress", "--no-plots"], capsys)
    assert code == 0, err
    assert (folder / "model.eqx").read_bytes() == (quick_reference / "model.eqx").read_bytes()


def test_a_figure_that_cannot_be_written_is_a_storage_error(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from ode_nets.plotting import figures

    _disk_full_on(monkeypatch, "curves.png")
    with pytest.raises(StorageError, match=f"cannot write {tmp_path / 'figures' / 'curves.png'}: No space"):
        figures._save(plt.figure(), tmp_path / "figures" / "curves.png")
    assert not list((tmp_path / "figures").iterdir())


HOLDER = """
import sys, time
from ode_nets.training.lock import hold
with hold(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def test_one_run_per_folder_and_a_killed_holder_leaves_no_lock(tmp_path, capsys):
    folder = tmp_path / "run"
    quick_run(folder)
    assert not (folder / ".lock").exists()  # released at the end of the run
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], env={**ENV, "PYTHONPATH": str(ROOT)},
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        before = _files(folder)
        for argv in (["--resume", str(folder)], ["--config", str(CIRCLES), "--run-dir", str(folder), "--overwrite"]):
            code, err = train_cli([*argv, "--no-progress", "--no-plots"], capsys)
            assert code == 2 and f"run folder {folder} is in use by process {holder.pid} on " in err, err
        assert _files(folder) == before
        with pytest.raises(RunDirError, match=f"process {holder.pid}"):
            RunDir.create(folder, overwrite=True)
    finally:
        holder.kill()  # SIGKILL: no chance to clean up
        holder.wait()
    with hold(folder):  # the kernel released the dead holder's lock
        with hold(folder):  # re-entrant in one process
            assert json.loads((folder / ".lock").read_text())["pid"] == os.getpid()
    assert not (folder / ".lock").exists()


@pytest.mark.parametrize("overrides,expected", [
    (["data.name=mnist", "data.source=idx", "data.dir=/nonexistent"], "MNIST not found"),
    (["train.batch_size=5000"], "larger than the training set"),
])
def test_a_run_that_cannot_start_leaves_no_folder(tmp_path, capsys, overrides, expected):
    folder = tmp_path / "run"
    code, err, out = train_cli(["--config", str(CIRCLES), "--run-dir", str(folder), *overrides], capsys, out=True)
    assert code == 2 and expected in err
    assert not folder.exists() and "run folder" not in out


def test_a_run_failing_before_its_first_step_is_marked_failed(tmp_path, capsys):
    folder = tmp_path / "run"
    code, err, out = train_cli(["--config", str(CIRCLES), "--run-dir", str(folder), "--no-progress", "--no-plots",
                                "train.devices=8"], capsys, out=True)
    assert code == 2 and "train.devices = 8" in err and f"run folder: {folder}" in out
    results = json.loads((folder / "results.json").read_text())
    assert results["status"] == "failed" and results["step"] == 0 and "train.devices = 8" in results["error"]


def test_resume_with_overrides_records_the_change(tmp_path, capsys):
    folder = tmp_path / "run"
    cfg = load_config(CIRCLES, QUICK)
    prepare_folder(folder, cfg, overwrite=False, resume=False)
    fit_run(build_run(cfg, folder), progress=False)
    code, _ = train_cli(["--resume", str(folder), "--no-progress", "--no-plots", "train.epochs=4",
                         "optim.learning_rate=0.05"], capsys)
    assert code == 0
    record = json.loads((folder / "resumes.jsonl").read_text())
    assert record["from_step"] == 30
    assert record["changed"] == {"train.epochs": [3, 4], "optim.learning_rate": [cfg.optim.learning_rate, 0.05]}
    saved = load_config(folder / "config.yaml")
    assert saved.train.epochs == 4 and saved.optim.learning_rate == 0.05


def test_resume_without_checkpoints(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    code, err = train_cli(["--resume", str(tmp_path / "run")], capsys)
    assert code == 2 and "not a run folder" in err


def test_nonfinite_loss_stops_with_step_and_keeps_checkpoint(tmp_path, capsys):
    folder = tmp_path / "run"
    code, err = train_cli(["--config", str(CIRCLES), "--run-dir", str(folder), "--no-progress", "--no-plots",
                           "optim.learning_rate=1e6", "optim.clip_norm=null", "optim.schedule=constant",
                           "model.init=normal", "model.init_scale=1.0"], capsys)
    assert code == 1
    assert "non-finite" in err and "at step" in err
    checkpoints = list((folder / "checkpoints").glob("ckpt-*.eqx"))
    assert checkpoints and not (folder / "model.eqx").exists()


def test_skip_nonfinite_stops_after_that_many_consecutive_batches(tmp_path, capsys):
    folder = tmp_path / "run"
    code, err = train_cli(["--config", str(CIRCLES), "--run-dir", str(folder), "--no-progress", "--no-plots",
                           "optim.learning_rate=1e6", "optim.clip_norm=null", "optim.schedule=constant",
                           "model.init=normal", "model.init_scale=1.0", "train.skip_nonfinite=2"], capsys)
    assert code == 1 and "3 consecutive batches, more than train.skip_nonfinite = 2" in err
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    skipped = [r for r in records if r["kind"] == "skipped"]
    assert len(skipped) == 2 and skipped[1]["step"] == skipped[0]["step"] + 1


def test_skip_nonfinite_skips_one_bad_batch_and_keeps_training(tmp_path, monkeypatch):
    import ode_nets.training.loop as train_module

    real_step, calls = train_module.train_step, []

    def one_bad_step(optimizer, model, opt_state, *args):
        calls.append(1)
        new_model, new_state, metrics = real_step(optimizer, model, opt_state, *args)
        if len(calls) == 3:  # what train_step returns for a non-finite gradient: the old state, ok = False
            return model, opt_state, {**metrics, "grad_norm": jnp.asarray(jnp.nan), "ok": jnp.asarray(False)}
        return new_model, new_state, metrics

    monkeypatch.setattr(train_module, "train_step", one_bad_step)
    cfg = load_config(CIRCLES, ["train.epochs=2", "train.skip_nonfinite=1"])
    folder = tmp_path / "run"
    prepare_folder(folder, cfg, overwrite=False, resume=False)
    fit_run(build_run(cfg, folder), progress=False)
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "skipped"] == [2]
    assert (folder / "model.eqx").exists() and len(calls) == 20


def test_adaptive_solver_max_steps_is_a_clear_error(tmp_path):
    cfg = load_config(CIRCLES, ["solver.method=tsit5", "solver.max_steps=3", "train.epochs=1"])
    prepare_folder(tmp_path / "run", cfg, overwrite=False, resume=False)
    with pytest.raises(TrainingError, match="solver.max_steps = 3"):
        fit_run(build_run(cfg, tmp_path / "run"), progress=False)


def _bad(split: str, what: str) -> Dataset:
    """A small valid data set with one bad value at index 3 of `split`."""
    x, y = np.zeros((10, 2), np.float32), np.zeros(10, np.int64)
    splits = {"train": Split(x, y), "test": Split(x.copy(), y.copy()), "validation": Split(x.copy(), y.copy())}
    target = splits[split]
    if what == "nan":
        target.x[3, 1] = np.nan
    elif what == "inf":
        target.x[3, 0] = -np.inf
    elif what == "range":
        target.x[3, 0] = 255.0
    elif what == "label":
        target.y[3] = 2
    elif what == "float label":
        splits[split] = Split(target.x, np.where(np.arange(10) == 3, 0.5, 0.0))
    elif what == "nan label":
        splits[split] = Split(target.x, np.where(np.arange(10) == 3, np.nan, 0.0))
    return Dataset(splits["train"], splits["test"], 2, splits["validation"], input_range=(0.0, 1.0))


@pytest.mark.parametrize("split,what,expected", [
    ("train", "nan", "train inputs contain NaN or infinite values (1 example, first at index 3)"),
    ("test", "inf", "test inputs contain NaN or infinite values (1 example, first at index 3)"),
    ("validation", "range", "validation inputs lie outside the data set's range [0, 1] (1 example, first at index 3)"),
    ("train", "label", "train labels lie outside 0 .. 1 (1 example, first at index 3: 2)"),
    ("test", "float label", "test labels are not integers (1 example, first at index 3: 0.5)"),
    ("validation", "nan label", "validation labels are NaN or infinite (1 example, first at index 3: nan)"),
])
def test_bad_data_is_refused_before_training_naming_split_and_index(tmp_path, split, what, expected):
    with pytest.raises(DataError) as info:
        build_run(load_config(CIRCLES, ["train.batch_size=5"]), tmp_path / "run", _bad(split, what))
    assert expected in str(info.value)
    assert not (tmp_path / "run").exists()


def test_inconsistent_shapes_are_refused():
    from ode_nets.data import check_dataset

    x, y = np.zeros((10, 2), np.float32), np.zeros(10, np.int32)
    with pytest.raises(DataError, match=r"test inputs have shape \(3,\) per example, train has \(2,\)"):
        check_dataset(Dataset(Split(x, y), Split(np.zeros((10, 3), np.float32), y), 2))
    with pytest.raises(DataError, match=r"train labels have shape \(9,\), expected \(10,\)"):
        check_dataset(Dataset(Split(x, y[:9]), Split(x, y), 2))


def test_position_files_without_wall_time_still_load(tmp_path):
    state = {"w": jnp.arange(3.0)}
    ckpt.save_checkpoint(tmp_path, state, ckpt.Position(step=7, epoch=1, batch=2, elapsed_s=12.5), keep=2)
    assert ckpt.load_latest(tmp_path, state)[1] == ckpt.Position(7, 1, 2, 12.5)
    (tmp_path / "ckpt-000000007.json").write_text(json.dumps({"step": 7, "epoch": 1, "batch": 2}))  # older runs
    assert ckpt.load_latest(tmp_path, state)[1] == ckpt.Position(7, 1, 2, 0.0)


def _circles_with_one_overflowing_example(cfg, tmp_path):
    """The circles data with training example 5 moved far out, where the explicit cubic step overflows."""
    import dataclasses

    data = build_run(cfg, tmp_path / "data").dataset
    x = data.train.x.copy()
    x[5] = 1e8
    return dataclasses.replace(data, train=Split(x, data.train.y))


def test_without_nonfinite_drops_only_the_overflowing_examples(tmp_path):
    from ode_nets.training import train_step, without_nonfinite

    cfg = load_config(CIRCLES)
    run = build_run(cfg, tmp_path, _circles_with_one_overflowing_example(cfg, tmp_path))
    x, y, mask = jnp.asarray(run.dataset.train.x[:16]), jnp.asarray(run.dataset.train.y[:16]), jnp.ones(16)
    opt_state = run.optimizer.init(eqx.filter(run.model, eqx.is_inexact_array))
    _, _, metrics = train_step(run.optimizer, run.model, opt_state, x, y, mask, Objective(1.0))
    assert not bool(metrics["ok"])
    x_kept, mask_kept, dropped = without_nonfinite(run.model, x, y, mask, Objective(1.0))
    assert dropped == 1 and float(mask_kept[5]) == 0.0 and float(jnp.sum(mask_kept)) == 15.0
    assert np.all(np.asarray(x_kept[5]) == 0) and np.array_equal(np.asarray(x_kept[:5]), np.asarray(x[:5]))
    model, _, metrics = train_step(run.optimizer, run.model, opt_state, x_kept, y, mask_kept, Objective(1.0))
    others = np.arange(16) != 5  # the same step as on the 15 finite examples alone
    reference, _, _ = train_step(run.optimizer, run.model, opt_state, x[others], y[others], jnp.ones(15), Objective(1.0))
    assert bool(metrics["ok"])
    np.testing.assert_allclose(np.asarray(model.field.w.values), np.asarray(reference.field.w.values), rtol=1e-5, atol=1e-7)


def test_drop_nonfinite_examples_keeps_training_where_skipping_stops(tmp_path):
    for drop in (False, True):
        cfg = load_config(CIRCLES, ["train.epochs=2", f"train.drop_nonfinite_examples={str(drop).lower()}"])
        folder = tmp_path / str(drop)
        prepare_folder(folder, cfg, overwrite=False, resume=False)
        run = build_run(cfg, folder, _circles_with_one_overflowing_example(cfg, tmp_path))
        if not drop:
            with pytest.raises(TrainingError, match="non-finite"):
                fit_run(run, progress=False)
            continue
        fit_run(run, progress=False)
        records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        dropped = [r for r in records if r["kind"] == "dropped"]
        assert [(r["examples"], r["ok"]) for r in dropped] == [(1, True), (1, True)]  # once per epoch
        assert not [r for r in records if r["kind"] == "skipped"] and (folder / "model.eqx").exists()


SOAK = ["train.epochs=300", "train.batch_size=20", "data.n_test=1000", "train.checkpoint_every=7", "train.log_every=1",
        "train.keep_checkpoints=2"]  # 6,000 steps of circles model 2 (98.9 % test accuracy)


def _session(folder: Path) -> tuple[subprocess.Popen, list[str]]:
    """Start train.py on `folder` (resumed if it holds a config, else fresh); the list collects its output lines."""
    cmd = _resume_cmd(folder) if (folder / "config.yaml").is_file() else _train_cmd(folder, *SOAK, "--overwrite")
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    return proc, lines


def _wait_for_lines(proc: subprocess.Popen, lines: list[str], prefix: str, count: int) -> None:
    """Until `count` output lines start with `prefix` (or the process ends)."""
    while proc.poll() is None and sum(line.startswith(prefix) for line in list(lines)) < count:
        time.sleep(0.01)


@pytest.mark.slow
def test_soak_50_random_sigterm_sigkill_interruptions_end_at_the_uninterrupted_parameters(tmp_path):
    """50 interruptions of one circles run at random moments, each SIGTERM or SIGKILL at random and followed by a
    resume: 10 % during start-up (imports, data), 20 % within 1 s after the run folder is ready (restore, compile),
    70 % 0-0.3 s after the 1st-3rd epoch of the session (training steps, evaluation, checkpoint writes). The final
    parameters, metrics and results equal those of an uninterrupted run."""
    rng = random.Random(int(os.environ.get("SOAK_SEED", "0")))
    wanted = int(os.environ.get("SOAK_INTERRUPTIONS", "50"))
    reference, folder = tmp_path / "reference", tmp_path / "soak"
    subprocess.run(_train_cmd(reference, *SOAK), check=True, env=ENV, capture_output=True)
    codes: dict[str, int] = {}
    for _ in range(wanted):
        proc, lines = _session(folder)
        phase = rng.random()
        if phase < 0.1:
            time.sleep(rng.uniform(0.0, 2.0))
        elif phase < 0.3:
            _wait_for_lines(proc, lines, "run folder:", 1)
            time.sleep(rng.uniform(0.0, 1.0))
        else:
            _wait_for_lines(proc, lines, "epoch ", rng.randint(1, 3))
            time.sleep(rng.uniform(0.0, 0.3))
        assert proc.poll() is None, f"the session ended before its interruption: {''.join(lines)[-2000:]}"
        sig = rng.choice([signal.SIGTERM, signal.SIGKILL])
        proc.send_signal(sig)
        code = proc.wait(timeout=300)
        key = f"{sig.name} -> exit {code}"
        codes[key] = codes.get(key, 0) + 1
    proc, _ = _session(folder)
    assert proc.wait() == 0
    resumes = [r for r in records(folder) if r["kind"] == "resume"]
    print(f"\nsoak: {wanted} interruptions ({codes}); the metrics keep {len(resumes)} resume records (from steps "
          f"{[r['step'] for r in resumes]})")
    assert all(r["skipped"] == [] for r in resumes)  # atomic writes: no kill ever damaged a checkpoint
    assert not list(folder.rglob("*.tmp")) and not (folder / ".lock").exists()
    assert (folder / "model.eqx").read_bytes() == (reference / "model.eqx").read_bytes()
    assert stable_metrics(folder) == stable_metrics(reference)
    assert final_results(folder) == final_results(reference)
