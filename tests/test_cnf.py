"""Continuous normalizing flows (Ruseckas eq 28; FFJORD): the exact-trace log-density of a linear field against the
closed form, Hutchinson's estimator unbiased (per evaluation and through a whole solve with its probe fixed),
sampling inverts the density map, and a briefly trained 2-D density integrates to 1 on a grid."""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ode_nets as on
from ode_nets.continuous.cnf import CNF, NegativeLogLikelihood, standard_normal_log_density
from ode_nets.continuous.data import DENSITIES, density_data
from ode_nets.continuous.experiments import density_grid, log_density
from ode_nets.continuous.trace import ExactTrace, HutchinsonTrace
from ode_nets.continuous.training import continuous_step, random_batch
from ode_nets.fields.concat_squash import ConcatSquashField


class LinearField(on.AbstractField):
    """dx/dt = A x: the flow map is exp(A t), log det = t Tr A."""

    A: jax.Array
    feature_axis: ClassVar[int] = -1

    def __call__(self, t, x, args=None):
        return x @ self.A.T

    @classmethod
    def init(cls, state_shape, params, key):
        (n,) = state_shape
        return cls(jax.random.normal(key, (n, n)))


def tight(estimator=ExactTrace(), **kwargs) -> dict:
    return dict(estimator=estimator, stepping=on.AdaptiveSteps(rtol=1e-10, atol=1e-10), **kwargs)


def random_field(dim: int, key: jax.Array, width: int = 16) -> ConcatSquashField:
    return ConcatSquashField.init((dim,), on.ParamInit(init="normal"), key, width=width)


def test_exact_trace_log_density_of_a_linear_field_is_the_closed_form(x64):
    """log p(x) = log N(exp(AT) x) + log det exp(AT) = log N(exp(AT) x) + T Tr A."""
    A = jax.random.normal(jax.random.PRNGKey(0), (3, 3)) * 0.7
    T = 1.3
    cnf = CNF(LinearField(A), horizon=T, **tight())
    x = jax.random.normal(jax.random.PRNGKey(1), (6, 3))
    z = x @ jax.scipy.linalg.expm(A * T).T
    expected = standard_normal_log_density(z) + T * jnp.trace(A)
    np.testing.assert_allclose(cnf.log_prob(x), expected, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(cnf.transform(x), z, rtol=1e-9, atol=1e-9)
    assert np.isclose(float(jnp.linalg.slogdet(jax.scipy.linalg.expm(A * T))[1]), T * float(jnp.trace(A)))


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_hutchinson_estimate_is_unbiased(x64, distribution):
    """Mean of v^T J v over many probes is within 3 standard errors of Tr J (a nonlinear field in 5-D)."""
    field = random_field(5, jax.random.PRNGKey(2))
    x = jax.random.normal(jax.random.PRNGKey(3), (5,))
    f = lambda y: field(0.4, y)  # noqa: E731
    _, exact = ExactTrace()(f, x)
    assert np.isclose(float(exact), float(jnp.trace(jax.jacfwd(f)(x))), rtol=1e-12)
    estimator = HutchinsonTrace(distribution)
    probes = estimator.probe(jax.random.PRNGKey(4), (20000, 5))
    _, estimates = estimator(f, jnp.broadcast_to(x, probes.shape), probes)
    sem = float(jnp.std(estimates)) / np.sqrt(len(estimates))
    assert sem > 0
    assert abs(float(jnp.mean(estimates)) - float(exact)) < 3 * sem


def test_hutchinson_through_the_solve_is_unbiased_with_one_probe_per_sample(x64):
    """With one probe per sample fixed over the solve, the log-density estimate averages to the exact one; the
    same key gives the same estimate (the probe is not resampled)."""
    field = random_field(3, jax.random.PRNGKey(5), width=8)
    x = jax.random.normal(jax.random.PRNGKey(6), (1, 3))
    stepping = on.AdaptiveSteps(rtol=1e-8, atol=1e-8)
    exact = float(CNF(field, stepping=stepping).log_prob(x)[0])
    hutch = CNF(field, HutchinsonTrace(), stepping=stepping)
    many = jnp.broadcast_to(x, (2000, 3))
    estimates = hutch.log_prob(many, jax.random.PRNGKey(7))
    sem = float(jnp.std(estimates)) / np.sqrt(len(estimates))
    assert abs(float(jnp.mean(estimates)) - exact) < 3 * sem
    np.testing.assert_array_equal(hutch.log_prob(many[:5], jax.random.PRNGKey(8)),
                                  hutch.log_prob(many[:5], jax.random.PRNGKey(8)))


def test_sampling_inverts_the_density_map(x64):
    """transform(sample) returns the base points: the reversed solve is the inverse flow."""
    cnf = CNF(random_field(2, jax.random.PRNGKey(9)), **tight())
    key = jax.random.PRNGKey(10)
    z = jax.random.normal(key, (7, 2))
    np.testing.assert_allclose(cnf.transform(cnf.sample(key, 7, 2)), z, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("name", list(DENSITIES))
def test_densities_are_seeded(name):
    a, b = density_data(name, jax.random.PRNGKey(0), 50, 20)
    assert a.shape == (50, 2) and b.shape == (20, 2) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, density_data(name, jax.random.PRNGKey(0), 50, 20)[0])


def test_learned_density_integrates_to_one():
    """A CNF trained for 25 steps on eight Gaussians: held-out NLL falls, and the density (exact trace)
    summed over a 100 x 100 grid on [-7, 7]^2 is 1 +- 0.02."""
    train, test = density_data("eight_gaussians", jax.random.PRNGKey(0), 2000, 500)
    field = ConcatSquashField.init((2,), on.ParamInit(init="zeros"), jax.random.PRNGKey(1), width=16)
    model = CNF(field, HutchinsonTrace(), stepping=on.AdaptiveSteps(rtol=1e-4, atol=1e-4))
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    before = -log_density(model, test, 500)[0].mean()
    for step in range(25):
        batch = random_batch(train, 128, jax.random.PRNGKey(step))
        model, opt_state, _ = continuous_step(NegativeLogLikelihood(), optimizer, model, opt_state, batch,
                                              jax.random.PRNGKey(1000 + step))
    model = eqx.tree_at(lambda m: m.stepping, model, on.AdaptiveSteps(rtol=1e-6, atol=1e-6))
    after = -log_density(model, test, 500)[0].mean()
    assert after < before - 0.1
    grid, area = density_grid(7.0, 100)
    log_p, _ = log_density(model, grid, 5000)
    assert abs(float(np.exp(log_p).sum() * area) - 1.0) < 0.02
