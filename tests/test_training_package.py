"""ode_nets.training without a Config: plain-Python `fit`, the `RunDir` run folder, and the CLI's error policy."""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import yaml

from helpers import without_wall_clock
from ode_nets.data import Dataset, Split
from ode_nets.data.circles import make_circles
from ode_nets.errors import ConfigError, RunDirError, TrainingError
from ode_nets.training import Objective, Position, RunDir, TrainOptions, fit


class _Field(eqx.Module):
    gamma: jax.Array  # a learned gamma~, kept >= 0 by project_parameters


class RadiusNet(eqx.Module):
    """logits = [x, gamma * |x|^2] @ w + b: enough to separate the two circles."""

    field: _Field
    w: jax.Array
    b: jax.Array

    def __call__(self, x):
        features = jnp.concatenate([x, self.field.gamma * jnp.sum(x ** 2, -1, keepdims=True)], -1)
        return features @ self.w + self.b


def tiny_circles(n: int = 64) -> Dataset:
    x, y = make_circles(jax.random.PRNGKey(0), n, noise=0.05)
    xt, yt = make_circles(jax.random.PRNGKey(1), 32, noise=0.05)
    return Dataset(Split(x, y), Split(xt, yt), 2)


def fresh_net() -> RadiusNet:
    return RadiusNet(_Field(jnp.array(1.0)), jnp.zeros((3, 2)), jnp.zeros(2))


def records(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_fit_from_plain_python_without_a_config(tmp_path):
    data = tiny_circles()
    results = fit(fresh_net(), data, optimizer=optax.adam(0.1), epochs=3, batch_size=16, log_every=2,
                  run_dir=tmp_path / "run", objective=Objective(logit_penalty=0.01), progress=False)
    assert set(results) == {"name", "parameters", "test_acc", "test_loss", "test_non_finite", "gamma",
                            "train_wall_time_s", "device"}
    assert results["name"] == "run" and results["parameters"] == 9 and results["test_non_finite"] == 0
    folder = tmp_path / "run"
    assert (folder / "model.eqx").is_file() and not (folder / "config.yaml").exists()
    assert json.loads((folder / "results.json").read_text())["test_acc"] == results["test_acc"]
    log = records(folder)
    evals = [r for r in log if r["kind"] == "eval"]
    assert [r["epoch"] for r in evals] == [1, 2, 3] and evals[-1]["train_loss"] < np.log(2)
    train = [r for r in log if r["kind"] == "train"]
    assert [r["step"] for r in train] == [2, 4, 6, 8, 10, 12] and "logit_level" in train[0]
    assert [p.name for p in RunDir(folder).list_checkpoints()] == [f"ckpt-{s:09d}.eqx" for s in (4, 8, 12)]


def test_fit_options_and_resume_are_bit_identical(tmp_path):
    data = tiny_circles()
    options = TrainOptions(epochs=4, batch_size=16, seed=3, keep_checkpoints=10, name="tiny")
    fit(fresh_net(), data, optimizer=optax.sgd(0.5), run_dir=tmp_path / "full", options=options, progress=False)
    fit(fresh_net(), data, optimizer=optax.sgd(0.5), run_dir=tmp_path / "part", options=options, epochs=2,
        progress=False)  # then continued to 4 epochs from its newest checkpoint
    resumed = fit(fresh_net(), data, optimizer=optax.sgd(0.5), run_dir=tmp_path / "part", options=options,
                  resume=True, progress=False)
    assert resumed["name"] == "tiny"
    assert (tmp_path / "full" / "model.eqx").read_bytes() == (tmp_path / "part" / "model.eqx").read_bytes()
    strip = lambda rs: without_wall_clock([r for r in rs if r["kind"] != "resume"])  # noqa: E731
    assert strip(records(tmp_path / "full")) == strip(records(tmp_path / "part"))
    resume = [r for r in records(tmp_path / "part") if r["kind"] == "resume"]
    assert resume == [{"kind": "resume", "step": 8, "checkpoint": "ckpt-000000008.eqx", "skipped": []}]


def test_fit_refuses_a_batch_larger_than_the_data_and_a_used_folder(tmp_path):
    data = tiny_circles()
    with pytest.raises(ConfigError, match="larger than the training set"):
        fit(fresh_net(), data, optimizer=optax.sgd(0.1), run_dir=tmp_path / "a", batch_size=65, progress=False)
    assert not (tmp_path / "a").exists()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "keep.txt").write_text("x")
    with pytest.raises(RunDirError, match="already exists"):
        fit(fresh_net(), data, optimizer=optax.sgd(0.1), run_dir=tmp_path / "b", progress=False)
    with pytest.raises(RunDirError, match="cannot resume"):
        fit(fresh_net(), data, optimizer=optax.sgd(0.1), run_dir=tmp_path / "c", resume=True, progress=False)


def test_nonfinite_loss_without_config_names_the_step(tmp_path):
    x, y = make_circles(jax.random.PRNGKey(0), 64)
    data = Dataset(Split(x * 1e30, y), Split(x, y), 2)
    net = RadiusNet(_Field(jnp.array(1.0)), jnp.ones((3, 2)), jnp.zeros(2))
    with pytest.raises(TrainingError, match="non-finite .* at step 0"):
        fit(net, data, optimizer=optax.sgd(0.1), run_dir=tmp_path / "r", batch_size=16, progress=False)
    assert RunDir(tmp_path / "r").latest_step() == 0  # the last good state is checkpointed


def test_run_dir_create_overwrite_and_config(tmp_path):
    run = RunDir.create(tmp_path / "r", {"name": "x", "train": {"epochs": 2}})
    assert run.read_config() == {"name": "x", "train": {"epochs": 2}}
    (run.path / "junk").write_text("1")
    with pytest.raises(RunDirError, match="--overwrite"):
        RunDir.create(tmp_path / "r")
    again = RunDir.create(tmp_path / "r", "name: y\n", overwrite=True)
    assert not (again.path / "junk").exists() and again.config_path.read_text() == "name: y\n"
    assert RunDir.create(tmp_path / "empty").path.is_dir()  # an empty folder may be reused
    assert RunDir.create(tmp_path / "empty").figure("a.png") == tmp_path / "empty" / "figures" / "a.png"
    with pytest.raises(RunDirError, match="not a run folder"):
        RunDir.existing(tmp_path / "empty")


def test_run_dir_resume_log_checkpoints_and_results(tmp_path):
    run = RunDir.create(tmp_path / "r", {"train": {"epochs": 2, "batch_size": 8}, "seed": 0})
    with pytest.raises(RunDirError, match="cannot resume"):
        RunDir.resume(tmp_path / "elsewhere")
    assert RunDir.resume(run.path).path == run.path  # config.yaml, no checkpoint yet: `fit` starts from step 0
    state = {"w": jnp.arange(3.0)}
    for step in (2, 4, 6):
        run.save_checkpoint(state, Position(step, 0, step), keep=2)
    assert [p.name for p in run.list_checkpoints()] == ["ckpt-000000004.eqx", "ckpt-000000006.eqx"]
    assert run.latest_step() == 6 and run.load_latest(state)[1] == Position(6, 0, 6)
    log = run.metrics_log()
    for step in range(1, 9):
        log.write({"kind": "train", "step": step})
    resumed = RunDir.resume(run.path, need_config=True)
    resumed.metrics_log(resume_step=6)
    assert [r["step"] for r in resumed.read_metrics()] == [1, 2, 3, 4, 5, 6]
    changed = resumed.record_resume({"train": {"epochs": 3, "batch_size": 8}, "seed": 0})
    assert changed == {"train.epochs": [2, 3]}
    entry = json.loads(resumed.resumes_path.read_text())
    assert entry["from_step"] == 6 and entry["changed"] == changed
    assert yaml.safe_load(resumed.config_path.read_text())["train"]["epochs"] == 3
    assert resumed.record_resume({"train": {"epochs": 3, "batch_size": 8}, "seed": 0}) == {}
    assert len(resumed.resumes_path.read_text().splitlines()) == 1
    resumed.write_results({"test_acc": 0.5})
    assert resumed.read_results() == {"test_acc": 0.5}


def test_cli_reports_user_errors_and_lets_bugs_through(capsys):
    from ode_nets.cli import run_cli

    def bad_config():
        raise ConfigError("model.layers: must be a positive number")

    assert run_cli(bad_config) == 2
    err = capsys.readouterr().err
    assert err == "error: model.layers: must be a positive number\n"

    def stopped():
        raise TrainingError("non-finite loss at step 3")

    assert run_cli(stopped) == 1 and "training stopped" in capsys.readouterr().err

    def bug():
        raise ValueError("operands could not be broadcast together")

    with pytest.raises(ValueError, match="broadcast"):  # a plain ValueError is a bug: traceback, not one line
        run_cli(bug)

    def missing():
        open("/nonexistent/file")

    with pytest.raises(FileNotFoundError):
        run_cli(missing)


class _HugeLogits(eqx.Module):
    """Finite logits (3e38 x0, -3e38 x0) whose cross entropy overflows for the wrong label."""

    def __call__(self, x):
        return jnp.concatenate([3e38 * x[:, :1], -3e38 * x[:, :1]], axis=-1)


def test_one_definition_of_a_nonfinite_example():
    """Non-finite = logits or cross entropy not finite: the same in `evaluate` and `evaluate_split`."""
    from ode_nets.training import evaluate, evaluate_split

    x = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]], np.float32)
    y = np.array([0, 1, 1], np.int32)  # row 2: finite logits, infinite loss; row 3: logits 0, 0 (loss log 2)
    metrics = evaluate(_HugeLogits(), Split(x, y), 2)
    assert metrics["non_finite"] == 1 and metrics["loss"] == pytest.approx(np.log(2) / 2)
    split = evaluate_split(_HugeLogits(), Split(x, y), 2, batch_size=2)
    assert split["non_finite"] == 1 and split["accuracy"] == metrics["acc"] == pytest.approx(1 / 3)
    np.testing.assert_array_equal(split["confusion"], [[1, 0], [1, 0]])
