"""Regularised dynamics (Finlay et al. 2020, "How to train your neural ODE"; Kelly et al. 2020): the kinetic energy
int_0^T ||F(t, x)||^2 dt and the Jacobian Frobenius norm int_0^T ||dF/dx||_F^2 dt, integrated along the solve as
extra state so that an adaptive solver controls their error too.

The Frobenius norm is Hutchinson's estimate ||dF/dx||_F^2 = E ||eps^T dF/dx||^2 for eps ~ N(0, I), with one probe
eps drawn per solve and fixed over it (Finlay et al. §4): one vector-Jacobian product per evaluation.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ode_nets.fields._base import AbstractField

State = tuple[Array, Array, Array]


def per_example_square(a: Array) -> Float[Array, " B"]:
    """sum of squares over every axis but the leading batch axis."""
    return jnp.sum(jnp.reshape(a * a, (a.shape[0], -1)), axis=1)


class Regularised(eqx.Module):
    """The field on the state (x, E, J): dx/dt = F(t, x), dE/dt = ||F||^2, dJ/dt = ||eps^T dF/dx||^2, per example
    (x batch first; E, J of shape (batch,)). `probe` is eps, the shape of x."""

    field: AbstractField
    probe: Array

    def initial_state(self, x0: Array) -> State:
        """(x0, 0, 0)."""
        zeros = jnp.zeros(x0.shape[:1], x0.dtype)
        return x0, zeros, zeros

    def __call__(self, t: Float[Array, ""], state: State, args: object = None) -> State:
        x = state[0]
        f, vjp = jax.vjp(lambda y: self.field(t, y, args), x)
        (eps_jacobian,) = vjp(self.probe)
        return f, per_example_square(f), per_example_square(eps_jacobian)
