"""The cubic vector fields of Ruseckas (2019): dense eqs 56/57 and convolutional eq 75.

Trainable leaves are the *scaled* parameters of eq 110, w~ = dt*w, b~ = dt*b, gamma~ = dt*gamma:
the ones the paper trains, regularises (eq 113) and plots (Figs 3, 4, 6). The field returns
dx/dt = (w~ x + b~ - gamma~ x^3) / dt, so one Euler step of size dt is exactly the residual
layer x + w~ x + b~ - gamma~ x^3 of eq 109, for any horizon T.
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float, PRNGKeyArray

from ode_nets.config import ModelConfig
from ode_nets.fields.time_params import TimeParam, make_param


def odd_power(x: Array, mu: float) -> Array:
    """sign(x)|x|^mu (eq 57); exactly x^3 for mu = 3 (eq 56)."""
    if mu == 3.0:
        return x * x * x
    return jnp.sign(x) * jnp.abs(x) ** mu


def make_gamma(cfg: ModelConfig) -> Array | float:
    """Learnable gamma~ is an array leaf; a fixed one is a Python float, which no optimizer sees."""
    return jnp.asarray(cfg.gamma, dtype=float) if cfg.learn_gamma else float(cfg.gamma)


class CubicField(eqx.Module):
    """dx_i/dt = sum_j w_ij(t) x_j + b_i(t) - gamma sign(x_i)|x_i|^mu (eqs 56, 57), scaled by eq 110.

    State `x`: (..., N). Parameters: w~ (L, N, N), b~ (L, N) or (N, N), (N,) if time-independent.
    """

    w: TimeParam
    b: TimeParam
    gamma: Array | float
    dt: float = eqx.field(static=True)
    mu: float = eqx.field(static=True, default=3.0)
    feature_axis: ClassVar[int] = -1

    def __call__(self, t: Float[Array, ""], x: Array, args: object = None) -> Array:
        """dx/dt at time t (eq 56)."""
        affine = x @ self.w(t).T + self.b(t)
        return (affine - self.gamma * odd_power(x, self.mu)) / self.dt

    def jacobian(self, t: Float[Array, ""], x: Float[Array, " N"]) -> Float[Array, "N N"]:
        """dF_i/dx_j = (w~_ij - mu gamma~ delta_ij |x_j|^(mu-1)) / dt (eq 61)."""
        nonlinear = self.mu * self.gamma * jnp.abs(x) ** (self.mu - 1)
        return (self.w(t) - jnp.diag(nonlinear)) / self.dt

    @classmethod
    def init(cls, cfg: ModelConfig, state_shape: tuple[int, ...], key: PRNGKeyArray) -> "CubicField":
        """Build from a model config for a state of shape (N,)."""
        (n,) = state_shape
        kw, kb = jax.random.split(key)
        common = dict(time_dependent=cfg.time_dependent, layers=cfg.layers, horizon=cfg.horizon,
                      init=cfg.init, scale=cfg.init_scale)
        return cls(w=make_param((n, n), key=kw, **common), b=make_param((n,), key=kb, **common),
                   gamma=make_gamma(cfg), dt=cfg.dt, mu=cfg.mu)


def conv3x3_xla(x: Float[Array, "... C H W"], kernel: Float[Array, "O C 3 3"]) -> Float[Array, "... O H W"]:
    """3x3 cross-correlation with zero ('SAME') padding via `lax.conv_general_dilated` (eq 72)."""
    batch_shape = x.shape[:-3]
    flat = x.reshape((-1, *x.shape[-3:]))
    out = lax.conv_general_dilated(flat, kernel, (1, 1), "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW"))
    return out.reshape((*batch_shape, *out.shape[1:]))


def conv3x3_im2col(x: Float[Array, "... C H W"], kernel: Float[Array, "O C 3 3"]) -> Float[Array, "... O H W"]:
    """The same cross-correlation as one matmul over the 9 shifted copies (im2col).

    XLA's CPU convolution is slow for ~10 channels; the patches-matmul is faster there.
    """
    height, width = x.shape[-2:]
    pad = [(0, 0)] * (x.ndim - 2) + [(1, 1), (1, 1)]
    padded = jnp.pad(x, pad)
    patches = jnp.stack([padded[..., i:i + height, j:j + width] for i in range(3) for j in range(3)], axis=-3)
    out_channels, in_channels = kernel.shape[:2]
    return jnp.einsum("...cphw,ocp->...ohw", patches, kernel.reshape(out_channels, in_channels, 9))


def _patches_nhwc(x: Float[Array, "B H W C"]) -> Float[Array, "BHW 9C"]:
    """The 9 shifted copies of the zero-padded image side by side, columns ordered (i, j, c)."""
    height, width = x.shape[1:3]
    padded = jnp.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)])
    patches = jnp.concatenate([padded[:, i:i + height, j:j + width, :] for i in range(3) for j in range(3)], axis=-1)
    return patches.reshape(-1, patches.shape[-1])


def conv3x3_im2col_nhwc(x: Float[Array, "... C H W"], kernel: Float[Array, "O C 3 3"]) -> Float[Array, "... O H W"]:
    """The same cross-correlation in channels-last layout: one (B*H*W, 9C) x (9C, O) matmul.

    The state is transposed to NHWC and back around the matmul; faster than `xla` and `im2col` inside
    a solve on the CPU, slower than `xla_split` (measurements in docs/mnist.md, docs/performance.md).
    """
    channels, height, width = x.shape[-3:]
    out_channels = kernel.shape[0]
    nhwc = jnp.moveaxis(x.reshape((-1, channels, height, width)), 1, -1)
    matrix = jnp.transpose(kernel, (2, 3, 1, 0)).reshape(9 * channels, out_channels)  # rows ordered (i, j, c)
    out = (_patches_nhwc(nhwc) @ matrix).reshape((*nhwc.shape[:-1], out_channels))
    return jnp.moveaxis(out, -1, 1).reshape((*x.shape[:-3], out_channels, height, width))


def _conv_nhwc(x: Float[Array, "B H W C"], kernel: Float[Array, "3 3 C O"], lanes: int = 8) -> Float[Array, "B H W O"]:
    """XLA's 3x3 convolution, channels zero-padded to a multiple of `lanes` (10 -> 16 runs faster on the CPU)."""
    channels, out_channels = kernel.shape[2:]
    pad_in, pad_out = -channels % lanes, -out_channels % lanes
    x = jnp.pad(x, [(0, 0)] * 3 + [(0, pad_in)])
    kernel = jnp.pad(kernel, [(0, 0), (0, 0), (0, pad_in), (0, pad_out)])
    out = lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return out[..., :out_channels]


@jax.custom_vjp
def conv3x3_nhwc_split(x: Float[Array, "B H W C"], kernel: Float[Array, "3 3 C O"]) -> Float[Array, "B H W O"]:
    """NHWC 3x3 cross-correlation whose gradient avoids XLA's slow kernel-gradient convolution."""
    return _conv_nhwc(x, kernel)


def _conv_split_fwd(x: Array, kernel: Array) -> tuple[Array, tuple[Array, Array]]:
    return _conv_nhwc(x, kernel), (x, kernel)


def _conv_split_bwd(res: tuple[Array, Array], g: Array) -> tuple[Array, Array]:
    """Input gradient: the transposed conv (flipped kernel, in/out swapped); kernel gradient: patches^T g."""
    x, kernel = res
    dx = _conv_nhwc(g, jnp.swapaxes(kernel[::-1, ::-1], 2, 3))
    return dx, _kernel_gradient(x, g).reshape(kernel.shape)


def _kernel_gradient(x: Float[Array, "B H W C"], g: Float[Array, "B H W O"], chunk: int = 4) -> Float[Array, "9C O"]:
    """sum over pixels of patches(x)^T g, `chunk` images at a time so that the patches stay in cache."""
    batch = x.shape[0]
    if batch % chunk:
        return _patches_nhwc(x).T @ g.reshape(-1, g.shape[-1])

    def add_chunk(total: Array, xg: tuple[Array, Array]) -> tuple[Array, None]:
        xc, gc = xg
        return total + _patches_nhwc(xc).T @ gc.reshape(-1, gc.shape[-1]), None

    split = lambda a: a.reshape(batch // chunk, chunk, *a.shape[1:])  # noqa: E731
    zeros = jnp.zeros((9 * x.shape[-1], g.shape[-1]), x.dtype)
    return lax.scan(add_chunk, zeros, (split(x), split(g)))[0]


conv3x3_nhwc_split.defvjp(_conv_split_fwd, _conv_split_bwd)


def conv3x3_xla_split(x: Float[Array, "... C H W"], kernel: Float[Array, "O C 3 3"]) -> Float[Array, "... O H W"]:
    """XLA's convolution in channels-last layout for the output and input gradient, im2col for the kernel gradient.

    Inside a while loop (every diffrax solve) XLA's CPU layout assignment keeps the loop's NCHW layout and
    its convolution is several times slower than in NHWC; its kernel-gradient convolution is slow in any
    layout (docs/performance.md, profiling findings 1-2). Same cross-correlation as `conv3x3_xla`.
    """
    channels, height, width = x.shape[-3:]
    nhwc = jnp.moveaxis(x.reshape((-1, channels, height, width)), 1, -1)
    out = conv3x3_nhwc_split(nhwc, jnp.transpose(kernel, (2, 3, 1, 0)))
    return jnp.moveaxis(out, -1, 1).reshape((*x.shape[:-3], kernel.shape[0], height, width))


_CONV_IMPLS = {"xla": conv3x3_xla, "im2col": conv3x3_im2col, "im2col_nhwc": conv3x3_im2col_nhwc,
               "xla_split": conv3x3_xla_split}


class ConvCubicField(eqx.Module):
    """dx/dt = kappa(t) * x + b(t) - gamma x^3 with channels (eq 75), scaled by eq 110.

    State `x`: (..., C, H, W). Parameters: kappa~ (L, C, C, 3, 3), b~ (L, C), one bias per channel.
    """

    kernel: TimeParam
    b: TimeParam
    gamma: Array | float
    dt: float = eqx.field(static=True)
    mu: float = eqx.field(static=True, default=3.0)
    conv_impl: str = eqx.field(static=True, default="xla_split")
    feature_axis: ClassVar[int] = -3

    def __call__(self, t: Float[Array, ""], x: Array, args: object = None) -> Array:
        """dx/dt at time t (eq 75)."""
        affine = _CONV_IMPLS[self.conv_impl](x, self.kernel(t)) + self.b(t)[:, None, None]
        return (affine - self.gamma * odd_power(x, self.mu)) / self.dt

    @classmethod
    def init(cls, cfg: ModelConfig, state_shape: tuple[int, ...], key: PRNGKeyArray) -> "ConvCubicField":
        """Build from a model config for a state of shape (C, H, W)."""
        channels = state_shape[0]
        kk, kb = jax.random.split(key)
        common = dict(time_dependent=cfg.time_dependent, layers=cfg.layers, horizon=cfg.horizon,
                      init=cfg.init, scale=cfg.init_scale)
        return cls(kernel=make_param((channels, channels, 3, 3), key=kk, **common),
                   b=make_param((channels,), key=kb, **common), gamma=make_gamma(cfg), dt=cfg.dt, mu=cfg.mu,
                   conv_impl=cfg.conv_impl)
