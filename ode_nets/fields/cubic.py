"""The cubic vector fields of Ruseckas (2019): dense eqs 56/57 and convolutional eq 75, with their
hand-derived adjoint terms (eqs 62-71, 76-78) used by `AnalyticAdjoint`.

Trainable leaves are the *scaled* parameters of eq 110, w~ = dt*w, b~ = dt*b, gamma~ = dt*gamma:
the ones the paper trains, regularises (eq 113) and plots (Figs 3, 4, 6). The field returns
dx/dt = (w~ x + b~ - gamma~ x^3) / dt, so one Euler step of size dt is exactly the residual
layer x + w~ x + b~ - gamma~ x^3 of eq 109, for any horizon T. Every equation is written once: `__call__`
is `rhs` with the parameters in force at t, and the analytic adjoint calls the same `rhs`.
"""

import abc
from collections.abc import Callable
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float, PRNGKeyArray

from ode_nets.fields._base import AbstractAnalyticField, LayerParams
from ode_nets.fields.direct_conv import (conv3x3_direct_nchw, cubic_euler_step_direct, cubic_euler_step_direct_vjp,
                                         cubic_euler_step_direct_vjp_at, cubic_field_direct, cubic_field_direct_vjp)
from ode_nets.fields.onednn_conv import conv3x3_onednn_nhwc
from ode_nets.fields.time_params import ParamInit, PiecewiseConstant, PiecewiseLinear, TimeParam


def odd_power(x: Array, mu: float) -> Array:
    """sign(x)|x|^mu (eq 57); exactly x^3 for mu = 3 (eq 56)."""
    if mu == 3.0:
        return x * x * x
    return jnp.sign(x) * jnp.abs(x) ** mu


def odd_power_slope(x: Array, mu: float) -> Array:
    """d/dx sign(x)|x|^mu / mu = |x|^(mu-1); exactly x^2 for mu = 3 (a product XLA fuses, not a pow)."""
    if mu == 3.0:
        return x * x
    return jnp.abs(x) ** (mu - 1)


def times_odd_power(a: Array, x: Array, mu: float) -> Array:
    """a sign(x)|x|^mu; for mu = 3 as ((a x) x) x, which shares no x*x with `odd_power_slope`, so XLA fuses it
    into the reduction (eq 71) instead of storing x^2 for both."""
    if mu == 3.0:
        return a * x * x * x
    return a * odd_power(x, mu)


def make_gamma(gamma: float, learn: bool) -> Array | float:
    """Learnable gamma~ is an array leaf; a fixed one is a Python float, which no optimizer sees."""
    return jnp.asarray(gamma, dtype=float) if learn else float(gamma)


class AbstractCubicField(AbstractAnalyticField):
    """dx/dt = (A~(t) x + b~(t) - gamma~ sign(x)|x|^mu) / dt, A~ an affine map (dense, eq 56; conv, eq 75).

    Subclasses say what the linear part A~ is (`affine`), its transpose (`affine_transpose`) and the density of
    its weight gradient (`weight_density`); the equations below are shared.
    """

    b: eqx.AbstractVar[TimeParam]
    gamma: eqx.AbstractVar[Array | float]
    dt: eqx.AbstractVar[float]
    mu: eqx.AbstractVar[float]
    hand_vjp: eqx.AbstractVar[bool]
    config_options: ClassVar[tuple[str, ...]] = ("gamma", "learn_gamma", "mu", "hand_vjp")

    @property
    @abc.abstractmethod
    def weight(self) -> TimeParam:
        """The weight parameter w~ (dense) or kappa~ (conv)."""

    @abc.abstractmethod
    def affine(self, weight: Array, bias: Array, x: Array) -> Array:
        """w~ x + b~ for one layer's weight and bias."""

    @abc.abstractmethod
    def affine_transpose(self, weight: Array, a: Array) -> Array:
        """a w~: the transpose of the linear part applied to the adjoint."""

    @abc.abstractmethod
    def weight_density(self, x: Array, a: Array) -> Array:
        """sum over the batch of a dF/dw~ (times dt)."""

    def rhs(self, p: LayerParams, x: Array) -> Array:
        """F = (w~ x + b~ - gamma~ x^mu) / dt (eqs 56, 57, 75 with eq 110)."""
        return (self.affine(p.weight, p.bias, x) - p.gamma * odd_power(x, self.mu)) / self.dt

    def __call__(self, t: Float[Array, ""], x: Array, args: object = None) -> Array:
        """dx/dt at time t (eq 56 / eq 75); with `hand_vjp`, differentiated by the hand-derived terms below."""
        p = LayerParams(self.weight(t), self.b(t), self.gamma)
        if not self.hand_vjp:
            return self.rhs(p, x)
        constant = jax.tree_util.tree_map(lambda leaf: lax.stop_gradient(leaf) if eqx.is_array(leaf) else leaf, self)
        return hand_vjp_rhs((p, x), constant)  # the parameters' gradients reach them through p

    def vjp_state(self, p: LayerParams, x: Array, a: Array) -> Array:
        """(a dF/dx)_i = ((a w~)_i - mu gamma~ |x_i|^(mu-1) a_i) / dt: the right side of eq 62/63/76 (= -da/dt)."""
        cubic = (self.mu * p.gamma) * odd_power_slope(x, self.mu) * a
        return (self.affine_transpose(p.weight, a) - cubic) / self.dt

    def vjp_params(self, x: Array, a: Array) -> LayerParams:
        """a dF/dq summed over the batch: dL/dw~ (eqs 65, 77), dL/db~ = a / dt (eqs 66, 78),
        dL/dgamma~ = -sum_i a_i x_i^mu / dt (eq 71)."""
        channel = self.feature_axis % a.ndim
        bias = jnp.sum(a, axis=tuple(i for i in range(a.ndim) if i != channel))
        return LayerParams(self.weight_density(x, a) / self.dt, bias / self.dt,
                           -jnp.sum(times_odd_power(a, x, self.mu)) / self.dt)

    def layer_params(self, layer: Array) -> LayerParams:
        """The scaled parameters in force on layer `layer` (a traced index; time-independent ones ignore it)."""
        def pick(param: TimeParam) -> Array:
            values = param.per_layer()
            return values[jnp.minimum(layer, values.shape[0] - 1)]

        return LayerParams(pick(self.weight), pick(self.b), jnp.asarray(self.gamma))

    def fold_gradients(self, per_layer: LayerParams) -> "AbstractCubicField":
        """Per-layer gradients (L, ...) -> a pytree like the trainable part; a time-independent parameter sums
        its layers' integrals (eq 15), a fixed gamma (a Python float) gets None."""
        def fold(param: TimeParam, g: Array) -> Array:
            return g if isinstance(param, PiecewiseConstant) else jnp.sum(g, 0)

        leaf = lambda p: p.values if isinstance(p, PiecewiseConstant) else p.value  # noqa: E731
        grads = eqx.filter(self, eqx.is_inexact_array)
        grads = eqx.tree_at(lambda f: (leaf(f.weight), leaf(f.b)), grads,
                            (fold(self.weight, per_layer.weight), fold(self.b, per_layer.bias)))
        if eqx.is_inexact_array(self.gamma):
            grads = eqx.tree_at(lambda f: f.gamma, grads, jnp.sum(per_layer.gamma).astype(self.gamma.dtype))
        return grads

    def check_layers(self, layers: int) -> None:
        for param in (self.weight, self.b):
            if isinstance(param, PiecewiseLinear):
                raise ValueError("analytic_adjoint: the hand-derived gradients (eqs 65, 66) are per layer of "
                                 "piecewise-constant parameters; with model.interpolation = linear use another "
                                 "gradient.strategy")
            if isinstance(param, PiecewiseConstant) and param.layers != layers:
                raise ValueError(f"analytic_adjoint: a parameter has {param.layers} pieces but the solve has "
                                 f"{layers} layers")


@eqx.filter_custom_vjp
def hand_vjp_rhs(vjp_arg: tuple[LayerParams, Array], field: AbstractCubicField) -> Array:
    """F = field.rhs(p, x) whose reverse-mode derivative is the paper's hand-derived terms instead of autodiff of
    `rhs`: a dF/dx (eqs 62, 63, 76, `vjp_state`) and a dF/dq (eqs 65, 66, 71, 77, 78, `vjp_params`). Same
    gradient; fewer passes over the state than XLA's transpose of `rhs` (docs/performance.md). Reverse mode only
    (the backward rule is itself differentiable, so the Jacobian regulariser's vjp trains); strategies that take a
    jvp of the field (`optimize_then_discretize`) are refused by `ode_nets.build.check_reverse_mode`."""
    p, x = vjp_arg
    return field.rhs(p, x)


@hand_vjp_rhs.def_fwd
def _hand_vjp_fwd(perturbed: object, vjp_arg: tuple[LayerParams, Array], field: AbstractCubicField
                  ) -> tuple[Array, None]:
    del perturbed
    p, x = vjp_arg
    return field.rhs(p, x), None


@hand_vjp_rhs.def_bwd
def _hand_vjp_bwd(residuals: None, a: Array, perturbed: tuple[LayerParams, bool], vjp_arg: tuple[LayerParams, Array],
                  field: AbstractCubicField) -> tuple[LayerParams, Array]:
    """(a dF/dq, a dF/dx) at cotangent a; dF/dq summed over the batch (the parameters are shared)."""
    del residuals
    p, x = vjp_arg
    grads, vjp_x = field.vjp(p, x, a)
    gamma = grads.gamma.astype(jnp.result_type(p.gamma)) if perturbed[0].gamma else None
    return LayerParams(grads.weight, grads.bias, gamma), vjp_x


class CubicField(AbstractCubicField):
    """dx_i/dt = sum_j w_ij(t) x_j + b_i(t) - gamma sign(x_i)|x_i|^mu (eqs 56, 57), scaled by eq 110.

    State `x`: (..., N). Parameters: w~ (L, N, N), b~ (L, N) or (N, N), (N,) if time-independent.
    """

    w: TimeParam
    b: TimeParam
    gamma: Array | float
    dt: float = eqx.field(static=True)
    mu: float = eqx.field(static=True, default=3.0)
    hand_vjp: bool = eqx.field(static=True, default=False)
    feature_axis: ClassVar[int] = -1

    @property
    def weight(self) -> TimeParam:
        return self.w

    def affine(self, weight: Array, bias: Array, x: Array) -> Array:
        return x @ weight.T + bias

    def affine_transpose(self, weight: Array, a: Array) -> Array:
        return a @ weight

    def weight_density(self, x: Array, a: Array) -> Array:
        """sum over the batch of a^T x (eq 65)."""
        return a.reshape(-1, a.shape[-1]).T @ x.reshape(-1, x.shape[-1])

    def jacobian(self, t: Float[Array, ""], x: Float[Array, " N"]) -> Float[Array, "N N"]:
        """dF_i/dx_j = (w~_ij - mu gamma~ delta_ij |x_j|^(mu-1)) / dt (eq 61)."""
        nonlinear = self.mu * self.gamma * odd_power_slope(x, self.mu)
        return (self.w(t) - jnp.diag(nonlinear)) / self.dt

    @classmethod
    def init(cls, state_shape: tuple[int, ...], params: ParamInit, key: PRNGKeyArray, *, gamma: float = 0.0,
             learn_gamma: bool = True, mu: float = 3.0, hand_vjp: bool = False) -> "CubicField":
        """A field for states of shape (N,): w~, b~ made by `params`, gamma~ learnable or fixed."""
        (n,) = state_shape
        kw, kb = jax.random.split(key)
        return cls(w=params.make((n, n), kw), b=params.make((n,), kb), gamma=make_gamma(gamma, learn_gamma),
                   dt=params.dt, mu=mu, hand_vjp=hand_vjp)

    @classmethod
    def zeros(cls, n: int, layers: int, horizon: float = 1.0, *, gamma: float = 0.0, learn_gamma: bool = True,
              mu: float = 3.0, time_dependent: bool = True) -> "CubicField":
        """The paper's zero-initialised field (§4.4) on N = `n` units and L = `layers` layers."""
        params = ParamInit(layers=layers, horizon=horizon, time_dependent=time_dependent)
        return cls.init((n,), params, jax.random.PRNGKey(0), gamma=gamma, learn_gamma=learn_gamma, mu=mu)


def images(y: Array) -> Array:
    """A state (..., C, H, W) (or (..., H, W, C)) as one batch of images (B, C, H, W): the leading axes flattened."""
    return y.reshape((-1, *y.shape[-3:]))


def conv3x3_xla(x: Float[Array, "... C H W"], kernel: Float[Array, "O C 3 3"]) -> Float[Array, "... O H W"]:
    """3x3 cross-correlation with zero ('SAME') padding via `lax.conv_general_dilated` (eq 72)."""
    batch_shape = x.shape[:-3]
    out = lax.conv_general_dilated(images(x), kernel, (1, 1), "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW"))
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
    return _via_nhwc(conv3x3_nhwc_split, x, kernel)


def conv3x3_onednn(x: Float[Array, "... C H W"], kernel: Float[Array, "O C 3 3"]) -> Float[Array, "... O H W"]:
    """The same cross-correlation by oneDNN's convolution primitives (forward, backward-data, backward-weights)
    as a `jax.ffi` custom call, float32, in NHWC like `conv3x3_xla_split` (ode_nets/fields/onednn_conv.py)."""
    return _via_nhwc(conv3x3_onednn_nhwc, x, kernel)


def conv3x3_direct(x: Float[Array, "... C H W"], kernel: Float[Array, "O C 3 3"]) -> Float[Array, "... O H W"]:
    """The same cross-correlation by width-vectorised C++ loops on the NCHW state itself (no transposes), float32,
    a `jax.ffi` custom call (ode_nets/fields/direct_conv.py)."""
    out = conv3x3_direct_nchw(images(x), kernel)
    return out.reshape((*x.shape[:-3], *out.shape[-3:]))


def _via_nhwc(conv_nhwc: Callable[[Array, Array], Array], x: Float[Array, "... C H W"],
              kernel: Float[Array, "O C 3 3"]) -> Float[Array, "... O H W"]:
    """An NHWC/HWIO 3x3 convolution applied to an NCHW state and an OIHW kernel (transposed around it)."""
    return jnp.moveaxis(_channels_last(conv_nhwc)(jnp.moveaxis(x, -3, -1), kernel), -1, -3)


CONV_IMPLS = {"xla": conv3x3_xla, "im2col": conv3x3_im2col, "im2col_nhwc": conv3x3_im2col_nhwc,
              "xla_split": conv3x3_xla_split, "onednn": conv3x3_onednn, "direct": conv3x3_direct}


def check_conv_impl(conv_impl: str) -> None:
    """ValueError naming `model.conv_impl` if `conv_impl` is not a key of `CONV_IMPLS`."""
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"model.conv_impl {conv_impl!r} is not one of {', '.join(CONV_IMPLS)}")


def _channels_last(conv_nhwc: Callable[[Array, Array], Array]) -> Callable[[Array, Array], Array]:
    """An NHWC/HWIO 3x3 convolution as a map of (..., H, W, C) states and OIHW kernels (no state transposes)."""
    def conv(x: Float[Array, "... H W C"], kernel: Float[Array, "O C 3 3"]) -> Float[Array, "... H W O"]:
        out = conv_nhwc(images(x), jnp.transpose(kernel, (2, 3, 1, 0)))
        return out.reshape((*x.shape[:-1], kernel.shape[0]))
    return conv


NHWC_CONV_IMPLS = {"xla": _channels_last(_conv_nhwc), "xla_split": _channels_last(conv3x3_nhwc_split),
                   "onednn": _channels_last(conv3x3_onednn_nhwc)}


def conv3x3_transpose(kernel: Float[Array, "O C 3 3"]) -> Float[Array, "C O 3 3"]:
    """The kernel of the transposed zero-padded cross-correlation: flipped in space, channel axes swapped."""
    return jnp.swapaxes(kernel[:, :, ::-1, ::-1], 0, 1)


class AbstractConvCubicField(AbstractCubicField):
    """dx/dt = kappa(t) * x + b(t) - gamma x^3 with channels (eq 75), scaled by eq 110, in the state layout of
    the final subclass (`feature_axis`: -3 for (..., C, H, W), -1 for (..., H, W, C)).

    Parameters: kappa~ (L, C, C, 3, 3) (OIHW in either layout), b~ (L, C), one bias per channel.
    `conv_impl` picks how the 3x3 convolution is computed (same function; speed, docs/performance.md).
    """

    # the fields of both layouts (declared once here; the final classes differ only in their class variables)
    kernel: TimeParam
    b: TimeParam
    gamma: Array | float
    dt: float = eqx.field(static=True)
    mu: float = eqx.field(static=True, default=3.0)
    conv_impl: str = eqx.field(static=True, default="xla_split")
    hand_vjp: bool = eqx.field(static=True, default=False)
    conv_impls: eqx.AbstractClassVar[dict[str, Callable[[Array, Array], Array]]]
    config_options: ClassVar[tuple[str, ...]] = ("gamma", "learn_gamma", "mu", "conv_impl", "hand_vjp")

    def __check_init__(self) -> None:
        if self.conv_impl not in self.conv_impls:
            raise ValueError(f"conv_impl {self.conv_impl!r} is not one of {', '.join(self.conv_impls)} "
                             f"for {type(self).__name__}")

    @property
    def weight(self) -> TimeParam:
        return self.kernel

    def conv(self, x: Array, kernel: Float[Array, "O C 3 3"]) -> Array:
        """The zero-padded 3x3 cross-correlation kappa * x (eq 72) in this field's layout."""
        return self.conv_impls[self.conv_impl](x, kernel)

    def affine(self, weight: Array, bias: Array, x: Array) -> Array:
        return self.conv(x, weight) + bias.reshape((-1,) + (1,) * (-self.feature_axis - 1))

    def affine_transpose(self, weight: Array, a: Array) -> Array:
        """sum_j a_{i-j} kappa~_j (eq 76): the cross-correlation with the transposed kernel."""
        return self.conv(a, conv3x3_transpose(weight))

    def weight_density(self, x: Array, a: Array) -> Array:
        """sum_j a_{o,j} x_{c,j+p} (eq 77): the kernel gradient of the convolution x -> kappa * x at cotangent a
        (bilinear, so its kernel-VJP does not depend on the kernel's value), computed by `conv_impl`'s own
        kernel-gradient convolution (oneDNN's backward-weights for `onednn`)."""
        kernel = jnp.zeros((a.shape[self.feature_axis], x.shape[self.feature_axis], 3, 3), a.dtype)
        _, pullback = jax.vjp(lambda k: self.conv(x, k), kernel)
        return pullback(a)[0]

    @classmethod
    def init(cls, state_shape: tuple[int, ...], params: ParamInit, key: PRNGKeyArray, *, gamma: float = 0.0,
             learn_gamma: bool = True, mu: float = 3.0, conv_impl: str = "xla_split", hand_vjp: bool = False
             ) -> "AbstractConvCubicField":
        """A field for states of shape (C, H, W) / (H, W, C): kappa~ (C, C, 3, 3) and b~ (C,) per layer."""
        channels = state_shape[cls.feature_axis]
        kk, kb = jax.random.split(key)
        return cls(kernel=params.make((channels, channels, 3, 3), kk), b=params.make((channels,), kb),
                   gamma=make_gamma(gamma, learn_gamma), dt=params.dt, mu=mu, conv_impl=conv_impl, hand_vjp=hand_vjp)


class ConvCubicField(AbstractConvCubicField):
    """The convolutional cubic field (eq 75) on channels-first states (..., C, H, W)."""

    feature_axis: ClassVar[int] = -3
    conv_impls: ClassVar[dict[str, Callable[[Array, Array], Array]]] = CONV_IMPLS

    @property
    def fused(self) -> bool:
        """Whether the field and its hand-derived VJP run as the fused custom calls (`conv_impl: direct`, mu = 3)."""
        return self.conv_impl == "direct" and self.mu == 3.0

    def __call__(self, t: Float[Array, ""], x: Array, args: object = None) -> Array:
        """dx/dt at time t (eq 75). With `hand_vjp` and `conv_impl: direct` (mu = 3) the whole field and its
        hand-derived reverse mode (eqs 76-78, 71) are one custom call each (`cubic_field_direct`), a pass per image
        instead of XLA's separate passes over the state for the bias, the cubic term and the sums."""
        if not (self.hand_vjp and self.fused):
            return super().__call__(t, x, args)
        f = cubic_field_direct(images(x), self.weight(t), self.b(t), jnp.asarray(self.gamma, x.dtype))
        return f.reshape(x.shape) / self.dt

    def euler_step(self, t: Float[Array, ""], x: Array, args: object, dt: Float[Array, ""]) -> Array:
        """x + dt F(t, x) (eq 109); with `hand_vjp` and `conv_impl: direct` (mu = 3) one custom call, and its reverse
        mode (eq 112: a + dt a dF/dx, and the parameters' terms) another (`cubic_euler_step_direct`)."""
        if not (self.hand_vjp and self.fused):
            return super().euler_step(t, x, args, dt)
        scale = jnp.asarray(dt / self.dt, jnp.float32)  # steps per layer: the call's F dt is per layer
        y = cubic_euler_step_direct(images(x), self.weight(t), self.b(t), jnp.asarray(self.gamma, x.dtype), scale)
        return y.reshape(x.shape)

    def vjp(self, p: LayerParams, x: Array, a: Array) -> tuple[LayerParams, Array]:
        """(a dF/dq, a dF/dx) (eqs 77, 78, 71 and 76); with `conv_impl: direct` (mu = 3) in one pass per image."""
        if not self.fused:
            return super().vjp(p, x, a)
        dx, dk, db, dgamma = cubic_field_direct_vjp(images(x), images(a), p.weight, jnp.asarray(p.gamma, x.dtype))
        return LayerParams(dk / self.dt, db / self.dt, dgamma / self.dt), dx.reshape(x.shape) / self.dt

    def euler_step_vjp(self, p: LayerParams, x: Array, a: Array, h: Array | float) -> tuple[LayerParams, Array]:
        """(h a dF/dq, a + h a dF/dx) of one Euler step (eq 112); with `conv_impl: direct` (mu = 3) one call."""
        if not self.fused:
            return super().euler_step_vjp(p, x, a, h)
        scale = jnp.asarray(h / self.dt, jnp.float32)
        dx, dk, db, dgamma = cubic_euler_step_direct_vjp(images(x), images(a), p.weight,
                                                         jnp.asarray(p.gamma, x.dtype), scale)
        return LayerParams(dk, db, dgamma), dx.reshape(x.shape)

    def stored_step_vjp(self, p: LayerParams, stored: Array, index: Array, a: Array, h: Array | float
                        ) -> tuple[LayerParams, Array]:
        """`euler_step_vjp` at stored[index]; with `conv_impl: direct` (mu = 3) one call reading it in place."""
        if not self.fused:
            return super().stored_step_vjp(p, stored, index, a, h)
        scale = jnp.asarray(h / self.dt, jnp.float32)
        states = stored.reshape((stored.shape[0], -1, *stored.shape[-3:]))
        dx, dk, db, dgamma = cubic_euler_step_direct_vjp_at(states, index, images(a), p.weight,
                                                            jnp.asarray(p.gamma, a.dtype), scale)
        return LayerParams(dk, db, dgamma), dx.reshape(a.shape)


class ChannelsLastConvCubicField(AbstractConvCubicField):
    """The same field (eq 75) on channels-last states (..., H, W, C), the layout the convolutions run in: no
    transposes around them inside the solve (docs/performance.md). Needs `model.stem: channels_last`, which
    moves the images' channel axis last before the ODE block."""

    feature_axis: ClassVar[int] = -1
    conv_impls: ClassVar[dict[str, Callable[[Array, Array], Array]]] = NHWC_CONV_IMPLS
    input_stem: ClassVar[str | None] = "channels_last"
