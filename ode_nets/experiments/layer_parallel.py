"""Experiments for layer-parallel training (docs/layer_parallel.md): MGRIT convergence against depth, coarsening
and the stability of the forward problem; wall time against host devices; the critical-path cost model; training
curves of serial and layer-parallel runs side by side.

The cost model counts one-step evaluations on the critical path (every device evaluates the steps of its own blocks
one after another; communication is not counted), for the implementation in `ode_nets.solvers.mgrit`: per cycle on
a level of n steps with b = n/m blocks over P devices, relaxation (F: (m-1) ceil(b/P); FCF: (2m-1) ceil(b/P)), the
C-point residual ceil(b/P), the coarse right-hand side ceil(b/P) coarse steps, then the coarse solve: serial (b
steps) on the coarsest level, else a V-cycle of the coarse level plus its F-relaxation; after the last cycle one
F-relaxation of the fine level. Serial forward substitution is n steps.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ode_nets.build import build_model, load_run  # noqa: E402
from ode_nets.config import Config, load_config  # noqa: E402
from ode_nets.data import load_dataset  # noqa: E402
from ode_nets.experiments.multilevel import level_config  # noqa: E402
from ode_nets.plotting.figures import _save, read_metrics  # noqa: E402
from ode_nets.solve import solve  # noqa: E402
from ode_nets.strategies.diffrax_adjoints import DiscretizeThenOptimize  # noqa: E402
from ode_nets.strategies.layer_parallel import LayerParallel  # noqa: E402
from ode_nets.training import evaluate  # noqa: E402

# ---------------------------------------------------------------------------------------------
# cost model


def cycle_cost(n: int, m: int, devices: int, levels: int, fcf: bool = True) -> int:
    """Critical-path step evaluations of one MGRIT cycle on a level of `n` steps with `levels` levels below it
    (itself included)."""
    blocks = n // m
    per = math.ceil(blocks / devices)
    relax = ((2 * m - 1) if fcf else (m - 1)) * per
    if levels == 2:
        coarse = blocks
    else:
        coarse = cycle_cost(blocks, m, devices, levels - 1, fcf) + (m - 1) * math.ceil(blocks // m / devices)
    return relax + 2 * per + coarse


def mgrit_cost(n: int, m: int, devices: int, levels: int, iterations: int, fcf: bool = True) -> int:
    """Critical-path step evaluations of an MGRIT solve with `iterations` cycles (levels 1: serial, n)."""
    if levels == 1:
        return n
    return iterations * cycle_cost(n, m, devices, levels, fcf) + (m - 1) * math.ceil(n // m / devices)


def max_levels(n: int, m: int, coarsest: int = 4) -> int:
    """The most levels whose coarsest grid still has >= `coarsest` steps and divides evenly."""
    levels = 1
    while n % m ** levels == 0 and n // m ** levels >= coarsest:
        levels += 1
    return levels


def gradient_speedup(n: int, m: int, devices: int, levels: int, iterations: int, vjp_cost: float = 2.0,
                     fcf: bool = True) -> float:
    """Predicted serial / layer-parallel time of one forward + backward: serial n (1 + c) step units (c = cost of a
    vjp step relative to a forward step); MGRIT forward + c x adjoint MGRIT + c ceil(n/P) layer-local gradients."""
    serial = n * (1 + vjp_cost)
    parallel = (mgrit_cost(n, m, devices, levels, iterations, fcf)
                + vjp_cost * (mgrit_cost(n, m, devices, levels, iterations, fcf) + math.ceil(n / devices)))
    return serial / parallel


def cost_table(layers: list[int], devices: list[int], m: int = 4, iterations: int = 2, vjp_cost: float = 2.0
               ) -> list[dict]:
    """Predicted speedups, two-level and with the most levels, for every (L, P)."""
    rows = []
    for n in layers:
        for p in devices:
            levels = max_levels(n, m)
            rows.append({"L": n, "P": p, "two_level": gradient_speedup(n, m, p, 2, iterations, vjp_cost),
                         "levels": levels, "multilevel": gradient_speedup(n, m, p, levels, iterations, vjp_cost)})
    return rows


def break_even(devices: int, m: int = 4, iterations: int = 2, multilevel: bool = True, vjp_cost: float = 2.0,
               max_layers: int = 1 << 16) -> int | None:
    """The smallest L (a power of 2) at which layer-parallel beats serial on `devices` devices."""
    n = m * m
    while n <= max_layers:
        levels = max_levels(n, m) if multilevel else 2
        if gradient_speedup(n, m, devices, levels, iterations, vjp_cost) > 1:
            return n
        n *= 2
    return None


def plot_cost_model(rows: list[dict], path: Path) -> Path:
    """Predicted speedup against devices, one line per L (two-level dashed, multilevel solid)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, n in enumerate(sorted({r["L"] for r in rows})):
        sub = [r for r in rows if r["L"] == n]
        p = [r["P"] for r in sub]
        ax.plot(p, [r["multilevel"] for r in sub], "-o", color=f"C{i}", ms=3, label=f"L = {n}, {sub[0]['levels']} levels")
        ax.plot(p, [r["two_level"] for r in sub], "--", color=f"C{i}", lw=1)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set(xscale="log", yscale="log", xlabel="devices P", ylabel="predicted speedup (fwd + bwd)",
           title="cost model: critical-path step evaluations (dashed: two-level)")
    ax.legend(fontsize=8)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# convergence


def network_and_inputs(config: Config, layers: int, examples: int) -> tuple[Any, jax.Array]:
    """The (untrained) network of `config` with `layers` layers and the first `examples` training inputs x(0)."""
    config = level_config(config, layers)
    k_data, k_model = jax.random.split(jax.random.PRNGKey(config.seed))
    data = load_dataset(config.data, k_data)
    net = build_model(config, data.input_shape, data.num_classes, k_model)
    return net, net.initial_state(jnp.asarray(data.train.x[:examples]))


def residual_history(config: Config, layers: int, m: int, iterations: int, examples: int = 64,
                     relaxation: str = "FCF", levels: int = 2) -> list[float]:
    """Forward MGRIT residual norm after each iteration (tol 0: all `iterations`), relative to the first."""
    net, x0 = network_and_inputs(config, layers, examples)
    strategy = LayerParallel(coarsening=m, levels=levels, iterations=iterations, relaxation=relaxation)
    ts = jnp.asarray(net.grid.step_times(1), dtype=x0.dtype)
    result = eqx.filter_jit(lambda f, x: strategy.forward(f, x, net.solver, ts))(net.field, x0)
    return [float(r) for r in np.asarray(result.residuals)]


def convergence(settings: dict[str, Config], layers: list[int], ms: list[int], iterations: int, **options: Any
                ) -> dict:
    """Residual histories for every setting, L and m."""
    out: dict = {}
    for name, config in settings.items():
        for n in layers:
            for m in ms:
                out[f"{name}|{n}|{m}"] = residual_history(config, n, m, iterations, **options)
                print(f"{name} L={n} m={m}: " + " ".join(f"{r:.1e}" for r in out[f"{name}|{n}|{m}"]))
    return out


def plot_convergence(histories: dict, path: Path) -> Path:
    """Residual against iteration: one panel per setting, colour = L, line style = m."""
    names = sorted({k.split("|")[0] for k in histories})
    layers = sorted({int(k.split("|")[1]) for k in histories})
    ms = sorted({int(k.split("|")[2]) for k in histories})
    fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 4), squeeze=False)
    styles = ["-", "--", ":", "-."]
    for ax, name in zip(axes[0], names):
        for i, n in enumerate(layers):
            for j, m in enumerate(ms):
                h = np.asarray(histories.get(f"{name}|{n}|{m}", []), dtype=float)
                if h.size:
                    h = np.where(np.isfinite(h), h, np.nan)
                    ax.semilogy(np.arange(1, h.size + 1), h, styles[j % 4], color=f"C{i}", label=f"L={n}, m={m}")
        ax.set(title=name, xlabel="MGRIT iteration (two-level, FCF)", ylabel="forward residual norm")
        ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# wall time against devices


def time_gradient(config: Config, layers: int, layer_devices: int, repeats: int = 5, examples: int = 256,
                  iterations: int = 2, m: int = 4, levels: int = 2) -> dict:
    """Median wall time (s) of one jitted forward + backward of sum(tanh(x(T))) with serial discretize-then-optimize
    (diffrax), serial forward substitution (`LayerParallel(levels=1)`, the same one-step code as MGRIT) and
    layer-parallel MGRIT with its layer blocks over `layer_devices` devices."""
    net, x0 = network_and_inputs(config, layers, examples)
    strategies = {"serial_dto": DiscretizeThenOptimize(), "serial_scan": LayerParallel(levels=1, coarsening=m),
                  "mgrit": LayerParallel(coarsening=m, levels=levels, iterations=iterations,
                                         layer_devices=layer_devices)}
    out: dict = {"layers": layers, "devices": layer_devices, "examples": examples, "iterations": iterations, "m": m,
                 "levels": levels}
    for name, strategy in strategies.items():
        out[name] = _median_time(eqx.tree_at(lambda n: n.strategy, net, strategy), x0, repeats)
    return out


def training_summary(runs: dict[str, Path]) -> dict[str, dict]:
    """Per run: test accuracy with its own forward (MGRIT for layer-parallel runs), with the exact serial forward
    (the same parameters, `DiscretizeThenOptimize`), wall time, and the mean logged MGRIT residuals."""
    out = {}
    for label, folder in runs.items():
        config, dataset, model = load_run(Path(folder))
        serial = eqx.tree_at(lambda n: n.strategy, model, DiscretizeThenOptimize())
        train = [r for r in read_metrics(Path(folder)) if r["kind"] == "train"]
        results = json.loads((Path(folder) / "results.json").read_text())
        row = {"test_acc": results["test_acc"], "wall_s": results["train_wall_time_s"],
               "test_acc_serial_forward": evaluate(serial, dataset.test, config.train.eval_batch_size)["acc"]}
        for key in ("mgrit_forward_residual", "mgrit_adjoint_residual"):
            if train and key in train[0]:
                row[key + "_mean"] = float(np.mean([r[key] for r in train]))
        out[label] = row
        print(label, row)
    return out


def _median_time(model: Any, x0: jax.Array, repeats: int) -> float:
    def loss(field: Any) -> jax.Array:
        final = solve(field, x0, solver=model.solver, grid=model.grid, strategy=model.strategy).ys[-1]
        return jnp.sum(jnp.tanh(final))

    grad = eqx.filter_jit(eqx.filter_grad(loss))
    jax.block_until_ready(grad(model.field))  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(grad(model.field))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def scaling(config_path: Path, overrides: list[str], layers: int, devices: list[int], **options: Any) -> list[dict]:
    """`time_gradient` for each device count, each in a fresh process with that many host devices
    (XLA_FLAGS=--xla_force_host_platform_device_count=P; one host device per process otherwise)."""
    rows = []
    for p in devices:
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={p}", "JAX_PLATFORMS": "cpu"}
        args = json.dumps({"config": str(config_path), "overrides": overrides, "layers": layers, "devices": p,
                           **options})
        code = "import sys; from ode_nets.experiments.layer_parallel import timing_main; timing_main(sys.argv[1])"
        proc = subprocess.run([sys.executable, "-c", code, args], env=env, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"timing with {p} devices failed:\n{proc.stderr[-2000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(rows[-1])
    return rows


def timing_main(args_json: str) -> None:
    """Entry point of one `scaling` subprocess: print `time_gradient`'s result as one JSON line."""
    args = json.loads(args_json)
    config = load_config(args.pop("config"), args.pop("overrides"))
    print(json.dumps(time_gradient(config, args.pop("layers"), args.pop("devices"), **args)))


def plot_scaling(rows: list[dict], path: Path, vjp_cost: float = 2.0) -> Path:
    """Measured time of MGRIT (and the serial baselines) against devices, beside the cost model scaled by the
    measured serial time per step."""
    fig, ax = plt.subplots(figsize=(6, 4))
    p = [r["devices"] for r in rows]
    ax.plot(p, [r["mgrit"] for r in rows], "o-", label="MGRIT, measured")
    ax.plot(p, [r["serial_scan"] for r in rows], "s--", label="serial (scan), measured")
    ax.plot(p, [r["serial_dto"] for r in rows], "^:", label="serial (diffrax DTO), measured")
    base = rows[0]
    model = [base["serial_scan"] / gradient_speedup(base["layers"], base["m"], d, base["levels"], base["iterations"],
                                                    vjp_cost) for d in p]
    ax.plot(p, model, "k-", lw=0.8, label="MGRIT, cost model x serial time/step")
    ax.axvline(2.5, color="grey", lw=0.6)
    ax.text(2.6, ax.get_ylim()[1] * 0.9, "> 2 cores: oversubscribed", fontsize=7, va="top")
    ax.set(xscale="log", yscale="log", xlabel="host devices (layer_devices)", ylabel="fwd + bwd wall time (s)",
           title=f"L = {base['layers']}, m = {base['m']}, {base['iterations']} iterations")
    ax.set_xticks(p, [str(d) for d in p])
    ax.legend(fontsize=7)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# training curves


def plot_training(runs: dict[str, Path], path: Path) -> Path:
    """Training loss and validation accuracy against step for runs side by side (serial vs layer-parallel)."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, folder in runs.items():
        records = read_metrics(Path(folder))
        train = [r for r in records if r["kind"] == "train"]
        evals = [r for r in records if r["kind"] == "eval"]
        ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label=label)
        key = "validation_acc" if evals and "validation_acc" in evals[0] else "test_acc"
        ax_acc.plot([r["step"] for r in evals], [r[key] for r in evals], label=label)
    ax_loss.set(xlabel="step", ylabel="training loss", yscale="log")
    ax_acc.set(xlabel="step", ylabel="validation accuracy")
    ax_acc.legend(fontsize=8)
    return _save(fig, path)

