"""Stability constant M and adversarial perturbations (ode_nets.analysis.stability), the slides' tanh toy, the
double-descent experiment (ode_nets.experiments.double_descent) and the digits data set, against closed forms."""

from __future__ import annotations

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ode_nets.analysis.stability import (amplification, fgsm, pgd, random_sign_perturbation, tanh_toy_flow,
                                         toy_matrices)
from ode_nets.data.digits import load_digits
from ode_nets.experiments import double_descent as dd
from ode_nets.experiments.pde_cnns import combine_batches, toy_amplification

W = jnp.array([[1.0, -2.0, 0.5], [0.0, 1.0, -1.0]])  # a linear classifier with 2 classes on 3 inputs


def linear_loss(x, y):
    return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(x @ W.T, y))


def test_amplification_of_a_linear_map():
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 2, 3, 3))
    x_tilde = random_sign_perturbation(jax.random.PRNGKey(1), x, 0.1)
    assert np.allclose(jnp.max(jnp.abs(x_tilde - x)), 0.1)
    assert np.allclose(amplification(lambda v: -3.0 * v, x, x_tilde), 3.0)


def test_fgsm_is_the_sign_of_the_closed_form_gradient():
    x = jax.random.normal(jax.random.PRNGKey(2), (5, 3))
    y = jnp.array([0, 1, 1, 0, 1])
    grad = (jax.nn.softmax(x @ W.T) - jax.nn.one_hot(y, 2)) @ W  # d CE / dx for logits W x
    assert np.allclose(fgsm(linear_loss, x, y, 0.05), x + 0.05 * jnp.sign(grad))


def test_pgd_stays_in_the_ball_and_raises_the_loss():
    x = jax.random.normal(jax.random.PRNGKey(3), (5, 3))
    y = jnp.array([0, 1, 1, 0, 1])
    x_adv = pgd(linear_loss, x, y, 0.1, steps=4)
    assert float(jnp.max(jnp.abs(x_adv - x))) <= 0.1 + 1e-6
    assert float(linear_loss(x_adv, y)) > float(linear_loss(x, y))
    # a linear model's loss is maximised at the corner FGSM picks: PGD ends there too
    assert np.allclose(x_adv, fgsm(linear_loss, x, y, 0.1), atol=1e-6)


def test_combine_batches():
    out = combine_batches([(1, {"acc": 1.0, "pgd_M_max": 2.0}), (3, {"acc": 0.0, "pgd_M_max": 5.0})])
    assert out == {"acc": 0.25, "pgd_M_max": 5.0}


def test_tanh_toy():
    k = toy_matrices(jax.random.PRNGKey(0), layers=20, antisymmetric=True, gamma=0.1)
    assert np.allclose(k + jnp.swapaxes(k, 1, 2), -0.2 * jnp.eye(2))
    points = jnp.stack(jnp.meshgrid(jnp.linspace(-1, 1, 3), jnp.linspace(-1, 1, 3)), -1).reshape(-1, 2)
    flow = np.asarray(tanh_toy_flow(k, points, h=0.1))
    assert flow.shape == (21, 9, 2) and np.allclose(flow[0], points)
    identity = np.asarray(tanh_toy_flow(jnp.zeros((20, 2, 2)), points))  # K = 0: nothing moves, M = 1
    assert toy_amplification(identity, 3) == {"M_min": 1.0, "M_median": 1.0, "M_max": 1.0}


def test_least_squares_solutions():
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-1, 1, 6), rng.normal(size=6)
    phi = dd.features(x, 15)
    a = dd.min_norm(phi, y)
    assert np.allclose(a, np.linalg.pinv(phi) @ y) and np.allclose(phi @ a, y)  # interpolates beyond M = N
    assert np.allclose(dd.gradient_descent(phi, y, 20000), a, atol=1e-6)  # from 0 it converges to the min-norm one
    lam = 0.1
    assert np.allclose(dd.ridge(phi, y, lam), np.linalg.solve(phi.T @ phi + lam * np.eye(15), phi.T @ y))
    grid = np.linspace(-1, 1, 20001)
    gram = dd.features(grid, 4, decay=0.0).T @ dd.features(grid, 4, decay=0.0) / len(grid)
    assert np.allclose(gram, np.eye(4), atol=2e-3)  # Legendre features: orthonormal in mean square on [-1, 1]


def test_risk_curves_shape_and_threshold():
    setup = dd.DoubleDescent(n_points=6, ms=(2, 6, 40), draws=2, gd_steps=100)
    curves = dd.risk_curves(setup)
    assert set(curves) == {"min_norm", "gradient_descent", "ridge"}
    assert curves["min_norm"]["train_mean"][1] < 1e-20 and curves["min_norm"]["train_mean"][2] < 1e-20
    assert curves["min_norm"]["test_median"][1] > curves["min_norm"]["test_median"][2]  # the peak at M = N


def test_digits_split():
    options = SimpleNamespace(n_train=1000, n_test=300)
    data = load_digits(options, jax.random.PRNGKey(0), jax.random.PRNGKey(1))
    assert data.train.x.shape == (1000, 1, 8, 8) and data.test.x.shape == (300, 1, 8, 8)
    assert 0.0 <= data.train.x.min() and data.train.x.max() <= 1.0 and data.num_classes == 10
    train_rows = {row.tobytes() for row in data.train.x}
    assert sum(row.tobytes() in train_rows for row in data.test.x) < 5  # disjoint (a few digits repeat in the set)
