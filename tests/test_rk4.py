"""The classic fourth-order Runge–Kutta solver (`RK4`, `solver.method: rk4`)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import expm

from helpers import net_from_config
from ode_nets.config import load_config
from ode_nets.fields import LayerGrid
from ode_nets.solve import solve
from ode_nets.solvers import RK4, SOLVERS, FixedSteps

A = np.array([[-0.3, 2.0], [-2.0, -0.3]])
Y0 = np.array([1.0, 0.5])
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


class LinearField(eqx.Module):
    """dy/dt = A y (exact solution expm(A t) y0)."""

    A: jax.Array
    feature_axis: ClassVar[int] = -1

    def __call__(self, t, y, args=None):
        return y @ self.A.T


def test_rk4_is_fourth_order_on_a_linear_ode(x64):
    """Halving h divides the global error at T = 1 by 2^4 = 16."""
    field = LinearField(jnp.asarray(A))
    exact = np.asarray(expm(jnp.asarray(A)) @ Y0)
    errors = []
    for steps in (10, 20, 40):
        y = solve(field, jnp.asarray(Y0), solver=RK4(), grid=LayerGrid(1.0, steps), stepping=FixedSteps()).ys[-1]
        errors.append(float(np.linalg.norm(np.asarray(y) - exact)))
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert errors[-1] > 1e-13  # above round-off, so the ratios measure truncation
    assert np.all((ratios > 14.0) & (ratios < 18.0)), ratios


def test_rk4_one_step_is_the_classic_tableau(x64):
    """One step of RK4 = y + h (k1 + 2 k2 + 2 k3 + k4) / 6, written out."""
    f = lambda y: jnp.asarray(A) @ y  # noqa: E731
    y, h = jnp.asarray(Y0), 0.3
    k1 = f(y)
    k2 = f(y + h * k1 / 2)
    k3 = f(y + h * k2 / 2)
    k4 = f(y + h * k3)
    expected = y + h * (k1 + 2 * k2 + 2 * k3 + k4) / 6
    got = solve(LinearField(jnp.asarray(A)), y, solver=RK4(), grid=LayerGrid(h, 1)).ys[-1]
    np.testing.assert_allclose(got, expected, rtol=1e-14)


def test_rk4_registered_as_fixed_step_with_four_stages():
    info = SOLVERS["rk4"]
    assert info.cls is RK4 and not info.adaptive and info.stages == 4 and info.splits_at_jumps


def test_rk4_config_builds_and_solves_circles_model_2():
    """configs/circles_model2.yaml's model with solver.method = rk4: one forward solve gives finite logits."""
    cfg = load_config(CONFIGS / "circles_model2.yaml", ["solver.method=rk4"])
    net = net_from_config(cfg, (2,), 2)
    assert isinstance(net.solver, RK4) and isinstance(net.stepping, FixedSteps)
    x = jax.random.normal(jax.random.PRNGKey(1), (8, 2))
    sol = net.solve(x)
    logits = net.logits(sol.ys[-1])
    assert logits.shape == (8, 2) and bool(jnp.all(jnp.isfinite(logits)))
    assert int(sol.stats["num_steps"]) == 20
    assert sol.result == diffrax.RESULTS.successful
