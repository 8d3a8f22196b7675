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

from ode_nets.config import ModelConfig
from ode_nets.fields.time_params import TimeParam, make_param

_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {"tanh": jnp.tanh, "relu": jax.nn.relu,
                                                      "identity": lambda x: x}


def activation(name: str) -> Callable[[Array], Array]:
    """sigma by config name (`model.activation`): tanh (default), relu or identity."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"model.activation: {name!r} is not available (choose from {', '.join(_ACTIVATIONS)})")
    return _ACTIVATIONS[name]


def param_factory(cfg: ModelConfig) -> Callable[..., TimeParam]:
    """`make_param` with the time dependence and initialisation of `cfg` filled in."""
    def make(shape: tuple[int, ...], key: PRNGKeyArray) -> TimeParam:
        return make_param(shape, time_dependent=cfg.time_dependent, layers=cfg.layers, horizon=cfg.horizon,
                          init=cfg.init, scale=cfg.init_scale, key=key)
    return make


def square_layer(cfg: ModelConfig, n: int, key: PRNGKeyArray) -> tuple[TimeParam, TimeParam]:
    """K(t) of shape (n, n) and b(t) of shape (n,), per layer as `cfg` asks."""
    kk, kb = jax.random.split(key)
    make = param_factory(cfg)
    return make((n, n), kk), make((n,), kb)


class SingleLayerField(eqx.Module):
    """dy/dt = sigma(K(t) y + b(t)), the ResNet layer of the slides (J = diag(sigma'(K y + b)) K).

    State `y`: (..., N). Parameters: K (L, N, N), b (L, N).
    """

    K: TimeParam
    b: TimeParam
    activation: str = eqx.field(static=True, default="tanh")
    feature_axis: ClassVar[int] = -1

    def __call__(self, t: Float[Array, ""], y: Array, args: object = None) -> Array:
        return activation(self.activation)(y @ self.K(t).T + self.b(t))

    @classmethod
    def init(cls, cfg: ModelConfig, state_shape: tuple[int, ...], key: PRNGKeyArray) -> "SingleLayerField":
        (n,) = state_shape
        K, b = square_layer(cfg, n, key)
        return cls(K=K, b=b, activation=cfg.activation)


class ResNetField(eqx.Module):
    """dy/dt = K2(t) sigma(K1(t) y + b(t)), the two-matrix residual block with hidden width `model.width`.

    State `y`: (..., N). Parameters: K1 (L, W, N), b (L, W), K2 (L, N, W); W = `model.width` (0: W = N).
    """

    K1: TimeParam
    b: TimeParam
    K2: TimeParam
    activation: str = eqx.field(static=True, default="tanh")
    feature_axis: ClassVar[int] = -1

    def __call__(self, t: Float[Array, ""], y: Array, args: object = None) -> Array:
        return activation(self.activation)(y @ self.K1(t).T + self.b(t)) @ self.K2(t).T

    @classmethod
    def init(cls, cfg: ModelConfig, state_shape: tuple[int, ...], key: PRNGKeyArray) -> "ResNetField":
        (n,) = state_shape
        width = cfg.width or n
        k1, kb, k2 = jax.random.split(key, 3)
        make = param_factory(cfg)
        return cls(K1=make((width, n), k1), b=make((width,), kb), K2=make((n, width), k2), activation=cfg.activation)
