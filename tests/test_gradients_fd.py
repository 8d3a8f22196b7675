"""Both gradient strategies against central finite differences in float64."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import central_differences, flat, small_net, trainable_leaves
from ode_nets.losses import cross_entropy, smoothness

TSIT5 = {"method": "tsit5", "rtol": 1e-10, "atol": 1e-12}


def make_net(solver: dict, strategy: str, gamma_learnable: bool = True):
    return small_net((2,), 2, model={"layers": 5, "horizon": 1.0, "augment": 1, "gamma": 0.1,
                                     "learn_gamma": gamma_learnable, "init": "normal", "init_scale": 0.3,
                                     "readout": "sigmoid_last"},
                     solver=solver, gradient={"strategy": strategy})


def batch():
    x = jax.random.normal(jax.random.PRNGKey(1), (6, 2))
    y = jnp.array([0, 1, 1, 0, 1, 0])
    return x, y


def loss(net, x, y):
    return cross_entropy(net(x), y) + 0.7 * smoothness(net)


def autodiff(net, x, y):
    return trainable_leaves(eqx.filter_grad(loss)(net, x, y))


@pytest.mark.parametrize("strategy,solver,rtol", [
    ("discretize_then_optimize", {"method": "euler"}, 1e-7),
    ("discretize_then_optimize", TSIT5, 1e-6),
    ("optimize_then_discretize", TSIT5, 1e-6),
])
def test_gradient_matches_finite_differences(x64, strategy, solver, rtol):
    net = make_net(solver, strategy)
    x, y = batch()
    leaves, fd = central_differences(lambda n: loss(n, x, y), net, n_entries=8, eps=1e-6)
    ad = autodiff(net, x, y)
    assert len(ad) == len(leaves) == 3  # w~, b~, gamma~
    for i, j, value in fd:
        np.testing.assert_allclose(np.asarray(ad[i]).ravel()[j], value, rtol=rtol, atol=1e-8)


def test_optimize_then_discretize_euler_converges_to_the_continuous_gradient(x64):
    """With Euler, the backsolved continuous adjoint is not the exact discrete gradient, but it
    converges to it as the steps shrink (error ~ dt)."""
    x, y = batch()
    errors = []
    for steps in (2, 8, 32):
        solver = {"method": "euler", "steps_per_layer": steps}
        exact = autodiff(make_net(solver, "discretize_then_optimize"), x, y)
        approx = autodiff(make_net(solver, "optimize_then_discretize"), x, y)
        errors.append(np.linalg.norm(flat(approx) - flat(exact)) / np.linalg.norm(flat(exact)))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.25 * errors[0]


def test_fixed_gamma_is_not_trainable():
    net = make_net({}, "discretize_then_optimize", gamma_learnable=False)
    leaves = trainable_leaves(net)
    assert len(leaves) == 2 and isinstance(net.field.gamma, float)
