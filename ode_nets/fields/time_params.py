"""How a field's parameters q(t) depend on the time t (= depth).

`PiecewiseConstant` holds one value per layer: layer l on [l*dt, (l+1)*dt) — the continuous
reading of a ResNet's per-layer weights (eq 110). `Constant` is one value for all t, the
time-independent case of §2.2 (eq 25) and §2.5 (eq 45).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray, Float


def layer_grid(t0: float, t1: float, layers: int) -> np.ndarray:
    """Layer boundaries t0 = g_0 < ... < g_L = t1 in the default float dtype.

    Computed once in NumPy so that the solver's step points (`solve.py`) and the parameter
    lookup below use bit-identical boundaries: an Euler step starting at g_l uses layer l
    exactly, and diffrax's jump handling (evaluations just before/after g_l) picks the right side.
    """
    return np.linspace(t0, t1, layers + 1).astype(jnp.result_type(float))


def layer_index(t: Float[Array, ""], grid: np.ndarray) -> Array:
    """Index l with grid[l] <= t < grid[l+1], clipped to [0, L-1]."""
    index = jnp.searchsorted(jnp.asarray(grid), t, side="right") - 1
    return jnp.clip(index, 0, len(grid) - 2)


class AbstractPerLayer(eqx.Module):
    """A parameter with one value per layer: `values` with a leading layer axis of length L on [t0, t1]."""

    values: Array
    t0: float = eqx.field(static=True, default=0.0)
    t1: float = eqx.field(static=True, default=1.0)

    @property
    def layers(self) -> int:
        return self.values.shape[0]

    @abc.abstractmethod
    def __call__(self, t: Float[Array, ""]) -> Array:
        """q(t)."""

    def per_layer(self) -> Array:
        """Values with a leading layer axis (L, ...)."""
        return self.values


class PiecewiseConstant(AbstractPerLayer):
    """q(t) = values[l] for t in layer l; `values` has a leading layer axis of length L."""

    def __call__(self, t: Float[Array, ""]) -> Array:
        return self.values[layer_index(t, layer_grid(self.t0, self.t1, self.layers))]


class PiecewiseLinear(AbstractPerLayer):
    """q(t) continuous in t: the linear interpolation of L knots at the layer midpoints t_l = (l + 1/2) dt,
    held constant on the outer half layers [t0, dt/2] and [t1 - dt/2, t1].

    `values` has a leading axis of length L, as `PiecewiseConstant`'s; at each layer midpoint both give
    values[l], and at a layer boundary l dt this one gives the mean (values[l-1] + values[l]) / 2. It has no jumps,
    so an adaptive solver need not stop at the layer boundaries (time-dependent parameters of Ruseckas §2,
    continuous as Chen et al.'s ODE-Nets are).
    """

    def __call__(self, t: Float[Array, ""]) -> Array:
        """Linear interpolation between the two knots around t (constant beyond the first and last)."""
        s = jnp.clip((t - self.t0) / (self.t1 - self.t0) * self.layers - 0.5, 0.0, self.layers - 1.0)
        left = jnp.minimum(jnp.floor(s).astype(int), self.layers - 1)
        right = jnp.minimum(left + 1, self.layers - 1)
        weight = (s - left).astype(self.values.dtype)
        return (1 - weight) * self.values[left] + weight * self.values[right]


class Constant(eqx.Module):
    """q(t) = value for all t (time-independent parameters)."""

    value: Array

    def __call__(self, t: Float[Array, ""]) -> Array:
        return self.value

    def per_layer(self) -> Array:
        """The single value with a leading layer axis of length 1."""
        return self.value[None]


TimeParam = PiecewiseConstant | PiecewiseLinear | Constant
INITS = ("zeros", "normal")
INTERPOLATIONS = {"constant": PiecewiseConstant, "linear": PiecewiseLinear}


def make_param(shape: tuple[int, ...], *, time_dependent: bool, layers: int, horizon: float,
               init: str, scale: float, key: PRNGKeyArray, interpolation: str = "constant") -> TimeParam:
    """A parameter of `shape` per layer (or one for all t), zero-initialised (§4.4) or normal(0, scale);
    per layer piecewise constant or linearly interpolated between the layer midpoints (`interpolation`)."""
    full = (layers, *shape) if time_dependent else shape
    values = jnp.zeros(full) if init == "zeros" else scale * jax.random.normal(key, full)
    if time_dependent:
        return INTERPOLATIONS[interpolation](values, 0.0, horizon)
    return Constant(values)


@dataclass(frozen=True)
class ParamInit:
    """How a field's parameters are laid out in t and initialised: L pieces on [0, T] (or one value for all t),
    zeros (§4.4) or normal(0, `scale`)."""

    layers: int = 20
    horizon: float = 1.0
    time_dependent: bool = True
    init: Literal["zeros", "normal"] = "zeros"
    scale: float = 0.01
    interpolation: Literal["constant", "linear"] = "constant"

    def __post_init__(self) -> None:
        if (self.init not in INITS or self.interpolation not in INTERPOLATIONS or self.layers < 1
                or self.horizon <= 0 or self.scale < 0):
            raise ValueError(f"ParamInit: init must be one of {INITS}, interpolation one of {tuple(INTERPOLATIONS)}, "
                             f"layers >= 1, horizon > 0, scale >= 0; got {self}")

    @property
    def dt(self) -> float:
        """Layer width in time, dt = T / L (eq 110)."""
        return self.horizon / self.layers

    def make(self, shape: tuple[int, ...], key: PRNGKeyArray) -> TimeParam:
        """A parameter of `shape` (`make_param` with these settings)."""
        return make_param(shape, time_dependent=self.time_dependent, layers=self.layers, horizon=self.horizon,
                          init=self.init, scale=self.scale, key=key, interpolation=self.interpolation)


class LayerGrid(eqx.Module):
    """The layer grid of a network: L layers of width dt = T / L on [0, T] (eqs 109, 110)."""

    horizon: float = eqx.field(static=True)
    layers: int = eqx.field(static=True)

    @property
    def dt(self) -> float:
        return self.horizon / self.layers

    def times(self) -> np.ndarray:
        """Layer boundaries 0 = t_0 < ... < t_L = T (`layer_grid`)."""
        return layer_grid(0.0, self.horizon, self.layers)

    def step_times(self, steps_per_layer: int) -> np.ndarray:
        """Fixed-step time points: the layer grid, each layer split into `steps_per_layer` equal steps."""
        grid = self.times()
        if steps_per_layer == 1:
            return grid
        inner = [np.linspace(grid[i], grid[i + 1], steps_per_layer + 1, dtype=grid.dtype)[:-1]
                 for i in range(self.layers)]
        return np.concatenate([*inner, grid[-1:]])

    def jump_times(self) -> np.ndarray:
        """Interior layer boundaries, where piecewise-constant parameters jump."""
        return self.times()[1:-1]

    @classmethod
    def of(cls, field: eqx.Module) -> "LayerGrid":
        """The grid of a field's per-layer parameters (their L pieces or knots on [t0, t1]); an error if it has none."""
        pieces = [p for p in jax.tree_util.tree_leaves(field, is_leaf=is_time_param) if isinstance(p, PER_LAYER)]
        if not pieces:
            raise ValueError(f"{type(field).__name__} has no piecewise-constant parameters to read the layer grid "
                             f"from; pass grid=LayerGrid(horizon, layers)")
        return cls(horizon=pieces[0].t1 - pieces[0].t0, layers=pieces[0].layers)


def has_jumps(field: eqx.Module) -> bool:
    """True if any parameter of the field is piecewise constant in t (so it jumps at layer boundaries)."""
    leaves = jax.tree_util.tree_leaves(field, is_leaf=is_time_param)
    return any(isinstance(leaf, PiecewiseConstant) and leaf.layers > 1 for leaf in leaves)


def is_time_param(x: object) -> bool:
    """Filter for `jax.tree_util` traversals that stop at time-dependent parameters."""
    return isinstance(x, (PiecewiseConstant, PiecewiseLinear, Constant))


PER_LAYER = AbstractPerLayer  # parameters with one value (piece or knot) per layer
