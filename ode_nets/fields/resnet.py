"""Haber–Ruthotto residual vector fields (Ruthotto 2019 slides, "Stability of forward propagation").

Unlike the cubic fields of Ruseckas (eq 110), these fields are *not* scaled by dt: the trainable
leaves are the physical K(t), b(t), and a discretisation with step h multiplies them by h
(forward Euler: Y_{j+1} = Y_j + h f(Y_j, theta_j), the ResNet).
"""

from __future__ import annotations

from typing import Callable, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ode_nets.fields._base import AbstractField
from ode_nets.fields.time_params import ParamInit, TimeParam

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {"tanh": jnp.tanh, "relu": jax.nn.relu,
                                                     "identity": lambda x: x, "softplus": jax.nn.softplus}


def activation(name: str) -> Callable[[Array], Array]:
    """sigma by config name (`model.activation`): tanh (default), relu, identity or softplus."""
    if name not in ACTIVATIONS:
        raise ValueError(f"model.activation: {name!r} is not available (choose from {', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[name]


def square_layer(params: ParamInit, n: int, key: PRNGKeyArray) -> tuple[TimeParam, TimeParam]:
    """K(t) of shape (n, n) and b(t) of shape (n,), made by `params`."""
    kk, kb = jax.random.split(key)
    return params.make((n, n), kk), params.make((n,), kb)


class SingleLayerField(AbstractField):
    """dy/dt = sigma(K(t) y + b(t)), the ResNet layer of the slides (J = diag(sigma'(K y + b)) K).

    State `y`: (..., N). Parameters: K (L, N, N), b (L, N).
    """

    K: TimeParam
    b: TimeParam
    activation: str = eqx.field(static=True, default="tanh")
    feature_axis: ClassVar[int] = -1
    config_options: ClassVar[tuple[str, ...]] = ("activation",)

    def __call__(self, t: Float[Array, ""], y: Array, args: object = None) -> Array:
        return activation(self.activation)(y @ self.K(t).T + self.b(t))

    @classmethod
    def init(cls, state_shape: tuple[int, ...], params: ParamInit, key: PRNGKeyArray, *,
             activation: str = "tanh") -> "SingleLayerField":
        (n,) = state_shape
        K, b = square_layer(params, n, key)
        return cls(K=K, b=b, activation=activation)


class ResNetField(AbstractField):
    """dy/dt = K2(t) sigma(K1(t) y + b(t)), the two-matrix residual block with hidden width `model.width`.

    State `y`: (..., N). Parameters: K1 (L, W, N), b (L, W), K2 (L, N, W); W = `model.width` (0: W = N).
    """

    K1: TimeParam
    b: TimeParam
    K2: TimeParam
    activation: str = eqx.field(static=True, default="tanh")
    feature_axis: ClassVar[int] = -1
    config_options: ClassVar[tuple[str, ...]] = ("width", "activation")

    def __call__(self, t: Float[Array, ""], y: Array, args: object = None) -> Array:
        return activation(self.activation)(y @ self.K1(t).T + self.b(t)) @ self.K2(t).T

    @classmethod
    def init(cls, state_shape: tuple[int, ...], params: ParamInit, key: PRNGKeyArray, *, width: int = 0,
             activation: str = "tanh") -> "ResNetField":
        (n,) = state_shape
        width = width or n
        k1, kb, k2 = jax.random.split(key, 3)
        return cls(K1=params.make((width, n), k1), b=params.make((width,), kb), K2=params.make((n, width), k2),
                   activation=activation)
