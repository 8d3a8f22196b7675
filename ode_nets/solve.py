"""The one call into `diffrax.diffeqsolve`: solver, step-size control, saving and adjoint from config.

Fixed-step methods step exactly on the layer grid (`StepTo`), `steps_per_layer` steps per layer,
so forward Euler with one step per layer *is* the residual network of eq 109. Adaptive methods
use a PID controller whose steps are clipped at the layer boundaries, where the piecewise-constant
parameters jump. Depth is a `lax` loop inside diffrax: compile time does not grow with L.
"""

from __future__ import annotations

from typing import Callable

import diffrax
import equinox as eqx
import jax
import numpy as np
from jaxtyping import Array, PyTree

from ode_nets.config import GradientConfig, SolverConfig
from ode_nets.fields.time_params import PiecewiseConstant, layer_grid
from ode_nets.gradients import make_adjoint
from ode_nets.solvers import AdamsBashforth3, TwoStepLM, Verlet, reversible_solve
from ode_nets.solvers.layer_steps import LayerSteps

# name -> (constructor, adaptive?)
SOLVERS: dict[str, tuple[Callable[[], diffrax.AbstractSolver], bool]] = {
    "euler": (diffrax.Euler, False),
    "heun": (diffrax.Heun, False),
    "midpoint": (diffrax.Midpoint, False),
    "ralston": (diffrax.Ralston, False),
    "bosh3": (diffrax.Bosh3, True),
    "tsit5": (diffrax.Tsit5, True),
    "dopri5": (diffrax.Dopri5, True),
    "dopri8": (diffrax.Dopri8, True),
    "verlet": (Verlet, False),  # Hamiltonian two-state fields (Haber–Ruthotto)
    "ab3": (AdamsBashforth3, False),
    "lm2": (TwoStepLM, False),  # Ruseckas eq 111; k_l live in the field (models.build_model wraps it)
}
# Fixed-step Runge-Kutta methods with stages after the step start: with parameter jumps they step with
# `LayerSteps` (each step ends one ulp before the next layer), so no stage reads the next layer's parameters.
MULTISTAGE_FIXED = ("heun", "midpoint", "ralston")


def fixed_step_controller(method: str, step_ts: np.ndarray,
                          jump_ts: np.ndarray | None) -> diffrax.AbstractStepSizeController:
    """Steps on `step_ts` (either direction): `StepTo`, or `LayerSteps` for multi-stage methods with jumps.

    Euler keeps exact `StepTo` steps, so its solve stays bit-identical to the residual network (eq 109).
    """
    if jump_ts is not None and method in MULTISTAGE_FIXED:
        return LayerSteps.over(step_ts, jump_ts)
    return diffrax.StepTo(ts=step_ts)


def make_solver(method: str) -> tuple[diffrax.AbstractSolver, bool]:
    """The diffrax solver named `method`, and whether it is adaptive."""
    if method not in SOLVERS:
        raise ValueError(f"solver.method: {method!r} is not a diffrax solver here (choose from {', '.join(SOLVERS)})")
    constructor, adaptive = SOLVERS[method]
    return constructor(), adaptive


def step_grid(horizon: float, layers: int, steps_per_layer: int) -> np.ndarray:
    """Fixed-step time points: the layer grid, each layer split into `steps_per_layer` equal steps."""
    grid = layer_grid(0.0, horizon, layers)
    if steps_per_layer == 1:
        return grid
    inner = [np.linspace(grid[i], grid[i + 1], steps_per_layer + 1, dtype=grid.dtype)[:-1] for i in range(layers)]
    return np.concatenate([*inner, grid[-1:]])


def has_jumps(field: eqx.Module) -> bool:
    """True if any parameter of the field is piecewise constant in t (so it jumps at layer boundaries)."""
    leaves = jax.tree_util.tree_leaves(field, is_leaf=lambda x: isinstance(x, PiecewiseConstant))
    return any(isinstance(leaf, PiecewiseConstant) and leaf.layers > 1 for leaf in leaves)


def solve(field: eqx.Module, x0: PyTree[Array], *, horizon: float, layers: int, solver: SolverConfig,
          gradient: GradientConfig, saveat: diffrax.SaveAt | None = None, args: object = None) -> diffrax.Solution:
    """Integrate dx/dt = field(t, x, args) from x(0) = x0 to t = horizon.

    `x0` may carry a batch axis: the whole batch is one state (one shared step-size sequence).
    `gradient.strategy: analytic_adjoint` runs the same forward solve with the paper's backward pass
    (`ode_nets.analytic_adjoint`).
    """
    if gradient.strategy == "analytic_adjoint":
        from ode_nets.analytic_adjoint import solve_analytic  # local import: it calls back into this module

        return solve_analytic(field, x0, horizon=horizon, layers=layers, solver=solver, gradient=gradient,
                              saveat=saveat)
    method, adaptive = make_solver(solver.method)
    saveat = saveat or diffrax.SaveAt(t1=True)
    step_ts = step_grid(horizon, layers, solver.steps_per_layer)
    jump_ts = layer_grid(0.0, horizon, layers)[1:-1] if has_jumps(field) else None
    if gradient.strategy == "reversible":  # memory-free Verlet backprop (custom_vjp), not a diffrax adjoint
        if solver.method != "verlet":
            raise ValueError(f"gradient.strategy 'reversible' needs solver.method 'verlet', got {solver.method!r}")
        return reversible_solve(field, x0, step_ts, saveat, args)
    if adaptive:
        controller = diffrax.PIDController(rtol=solver.rtol, atol=solver.atol)
        if jump_ts is not None:
            controller = diffrax.ClipStepSizeController(controller, jump_ts=jump_ts)
        dt0, max_steps = None, solver.max_steps  # diffrax picks the first step (Hairer's heuristic)
    else:
        controller, dt0, max_steps = fixed_step_controller(solver.method, step_ts, jump_ts), None, len(step_ts) - 1
    adjoint = make_adjoint(gradient, solver, step_ts=step_ts, forward_adaptive=adaptive, jump_ts=jump_ts)
    return diffrax.diffeqsolve(diffrax.ODETerm(field), method, 0.0, horizon, dt0, x0, args=args, saveat=saveat,
                               stepsize_controller=controller, adjoint=adjoint, max_steps=max_steps)
