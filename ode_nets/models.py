"""ODENet = readout(solve(field, augment(x))): a deep network as one differential equation, and its readouts."""

from __future__ import annotations

import abc
from typing import Optional

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray

from ode_nets.fields._base import AbstractField
from ode_nets.fields.neural_ode import Conv, Dense, GroupNorm
from ode_nets.fields.regularised import Regularised
from ode_nets.fields.time_params import LayerGrid
from ode_nets.solve import solve
from ode_nets.solvers.counting import solve_counts
from ode_nets.solvers.stepping import AbstractStepping, FixedSteps
from ode_nets.strategies._base import AbstractGradientStrategy, is_monitor


def augment(x: Array, extra: int, axis: int) -> Array:
    """Append `extra` zero features/channels along `axis` (§3.2: new units start at 0)."""
    if extra == 0:
        return x
    shape = list(x.shape)
    shape[axis] = extra
    return jnp.concatenate([x, jnp.zeros(shape, x.dtype)], axis=axis)


class AbstractReadout(eqx.Module):
    """Class logits from the final state x(T) (batch first); `feature_axis` is the field's."""

    @abc.abstractmethod
    def __call__(self, x_final: Array, feature_axis: int) -> Array:
        """Logits (batch, classes)."""

    @classmethod
    def init(cls, state_shape: tuple[int, ...], num_classes: int, key: PRNGKeyArray, feature_axis: int
             ) -> "AbstractReadout":
        """A readout for states of `state_shape` (no batch axis) whose features lie on `feature_axis` (the
        field's); parameter-free ones ignore the arguments."""
        del state_shape, num_classes, key, feature_axis
        return cls()


class Softmax(AbstractReadout):
    """The state itself is the logit vector (§5.1 model 1)."""

    def __call__(self, x_final: Array, feature_axis: int) -> Array:
        return x_final


class SigmoidLast(AbstractReadout):
    """p(class 0) = sigmoid(x_N(T)) (§5.1 model 2), written as the logits [x_N, 0]."""

    def __call__(self, x_final: Array, feature_axis: int) -> Array:
        last = jnp.take(x_final, -1, axis=feature_axis)
        return jnp.stack([last, jnp.zeros_like(last)], axis=-1)


def spatial_axes(feature_axis: int) -> tuple[int, ...]:
    """The two spatial axes of an image state (..., C, H, W) or (..., H, W, C), given its channel axis."""
    return tuple(axis for axis in (-3, -2, -1) if axis != feature_axis)


class MaxPoolSoftmax(AbstractReadout):
    """Global max over space of each channel (§5.2)."""

    def __call__(self, x_final: Array, feature_axis: int) -> Array:
        if x_final.ndim < 4:
            raise ValueError(f"model.readout max_pool_softmax pools over space: it needs image states (batch, C, H, W) "
                             f"or (batch, H, W, C), got shape {x_final.shape} (use a conv field)")
        return jnp.max(x_final, axis=spatial_axes(feature_axis))


class LinearSoftmax(AbstractReadout):
    """A trainable linear classifier on the flattened x(T) (the Haber–Ruthotto networks)."""

    linear: eqx.nn.Linear

    def __call__(self, x_final: Array, feature_axis: int) -> Array:
        return jax.vmap(self.linear)(x_final.reshape(x_final.shape[0], -1))

    @classmethod
    def init(cls, state_shape: tuple[int, ...], num_classes: int, key: PRNGKeyArray, feature_axis: int
             ) -> "LinearSoftmax":
        del feature_axis  # flattens the whole state
        size = 1
        for n in state_shape:
            size *= n
        return cls(eqx.nn.Linear(size, num_classes, key=key))


class ODENetHead(AbstractReadout):
    """Chen et al.'s ODE-Net classifier on x(T), an image state with channels on `feature_axis` ((C, H, W) or
    (H, W, C)): GroupNorm -> ReLU -> global average pool -> Linear."""

    norm: GroupNorm
    linear: Dense

    def __call__(self, x_final: Array, feature_axis: int) -> Array:
        if x_final.ndim < 4 or x_final.shape[feature_axis] != self.norm.weight.shape[0]:
            raise ValueError(f"model.readout odenet_head expects image states with {self.norm.weight.shape[0]} "
                             f"channels on axis {feature_axis}, got shape {x_final.shape} (use a conv field)")
        x = jnp.moveaxis(x_final, feature_axis, -3)  # GroupNorm normalises (..., C, H, W)
        return self.linear(jnp.mean(jax.nn.relu(self.norm(x)), axis=(-2, -1)))

    @classmethod
    def init(cls, state_shape: tuple[int, ...], num_classes: int, key: PRNGKeyArray, feature_axis: int
             ) -> "ODENetHead":
        channels = state_shape[feature_axis]
        return cls(GroupNorm.init(channels), Dense.init(channels, num_classes, key))


READOUTS: dict[str, type[AbstractReadout]] = {"softmax": Softmax, "sigmoid_last": SigmoidLast,
                                              "max_pool_softmax": MaxPoolSoftmax, "linear_softmax": LinearSoftmax,
                                              "odenet_head": ODENetHead}


class AbstractStem(eqx.Module):
    """A map applied to the input before the ODE block (batch first): identity, or a downsampling stack."""

    @abc.abstractmethod
    def __call__(self, x: Array) -> Array:
        """Features the ODE block starts from, (batch, ...)."""

    @classmethod
    def init(cls, input_shape: tuple[int, ...], width: int, key: PRNGKeyArray) -> "AbstractStem":
        """A stem for inputs of `input_shape` (no batch axis) with `width` channels where it has any."""
        del input_shape, width, key
        return cls()

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape (no batch axis) of the features for inputs of `input_shape`."""
        return jax.eval_shape(self, jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)).shape[1:]


class IdentityStem(AbstractStem):
    """No stem: the ODE starts from the (augmented) input."""

    def __call__(self, x: Array) -> Array:
        return x


class DownsamplingStem(AbstractStem):
    """Chen et al.'s MNIST ODE-Net downsampling: conv 3x3 (1 -> C) -> GN -> ReLU -> conv 4x4/2 -> GN -> ReLU ->
    conv 4x4/2 (28x28 -> 26 -> 13 -> 6), C = `model.width` (64 in Chen et al.)."""

    conv1: Conv
    norm1: GroupNorm
    conv2: Conv
    norm2: GroupNorm
    conv3: Conv

    def __call__(self, x: Array) -> Array:
        out = jax.nn.relu(self.norm1(self.conv1(x)))
        out = jax.nn.relu(self.norm2(self.conv2(out)))
        return self.conv3(out)

    @classmethod
    def init(cls, input_shape: tuple[int, ...], width: int, key: PRNGKeyArray) -> "DownsamplingStem":
        width = width or 64
        k1, k2, k3 = jax.random.split(key, 3)
        return cls(Conv.init(input_shape[0], width, 3, k1), GroupNorm.init(width),
                   Conv.init(width, width, 4, k2, stride=2, padding=1), GroupNorm.init(width),
                   Conv.init(width, width, 4, k3, stride=2, padding=1))


class ChannelsLastStem(AbstractStem):
    """Images (C, H, W) -> (H, W, C): for fields whose state is channels-last (`conv_cubic_nhwc`)."""

    def __call__(self, x: Array) -> Array:
        return jnp.moveaxis(x, -3, -1)


STEMS: dict[str, type[AbstractStem]] = {"identity": IdentityStem, "odenet_downsample": DownsamplingStem,
                                        "channels_last": ChannelsLastStem}


class Forward(eqx.Module):
    """What one forward pass of an `ODENet` produced besides the logits: the diffrax solution (its `stats`) and,
    if asked for, the per-example integrals of ||F||^2 (`kinetic`) and of ||eps^T dF/dx||^2 (`jacobian`)."""

    solution: diffrax.Solution
    counts: dict[str, Array]
    kinetic: Optional[Array] = None
    jacobian: Optional[Array] = None


class ODENet(eqx.Module):
    """A classifier whose hidden layers are the solve of dx/dt = F(t, x) on [0, T] (eqs 5, 109).

    `grid` (L layers on [0, T]) defaults to the field's own: the pieces of its piecewise-constant parameters.
    """

    field: AbstractField
    solver: diffrax.AbstractSolver
    strategy: AbstractGradientStrategy
    readout: AbstractReadout
    augment: int = eqx.field(static=True, default=0)
    grid: Optional[LayerGrid] = None
    stepping: AbstractStepping = FixedSteps()
    stem: AbstractStem = IdentityStem()

    def __post_init__(self) -> None:
        if self.grid is None:
            self.grid = LayerGrid.of(self.field)

    @property
    def feature_axis(self) -> int:
        return self.field.feature_axis

    def initial_state(self, x: Array) -> Array:
        """x(0): the (stem's features of the) input with the augmented zero dimensions, (batch, ...)."""
        return augment(self.stem(x), self.augment, self.feature_axis)

    def solve(self, x: Array, saveat: diffrax.SaveAt | None = None, args: object = None) -> diffrax.Solution:
        """The diffrax solution from x(0) = augment(stem(x))."""
        return solve(self.field, self.initial_state(x), solver=self.solver, grid=self.grid, strategy=self.strategy,
                     stepping=self.stepping, saveat=saveat, args=args)

    def forward(self, x: Array, *, args: object = None, probe_key: PRNGKeyArray | None = None
                ) -> tuple[Array, Forward]:
        """Logits and the `Forward` record. With `probe_key`, the solve also integrates the regularisers of
        Finlay et al. (2020) as extra state (`Regularised`), with one Gaussian probe eps drawn from the key and
        fixed over the solve."""
        x0 = self.initial_state(x)
        if probe_key is None:
            sol = solve(self.field, x0, solver=self.solver, grid=self.grid, strategy=self.strategy,
                        stepping=self.stepping, args=args)
            return self.logits(sol.ys[-1]), Forward(sol, solve_counts(sol, self.solver))
        field = Regularised(self.field, jax.random.normal(probe_key, x0.shape, x0.dtype))
        sol = solve(field, field.initial_state(x0), solver=self.solver, grid=self.grid, strategy=self.strategy,
                    stepping=self.stepping, args=args)
        x_final, kinetic, jacobian = (y[-1] for y in sol.ys)
        return self.logits(x_final), Forward(sol, solve_counts(sol, self.solver), kinetic, jacobian)

    def features(self, x: Array) -> Array:
        """x(T), (batch, ...)."""
        return self.solve(x).ys[-1]

    def logits(self, features: Array) -> Array:
        """Class logits from x(T)."""
        return self.readout(features, self.feature_axis)

    def __call__(self, x: Array) -> Array:
        """Class logits, (batch, classes)."""
        return self.logits(self.features(x))

    def trajectory(self, x: Array) -> Array:
        """States at every layer boundary t_l = l*dt, (L+1, batch, ...) (Figs 2c, 5b, 7b)."""
        return self.solve(x, diffrax.SaveAt(ts=self.grid.times())).ys


def check_readout(net: ODENet, state_shape: tuple[int, ...], num_classes: int) -> None:
    """Fail early if the readout cannot produce `num_classes` logits for a state of `state_shape`."""
    out = jax.eval_shape(lambda: net.logits(jnp.zeros((1, *state_shape))))
    if out.shape[-1] != num_classes:
        raise ValueError(f"model.readout {type(net.readout).__name__} gives {out.shape[-1]} logits for a state of "
                         f"shape {state_shape}, but the data has {num_classes} classes (check model.augment / "
                         f"model.readout)")


def project_parameters(model: ODENet) -> ODENet:
    """Keep a learned gamma~ >= 0 (projected gradient step, applied after every optimizer update).

    gamma > 0 makes -gamma x^3 a damping (eq 52, as `model.gamma` requires); a negative learned gamma~
    turns it into growth that blows up in finite time (seen on MNIST: gamma~ drifted to -3.5e-5 and the
    state overflowed within 5 layers once |x| ~ 100). A fixed gamma (a Python float) is left alone.
    """
    gamma = getattr(getattr(model, "field", None), "gamma", None)
    if not eqx.is_array(gamma):
        return model
    return eqx.tree_at(lambda m: m.field.gamma, model, jnp.maximum(gamma, 0.0))


def trainable(model: eqx.Module) -> eqx.Module:
    """The trainable part (floating-point arrays); fixed constants such as a fixed gamma~ are Python floats."""
    return eqx.filter(model, eqx.is_inexact_array)


def count_parameters(model: eqx.Module) -> int:
    """Number of trainable scalars (paper: 601, 240, 18,201)."""
    leaves = jax.tree_util.tree_leaves(trainable(model), is_leaf=is_monitor)  # a strategy's Monitor is no parameter
    return sum(x.size for x in leaves if not is_monitor(x))
