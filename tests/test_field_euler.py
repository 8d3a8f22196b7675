"""`FieldEuler` (`solver.method: euler`): diffrax's forward Euler (eq 109), with the step taken by the field's own
`euler_step` when it has one; the same map as `diffrax.Euler` otherwise, in either time direction."""

from __future__ import annotations

from typing import ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from helpers import small_net
from ode_nets.fields import AbstractField
from ode_nets.solvers import SOLVERS, FieldEuler


class TimeField(AbstractField):
    """dy/dt = sin(3 t) A y + t: time-dependent, so that the time each step is evaluated at matters."""

    A: jax.Array
    feature_axis: ClassVar[int] = -1

    def __call__(self, t, y, args=None):
        return jnp.sin(3.0 * t) * (y @ self.A.T) + t

    @classmethod
    def init(cls, state_shape, params, key, **options):
        raise NotImplementedError


class CountingStepField(TimeField):
    """The same field whose own Euler step adds 1 to every entry: shows that FieldEuler takes the field's step."""

    def euler_step(self, t, x, args, dt):
        return x + dt * self(t, x, args) + 1.0


FIELD = TimeField(jnp.array([[-0.3, 2.0], [-2.0, -0.3]]))
Y0 = jnp.array([1.0, 0.5])


def euler_solve(solver, field, t0: float, t1: float, steps: int = 8) -> jax.Array:
    sol = diffrax.diffeqsolve(diffrax.ODETerm(field), solver, t0, t1, (t1 - t0) / steps, Y0,
                              saveat=diffrax.SaveAt(steps=True), max_steps=steps)
    return sol.ys


def test_the_config_name_euler_is_field_euler():
    assert SOLVERS["euler"].cls is FieldEuler and issubclass(FieldEuler, diffrax.Euler)


def test_same_steps_as_diffrax_euler_forwards_and_backwards_in_time():
    """The default `euler_step` is diffrax's y0 + dt F(t0, y0) exactly: forward, and for t1 < t0 (diffrax wraps the
    term to flip time; the field must see the same times)."""
    for t0, t1 in ((0.0, 1.5), (1.5, 0.0)):
        got, want = euler_solve(FieldEuler(), FIELD, t0, t1), euler_solve(diffrax.Euler(), FIELD, t0, t1)
        np.testing.assert_array_equal(got, want)


def test_the_fields_own_step_is_taken():
    field = CountingStepField(FIELD.A)
    got, plain = euler_solve(FieldEuler(), field, 0.0, 1.0, steps=4), euler_solve(diffrax.Euler(), field, 0.0, 1.0, 4)
    assert not np.allclose(got, plain)
    y = Y0
    for k in range(4):  # by hand: y_{k+1} = y_k + h F(t_k, y_k) + 1
        y = y + 0.25 * FIELD(0.25 * k, y) + 1.0
        np.testing.assert_allclose(got[k], y, rtol=1e-6)


def test_a_config_built_net_has_the_gradient_of_diffrax_euler():
    """A cubic net solved by `FieldEuler` (the config's `euler`) and by `diffrax.Euler`: equal logits and gradients."""
    net = small_net(model={"field": "cubic", "layers": 4, "init": "normal", "init_scale": 0.5},
                    solver={"method": "euler"})
    assert isinstance(net.solver, FieldEuler)
    plain = eqx.tree_at(lambda m: m.solver, net, diffrax.Euler())
    x = jnp.array([[0.3, -0.7], [1.1, 0.2]])
    loss = lambda m: jnp.sum(m(x) ** 2)  # noqa: E731
    np.testing.assert_array_equal(net(x), plain(x))
    for a, b in zip(jax.tree_util.tree_leaves(eqx.filter_grad(loss)(net)),
                    jax.tree_util.tree_leaves(eqx.filter_grad(loss)(plain))):
        np.testing.assert_array_equal(a, b)
