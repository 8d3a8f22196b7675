"""Haber–Ruthotto architectures: orders of AB3 and eq 111, Verlet reversibility and reversible gradients,
antisymmetric Jacobian spectra, forward-stability check, the slides' RevNet example."""

from __future__ import annotations

from typing import ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.linalg import expm

from helpers import config, net_from_config
from ode_nets.fields import AntisymmetricField, LayerGrid, ParamInit, SingleLayerField
from ode_nets.fields.time_params import Constant, layer_grid
from ode_nets.solve import solve
from ode_nets.solvers import SOLVERS, FixedSteps, TwoStepField
from ode_nets.strategies import STRATEGIES
from ode_nets.solvers.verlet import reconstruct_initial_state
from ode_nets.training import Objective
from ode_nets.analysis.stability import (jacobian_eigenvalues, max_real_eigenvalue, revnet_growth_factor, revnet_iterates)

A = np.array([[-0.3, 2.0], [-2.0, -0.3]])
Y0 = np.array([1.0, 0.5])


class LinearField(eqx.Module):
    """dy/dt = A y (exact solution expm(A t) y0)."""

    A: jax.Array
    feature_axis: ClassVar[int] = -1

    def __call__(self, t, y, args=None):
        return y @ self.A.T


def final_state(field, method: str, layers: int, horizon: float = 1.0, strategy: str = "discretize_then_optimize"):
    return solve(field, jnp.asarray(Y0), solver=SOLVERS[method].cls(), grid=LayerGrid(horizon, layers),
                 strategy=STRATEGIES[strategy](), stepping=FixedSteps()).ys[-1]


def error_ratios(field, method: str, exact, steps=(20, 40, 80)) -> np.ndarray:
    errors = np.array([float(jnp.linalg.norm(final_state(field, method, n) - exact)) for n in steps])
    return errors[:-1] / errors[1:]


def test_ab3_is_third_order(x64):
    exact = expm(jnp.asarray(A)) @ Y0
    ratios = error_ratios(LinearField(jnp.asarray(A)), "ab3", exact)
    assert np.all((ratios > 7.0) & (ratios < 9.0)), ratios  # 2^3 = 8 when h is halved


@pytest.mark.parametrize("k, order", [(0.5, 1), (1.0, 2)])
def test_lm2_eq111_order_for_fixed_k(x64, k, order):
    """Eq 111 with constant k solves (1 + k) dx/dt = f: first order, second (leapfrog) for k = 1."""
    field = TwoStepField(LinearField(jnp.asarray(A)), Constant(jnp.asarray(k)))
    exact = expm(jnp.asarray(A) / (1 + k)) @ Y0
    ratios = error_ratios(field, "lm2", exact)
    assert np.all(np.abs(ratios - 2.0 ** order) < 0.25 * 2.0 ** order), ratios


def test_lm2_with_k_zero_is_the_resnet(x64):
    field = LinearField(jnp.asarray(A))
    lm2 = final_state(TwoStepField(field, Constant(jnp.asarray(0.0))), "lm2", 13)
    np.testing.assert_allclose(lm2, final_state(field, "euler", 13), rtol=1e-12)


def test_lm2_k_is_trained_per_layer(x64):
    net = net_from_config(config(model={"field": "cubic", "layers": 5, "init": "normal"}, solver={"method": "lm2"}))
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 2))
    grads = eqx.filter_grad(lambda m: jnp.sum(m(x) ** 2))(net)
    assert grads.field.k.values.shape == (5,)
    assert np.all(np.abs(np.asarray(grads.field.k.values[1:])) > 0)  # k_0 multiplies d_{-1}, which depends on k_0


def hamiltonian_net(strategy: str, layers: int = 40, horizon: float = 4.0):
    cfg = config(model={"field": "hamiltonian", "layers": layers, "horizon": horizon, "augment": 4,
                        "init": "normal", "init_scale": 0.7, "readout": "linear_softmax"},
                 solver={"method": "verlet"}, gradient={"strategy": strategy})
    return net_from_config(cfg, (2,), 3, seed=2)


def test_verlet_is_the_slides_recursion(x64):
    net = hamiltonian_net("discretize_then_optimize", layers=6, horizon=3.0)
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (5, 2)))
    K, b, h = np.asarray(net.field.K.values), np.asarray(net.field.b.values), 3.0 / 6
    Y, Z = np.concatenate([x, np.zeros((5, 1))], 1), np.zeros((5, 3))  # Z_{-1/2} = 0
    for j in range(6):
        Z = Z - h * np.tanh(Y @ K[j].T + b[j])
        Y = Y + h * np.tanh(Z @ K[j] + b[j])
    np.testing.assert_allclose(net.features(x), np.concatenate([Y, Z], 1), rtol=1e-12, atol=1e-12)


def test_verlet_reconstructs_the_input_from_the_output(x64):
    net = hamiltonian_net("reversible", layers=200, horizon=10.0)
    x0 = net.initial_state(jax.random.normal(jax.random.PRNGKey(4), (16, 2)))
    ts = layer_grid(0.0, 10.0, 200)
    x_final = net.features(x0[:, :2])
    assert float(jnp.max(jnp.abs(x_final - x0))) > 0.1  # the map is far from the identity
    np.testing.assert_allclose(reconstruct_initial_state(net.field, x_final, ts), x0, atol=1e-12)


def test_reversible_gradient_equals_backprop(x64):
    x = jax.random.normal(jax.random.PRNGKey(5), (8, 2))
    y = jnp.arange(8) % 3

    def loss(net):
        logits = net(x)
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(8), y])

    grads = [eqx.filter_grad(loss)(hamiltonian_net(s)) for s in ("discretize_then_optimize", "reversible")]
    flat = [np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(eqx.filter(g, eqx.is_array))])
            for g in grads]
    assert np.linalg.norm(flat[0]) > 1e-3
    np.testing.assert_allclose(flat[1], flat[0], rtol=1e-9, atol=1e-12)


def test_reversible_reports_backward_evaluations():
    """Training metrics of `reversible`: 2 field evaluations per Verlet step forward, and backward per step the
    inverse step's 2 evaluations with the step's VJP: nfe_backward = nfe_forward = 2 x 40 layers."""
    x, y = jax.random.normal(jax.random.PRNGKey(5), (8, 2)), jnp.arange(8) % 3
    _, aux = Objective()(hamiltonian_net("reversible"), x, y, jnp.ones(8))
    assert int(aux["nfe_forward"]) == int(aux["nfe_backward"]) == 80


def test_reversible_needs_verlet():
    field = LinearField(jnp.asarray(A, dtype=jnp.float32))
    with pytest.raises(ValueError, match="verlet"):
        final_state(field, "euler", 4, strategy="reversible")


def antisymmetric(activation: str, gamma: float, n: int = 5):
    params = ParamInit(layers=3, init="normal", scale=1.0)
    return AntisymmetricField.init((n,), params, jax.random.PRNGKey(6), gamma=gamma, activation=activation)


@pytest.mark.parametrize("activation", ["identity", "tanh"])
def test_antisymmetric_jacobian_is_purely_imaginary(x64, activation):
    """J = diag(sigma') (K - K^T) is similar to D^1/2 (K - K^T) D^1/2 (antisymmetric) when sigma' > 0."""
    field = antisymmetric(activation, 0.0)
    for seed in range(3):
        y = 2.0 * jax.random.normal(jax.random.PRNGKey(seed), (5,))
        eig = jacobian_eigenvalues(field, jnp.asarray(0.5), y)
        assert np.max(np.abs(np.imag(eig))) > 0.1
        np.testing.assert_allclose(np.real(eig), 0.0, atol=1e-10)


def test_antisymmetric_gamma_damps(x64):
    field = antisymmetric("tanh", 0.3)
    b0 = eqx.tree_at(lambda f: f.b.values, field, jnp.zeros_like(field.b.values))
    eig = jacobian_eigenvalues(b0, jnp.asarray(0.5), jnp.zeros(5))  # sigma' = 1 at zero pre-activation
    np.testing.assert_allclose(np.real(eig), -0.3, atol=1e-10)
    eig = jacobian_eigenvalues(field, jnp.asarray(0.5), jax.random.normal(jax.random.PRNGKey(7), (5,)))
    assert np.all(np.real(eig) < 0) and np.all(np.real(eig) >= -0.3 - 1e-10)


def test_stability_check_along_trajectories(x64):
    ts = jnp.linspace(0.0, 1.0, 4)
    ys = jax.random.normal(jax.random.PRNGKey(8), (4, 6, 5))
    assert np.all(np.abs(np.asarray(max_real_eigenvalue(antisymmetric("tanh", 0.0), ts, ys))) < 1e-10)
    params = ParamInit(layers=3, time_dependent=False)
    grow = eqx.tree_at(lambda f: f.K.value, SingleLayerField.init((5,), params, jax.random.PRNGKey(0)), jnp.eye(5))
    shrink = eqx.tree_at(lambda f: f.K.value, grow, -jnp.eye(5))
    assert np.all(np.asarray(max_real_eigenvalue(grow, ts, ys)) > 0)  # J = diag(tanh') K: unstable for K = I
    assert np.all(np.asarray(max_real_eigenvalue(shrink, ts, ys)) < 0)


@pytest.mark.parametrize("alpha, beta", [(1.0, 5.0), (-1.0, 1.0), (1.0, 3.0), (2.0, 0.5)])
def test_revnet_example(x64, alpha, beta):
    """Slides: the linear RevNet obeys a 3-term recursion and grows like |xi|^j when a^2 > 1."""
    ys = np.asarray(revnet_iterates(alpha, beta, 1.0, 400))
    np.testing.assert_allclose(ys[2:], (2 - alpha * beta) * ys[1:-1] - ys[:-2], rtol=1e-9, atol=1e-9)
    factor = revnet_growth_factor(alpha, beta)
    if factor > 1:
        growth = np.abs(ys[-1] / ys[-2]) if abs(ys[-2]) > 0 else np.inf
        np.testing.assert_allclose(growth, factor, rtol=1e-6)
    else:
        assert np.max(np.abs(ys)) < 10  # |xi| = 1: bounded (no growth over 400 steps)


def test_reversible_backprop_stores_no_states():
    """The VJP of the reversible solve keeps only the parameters and the final state (memory-free in L)."""
    x = jnp.ones((256, 2))
    for strategy, bound in (("reversible", 1.2), ("discretize_then_optimize", 10.0)):
        net = hamiltonian_net(strategy, layers=64)
        params, static = eqx.partition(net, eqx.is_inexact_array)
        _, vjp = jax.vjp(lambda p: eqx.combine(p, static).features(x), params)
        stored = sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(vjp))
        expected = sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(params)) + x.shape[0] * 6
        assert (stored <= bound * expected) == (strategy == "reversible"), (strategy, stored, expected)


def test_verlet_equals_diffrax_semi_implicit_euler(x64):
    """Our Verlet on concat(Y, Z) is diffrax.SemiImplicitEuler on (Z, Y) (Z updated first)."""
    net = hamiltonian_net("discretize_then_optimize", layers=10, horizon=2.0)
    x0 = net.initial_state(jax.random.normal(jax.random.PRNGKey(9), (4, 2)))
    field, m = net.field, x0.shape[-1] // 2
    terms = (diffrax.ODETerm(lambda t, y, args: field.z_dot(t, y)), diffrax.ODETerm(lambda t, z, args: field.y_dot(t, z)))
    sol = diffrax.diffeqsolve(terms, diffrax.SemiImplicitEuler(), 0.0, 2.0, None, (x0[:, m:], x0[:, :m]),
                              stepsize_controller=diffrax.StepTo(ts=layer_grid(0.0, 2.0, 10)))
    z, y = sol.ys[0][-1], sol.ys[1][-1]
    np.testing.assert_allclose(net.features(x0[:, :2]), jnp.concatenate([y, z], -1), rtol=1e-12, atol=1e-12)


def test_hamiltonian_jacobian_is_purely_imaginary(x64):
    """J = [[0, D1 K^T], [-D2 K, 0]] (D = diag(sigma') > 0): lambda^2 = -eig(D1 K^T D2 K) <= 0."""
    field = hamiltonian_net("discretize_then_optimize").field
    x = 2.0 * jax.random.normal(jax.random.PRNGKey(10), (6,))
    eig = jacobian_eigenvalues(field, jnp.asarray(1.3), x)
    assert np.max(np.abs(np.imag(eig))) > 0.1
    np.testing.assert_allclose(np.real(eig), 0.0, atol=1e-10)


def test_ab3_backsolve_gradient_approximates_backprop(x64):
    """AB3 also runs as the backward solver of optimize_then_discretize (pytree states); both gradients agree to O(h^3)."""
    x = jax.random.normal(jax.random.PRNGKey(11), (4, 2))
    flat = []
    for strategy in ("discretize_then_optimize", "optimize_then_discretize"):
        cfg = config(model={"field": "antisymmetric", "layers": 32, "augment": 2, "init": "normal",
                            "readout": "linear_softmax", "time_dependent": False},
                     solver={"method": "ab3"}, gradient={"strategy": strategy})
        net = net_from_config(cfg, (2,), 3)
        grads = eqx.filter_grad(lambda m: jnp.sum(jnp.sin(m(x))))(net)
        flat.append(np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(eqx.filter(grads, eqx.is_array))]))
    np.testing.assert_allclose(flat[1], flat[0], rtol=1e-3, atol=1e-4)
