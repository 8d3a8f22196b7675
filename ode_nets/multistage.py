"""Multi-stage ODE networks (Ruthotto & Haber, "Deep neural networks motivated by PDEs", JMIV 2020, §4): stages of
ODE blocks at falling resolution, joined by connective layers, then a linear classifier.

    x -> C_0 -> [ODE block 1] -> C_1 -> [ODE block 2] -> ... -> [ODE block S] -> readout

`C_0` is the opening layer (a 1x1 convolution from the image channels to stage 1's channels); each later `C_s` is a
1x1 convolution widening the channels to stage s+1's, then 2x2 average pooling (half the resolution). Every block
is a solve of its own field on [0, T] over the same layer grid, with the same solver and gradient strategy (so the
Verlet fields keep their memory-free gradient stage by stage).
"""

from typing import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ode_nets.fields._base import AbstractField
from ode_nets.fields.time_params import LayerGrid
from ode_nets.models import AbstractReadout
from ode_nets.solve import solve
from ode_nets.solvers.stepping import AbstractStepping, FixedSteps
from ode_nets.strategies._base import AbstractGradientStrategy

FieldFactory = Callable[[tuple[int, ...], PRNGKeyArray], AbstractField]


def average_pool(x: Float[Array, "... C H W"], size: int) -> Float[Array, "... C h w"]:
    """Mean over non-overlapping size x size windows (H, W divisible by `size`)."""
    if size == 1:
        return x
    *lead, height, width = x.shape
    if height % size or width % size:
        raise ValueError(f"average pooling by {size} needs H, W divisible by it, got {height}x{width}")
    return x.reshape(*lead, height // size, size, width // size, size).mean(axis=(-3, -1))


class Connective(eqx.Module):
    """Y -> pool(W Y + b): a 1x1 convolution c_in -> c_out (W (c_out, c_in), b (c_out,)), then average pooling."""

    weight: Array
    bias: Array
    pool: int = eqx.field(static=True, default=1)

    def __call__(self, x: Float[Array, "... C H W"]) -> Array:
        out = jnp.einsum("oc,...chw->...ohw", self.weight, x) + self.bias[:, None, None]
        return average_pool(out, self.pool)

    @classmethod
    def init(cls, c_in: int, c_out: int, pool: int, key: PRNGKeyArray) -> "Connective":
        """W ~ N(0, 1/c_in) (variance preserving), b = 0."""
        return cls(jax.random.normal(key, (c_out, c_in)) / jnp.sqrt(c_in), jnp.zeros(c_out), pool)


def stage_shapes(input_shape: tuple[int, ...], widths: tuple[int, ...], pool: int) -> list[tuple[int, int, int]]:
    """(C, H, W) of each stage: stage s has widths[s] channels at the input resolution divided by pool**s."""
    _, height, width = input_shape
    factor = pool ** (len(widths) - 1)
    if height % factor or width % factor:
        raise ValueError(f"{len(widths)} stages pool {height}x{width} images by {factor}, which does not divide them")
    return [(c, height // pool ** s, width // pool ** s) for s, c in enumerate(widths)]


class MultiStageNet(eqx.Module):
    """Stages of ODE blocks joined by connective layers (Ruthotto & Haber §4); called as `net(x) -> logits`.

    `fields[s]` is stage s's vector field, `connectives[s]` the layer before it (`connectives[0]` the opening layer).
    """

    fields: tuple[AbstractField, ...]
    connectives: tuple[Connective, ...]
    solver: diffrax.AbstractSolver
    strategy: AbstractGradientStrategy
    readout: AbstractReadout
    grid: LayerGrid
    stepping: AbstractStepping = FixedSteps()

    @property
    def feature_axis(self) -> int:
        return self.fields[-1].feature_axis

    def block(self, stage: int, x: Array, saveat: diffrax.SaveAt | None = None) -> diffrax.Solution:
        """The solve of stage `stage` from x(0) = x."""
        return solve(self.fields[stage], x, solver=self.solver, grid=self.grid, strategy=self.strategy,
                     stepping=self.stepping, saveat=saveat)

    def stage_states(self, x: Array) -> list[tuple[Array, Array]]:
        """(Y_s(0), Y_s(T)) of every stage s, (batch, C_s, H_s, W_s) each: each ODE block's input and output."""
        states = []
        for stage, connective in enumerate(self.connectives):
            y0 = connective(x)
            x = self.block(stage, y0).ys[-1]
            states.append((y0, x))
        return states

    def stage_outputs(self, x: Array) -> list[Array]:
        """Y_s(T) of every stage s, (batch, C_s, H_s, W_s) each."""
        return [y_final for _, y_final in self.stage_states(x)]

    def features(self, x: Array) -> Array:
        """The last stage's Y(T), the input of the classifier."""
        return self.stage_outputs(x)[-1]

    def logits(self, features: Array) -> Array:
        return self.readout(features, self.feature_axis)

    def __call__(self, x: Array) -> Array:
        """Class logits, (batch, classes)."""
        return self.logits(self.features(x))

    @classmethod
    def init(cls, make_field: FieldFactory, input_shape: tuple[int, ...], widths: tuple[int, ...], *,
             solver: diffrax.AbstractSolver, strategy: AbstractGradientStrategy, readout: type[AbstractReadout],
             num_classes: int, grid: LayerGrid, stepping: AbstractStepping = FixedSteps(), pool: int = 2,
             key: PRNGKeyArray) -> "MultiStageNet":
        """Stage s: `make_field((widths[s], H / pool**s, W / pool**s), key)`; connectives between; `readout` on the last
        stage's state."""
        shapes = stage_shapes(input_shape, widths, pool)
        keys = jax.random.split(key, 2 * len(widths) + 1)
        c_in = (input_shape[0], *widths[:-1])
        connectives = tuple(Connective.init(c_in[s], widths[s], 1 if s == 0 else pool, keys[2 * s])
                            for s in range(len(widths)))
        fields = tuple(make_field(shape, keys[2 * s + 1]) for s, shape in enumerate(shapes))
        head = readout.init(shapes[-1], num_classes, keys[-1], fields[-1].feature_axis)
        return cls(fields, connectives, solver, strategy, head, grid, stepping)
