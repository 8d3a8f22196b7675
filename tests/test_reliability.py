"""Reliability: kill + resume is bit-identical, runs are deterministic, bad input gives one-line
errors with exit code 2, NaN and solver failures stop cleanly, Ctrl-C checkpoints."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest

from ode_nets.training import checkpoint as ckpt
from ode_nets.config import load_config
from ode_nets.data import DataError, Dataset, Split
from ode_nets.build import build_run, fit_run, prepare_folder
from ode_nets.training import Objective, TrainingError

ROOT = Path(__file__).parent.parent
CIRCLES = ROOT / "configs" / "circles_model2.yaml"
QUICK = ["train.epochs=3", "train.log_every=3", "train.checkpoint_every=4"]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_cli(argv, capsys) -> tuple[int, str]:
    code = load_script("train").main(argv)
    return code, capsys.readouterr().err


def stable_metrics(folder: Path) -> list[dict]:
    """metrics.jsonl without wall-clock fields."""
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "examples_per_sec"} for r in records]


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


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    reference = tmp_path / "reference"
    subprocess.run(_train_cmd(reference, *SLOW), check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(killed, *SLOW), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_checkpoint(killed, proc, min_step=30)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "model.eqx").exists(), "the run finished before the kill"
    newest = max((killed / "checkpoints").glob("ckpt-*.json"))
    position = json.loads(newest.read_text())
    assert position["elapsed_s"] > 0
    newest.write_text(json.dumps({**position, "elapsed_s": 1000.0}))  # wall time of earlier sessions is carried on
    subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "--resume", str(killed), "--no-progress",
                    "--no-plots"], check=True, env=env, capture_output=True)

    assert (killed / "model.eqx").read_bytes() == (reference / "model.eqx").read_bytes()
    assert stable_metrics(killed) == stable_metrics(reference)
    final = lambda f: {k: v for k, v in json.loads((f / "results.json").read_text()).items()  # noqa: E731
                       if k != "train_wall_time_s"}
    assert final(killed) == final(reference)
    assert json.loads((killed / "results.json").read_text())["train_wall_time_s"] > 1000.0


def test_ctrl_c_writes_a_checkpoint_and_exits_cleanly(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    folder = tmp_path / "run"
    proc = subprocess.Popen(_train_cmd(folder, *SLOW), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoint(folder, proc, min_step=5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "interrupted at step" in out and "--resume" in out
    assert not (folder / "model.eqx").exists()
    steps = sorted(ckpt.checkpoint_step(p) for p in (folder / "checkpoints").glob("ckpt-*.json"))
    assert steps[-1] > 5  # the interrupt wrote a checkpoint beyond the periodic one


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


def test_corrupt_checkpoint_is_reported_and_not_overwritten(tmp_path, capsys):
    folder = tmp_path / "run"
    cfg = load_config(CIRCLES, QUICK)
    prepare_folder(folder, cfg, overwrite=False, resume=False)
    fit_run(build_run(cfg, folder), progress=False)
    newest = sorted((folder / "checkpoints").glob("ckpt-*.eqx"))[-1]
    newest.write_bytes(newest.read_bytes()[:100])  # truncated
    before = {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    code, err = train_cli(["--resume", str(folder), "--no-progress", "--no-plots"], capsys)
    assert code == 2 and "corrupt" in err and newest.name in err
    assert {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


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


def test_data_with_nan_is_refused(tmp_path):
    x = np.zeros((10, 2), np.float32)
    x[3, 1] = np.nan
    split = Split(x, np.zeros(10, np.int32))
    with pytest.raises(DataError, match="NaN.*index 3"):
        build_run(load_config(CIRCLES, ["train.batch_size=5"]), tmp_path, Dataset(split, split, 2))


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
