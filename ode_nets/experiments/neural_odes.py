"""Neural ODE experiments (docs/neural_odes.md): the 1-D map g(x) = -x that a neural ODE cannot represent and an
augmented one can (Dupont, Doucet & Teh 2019, §3), and the summary of finished runs (accuracy, NFE, wall time).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, PRNGKeyArray

from ode_nets.build import build_objective, build_run
from ode_nets.config import Config
from ode_nets.fields import MLPField, ParamInit
from ode_nets.fields.time_params import LayerGrid
from ode_nets.models import ODENet, Softmax
from ode_nets.solvers import AdaptiveSteps
from ode_nets.strategies import DiscretizeThenOptimize
from ode_nets.training.counting import backward_counts, counts_backward_solve
from ode_nets.training.run_dir import RunDir
from ode_nets.training.step import train_step


def flip_model(augment: int, key: PRNGKeyArray, width: int = 16) -> ODENet:
    """dx/dt = MLP([x, t]) on 1 + `augment` dimensions, Dopri5 at rtol = atol = 1e-3; the output is the state."""
    field = MLPField.init((1 + augment,), ParamInit(init="normal"), key, width=width, activation="relu")
    return ODENet(field, diffrax.Dopri5(), DiscretizeThenOptimize(), Softmax(), augment=augment,
                  grid=LayerGrid(1.0, 1), stepping=AdaptiveSteps(rtol=1e-3, atol=1e-3))


def flip_loss(model: ODENet, x: Array) -> Array:
    """Mean squared error of x1(T) against g(x) = -x."""
    return jnp.mean((model(x)[:, :1] - (-x)) ** 2)


def fit_flip(augment: int, key: PRNGKeyArray, steps: int = 300, learning_rate: float = 1e-2
             ) -> tuple[ODENet, list[float]]:
    """Train `flip_model` on x in {-1, 1} -> -x (Dupont et al.'s g_1d) with Adam; the model and its losses."""
    model = flip_model(augment, key)
    x = jnp.array([[-1.0], [1.0]])
    optimizer = optax.adam(learning_rate)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(model: ODENet, opt_state: optax.OptState) -> tuple[ODENet, optax.OptState, Array]:
        loss, grads = eqx.filter_value_and_grad(flip_loss)(model, x)
        updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    losses = []
    for _ in range(steps):
        model, opt_state, loss = step(model, opt_state)
        losses.append(float(loss))
    return model, losses


def flow(model: ODENet, x: Array, points: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """(times, states): the solve from x(0) = augment(x) saved at `points` times on [0, T], states (points, B, N)."""
    times = np.linspace(0.0, model.grid.horizon, points)
    return times, np.asarray(model.solve(x, diffrax.SaveAt(ts=jnp.asarray(times))).ys)


def run_summary(folder: Path, epoch: int | None = None) -> dict:
    """Test accuracy, train cross entropy and NFE per step (means over the epoch's logged steps, forward and
    backward) and training wall time of a run folder: at its end (`results.json`), or after `epoch` (1-based, from
    that epoch's `eval` record, so a run stopped later also counts)."""
    run = RunDir(folder)
    records = run.read_metrics()
    results = run.read_results() if run.results_path.is_file() else {}
    train = [r for r in records if r.get("kind") == "train"]
    if epoch is None:
        if "test_acc" not in results:
            raise ValueError(f"{folder} has no results.json of a finished run; summarise it at an evaluated epoch "
                             f"with --epoch")
        epoch, test_acc, wall_time = train[-1]["epoch"] + 1, results["test_acc"], results["train_wall_time_s"]
    else:
        evals = {r["epoch"]: r for r in records if r.get("kind") == "eval"}
        if epoch not in evals:
            raise ValueError(f"{folder}: no evaluation of epoch {epoch} (evaluated epochs: {sorted(evals)})")
        test_acc = evals[epoch]["test_acc"]
        batch = int(run.read_config()["train"]["batch_size"])
        wall_time = evals[epoch].get("wall_time_s") or logged_training_time(train, epoch, batch)
    last = [r for r in train if r["epoch"] == epoch - 1]
    mean = lambda key: float(np.mean([r[key] for r in last if key in r])) if any(key in r for r in last) else None  # noqa: E731
    return {"run": run.path.name, "test_acc": test_acc, "parameters": results.get("parameters"),
            "train_loss": mean("ce"), "nfe_forward": mean("nfe_forward"), "nfe_backward": mean("nfe_backward"),
            "kinetic": mean("kinetic"), "jacobian": mean("jacobian"), "wall_time_s": wall_time, "epochs": epoch}


def logged_training_time(train: list[dict], epoch: int, batch: int) -> float:
    """Training time of the first `epoch` epochs from the logged throughput (runs whose evaluations predate the
    `wall_time_s` field): the steps between logged records x batch / examples per second; evaluations excluded."""
    seconds, previous = 0.0, 0
    for r in train:
        if r["epoch"] < epoch:
            seconds += (r["step"] - previous) * batch / r["examples_per_sec"]
        previous = r["step"]
    return seconds


def summary_table(summaries: list[dict]) -> str:
    """A markdown table of `run_summary` rows."""
    def fmt(value: object, spec: str) -> str:
        return "–" if value is None else format(value, spec)

    lines = ["| run | epochs | parameters | test accuracy | train cross entropy (last epoch) | NFE forward / backward "
             "per step (last epoch) | train wall time |", "|---|---|---|---|---|---|---|"]
    for s in summaries:
        lines.append(f"| {s['run']} | {s['epochs']} | {fmt(s['parameters'], ',')} | {100 * s['test_acc']:.2f} % "
                     f"| {fmt(s['train_loss'], '.3f')} | {fmt(s['nfe_forward'], '.0f')} / {fmt(s['nfe_backward'], '.0f')} "
                     f"| {s['wall_time_s']:.0f} s |")
    return "\n".join(lines)


def time_training(config: Config, steps: int, progress: bool = True) -> dict:
    """`steps` training steps of `config` on its data in order (no evaluation): parameters, compile time (the first
    step), median step time of the others, first and last losses, NFE per step (forward mean, backward at the last
    step, counted as in training)."""
    run = build_run(config, Path("unused"))
    model, objective, batch = run.model, build_objective(config), config.train.batch_size
    opt_state = run.optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    times, records, mask = [], [], jnp.ones(batch)
    for i in range(steps):
        start = (i * batch) % (len(run.dataset.train) - batch + 1)
        x, y = run.dataset.train.x[start:start + batch], run.dataset.train.y[start:start + batch]
        clock = time.perf_counter()
        model, opt_state, metrics = train_step(run.optimizer, model, opt_state, x, y, mask, objective)
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - clock)
        records.append({k: float(v) for k, v in metrics.items()})
        if progress:
            print(f"step {i + 1}/{steps}: {times[-1]:.1f} s, loss {records[-1]['loss']:.4f}, "
                  f"NFE forward {records[-1]['nfe_forward']:.0f}", flush=True)
    backward = (float(backward_counts(model, x, y, mask, objective)["nfe_backward"]) if counts_backward_solve(model)
                else records[-1].get("nfe_backward"))
    return {"parameters": sum(leaf.size for leaf in jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_inexact_array))),
            "steps": steps, "batch": batch, "first_step_s": times[0], "step_s": statistics.median(times[1:]),
            "loss_first": records[0]["loss"], "loss_last": records[-1]["loss"],
            "nfe_forward": statistics.mean(r["nfe_forward"] for r in records), "nfe_backward_last": backward}
