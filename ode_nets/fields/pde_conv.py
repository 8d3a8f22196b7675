"""PDE-motivated convolutional fields (Ruthotto & Haber, "Deep neural networks motivated by partial differential
equations", JMIV 2020; Ruthotto 2019 slides, last part; Richter & Lessig 2021 slides, "networks as PDEs").

With K a 3x3 convolution (a discrete differential operator), K^T its transpose, N a normalisation and sigma an
activation:

- parabolic       dY/dt = -K^T sigma(N(K Y + b))                 (a gradient flow when N is the identity:
                  -grad_Y E with E(Y) = sum Phi(K Y + b), Phi' = sigma, so E never increases; `energy`)
- hyperbolic      d2Y/dt2 = -K^T sigma(N(K Y + b)), written first order as Y' = V, V' = -K^T sigma(N(K Y + b));
                  the state is concat(Y, V) along the channels, and the Verlet solver is then the leapfrog scheme
                  Y_{j+1} = 2 Y_j - Y_{j-1} - h^2 K^T sigma(N(K Y_j + b)), exactly reversible (memory-free gradient
                  with `gradient.strategy: reversible`);
- hamiltonian_conv  Y' = sigma(K^T Z + b), Z' = -sigma(K Y + b): the conv version of `HamiltonianField`; it conserves
                  H = sum Phi(K Y + b) + sum Phi(K^T Z + b) (`energy`) for time-independent K, b;
- resnet_conv     dY/dt = K2 sigma(N(K1 Y + b)), the plain residual conv block, for comparison.

States are (..., C, H, W) (`feature_axis` -3); the two-state fields hold (Y, V) / (Y, Z) as the first / second
half of the channels, so `model.augment` zero channels give Y(0) = (input, 0, ...), V(0) = Z(0) = 0 as in
`HamiltonianField`. Parameters are the physical K, b (not scaled by dt): a step of size h multiplies them by h.
"""

from typing import Callable, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ode_nets.errors import ConfigError
from ode_nets.fields._base import AbstractField
from ode_nets.fields.cubic import CONV_IMPLS, check_conv_impl, conv3x3_transpose
from ode_nets.fields.hamiltonian import split_state
from ode_nets.fields.resnet import activation
from ode_nets.fields.time_params import ParamInit, TimeParam

NORMS = ("none", "instance", "layer")
EPS = 1e-5

# Phi with Phi' = sigma, for the energies: log cosh for tanh, u^2/2 for identity, relu(u)^2/2 for relu.
ANTIDERIVATIVES: dict[str, Callable[[Array], Array]] = {
    "tanh": lambda u: jnp.logaddexp(u, -u) - jnp.log(2.0),
    "identity": lambda u: 0.5 * u * u,
    "relu": lambda u: 0.5 * jax.nn.relu(u) ** 2,
}


def normalise(u: Float[Array, "... C H W"], norm: str) -> Array:
    """N(u): 'none' (identity), 'instance' (each example and channel to mean 0, variance 1 over H, W) or 'layer'
    (each example over C, H, W); no learned scale, the conv's K carries it (Ruthotto & Haber §4)."""
    if norm == "none":
        return u
    axes = (-2, -1) if norm == "instance" else (-3, -2, -1)
    mean = jnp.mean(u, axis=axes, keepdims=True)
    var = jnp.var(u, axis=axes, keepdims=True)
    return (u - mean) * jax.lax.rsqrt(var + EPS)


def split_channels(x: Array) -> tuple[Array, Array]:
    """(Y, Z) halves of the channel axis of x = concat(Y, Z), shape (..., 2C, H, W)."""
    return split_state(x, -3)


def check_conv_options(norm: str, conv_impl: str) -> None:
    """ValueError naming the option if `norm` or `conv_impl` is unknown."""
    if norm not in NORMS:
        raise ValueError(f"model.norm {norm!r} is not one of {', '.join(NORMS)}")
    check_conv_impl(conv_impl)


def even_channels(state_shape: tuple[int, ...], name: str) -> int:
    """C for a two-state field on 2C channels; a ConfigError if the channel count is odd."""
    channels = state_shape[0]
    if channels % 2:
        raise ConfigError(f"model.augment: the {name} field needs an even number of channels (Y, Z halves), got "
                          f"{channels}; set model.augment = 2*C - input channels")
    return channels // 2


def conv_params(params: ParamInit, c_out: int, c_in: int, key: PRNGKeyArray) -> tuple[TimeParam, TimeParam]:
    """A 3x3 kernel K (c_out, c_in, 3, 3) and a bias b (c_out,) per layer, made by `params`."""
    kk, kb = jax.random.split(key)
    return params.make((c_out, c_in, 3, 3), kk), params.make((c_out,), kb)


class AbstractConvPDEField(AbstractField):
    """Shared parts: the layer sigma(N(K Y + b)) and its transpose K^T applied to it; the options."""

    activation: eqx.AbstractVar[str]
    norm: eqx.AbstractVar[str]
    conv_impl: eqx.AbstractVar[str]
    feature_axis: ClassVar[int] = -3
    config_options: ClassVar[tuple[str, ...]] = ("activation", "norm", "conv_impl")

    def __check_init__(self) -> None:
        check_conv_options(self.norm, self.conv_impl)

    def conv(self, kernel: Array, y: Array) -> Array:
        """K y, the 3x3 zero-padded cross-correlation."""
        return CONV_IMPLS[self.conv_impl](y, kernel)

    def conv_transpose(self, kernel: Array, u: Array) -> Array:
        """K^T u: the adjoint of `conv` (flipped kernel, channel axes swapped)."""
        return CONV_IMPLS[self.conv_impl](u, conv3x3_transpose(kernel))

    def layer(self, kernel: Array, bias: Array, y: Array) -> Array:
        """sigma(N(K y + b))."""
        return activation(self.activation)(normalise(self.conv(kernel, y) + bias[:, None, None], self.norm))

    def potential(self, kernel: Array, bias: Array, y: Array) -> Array:
        """sum Phi(K y + b) per example (Phi' = sigma); only defined without normalisation."""
        if self.norm != "none":
            raise ValueError(f"{type(self).__name__}.energy is a gradient-flow energy only for norm 'none'")
        u = self.conv(kernel, y) + bias[:, None, None]
        return jnp.sum(ANTIDERIVATIVES[self.activation](u), axis=(-3, -2, -1))


class AbstractKernelField(AbstractConvPDEField):
    """A field with one kernel K (L, C, C, 3, 3) and bias b (L, C) per layer; `two_state` fields act on (Y, Z) halves
    of 2C channels."""

    K: TimeParam
    b: TimeParam
    activation: str = eqx.field(static=True, default="tanh")
    norm: str = eqx.field(static=True, default="none")
    conv_impl: str = eqx.field(static=True, default="xla_split")
    two_state: ClassVar[bool] = False

    @classmethod
    def init(cls, state_shape: tuple[int, ...], params: ParamInit, key: PRNGKeyArray, *, activation: str = "tanh",
             norm: str = "none", conv_impl: str = "xla_split") -> "AbstractKernelField":
        """K, b for states of `state_shape` = (C, H, W), or (2C, H, W) for a two-state field."""
        channels = even_channels(state_shape, cls.__name__) if cls.two_state else state_shape[0]
        K, b = conv_params(params, channels, channels, key)
        return cls(K=K, b=b, activation=activation, norm=norm, conv_impl=conv_impl)


class ParabolicField(AbstractKernelField):
    """dY/dt = -K(t)^T sigma(N(K(t) Y + b(t))) (Ruthotto & Haber, parabolic CNN); state (..., C, H, W).

    Parameters: K (L, C, C, 3, 3), b (L, C).
    """

    def __call__(self, t: Float[Array, ""], x: Array, args: object = None) -> Array:
        kernel = self.K(t)
        return -self.conv_transpose(kernel, self.layer(kernel, self.b(t), x))

    def energy(self, t: Float[Array, ""], x: Array) -> Array:
        """E(Y) = sum Phi(K Y + b), with dY/dt = -grad E (norm 'none'): non-increasing along a solve."""
        return self.potential(self.K(t), self.b(t), x)


class HyperbolicField(AbstractKernelField):
    """Y' = V, V' = -K(t)^T sigma(N(K(t) Y + b(t))): the second-order Y'' = -K^T sigma(N(K Y + b)) as a separable
    first-order system, state concat(Y, V) on 2C channels. With `solver.method: verlet` it is the leapfrog scheme.

    Parameters: K (L, C, C, 3, 3), b (L, C).
    """

    two_state: ClassVar[bool] = True

    def __call__(self, t: Float[Array, ""], x: Array, args: object = None) -> Array:
        y, v = split_channels(x)
        kernel = self.K(t)
        return jnp.concatenate([v, -self.conv_transpose(kernel, self.layer(kernel, self.b(t), y))], axis=-3)

    def energy(self, t: Float[Array, ""], x: Array) -> Array:
        """Kinetic + potential, |V|^2/2 + sum Phi(K Y + b): conserved by the continuous flow (norm 'none')."""
        y, v = split_channels(x)
        return 0.5 * jnp.sum(v * v, axis=(-3, -2, -1)) + self.potential(self.K(t), self.b(t), y)


class HamiltonianConvField(AbstractKernelField):
    """Y' = sigma(K(t)^T Z + b(t)), Z' = -sigma(K(t) Y + b(t)) (the conv `HamiltonianField`); state concat(Y, Z).

    Parameters: K (L, C, C, 3, 3), b (L, C). With `norm` 'none' (the default) H is conserved for any sigma.
    """

    two_state: ClassVar[bool] = True

    def __call__(self, t: Float[Array, ""], x: Array, args: object = None) -> Array:
        y, z = split_channels(x)
        kernel, bias = self.K(t), self.b(t)
        sigma = activation(self.activation)
        y_dot = sigma(normalise(self.conv_transpose(kernel, z) + bias[:, None, None], self.norm))
        return jnp.concatenate([y_dot, -self.layer(kernel, bias, y)], axis=-3)

    def energy(self, t: Float[Array, ""], x: Array) -> Array:
        """H = sum Phi(K Y + b) + sum Phi(K^T Z + b): dH/dt = <sigma(KY+b), K Y'> + <sigma(K^T Z+b), K^T Z'> = 0."""
        y, z = split_channels(x)
        kernel, bias = self.K(t), self.b(t)
        u = self.conv_transpose(kernel, z) + bias[:, None, None]
        return self.potential(kernel, bias, y) + jnp.sum(ANTIDERIVATIVES[self.activation](u), axis=(-3, -2, -1))


class ResNetConvField(AbstractConvPDEField):
    """dY/dt = K2(t) sigma(N(K1(t) Y + b(t))), the plain residual conv block; hidden channels W = `model.width`
    (0: W = C). Parameters: K1 (L, W, C, 3, 3), b (L, W), K2 (L, C, W, 3, 3)."""

    K1: TimeParam
    b: TimeParam
    K2: TimeParam
    activation: str = eqx.field(static=True, default="tanh")
    norm: str = eqx.field(static=True, default="none")
    conv_impl: str = eqx.field(static=True, default="xla_split")
    config_options: ClassVar[tuple[str, ...]] = ("width", "activation", "norm", "conv_impl")

    def __call__(self, t: Float[Array, ""], x: Array, args: object = None) -> Array:
        return self.conv(self.K2(t), self.layer(self.K1(t), self.b(t), x))

    @classmethod
    def init(cls, state_shape: tuple[int, ...], params: ParamInit, key: PRNGKeyArray, *, width: int = 0,
             activation: str = "tanh", norm: str = "none", conv_impl: str = "xla_split") -> "ResNetConvField":
        channels = state_shape[0]
        hidden = width or channels
        k1, k2 = jax.random.split(key)
        K1, b = conv_params(params, hidden, channels, k1)
        K2 = params.make((channels, hidden, 3, 3), k2)
        return cls(K1=K1, b=b, K2=K2, activation=activation, norm=norm, conv_impl=conv_impl)
