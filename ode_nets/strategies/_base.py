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
from jaxtyping import Array, PyTree

from ode_nets.fields._base import AbstractField
from ode_nets.solvers.stepping import Discretisation


class AbstractGradientStrategy(eqx.Module):
    """Forward solve plus the backward pass its gradient uses. `config_options` names the keyword arguments
    (`checkpoints`, `backward_solver`, `backward_stepping`) that `ode_nets.build` passes from the `gradient` config."""

    config_options: ClassVar[tuple[str, ...]] = ()
    # How the backward pass's function evaluations are counted (`nfe_backward` in training): "vjp", one
    # vector-Jacobian product per forward evaluation (reverse mode through the solver's steps); "solve", a backward
    # solve of its own, counted by `CountingBacksolveAdjoint`; "none", not counted.
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
