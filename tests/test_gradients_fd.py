"""Both gradient strategies against central finite differences in float64."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ode_nets.config import GradientConfig, ModelConfig, SolverConfig
from ode_nets.losses import cross_entropy, smoothness
from ode_nets.models import build_model


def make_net(x64, solver: SolverConfig, strategy: str, gamma_learnable: bool = True):
    model = ModelConfig(layers=5, horizon=1.0, augment=1, gamma=0.1, learn_gamma=gamma_learnable,
                        init="normal", init_scale=0.3, readout="sigmoid_last")
    return build_model(model, solver, GradientConfig(strategy=strategy), (2,), 2, jax.random.PRNGKey(0))


def batch():
    x = jax.random.normal(jax.random.PRNGKey(1), (6, 2))
    y = jnp.array([0, 1, 1, 0, 1, 0])
    return x, y


def loss(net, x, y):
    return cross_entropy(net(x), y) + 0.7 * smoothness(net)


def central_differences(net, x, y, n_entries: int = 8, eps: float = 1e-6):
    """d loss / d theta for the first `n_entries` entries of every trainable leaf."""
    params, static = eqx.partition(net, eqx.is_inexact_array)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    grads = []
    for i, leaf in enumerate(leaves):
        flat = np.asarray(leaf).ravel()
        for j in range(min(n_entries, flat.size)):
            def shifted(delta):
                new = flat.copy()
                new[j] += delta
                new_leaves = list(leaves)
                new_leaves[i] = jnp.asarray(new.reshape(leaf.shape))
                return float(loss(eqx.combine(jax.tree_util.tree_unflatten(treedef, new_leaves), static), x, y))
            grads.append((i, j, (shifted(eps) - shifted(-eps)) / (2 * eps)))
    return leaves, grads


def autodiff(net, x, y):
    g = eqx.filter_grad(loss)(net, x, y)
    return jax.tree_util.tree_leaves(eqx.filter(g, eqx.is_inexact_array))


@pytest.mark.parametrize("strategy,solver,rtol", [
    ("discretize_then_optimize", SolverConfig(method="euler"), 1e-7),
    ("discretize_then_optimize", SolverConfig(method="tsit5", rtol=1e-10, atol=1e-12), 1e-6),
    ("optimize_then_discretize", SolverConfig(method="tsit5", rtol=1e-10, atol=1e-12), 1e-6),
])
def test_gradient_matches_finite_differences(x64, strategy, solver, rtol):
    net = make_net(x64, solver, strategy)
    x, y = batch()
    leaves, fd = central_differences(net, x, y)
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
        solver = SolverConfig(method="euler", steps_per_layer=steps)
        exact = autodiff(make_net(x64, solver, "discretize_then_optimize"), x, y)
        approx = autodiff(make_net(x64, solver, "optimize_then_discretize"), x, y)
        flat = lambda t: np.concatenate([np.ravel(a) for a in t])  # noqa: E731
        errors.append(np.linalg.norm(flat(approx) - flat(exact)) / np.linalg.norm(flat(exact)))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.25 * errors[0]


def test_fixed_gamma_is_not_trainable():
    net = make_net(None, SolverConfig(), "discretize_then_optimize", gamma_learnable=False)
    leaves = jax.tree_util.tree_leaves(eqx.filter(net, eqx.is_inexact_array))
    assert len(leaves) == 2 and isinstance(net.field.gamma, float)
