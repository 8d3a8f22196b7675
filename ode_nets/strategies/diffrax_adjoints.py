"""The two gradient strategies that are diffrax adjoints (Ruthotto's "Disc->Diff" and "Diff->Disc").

- `DiscretizeThenOptimize`: differentiate through the solver's own steps (`diffrax.RecursiveCheckpointAdjoint`):
  the exact gradient of the discrete network (eq 112).
- `OptimizeThenDiscretize`: solve the continuous adjoint equation (eq 11) backwards (`diffrax.BacksolveAdjoint`),
  with its own solver and stepping if given;
- `Direct`: `diffrax.DirectAdjoint`, differentiable in forward mode too (Newton–PCG).
"""

from __future__ import annotations

from typing import ClassVar, Optional

import diffrax
import equinox as eqx

from ode_nets.fields._base import AbstractField
from ode_nets.solvers.stepping import AbstractStepping, Discretisation
from ode_nets.strategies._base import AbstractDiffraxAdjoint


class DiscretizeThenOptimize(AbstractDiffraxAdjoint):
    """Backpropagation through the solver's steps, `checkpoints` recursive checkpoints.

    None (default): for fixed steps, every step is checkpointed (no recomputation, memory linear in L; diffrax's own
    default of about log L checkpoints was measured 2.4x slower for short solves); for adaptive steps, diffrax's default.
    """

    checkpoints: Optional[int] = eqx.field(static=True, default=None)
    config_options: ClassVar[tuple[str, ...]] = ("checkpoints",)

    def adjoint(self, discretisation: Discretisation, field: AbstractField) -> diffrax.AbstractAdjoint:
        default = None if discretisation.stepping.adaptive else len(discretisation.step_ts()) - 1
        checkpoints = self.checkpoints if self.checkpoints is not None else default
        return diffrax.RecursiveCheckpointAdjoint(checkpoints=checkpoints)


class OptimizeThenDiscretize(AbstractDiffraxAdjoint):
    """The continuous adjoint (eq 11) solved from T back to 0 by `backward_solver` with `backward_stepping`
    (defaults: the forward's). Fixed steps go back over the forward grid; adaptive ones use their own PID."""

    backward_solver: Optional[diffrax.AbstractSolver] = None
    backward_stepping: Optional[AbstractStepping] = None
    config_options: ClassVar[tuple[str, ...]] = ("backward_solver", "backward_stepping")

    def adjoint(self, discretisation: Discretisation, field: AbstractField) -> diffrax.AbstractAdjoint:
        solver = self.backward_solver or discretisation.solver
        stepping = self.backward_stepping or discretisation.stepping
        controller = stepping.backward(solver, discretisation.step_ts(), discretisation.jump_ts(field))
        return diffrax.BacksolveAdjoint(solver=solver, stepsize_controller=controller)


class Direct(AbstractDiffraxAdjoint):
    """Differentiate through the solve with diffrax's `DirectAdjoint`: reverse *and* forward mode (`jax.jvp`), which
    Newton–PCG's Gauss–Newton products need (`optim.name: newton_pcg`); fixed steps only in practice (memory)."""

    forward_mode: ClassVar[bool] = True

    def adjoint(self, discretisation: Discretisation, field: AbstractField) -> diffrax.AbstractAdjoint:
        return diffrax.DirectAdjoint()
