"""The gradient-strategy extension point: how the gradient of a loss on the solve is computed.

A strategy is an Equinox module with one method, `solve(field, x0, discretisation, saveat, args)`, returning the
forward solution; what differs is the backward pass it sets up. Strategies that are a diffrax adjoint subclass
`AbstractDiffraxAdjoint` and only say which adjoint (`adjoint`); others (`AnalyticAdjoint`, `Reversible`) wrap the
solve in their own custom VJP.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PyTree

from ode_nets.fields._base import AbstractField
from ode_nets.solvers.stepping import Discretisation


class AbstractGradientStrategy(eqx.Module):
    """Forward solve plus the backward pass its gradient uses. `config_options` names the keyword arguments
    (`checkpoints`, `backward_solver`, `backward_stepping`) that `ode_nets.build` passes from the `gradient` config."""

    config_options: ClassVar[tuple[str, ...]] = ()
    forward_mode: ClassVar[bool] = False  # supports jax.jvp (forward-mode autodiff) through the solve
    reverse_mode: ClassVar[bool] = True  # supports jax.grad; False: gradients by forward mode (one JVP per parameter)
    # How the backward pass's function evaluations are counted (`nfe_backward` in training): "vjp", one
    # vector-Jacobian product per forward evaluation (reverse mode through the solver's steps); "solve", a backward
    # pass of its own steps, counted through a `BackwardCounter` as `args` (`CountingBacksolveAdjoint`,
    # `AnalyticAdjoint`); "none", not counted.
    backward_counting: ClassVar[str] = "none"

    @abc.abstractmethod
    def solve(self, field: AbstractField, x0: PyTree[Array], discretisation: Discretisation, saveat: diffrax.SaveAt,
              args: object = None) -> diffrax.Solution:
        """Integrate dx/dt = field(t, x, args) from x(0) = x0 over the discretisation's grid."""


class AbstractDiffraxAdjoint(AbstractGradientStrategy):
    """A strategy that is one of diffrax's adjoints, chosen for the discretisation and field."""

    @abc.abstractmethod
    def adjoint(self, discretisation: Discretisation, field: AbstractField) -> diffrax.AbstractAdjoint:
        """The diffrax adjoint to solve with."""

    def solve(self, field: AbstractField, x0: PyTree[Array], discretisation: Discretisation, saveat: diffrax.SaveAt,
              args: object = None) -> diffrax.Solution:
        return discretisation.diffeqsolve(field, x0, self.adjoint(discretisation, field), saveat, args)


class Monitor(eqx.Module):
    """Solver statistics out of a backward pass: a zero leaf of a strategy whose *cotangent* a custom VJP sets to
    the statistics (named `names`), since a backward pass has no other way out of `jax.grad`. `pop_monitors` takes
    them out of a gradient before the optimizer sees it; `count_parameters` does not count them."""

    values: Array
    names: tuple[str, ...] = eqx.field(static=True)

    @classmethod
    def zeros(cls, names: tuple[str, ...]) -> "Monitor":
        return cls(jnp.zeros(len(names)), names)


def is_monitor(x: object) -> bool:
    return isinstance(x, Monitor)


def pop_monitors(grads: PyTree) -> tuple[PyTree, dict[str, Array]]:
    """The gradient with every `Monitor` cotangent zeroed, and those statistics by name."""
    stats: dict[str, Array] = {}

    def take(x: object) -> object:
        if not isinstance(x, Monitor) or x.values is None:
            return x
        stats.update(zip(x.names, x.values))
        return Monitor(jnp.zeros_like(x.values), x.names)

    return jax.tree_util.tree_map(take, grads, is_leaf=is_monitor), stats
