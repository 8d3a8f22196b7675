"""How a field's parameters q(t) depend on the time t (= depth).

`PiecewiseConstant` holds one value per layer: layer l on [l*dt, (l+1)*dt) — the continuous
reading of a ResNet's per-layer weights (eq 110). `Constant` is one value for all t, the
time-independent case of §2.2 (eq 25) and §2.5 (eq 45).
"""

from __future__ import annotations

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


class PiecewiseConstant(eqx.Module):
    """q(t) = values[l] for t in layer l; `values` has a leading layer axis of length L."""

    values: Array
    t0: float = eqx.field(static=True, default=0.0)
    t1: float = eqx.field(static=True, default=1.0)

    @property
    def layers(self) -> int:
        return self.values.shape[0]

    def __call__(self, t: Float[Array, ""]) -> Array:
        return self.values[layer_index(t, layer_grid(self.t0, self.t1, self.layers))]

    def per_layer(self) -> Array:
        """Values with a leading layer axis (L, ...)."""
        return self.values


class Constant(eqx.Module):
    """q(t) = value for all t (time-independent parameters)."""

    value: Array

    def __call__(self, t: Float[Array, ""]) -> Array:
        return self.value

    def per_layer(self) -> Array:
        """The single value with a leading layer axis of length 1."""
        return self.value[None]


TimeParam = PiecewiseConstant | Constant


def make_param(shape: tuple[int, ...], *, time_dependent: bool, layers: int, horizon: float,
               init: str, scale: float, key: PRNGKeyArray) -> TimeParam:
    """A parameter of `shape` per layer (or one for all t), zero-initialised (§4.4) or normal(0, scale)."""
    full = (layers, *shape) if time_dependent else shape
    values = jnp.zeros(full) if init == "zeros" else scale * jax.random.normal(key, full)
    if time_dependent:
        return PiecewiseConstant(values, 0.0, horizon)
    return Constant(values)


def is_time_param(x: object) -> bool:
    """Filter for `jax.tree_util` traversals that stop at time-dependent parameters."""
    return isinstance(x, (PiecewiseConstant, Constant))
