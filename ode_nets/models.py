"""ODENet = readout(solve(field, augment(x))): a deep network as one differential equation."""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray

from ode_nets.config import GradientConfig, ModelConfig, SolverConfig
from ode_nets.fields import build_field
from ode_nets.fields.time_params import layer_grid
from ode_nets.solve import solve


def augment(x: Array, extra: int, axis: int) -> Array:
    """Append `extra` zero features/channels along `axis` (§3.2: new units start at 0)."""
    if extra == 0:
        return x
    shape = list(x.shape)
    shape[axis] = extra
    return jnp.concatenate([x, jnp.zeros(shape, x.dtype)], axis=axis)


def readout(x_final: Array, kind: str, feature_axis: int) -> Array:
    """Class logits from the final state x(T), batch first.

    - softmax: the state itself is the logit vector (§5.1 model 1);
    - sigmoid_last: p(class 0) = sigmoid(x_N(T)) (§5.1 model 2), written as the logits [x_N, 0];
    - max_pool_softmax: global max over space of each channel (§5.2);
    - linear_softmax: not parameter-free, reserved for fields with a classifier (see `ODENet.head`).
    """
    if kind == "softmax":
        return x_final
    if kind == "sigmoid_last":
        last = jnp.take(x_final, -1, axis=feature_axis)
        return jnp.stack([last, jnp.zeros_like(last)], axis=-1)
    if kind == "max_pool_softmax":
        return jnp.max(x_final, axis=(-2, -1))
    raise ValueError(f"model.readout: {kind!r} is not a parameter-free readout")


class ODENet(eqx.Module):
    """A classifier whose hidden layers are the solve of dx/dt = F(t, x) on [0, T] (eqs 5, 109)."""

    field: eqx.Module
    head: eqx.Module | None  # optional trainable classifier (readout "linear_softmax")
    model: ModelConfig = eqx.field(static=True)
    solver: SolverConfig = eqx.field(static=True)
    gradient: GradientConfig = eqx.field(static=True)

    @property
    def feature_axis(self) -> int:
        return type(self.field).feature_axis

    def initial_state(self, x: Array) -> Array:
        """x(0): the input with the augmented zero dimensions, (batch, ...)."""
        return augment(x, self.model.augment, self.feature_axis)

    def solve(self, x: Array, saveat: diffrax.SaveAt | None = None) -> diffrax.Solution:
        """The diffrax solution from x(0) = augment(x)."""
        return solve(self.field, self.initial_state(x), horizon=self.model.horizon, layers=self.model.layers,
                     solver=self.solver, gradient=self.gradient, saveat=saveat)

    def features(self, x: Array) -> Array:
        """x(T), (batch, ...)."""
        return self.solve(x).ys[-1]

    def logits(self, features: Array) -> Array:
        """Class logits from x(T)."""
        if self.head is not None:
            return jax.vmap(self.head)(features.reshape(features.shape[0], -1))
        return readout(features, self.model.readout, self.feature_axis)

    def __call__(self, x: Array) -> Array:
        """Class logits, (batch, classes)."""
        return self.logits(self.features(x))

    def trajectory(self, x: Array) -> Array:
        """States at every layer boundary t_l = l*dt, (L+1, batch, ...) (Figs 2c, 5b, 7b)."""
        ts = layer_grid(0.0, self.model.horizon, self.model.layers)
        return self.solve(x, diffrax.SaveAt(ts=ts)).ys


def project_parameters(model: ODENet) -> ODENet:
    """Keep a learned gamma~ >= 0 (projected gradient step, applied after every optimizer update).

    gamma > 0 makes -gamma x^3 a damping (eq 52, as `model.gamma` requires); a negative learned gamma~
    turns it into growth that blows up in finite time (seen on MNIST: gamma~ drifted to -3.5e-5 and the
    state overflowed within 5 layers once |x| ~ 100). A fixed gamma (a Python float) is left alone.
    """
    gamma = getattr(model.field, "gamma", None)
    if not eqx.is_array(gamma):
        return model
    return eqx.tree_at(lambda m: m.field.gamma, model, jnp.maximum(gamma, 0.0))


def build_model(model: ModelConfig, solver: SolverConfig, gradient: GradientConfig, input_shape: tuple[int, ...],
                num_classes: int, key: PRNGKeyArray) -> ODENet:
    """An ODENet for inputs of `input_shape` (no batch axis)."""
    from ode_nets.fields import FIELDS

    axis = FIELDS[model.field].feature_axis if model.field in FIELDS else -1
    state_shape = list(input_shape)
    state_shape[axis] += model.augment
    k_field, k_head = jax.random.split(key)
    field = build_field(model, tuple(state_shape), k_field)
    if solver.method == "lm2":  # eq 111: the per-layer k_l are trainable parameters held beside the field
        from ode_nets.solvers import with_two_step_memory

        field = with_two_step_memory(field, model)
    head = None
    if model.readout == "linear_softmax":
        size = 1
        for n in state_shape:
            size *= n
        head = eqx.nn.Linear(size, num_classes, key=k_head)
    net = ODENet(field, head, model, solver, gradient)
    _check_readout(net, tuple(state_shape), num_classes)
    return net


def _check_readout(net: ODENet, state_shape: tuple[int, ...], num_classes: int) -> None:
    """Fail early, naming the key, if the readout cannot produce `num_classes` logits."""
    out = jax.eval_shape(lambda: net.logits(jnp.zeros((1, *state_shape))))
    if out.shape[-1] != num_classes:
        raise ValueError(f"model.readout {net.model.readout!r} gives {out.shape[-1]} logits for a state of shape "
                         f"{state_shape}, but the data has {num_classes} classes (check model.augment / model.readout)")


def trainable(model: eqx.Module) -> eqx.Module:
    """The trainable part (floating-point arrays); fixed constants such as a fixed gamma~ are Python floats."""
    return eqx.filter(model, eqx.is_inexact_array)


def count_parameters(model: eqx.Module) -> int:
    """Number of trainable scalars (paper: 601, 240, 18,201)."""
    return sum(x.size for x in jax.tree_util.tree_leaves(trainable(model)))
