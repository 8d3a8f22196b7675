"""Fixed-step Runge–Kutta with piecewise-constant parameters: every stage reads its own layer.

A Heun step over layer l evaluates its second stage at the step's end; `LayerSteps` ends the
step one ulp before the next layer (ode_nets/solvers/layer_steps.py). Checked against explicit
per-layer loops, and the backward (optimize-then-discretize) solve against discretize-then-optimize.
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ode_nets.fields import CubicField, LayerGrid, ParamInit
from ode_nets.solve import solve
from ode_nets.solvers import SOLVERS, AdaptiveSteps, FixedSteps
from ode_nets.solvers.layer_steps import layer_step_bounds
from ode_nets.strategies import STRATEGIES

LAYERS = 5
TABLEAUS = {  # (c2 = a21, b1, b2) of the two-stage methods
    "heun": (1.0, 0.5, 0.5),
    "midpoint": (0.5, 0.0, 1.0),
    "ralston": (2 / 3, 0.25, 0.75),
}


def field() -> CubicField:
    return CubicField.init((3,), ParamInit(layers=LAYERS, init="normal", scale=0.5), jax.random.PRNGKey(1), gamma=0.1)


def two_stage_loop(f: CubicField, x: jax.Array, method: str, steps_per_layer: int) -> jax.Array:
    """The explicit two-stage scheme, layer l's w~, b~ in both stages of every step in layer l."""
    c2, b1, b2 = TABLEAUS[method]
    dt = 1.0 / LAYERS
    h = dt / steps_per_layer
    for layer in range(LAYERS):
        def rhs(z):
            return (z @ f.w.values[layer].T + f.b.values[layer] - f.gamma * z ** 3) / dt
        for _ in range(steps_per_layer):
            k1 = rhs(x)
            k2 = rhs(x + c2 * h * k1)
            x = x + h * (b1 * k1 + b2 * k2)
    return x


@pytest.mark.parametrize("method", sorted(TABLEAUS))
@pytest.mark.parametrize("steps_per_layer", [1, 3])
def test_two_stage_solve_uses_one_layer_per_step(x64, method, steps_per_layer):
    f = field()
    x0 = jnp.array([0.3, -0.2, 0.5])
    sol = solve(f, x0, solver=SOLVERS[method].cls(), grid=LayerGrid(1.0, LAYERS),
                stepping=FixedSteps(steps_per_layer=steps_per_layer))
    np.testing.assert_allclose(sol.ys[-1], two_stage_loop(f, x0, method, steps_per_layer), rtol=1e-12, atol=1e-12)
    assert int(sol.stats["num_steps"]) == LAYERS * steps_per_layer


def test_step_bounds_are_one_sided_at_jumps():
    ts = np.linspace(0.0, 1.0, 4)
    starts, ends = layer_step_bounds(ts, ts[1:-1])
    np.testing.assert_array_equal(starts, ts[:-1])
    assert ends[-1] == 1.0 and all(ends[:-1] < ts[1:-1]) and all(np.nextafter(ends[:-1], 2) == ts[1:-1])
    back_starts, back_ends = layer_step_bounds(ts[::-1], ts[1:-1])  # backwards: left limits at the start
    np.testing.assert_array_equal(back_ends, ts[::-1][1:])
    assert back_starts[0] == 1.0 and all(np.nextafter(back_starts[1:], 2) == ts[::-1][1:-1])


@pytest.mark.parametrize("method", sorted(TABLEAUS))
@pytest.mark.parametrize("strategy", ["discretize_then_optimize", "optimize_then_discretize"])
def test_two_stage_gradients_converge_to_the_continuous_gradient(x64, method, strategy):
    """80 steps per layer: within 2e-4 of a tight Tsit5 gradient (a stage reading the next layer gave 4e-3 or NaN)."""
    f = field()
    x0 = jnp.array([0.3, -0.2, 0.5])

    def grads(strategy, solver, stepping):
        def loss(f):
            y = solve(f, x0, solver=solver, grid=LayerGrid(1.0, LAYERS), strategy=STRATEGIES[strategy](),
                      stepping=stepping).ys[-1]
            return jnp.sum(jnp.sin(y))
        leaves = jax.tree_util.tree_leaves(eqx.filter(eqx.filter_grad(loss)(f), eqx.is_inexact_array))
        return np.concatenate([np.ravel(g) for g in leaves])

    reference = grads("discretize_then_optimize", diffrax.Tsit5(), AdaptiveSteps(rtol=1e-12, atol=1e-12))
    approx = grads(strategy, SOLVERS[method].cls(), FixedSteps(steps_per_layer=80))
    assert np.max(np.abs(approx - reference)) < 2e-4 * np.max(np.abs(reference))
