"""The cubic ODE of Ruseckas (2019) against its closed forms (eqs 85, 87, 89, 90, 92),
the conservation law eq 25, and the residual network eq 109."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ode_nets.fields import CubicField, LayerGrid, ParamInit
from ode_nets.fields.time_params import Constant, PiecewiseConstant
from ode_nets.solve import solve
from ode_nets.solvers import AdaptiveSteps, FixedSteps
from ode_nets.strategies import DiscretizeThenOptimize

TIGHT = AdaptiveSteps(rtol=1e-11, atol=1e-12, max_steps=100_000)  # with diffrax.Tsit5()
DTO = DiscretizeThenOptimize()


def physical_field(w: np.ndarray, b: np.ndarray, gamma: float, dt: float = 1.0) -> CubicField:
    """A time-independent field with physical parameters w, b, gamma (scaled by dt as in eq 110)."""
    return CubicField(w=Constant(jnp.asarray(w) * dt), b=Constant(jnp.asarray(b) * dt), gamma=gamma * dt, dt=dt)


def final_state(field, x0, horizon, stepping=TIGHT, strategy=DTO):
    """x(T) of a tight Tsit5 solve on [0, horizon] (one layer: the field's parameters are constant)."""
    return solve(field, x0, solver=diffrax.Tsit5(), grid=LayerGrid(horizon, 1), strategy=strategy,
                 stepping=stepping).ys[-1]


def eq85(x0, w, gamma, t):
    """x(t) for dx/dt = w x - gamma x^3 (eq 85)."""
    return x0 * np.exp(w * t) / np.sqrt(1 + gamma / w * x0**2 * (np.exp(2 * w * t) - 1))


@pytest.mark.parametrize("horizon", [0.5, 3.0])
def test_eq85_diagonal_weights_closed_form(x64, horizon):
    w = np.array([0.7, -0.4, 1.3])
    x0 = np.array([0.5, -1.2, 0.05])
    gamma = 0.8
    x_t = final_state(physical_field(np.diag(w), np.zeros(3), gamma, dt=0.37), jnp.asarray(x0), horizon)
    np.testing.assert_allclose(x_t, eq85(x0, w, gamma, horizon), rtol=1e-9)


def test_eq86_fixed_points_for_positive_w(x64):
    w, gamma = np.array([1.5, 1.5]), 0.6
    x_t = final_state(physical_field(np.diag(w), np.zeros(2), gamma), jnp.array([0.3, -0.2]), 40.0)
    np.testing.assert_allclose(x_t, np.array([1, -1]) * np.sqrt(1.5 / 0.6), rtol=1e-8)


def test_eq87_zero_weights_power_law(x64):
    x0, gamma, horizon = np.array([2.0, -0.3, 0.9]), 0.5, 7.0
    x_t = final_state(physical_field(np.zeros((3, 3)), np.zeros(3), gamma), jnp.asarray(x0), horizon)
    np.testing.assert_allclose(x_t, x0 / np.sqrt(1 + 2 * gamma * x0**2 * horizon), rtol=1e-9)


def test_eq92_stationary_value_with_bias(x64):
    b, gamma = np.array([0.8, -2.0, 0.1]), 1.7
    stepping = AdaptiveSteps(rtol=1e-8, atol=1e-10, max_steps=100_000)
    x_t = final_state(physical_field(np.zeros((3, 3)), b, gamma), jnp.zeros(3), 200.0, stepping)
    np.testing.assert_allclose(x_t, np.cbrt(b / gamma), rtol=1e-7)


@pytest.mark.parametrize("w", [0.9, -0.6, 0.0])
def test_eq89_eq90_adjoint_closed_form(x64, w):
    """a_i(0) = d x_i(T) / d x_i(0) from eq 89 (eq 90 for w = 0) vs autodiff through the solve."""
    gamma, horizon, x0 = 0.7, 2.0, 0.8
    field = physical_field(np.array([[w]]), np.zeros(1), gamma)
    grad = jax.grad(lambda x: final_state(field, x, horizon)[0])(jnp.array([x0]))[0]
    if w == 0.0:
        expected = (1 / (1 + 2 * gamma * x0**2 * horizon)) ** 1.5  # eq 90 at t = 0
    else:
        expected = np.exp(w * horizon) * (1 / (1 + gamma / w * x0**2 * (np.exp(2 * w * horizon) - 1))) ** 1.5
    np.testing.assert_allclose(grad, expected, rtol=1e-8)


def test_eq25_hamiltonian_conserved_for_time_independent_parameters(x64):
    """a(t) F(x(t)) = const for parameters that do not depend on t (eqs 24, 25)."""
    key = jax.random.PRNGKey(3)
    k1, k2, k3 = jax.random.split(key, 3)
    w = 0.8 * jax.random.normal(k1, (3, 3))  # not symmetric
    b = 0.5 * jax.random.normal(k2, (3,))
    field = physical_field(np.asarray(w), np.asarray(b), 0.6)
    x0 = jax.random.normal(k3, (3,))
    horizon = 2.0
    loss = lambda x_final: jnp.sum(jnp.sin(x_final)) + x_final[0] ** 2  # noqa: E731
    hamiltonians = []
    for t in [0.0, 0.5, 1.3, 2.0]:
        x_t = final_state(field, x0, t) if t > 0 else x0
        # autonomous field: the flow from t to T equals the flow from 0 to T - t
        a_t = jax.grad(lambda x: loss(final_state(field, x, horizon - t)))(x_t) if t < horizon else jax.grad(loss)(x_t)
        hamiltonians.append(float(a_t @ field(t, x_t, None)))
    np.testing.assert_allclose(hamiltonians, hamiltonians[0], rtol=1e-8)
    assert abs(hamiltonians[0]) > 1e-3  # non-trivial


def test_hamiltonian_not_conserved_for_time_dependent_parameters(x64):
    """Control for eq 25: with w(t) piecewise constant the same quantity changes."""
    field = CubicField.init((3,), ParamInit(layers=4, init="normal", scale=0.5), jax.random.PRNGKey(0), gamma=0.2)
    x0 = jnp.array([0.4, -0.3, 0.9])
    xs = solve(field, x0, solver=diffrax.Euler(), grid=LayerGrid(1.0, 4), strategy=DTO,
               stepping=FixedSteps(steps_per_layer=1), saveat=diffrax.SaveAt(ts=np.linspace(0, 1, 5))).ys
    h = [float(jax.grad(lambda x: jnp.sum(x))(xs[i]) @ field(i / 4, xs[i], None)) for i in range(4)]
    assert np.ptp(h) > 1e-3


def test_euler_solve_is_the_residual_network_eq109():
    """Forward Euler with dt = T/L reproduces x_{l+1} = x_l + w~_l x_l + b~_l - gamma~ x_l^3 (eq 109)."""
    params = ParamInit(layers=13, horizon=2.7, init="normal", scale=0.2)
    field = CubicField.init((4,), params, jax.random.PRNGKey(1), gamma=0.05)
    x = jax.random.normal(jax.random.PRNGKey(2), (16, 4))
    out = solve(field, x, solver=diffrax.Euler(), grid=LayerGrid(params.horizon, params.layers), strategy=DTO).ys[-1]
    for layer in range(params.layers):
        w, b = field.w.values[layer], field.b.values[layer]
        x = x + x @ w.T + b - field.gamma * x**3
    np.testing.assert_allclose(out, x, rtol=2e-5, atol=2e-6)


def test_euler_uses_each_layers_parameters_once():
    """Changing layer l's bias shifts the output by exactly that bias when everything else is zero."""
    field = CubicField.zeros(2, layers=7, horizon=0.3, gamma=0.0)
    values = jnp.zeros((7, 2)).at[:, 0].set(jnp.arange(1.0, 8.0))
    field = CubicField(w=field.w, b=PiecewiseConstant(values, 0.0, 0.3), gamma=0.0, dt=0.3 / 7)
    out = solve(field, jnp.zeros(2), solver=diffrax.Euler(), grid=LayerGrid(0.3, 7), strategy=DTO).ys[-1]
    np.testing.assert_allclose(out, [28.0, 0.0], rtol=1e-6)


def test_general_exponent_eq57(x64):
    """mu != 3: dx/dt = -gamma sign(x)|x|^mu has x(t) = sign(x0) (|x0|^(1-mu) + (mu-1) gamma t)^(1/(1-mu))."""
    mu, gamma, horizon = 2.5, 0.9, 1.5
    field = CubicField(w=Constant(jnp.zeros((2, 2))), b=Constant(jnp.zeros(2)), gamma=gamma, dt=1.0, mu=mu)
    x0 = np.array([1.3, -0.4])
    out = final_state(field, jnp.asarray(x0), horizon)
    expected = np.sign(x0) * (np.abs(x0) ** (1 - mu) + (mu - 1) * gamma * horizon) ** (1 / (1 - mu))
    np.testing.assert_allclose(out, expected, rtol=1e-9)
