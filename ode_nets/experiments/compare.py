"""Gradient strategies side by side (Ruthotto's "Diff->Disc vs Disc->Diff"; Ruseckas §2.1, §3.3, eq 112).

For one batch and one model (from a config, random non-zero init), each (depth L, solver, strategy) gets:

- (the continuous model is the same at every L: scaled parameters are rescaled with dt, see `make_net`)
- the relative error of its parameter gradient against a float64 reference: discretize-then-optimize through
  a Tsit5 solve at rtol 1e-10 (the gradient of the *continuous* model with the same piecewise-constant
  parameters), and, for small models, against central finite differences of its own forward network;
- the median wall time of the compiled loss-and-gradient step (float32, >= 20 runs after warm-up);
- XLA's memory analysis of that compiled step (temp, argument, output bytes);
- vector-field evaluations: forward counted by the solve (`ode_nets.solvers.counting`); backward counted
  analytically for fixed steps (see `backward_evaluations`); for adaptive solves the backward solve's own count
  (`optimize_then_discretize`, `training.counting.backward_counts`) or one VJP per forward evaluation (reverse mode
  through the steps: `discretize_then_optimize`, whose recursive checkpointing also recomputes forward steps, and
  `direct_adjoint`).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from ode_nets.build import build_model
from ode_nets.config import Config, GradientConfig, SolverConfig
from ode_nets.errors import ConfigError, RunDirError
from ode_nets.losses import cross_entropy
from ode_nets.plotting.figures import _save, plt
from ode_nets.solvers import SOLVERS
from ode_nets.strategies import STRATEGIES as STRATEGY_CLASSES
from ode_nets.training import Objective, value_and_grad
from ode_nets.training.counting import backward_counts

STRATEGIES = ("discretize_then_optimize", "optimize_then_discretize", "analytic_adjoint")
REFERENCE = SolverConfig(method="tsit5", rtol=1e-10, atol=1e-12, max_steps=100_000)


def parse_solver(spec: str) -> SolverConfig:
    """'euler', 'midpoint:4' (steps per layer) or 'tsit5:1e-6' (rtol; atol = rtol/1000) -> SolverConfig."""
    method, _, arg = spec.partition(":")
    if method not in SOLVERS:
        raise ConfigError(f"--solvers: unknown solver {method!r} (choose from {', '.join(SOLVERS)})")
    if not arg:
        return SolverConfig(method=method)
    if SOLVERS[method].adaptive:
        return SolverConfig(method=method, rtol=float(arg), atol=float(arg) / 1000, max_steps=100_000)
    return SolverConfig(method=method, steps_per_layer=int(arg))


def solver_label(solver: SolverConfig) -> str:
    if SOLVERS[solver.method].adaptive:
        return f"{solver.method} rtol={solver.rtol:g}"
    return solver.method + (f" x{solver.steps_per_layer}" if solver.steps_per_layer > 1 else "")


def make_net(config: Config, layers: int, solver: SolverConfig, strategy: str, input_shape: tuple[int, ...],
             num_classes: int) -> eqx.Module:
    """The config's model with L = `layers`, the given solver and strategy; parameters from `config.seed`.

    The *continuous* model is kept fixed across depths: the scaled gamma~ and the init std of the scaled
    w~, b~ are multiplied by L_config / L (eq 110: q~ = dt q), so the unscaled gamma and the spread of
    w(t), b(t) do not grow with L, and the discretisation error can shrink as L grows.
    """
    ratio = config.model.layers / layers
    model = dataclasses.replace(config.model, layers=layers, gamma=config.model.gamma * ratio,
                                init_scale=config.model.init_scale * ratio)
    case = dataclasses.replace(config, model=model, solver=solver, gradient=GradientConfig(strategy=strategy))
    key = jax.random.split(jax.random.PRNGKey(config.seed))[1]
    return build_model(case, input_shape, num_classes, key)


def ce_loss(net: eqx.Module, x: jax.Array, y: jax.Array) -> jax.Array:
    """Cross entropy of the batch (the regulariser's gradient is the same for every strategy, so it is left out)."""
    return cross_entropy(net(x), y)


def ce_and_nothing(net: eqx.Module, x: jax.Array, y: jax.Array) -> tuple[jax.Array, None]:
    return ce_loss(net, x, y), None


def flat_gradient(net: eqx.Module, x: jax.Array, y: jax.Array) -> np.ndarray:
    """The gradient of `ce_loss` as one vector (forward mode for a strategy without reverse mode)."""
    grads = eqx.filter_jit(lambda n, xb, yb: value_and_grad(ce_and_nothing, n, xb, yb)[1])(net, x, y)
    return np.concatenate([np.ravel(g) for g in jax.tree_util.tree_leaves(eqx.filter(grads, eqx.is_inexact_array))])


def finite_differences(net: eqx.Module, x: jax.Array, y: jax.Array, entries: np.ndarray, eps: float = 1e-6
                       ) -> np.ndarray:
    """Central differences of the loss w.r.t. the flat trainable entries `entries` (float64)."""
    params, static = eqx.partition(net, eqx.is_inexact_array)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    loss = jax.jit(lambda f: ce_loss(eqx.combine(unravel(f), static), x, y))
    out = []
    for i in entries:
        e = jnp.zeros_like(flat).at[i].set(eps)
        out.append((float(loss(flat + e)) - float(loss(flat - e))) / (2 * eps))
    return np.asarray(out)


def relative_error(g: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(g - ref) / max(np.linalg.norm(ref), 1e-300))


def timed_step(net: eqx.Module, x: jax.Array, y: jax.Array, repeats: int) -> dict[str, float]:
    """Median seconds of the compiled loss-and-gradient step, compile time and XLA memory analysis (bytes)."""
    params, static = eqx.partition(net, eqx.is_inexact_array)
    step = jax.jit(lambda p, xb, yb: value_and_grad(ce_and_nothing, eqx.combine(p, static), xb, yb))
    start = time.perf_counter()
    compiled = step.lower(params, x, y).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    jax.block_until_ready(compiled(params, x, y))  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(params, x, y))
        times.append(time.perf_counter() - start)
    return {"step_ms": 1e3 * statistics.median(times), "compile_s": compile_s,
            "temp_bytes": int(getattr(memory, "temp_size_in_bytes", -1)),
            "argument_bytes": int(getattr(memory, "argument_size_in_bytes", -1)),
            "output_bytes": int(getattr(memory, "output_size_in_bytes", -1))}


def forward_steps(net: eqx.Module, x: jax.Array) -> tuple[int, int]:
    """(accepted + rejected steps, function evaluations) of the forward solve (`ODENet.forward`'s counts)."""
    counts = eqx.filter_jit(lambda n, xb: n.forward(xb)[1].counts)(net, x)
    return int(counts["steps_accepted"]) + int(counts["steps_rejected"]), int(counts["nfe"])


def adaptive_backward_evaluations(net: eqx.Module, x: jax.Array, y: jax.Array, strategy: str, forward_evals: int
                                  ) -> str:
    """Backward work of an adaptive solve: the backward solve's own evaluations (augmented system), or one VJP per
    forward evaluation (reverse mode through the steps)."""
    counting = STRATEGY_CLASSES[strategy].backward_counting
    if not STRATEGY_CLASSES[strategy].reverse_mode:
        return FORWARD_ONLY
    if counting == "solve":
        counts = backward_counts(net, x, y, jnp.ones(len(y)), Objective())
        return f"{int(counts['nfe_backward'])} augmented"
    if counting == "none":
        return "n/a"
    checkpointed = "checkpoints" in STRATEGY_CLASSES[strategy].config_options  # recursive checkpointing recomputes
    return f"{forward_evals} VJP" + (" + recomputation" if checkpointed else "")


FORWARD_ONLY = "none: a JVP per parameter in the forward solve"


def backward_evaluations(strategy: str, solver: SolverConfig, steps: int) -> str:
    """Backward vector-field work, counted analytically from the forward step count.

    - discretize_then_optimize, fixed steps (one checkpoint per step): one VJP of F per stage per step;
    - optimize_then_discretize / analytic_adjoint, fixed steps: the backward solve takes the forward's steps,
      each stage one evaluation of the augmented system (F and a dF/dx, plus a dF/dq);
    - analytic_adjoint with Euler: eq 112, one hand-written a dF/dx per step, no autodiff;
    - adaptive solves: the backward solve chooses its own steps (DTO: binomial recomputation) -> n/a.
    """
    stages = SOLVERS[solver.method].stages
    if not STRATEGY_CLASSES[strategy].reverse_mode:
        return FORWARD_ONLY
    if SOLVERS[solver.method].adaptive:
        return "n/a (adaptive)"
    if strategy == "discretize_then_optimize":
        return f"{steps * stages} VJP"
    if strategy == "analytic_adjoint" and solver.method == "euler":
        return f"{steps} eq-112 steps"
    return f"{steps * stages} augmented"


def compare(config: Config, x: np.ndarray, y: np.ndarray, num_classes: int, *, layers: list[int],
            solvers: list[SolverConfig], strategies: tuple[str, ...] = STRATEGIES, repeats: int = 20,
            fd_entries: int = 12, fd_max_params: int = 5000) -> list[dict[str, Any]]:
    """One row per (L, solver, strategy); see the module docstring. Float64 for the errors, float32 for the timing;
    the caller's float64 setting is restored afterwards, also on an error."""
    rows = []
    input_shape = tuple(x.shape[1:])
    previous = jax.config.jax_enable_x64
    try:
        for depth in layers:
            jax.config.update("jax_enable_x64", True)
            reference = flat_gradient(make_net(config, depth, REFERENCE, "discretize_then_optimize", input_shape,
                                               num_classes), jnp.asarray(x, jnp.float64), jnp.asarray(y))
            for solver in solvers:
                for strategy in strategies:
                    row = compare_case(config, x, y, num_classes, depth, solver, strategy, reference, repeats=repeats,
                                       fd_entries=fd_entries, fd_max_params=fd_max_params)
                    print(format_row(row), flush=True)
                    rows.append(row)
    finally:
        jax.config.update("jax_enable_x64", previous)
    return rows


def compare_case(config: Config, x: np.ndarray, y: np.ndarray, num_classes: int, depth: int, solver: SolverConfig,
                 strategy: str, reference: np.ndarray, *, repeats: int, fd_entries: int, fd_max_params: int
                 ) -> dict[str, Any]:
    """One row: gradient errors in float64 (against `reference` and finite differences), then time, memory and
    evaluations in float32. A strategy that fails (e.g. an unstable backward solve) gives a row with its error."""
    input_shape = tuple(x.shape[1:])
    row: dict[str, Any] = {"L": depth, "solver": solver_label(solver), "strategy": strategy,
                           "params": int(reference.size)}
    try:
        jax.config.update("jax_enable_x64", True)
        x64, y64 = jnp.asarray(x, jnp.float64), jnp.asarray(y)
        net = make_net(config, depth, solver, strategy, input_shape, num_classes)
        grad = flat_gradient(net, x64, y64)
        row["err_vs_reference"] = relative_error(grad, reference)
        if reference.size <= fd_max_params:
            entries = np.random.default_rng(depth).choice(reference.size, min(fd_entries, reference.size),
                                                          replace=False)
            row["err_vs_fd"] = relative_error(grad[entries], finite_differences(net, x64, y64, entries))
        jax.config.update("jax_enable_x64", False)
        net32 = make_net(config, depth, solver, strategy, input_shape, num_classes)
        x32, y32 = jnp.asarray(x, jnp.float32), jnp.asarray(y)
        row.update(timed_step(net32, x32, y32, repeats))
        steps, evaluations = forward_steps(net32, x32)
        row["forward_steps"] = steps
        row["forward_evals"] = evaluations
        row["backward_evals"] = (adaptive_backward_evaluations(net32, x32, y32, strategy, evaluations)
                                 if SOLVERS[solver.method].adaptive else backward_evaluations(strategy, solver, steps))
    except Exception as e:  # noqa: BLE001 - a failing strategy is a result of the comparison, recorded in its row
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return row


COLUMNS = [("L", "L"), ("solver", "solver"), ("strategy", "strategy"), ("err_vs_reference", "rel. err vs ref"),
           ("err_vs_fd", "rel. err vs FD"), ("step_ms", "step ms"), ("temp_bytes", "temp MiB"),
           ("argument_bytes", "arg MiB"), ("forward_evals", "fwd evals"), ("backward_evals", "bwd evals"),
           ("error", "error")]


def _cell(key: str, value: Any) -> str:
    if value is None:
        return ""
    if key.endswith("_bytes"):
        return f"{value / 2**20:.3g}"
    if key.startswith("err"):
        return f"{value:.2e}"
    if key == "step_ms":
        return f"{value:.3g}"
    return str(value)


def format_row(row: dict[str, Any]) -> str:
    return " | ".join(_cell(k, row.get(k)) for k, _ in COLUMNS)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    header = "| " + " | ".join(name for _, name in COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    return "\n".join([header, rule, *("| " + format_row(r) + " |" for r in rows)])


def plot_comparison(rows: list[dict[str, Any]], path: Path) -> Path:
    """Error vs reference, step time and temp memory against L, one line per (solver, strategy)."""
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    keys = sorted({(r["solver"], r["strategy"]) for r in rows})
    for solver, strategy in keys:
        pts = sorted((r["L"], r) for r in rows if (r["solver"], r["strategy"]) == (solver, strategy) and "error" not in r)
        if not pts:
            continue
        ls = [p[0] for p in pts]
        label = f"{solver} / {strategy.replace('_then_', '->')}"
        style = {"discretize_then_optimize": "o-", "optimize_then_discretize": "s--", "analytic_adjoint": "^:"
                 }.get(strategy, "d-.")
        axes[0].plot(ls, [max(p[1]["err_vs_reference"], 1e-17) for p in pts], style, label=label)
        axes[1].plot(ls, [p[1]["step_ms"] for p in pts], style, label=label)
        axes[2].plot(ls, [p[1]["temp_bytes"] / 2**20 for p in pts], style, label=label)
    axes[0].set(xlabel="L", ylabel="rel. error vs float64 reference", xscale="log", yscale="log")
    axes[1].set(xlabel="L", ylabel="compiled step, ms (median)", xscale="log", yscale="log")
    axes[2].set(xlabel="L", ylabel="XLA temp memory, MiB", xscale="log", yscale="log")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def write_results(rows: list[dict[str, Any]], out: Path, meta: dict[str, Any]) -> list[Path]:
    """results.json, table.md and comparison.png in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (out / "table.md").write_text(f"`{meta['command']}`\n\n" + markdown_table(rows) + "\n")
    return [out / "results.json", out / "table.md", plot_comparison(rows, out / "comparison.png")]


def rerender(out: Path) -> list[Path]:
    """Rewrite table.md and comparison.png from an existing results.json (no recomputation)."""
    if not (Path(out) / "results.json").is_file():
        raise RunDirError(f"--rerender: {out} holds no results.json of a comparison")
    data = json.loads((Path(out) / "results.json").read_text())
    return write_results(data["rows"], out, data["meta"])
