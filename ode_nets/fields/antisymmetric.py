"""Antisymmetric ResNet field (Haber & Ruthotto 2017; Ruthotto 2019 slides, "Enforcing stability").

dy/dt = sigma((K(t) - K(t)^T - gamma I) y + b(t)). The Jacobian is diag(sigma'(.)) (K - K^T - gamma I);
for gamma = 0 and where sigma' = 1 (identity activation, or tanh at zero pre-activation) its
eigenvalues are purely imaginary: the continuous forward propagation neither grows nor decays.
gamma > 0 shifts them to real part -gamma (slightly dissipative, as on the slides). Forward Euler
is unstable for purely imaginary eigenvalues (|1 + h i lambda| > 1): use AB3 (`solver.method: ab3`).
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ode_nets.fields._base import AbstractField
from ode_nets.fields.resnet import activation, square_layer
from ode_nets.fields.time_params import ParamInit, TimeParam


class AntisymmetricField(AbstractField):
    """dy/dt = sigma((K(t) - K(t)^T - gamma I) y + b(t)); gamma = `model.gamma`, fixed (not trained).

    State `y`: (..., N). Parameters: K (L, N, N), b (L, N).
    """

    K: TimeParam
    b: TimeParam
    gamma: float = eqx.field(static=True, default=0.0)
    activation: str = eqx.field(static=True, default="tanh")
    feature_axis: ClassVar[int] = -1
    config_options: ClassVar[tuple[str, ...]] = ("gamma", "activation")

    def matrix(self, t: Float[Array, ""]) -> Float[Array, "N N"]:
        """K(t) - K(t)^T - gamma I: antisymmetric, shifted by -gamma."""
        k = self.K(t)
        return k - k.T - self.gamma * jnp.eye(k.shape[-1], dtype=k.dtype)

    def __call__(self, t: Float[Array, ""], y: Array, args: object = None) -> Array:
        return activation(self.activation)(y @ self.matrix(t).T + self.b(t))

    @classmethod
    def init(cls, state_shape: tuple[int, ...], params: ParamInit, key: PRNGKeyArray, *, gamma: float = 0.0,
             activation: str = "tanh") -> "AntisymmetricField":
        (n,) = state_shape
        K, b = square_layer(params, n, key)
        return cls(K=K, b=b, gamma=float(gamma), activation=activation)
