"""Continuous-in-t vector fields for continuous normalizing flows and latent ODEs.

`ConcatSquashField` is FFJORD's field (Grathwohl et al. 2019, their "concatsquash" layers): every layer is
`(W h + b) * sigmoid(w_g t + b_g) + w_b t`, so t enters each layer smoothly, with no layer grid. `AutonomousMLPField` is an
autonomous tanh MLP, dz/dt = f(z), the latent dynamics of Chen et al. (2018, §5). Both take states with any
leading batch axes (features last).
"""

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ode_nets.fields._base import AbstractField
from ode_nets.fields.resnet import activation
from ode_nets.fields.time_params import ParamInit


class ConcatSquashLinear(eqx.Module):
    """One FFJORD concat-squash layer: (W h + b) * sigmoid(w_g t + b_g) + w_b t."""

    linear: eqx.nn.Linear
    gate_weight: Array
    gate_bias: Array
    time_bias: Array

    @classmethod
    def init(cls, n_in: int, n_out: int, key: PRNGKeyArray, zero: bool = False) -> "ConcatSquashLinear":
        """Lecun-uniform `W`, `b` (zeros if `zero`: the layer then outputs 0 and the flow starts as the identity)."""
        k_lin, k_gate, k_time = jax.random.split(key, 3)
        linear = eqx.nn.Linear(n_in, n_out, key=k_lin)
        if zero:
            linear = eqx.tree_at(lambda m: (m.weight, m.bias), linear,
                                 (jnp.zeros_like(linear.weight), jnp.zeros_like(linear.bias)))
        gate = jax.random.uniform(k_gate, (n_out,), minval=-1.0, maxval=1.0)
        time_bias = jnp.zeros(n_out) if zero else 0.1 * jax.random.normal(k_time, (n_out,))
        return cls(linear, gate, jnp.zeros(n_out), time_bias)

    def __call__(self, t: Float[Array, ""], h: Array) -> Array:
        out = h @ self.linear.weight.T + self.linear.bias
        return out * jax.nn.sigmoid(self.gate_weight * t + self.gate_bias) + self.time_bias * t


class ConcatSquashField(AbstractField):
    """dx/dt = F(t, x): concat-squash layers with an activation between them (FFJORD's CNF field).

    t is an input of every layer (no piecewise-constant parameters, so adaptive solvers are not clipped at layer
    boundaries). With `ParamInit.init == "zeros"` the last layer starts at zero: F = 0, the identity flow.
    """

    layers: tuple[ConcatSquashLinear, ...]
    activation: str = eqx.field(static=True, default="tanh")
    feature_axis: ClassVar[int] = -1
    config_options: ClassVar[tuple[str, ...]] = ("width", "activation")

    def __call__(self, t: Float[Array, ""], x: Array, args: object = None) -> Array:
        h = x
        for layer in self.layers[:-1]:
            h = activation(self.activation)(layer(t, h))
        return self.layers[-1](t, h)

    @classmethod
    def init(cls, state_shape: tuple[int, ...], params: ParamInit, key: PRNGKeyArray, *, width: int = 0,
             activation: str = "tanh", hidden_layers: int = 2) -> "ConcatSquashField":
        """`hidden_layers` hidden layers of `width` units (0: 64) on states of shape (n,)."""
        (n,) = state_shape
        sizes = [n] + [width or 64] * hidden_layers + [n]
        keys = jax.random.split(key, len(sizes) - 1)
        layers = tuple(ConcatSquashLinear.init(a, b, k, zero=(i == len(keys) - 1 and params.init == "zeros"))
                       for i, (a, b, k) in enumerate(zip(sizes[:-1], sizes[1:], keys)))
        return cls(layers, activation)


class AutonomousMLPField(AbstractField):
    """dz/dt = f(z), an autonomous tanh MLP (the latent dynamics of a latent ODE, Chen et al. 2018 §5)."""

    mlp: eqx.nn.MLP
    feature_axis: ClassVar[int] = -1

    def __call__(self, t: Float[Array, ""], z: Array, args: object = None) -> Array:
        flat = z.reshape(-1, z.shape[-1])
        return jax.vmap(self.mlp)(flat).reshape(z.shape)

    @classmethod
    def init(cls, state_shape: tuple[int, ...], params: ParamInit, key: PRNGKeyArray, *, width: int = 0,
             hidden_layers: int = 2) -> "AutonomousMLPField":
        """`hidden_layers` tanh layers of `width` units (0: 64) on states of shape (n,)."""
        (n,) = state_shape
        return cls(eqx.nn.MLP(n, n, width or 64, hidden_layers, activation=jnp.tanh, key=key))
