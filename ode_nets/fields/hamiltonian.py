"""Hamiltonian-like two-state field (Ruthotto 2019 slides, "Verlet integration for Hamiltonian-inspired NNs").

    dy/dt =  sigma(K(t)^T z + b(t)),      dz/dt = -sigma(K(t) y + b(t)).

The state is one array x = concat(y, z) along the last axis (y: first half, z: second half), so the
ODENet machinery (augment, solve, linear readout) is unchanged: with inputs of dimension d and
`model.augment = 2 m - d`, y(0) = (input, 0, ..., 0) has m = `width` entries and z(0) = 0 (Z_{-1/2} = 0
on the slides). dy/dt depends only on z and dz/dt only on y (a separable system), which is what the
Verlet / leapfrog discretisation (`ode_nets.solvers.verlet`) exploits; it is exactly reversible.
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ode_nets.errors import ConfigError
from ode_nets.fields._base import AbstractField
from ode_nets.fields.resnet import activation, square_layer
from ode_nets.fields.time_params import ParamInit, TimeParam


def split_state(x: Array, axis: int = -1) -> tuple[Array, Array]:
    """(y, z) halves of x = concat(y, z) along `axis` (-1: dense fields; -3: the channels of conv fields)."""
    y, z = jnp.split(x, 2, axis=axis)
    return y, z


class HamiltonianField(AbstractField):
    """d/dt (y, z) = (sigma(K^T z + b), -sigma(K y + b)); state concat(y, z) of shape (..., 2m).

    Parameters: K (L, m, m), b (L, m).
    """

    K: TimeParam
    b: TimeParam
    activation: str = eqx.field(static=True, default="tanh")
    feature_axis: ClassVar[int] = -1
    config_options: ClassVar[tuple[str, ...]] = ("activation",)

    def y_dot(self, t: Float[Array, ""], z: Array) -> Array:
        """dy/dt = sigma(K(t)^T z + b(t)); depends on z only."""
        return activation(self.activation)(z @ self.K(t) + self.b(t))

    def z_dot(self, t: Float[Array, ""], y: Array) -> Array:
        """dz/dt = -sigma(K(t) y + b(t)); depends on y only."""
        return -activation(self.activation)(y @ self.K(t).T + self.b(t))

    def __call__(self, t: Float[Array, ""], x: Array, args: object = None) -> Array:
        y, z = split_state(x)
        return jnp.concatenate([self.y_dot(t, z), self.z_dot(t, y)], axis=-1)

    @classmethod
    def init(cls, state_shape: tuple[int, ...], params: ParamInit, key: PRNGKeyArray, *,
             activation: str = "tanh") -> "HamiltonianField":
        (n,) = state_shape
        if n % 2:
            raise ConfigError(f"model.augment: the hamiltonian field needs an even state (y, z), got {n} dimensions; "
                             f"set model.augment = 2*width - input dimension")
        K, b = square_layer(params, n // 2, key)
        return cls(K=K, b=b, activation=activation)
