"""Memory-free gradients of the Verlet network: the `Reversible` strategy (Ruthotto slides, "Verlet integration").

The backward pass reconstructs the states from the final one with the exact inverse Verlet step instead of storing
them (`ode_nets.solvers.verlet.reversible_solve`), so activation memory does not grow with the number of layers.
"""

from __future__ import annotations

from typing import ClassVar

import diffrax
from jaxtyping import Array

from ode_nets.errors import ConfigError
from ode_nets.fields._base import AbstractField
from ode_nets.solvers.stepping import Discretisation, FixedSteps
from ode_nets.solvers.verlet import StepSolution, Verlet, reversible_solve
from ode_nets.strategies._base import AbstractGradientStrategy


class Reversible(AbstractGradientStrategy):
    """Verlet steps on the fixed grid, differentiated by backward reconstruction (a `jax.custom_vjp`).

    Backward work: per step, the inverse step's two evaluations of F and the VJP of the step (two vector-Jacobian
    products): one F and one VJP per forward evaluation, counted as `nfe_backward = nfe_forward` ("vjp").
    """

    backward_counting: ClassVar[str] = "vjp"

    def solve(self, field: AbstractField, x0: Array, discretisation: Discretisation, saveat: diffrax.SaveAt,
              args: object = None) -> StepSolution:
        if not isinstance(discretisation.solver, Verlet) or not isinstance(discretisation.stepping, FixedSteps):
            raise ConfigError(f"gradient.strategy 'reversible' needs solver.method 'verlet' with fixed steps, got "
                              f"{type(discretisation.solver).__name__}")
        return reversible_solve(field, x0, discretisation.step_ts(), saveat, args)
