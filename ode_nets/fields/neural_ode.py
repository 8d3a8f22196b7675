"""Neural-ODE vector fields smooth in t, made for adaptive solvers (Chen et al. 2018; Dupont et al. 2019).

Their parameters do not depend on t; t enters as an input (a constant extra channel, or an extra MLP input),
so the field has no jumps at layer boundaries and an adaptive solver steps freely across [0, T].

- `ODENetConvField`: Chen et al.'s ODE-Net block (torchdiffeq `examples/odenet_mnist.py`):
  GroupNorm -> ReLU -> ConcatConv -> GroupNorm -> ReLU -> ConcatConv -> GroupNorm, where ConcatConv is a 3x3
  convolution of [t, x] (t appended as a constant input channel). Its convolutions run inside the solver's while
  loop, where XLA's own CPU convolution is ~20x slower than outside one; `conv_impl` picks the channels-last
  implementation the cubic fields use (`fields.cubic.CONV_IMPLS`, default `xla_split`; docs/neural_odes.md).
- `MLPField`: dx/dt = W3 s(W2 s(W1 [x, t] + b1) + b2) + b3, the ODEFunc of Dupont et al. for dense toy sets.
"""

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float, PRNGKeyArray

from ode_nets.fields._base import AbstractField
from ode_nets.fields.cubic import CONV_IMPLS, check_conv_impl
from ode_nets.fields.resnet import activation
from ode_nets.fields.time_params import ParamInit


def uniform_init(shape: tuple[int, ...], fan_in: int, key: PRNGKeyArray) -> Array:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default for Conv2d and Linear (weights and biases)."""
    bound = 1.0 / fan_in ** 0.5
    return jax.random.uniform(key, shape, minval=-bound, maxval=bound)


def norm_groups(channels: int, max_groups: int = 32) -> int:
    """The most groups, at most `max_groups`, that divide `channels` into groups of at least 2 channels: 32 for
    Chen et al.'s 64 channels (their `norm(dim)`, min(32, C) groups), 16 for 32 channels, 11 for 33 (an augmented
    channel). With one channel per group (min(32, C) at C <= 32) the head's GroupNorm -> ReLU -> average pool sees
    each channel standardised over its own pixels, which leaves its pooled value nearly independent of the input:
    the 32-channel ODE-Net then learned much slower (loss 2.1 vs 1.5 after 80 steps; docs/neural_odes.md)."""
    limit = max(1, min(max_groups, channels // 2))
    return max(g for g in range(1, limit + 1) if channels % g == 0)


class GroupNorm(eqx.Module):
    """GroupNorm over the channel axis -3 of (..., C, H, W), per example (Wu & He 2018), with a per-channel affine."""

    weight: Array
    bias: Array
    groups: int = eqx.field(static=True)
    eps: float = eqx.field(static=True, default=1e-5)

    @classmethod
    def init(cls, channels: int, max_groups: int = 32) -> "GroupNorm":
        """Weight 1, bias 0, `norm_groups(channels)` groups."""
        return cls(jnp.ones(channels), jnp.zeros(channels), norm_groups(channels, max_groups))

    def __call__(self, x: Float[Array, "... C H W"]) -> Float[Array, "... C H W"]:
        channels = x.shape[-3]
        grouped = x.reshape(*x.shape[:-3], self.groups, channels // self.groups, *x.shape[-2:])
        mean = jnp.mean(grouped, axis=(-3, -2, -1), keepdims=True)
        var = jnp.var(grouped, axis=(-3, -2, -1), keepdims=True)
        normed = ((grouped - mean) * lax.rsqrt(var + self.eps)).reshape(x.shape)
        return normed * self.weight[:, None, None] + self.bias[:, None, None]


class Conv(eqx.Module):
    """A 2-D convolution of (..., C, H, W) with bias; `stride`, `padding` static (PyTorch's Conv2d semantics).

    `impl`: None for XLA's `conv_general_dilated` (any size, stride, padding), or a key of `CONV_IMPLS` for a
    3x3, stride 1, padding 1 convolution (the same cross-correlation, fast inside a solver's loop)."""

    kernel: Array  # (O, I, k, k)
    bias: Array  # (O,)
    stride: int = eqx.field(static=True, default=1)
    padding: int = eqx.field(static=True, default=0)
    impl: str | None = eqx.field(static=True, default=None)

    def __check_init__(self) -> None:
        if self.impl is None:
            return
        check_conv_impl(self.impl)
        if self.kernel.shape[-2:] != (3, 3) or self.stride != 1 or self.padding != 1:
            raise ValueError(f"conv_impl {self.impl!r} is a 3x3 convolution with stride 1 and padding 1, not "
                             f"{self.kernel.shape[-1]}x{self.kernel.shape[-1]} / {self.stride} / {self.padding}")

    @classmethod
    def init(cls, in_channels: int, out_channels: int, size: int, key: PRNGKeyArray, *, stride: int = 1,
             padding: int = 0, impl: str | None = None) -> "Conv":
        kk, kb = jax.random.split(key)
        fan_in = in_channels * size * size
        return cls(uniform_init((out_channels, in_channels, size, size), fan_in, kk),
                   uniform_init((out_channels,), fan_in, kb), stride, padding, impl)

    def __call__(self, x: Float[Array, "... C H W"]) -> Array:
        if self.impl is not None:
            return CONV_IMPLS[self.impl](x, self.kernel) + self.bias[:, None, None]
        flat = x.reshape((-1, *x.shape[-3:]))
        pad = [(self.padding, self.padding)] * 2
        out = lax.conv_general_dilated(flat, self.kernel, (self.stride, self.stride), pad,
                                       dimension_numbers=("NCHW", "OIHW", "NCHW"))
        out = out + self.bias[:, None, None]
        return out.reshape((*x.shape[:-3], *out.shape[1:]))


def concat_time(t: Float[Array, ""], x: Float[Array, "... C H W"]) -> Float[Array, "... C+1 H W"]:
    """[t, x]: t as a constant first channel (Chen et al.'s ConcatConv2d)."""
    tt = jnp.full((*x.shape[:-3], 1, *x.shape[-2:]), t, dtype=x.dtype)
    return jnp.concatenate([tt, x], axis=-3)


class ODENetConvField(AbstractField):
    """dx/dt = GN(ConcatConv2(t, s(GN(ConcatConv1(t, s(GN(x))))))), Chen et al.'s ODEfunc; s = `activation`
    (relu in Chen et al.; softplus is smooth). State (..., C, H, W); each conv maps C + 1 channels to C, 3x3, pad 1,
    by `conv_impl` (`model.conv_impl`)."""

    norm1: GroupNorm
    conv1: Conv
    norm2: GroupNorm
    conv2: Conv
    norm3: GroupNorm
    activation: str = eqx.field(static=True, default="relu")
    feature_axis: ClassVar[int] = -3
    config_options: ClassVar[tuple[str, ...]] = ("activation", "conv_impl")

    def __call__(self, t: Float[Array, ""], x: Array, args: object = None) -> Array:
        s = activation(self.activation)
        out = self.conv1(concat_time(t, s(self.norm1(x))))
        out = self.conv2(concat_time(t, s(self.norm2(out))))
        return self.norm3(out)

    @classmethod
    def init(cls, state_shape: tuple[int, ...], params: ParamInit, key: PRNGKeyArray, *, activation: str = "relu",
             conv_impl: str = "xla_split") -> "ODENetConvField":
        """For states (C, H, W); PyTorch's default initialisation (`params` only fixes the grid, not used here)."""
        channels = state_shape[0]
        k1, k2 = jax.random.split(key)
        return cls(GroupNorm.init(channels), Conv.init(channels + 1, channels, 3, k1, padding=1, impl=conv_impl),
                   GroupNorm.init(channels), Conv.init(channels + 1, channels, 3, k2, padding=1, impl=conv_impl),
                   GroupNorm.init(channels), activation=activation)


class Dense(eqx.Module):
    """x @ W.T + b on the last axis (any leading batch axes)."""

    weight: Array
    bias: Array

    @classmethod
    def init(cls, n_in: int, n_out: int, key: PRNGKeyArray, zero: bool = False) -> "Dense":
        kw, kb = jax.random.split(key)
        if zero:
            return cls(jnp.zeros((n_out, n_in)), jnp.zeros(n_out))
        return cls(uniform_init((n_out, n_in), n_in, kw), uniform_init((n_out,), n_in, kb))

    def __call__(self, x: Array) -> Array:
        return x @ self.weight.T + self.bias


class MLPField(AbstractField):
    """dx/dt = W3 s(W2 s(W1 [x, t] + b1) + b2) + b3 (Dupont et al.'s ODEFunc, time-dependent), hidden width
    `model.width` (0: 32), s = `model.activation`. State (..., N)."""

    layer1: Dense
    layer2: Dense
    layer3: Dense
    activation: str = eqx.field(static=True, default="relu")
    feature_axis: ClassVar[int] = -1
    config_options: ClassVar[tuple[str, ...]] = ("width", "activation")

    def __call__(self, t: Float[Array, ""], x: Array, args: object = None) -> Array:
        s = activation(self.activation)
        tx = jnp.concatenate([x, jnp.full((*x.shape[:-1], 1), t, dtype=x.dtype)], axis=-1)
        return self.layer3(s(self.layer2(s(self.layer1(tx)))))

    @classmethod
    def init(cls, state_shape: tuple[int, ...], params: ParamInit, key: PRNGKeyArray, *, width: int = 0,
             activation: str = "relu") -> "MLPField":
        """PyTorch's default initialisation; `model.init: zeros` zeroes the output layer (F = 0 at start, §4.4)."""
        (n,) = state_shape
        width = width or 32
        k1, k2, k3 = jax.random.split(key, 3)
        return cls(Dense.init(n + 1, width, k1), Dense.init(width, width, k2),
                   Dense.init(width, n, k3, zero=params.init == "zeros"), activation=activation)
