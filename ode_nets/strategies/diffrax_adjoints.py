"""The two gradient strategies that are diffrax adjoints (Ruthotto's "Disc->Diff" and "Diff->Disc").

- `DiscretizeThenOptimize`: differentiate through the solver's own steps (`diffrax.RecursiveCheckpointAdjoint`):
  the exact gradient of the discrete network (eq 112).
- `OptimizeThenDiscretize`: solve the continuous adjoint equation (eq 11) backwards (`diffrax.BacksolveAdjoint`),
  with its own solver and stepping if given;
- `DirectAdjoint`: `diffrax.DirectAdjoint`, differentiable in forward mode too (Newton–PCG);
- `ForwardMode`: `diffrax.ForwardMode`, forward mode only (one JVP per parameter; small models, comparisons).
"""

from __future__ import annotations

from typing import Callable, ClassVar, Optional

import diffrax
import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array

from ode_nets.fields._base import AbstractField
from ode_nets.solvers.counting import CountState, solve_counts
from ode_nets.solvers.stepping import AbstractStepping, Discretisation
from ode_nets.strategies._base import AbstractDiffraxAdjoint


class DiscretizeThenOptimize(AbstractDiffraxAdjoint):
    """Backpropagation through the solver's steps, `checkpoints` recursive checkpoints.

    None (default): for fixed steps, every step is checkpointed (no recomputation, memory linear in L; diffrax's own
    default of about log L checkpoints was measured 2.4x slower for short solves); for adaptive steps, diffrax's default.
    """

    checkpoints: Optional[int] = eqx.field(static=True, default=None)
    config_options: ClassVar[tuple[str, ...]] = ("checkpoints",)
    backward_counting: ClassVar[str] = "vjp"

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
    backward_counting: ClassVar[str] = "solve"

    def adjoint(self, discretisation: Discretisation, field: AbstractField) -> diffrax.AbstractAdjoint:
        solver = self.backward_solver or discretisation.solver
        stepping = self.backward_stepping or discretisation.stepping
        controller = stepping.backward(solver, discretisation.step_ts(), discretisation.jump_ts(field))
        return CountingBacksolveAdjoint(solver=solver, stepsize_controller=controller)


class DirectAdjoint(AbstractDiffraxAdjoint):
    """Differentiate through the solver's steps with `diffrax.DirectAdjoint` (reverse or forward mode, memory
    O(max_steps)): the same discrete gradient as `DiscretizeThenOptimize`, without recursive checkpointing."""

    backward_counting: ClassVar[str] = "vjp"
    forward_mode: ClassVar[bool] = True  # jax.jvp through the solve, which Newton–PCG's Gauss–Newton products need

    def adjoint(self, discretisation: Discretisation, field: AbstractField) -> diffrax.AbstractAdjoint:
        return diffrax.DirectAdjoint()


class ForwardMode(AbstractDiffraxAdjoint):
    """Forward-mode differentiation through the solver's steps (`diffrax.ForwardMode`): no reverse mode, so the
    gradient of a scalar loss is one JVP per trainable entry (`ode_nets.training.value_and_grad` uses
    `jax.jacfwd`), all pushed through one solve side by side: memory and time grow with the number of parameters.
    The same discrete gradient as `DiscretizeThenOptimize`; for models with few parameters and for comparisons."""

    forward_mode: ClassVar[bool] = True
    reverse_mode: ClassVar[bool] = False

    def adjoint(self, discretisation: Discretisation, field: AbstractField) -> diffrax.AbstractAdjoint:
        return diffrax.ForwardMode()


class BackwardCounter(eqx.Module):
    """Passed as the solve's `args` (the fields ignore it): its cotangent after a backward pass through
    `CountingBacksolveAdjoint` is (evaluations, accepted steps, rejected steps) of the backward solve; evaluations
    are counted by a `CountingController` if the backward solve has one, else evaluations per step x steps."""

    counts: Array

    @classmethod
    def zeros(cls) -> "BackwardCounter":
        return cls(jnp.zeros(3))


class CountingBacksolveAdjoint(diffrax.BacksolveAdjoint):
    """`diffrax.BacksolveAdjoint`, whose backward solve also reports its step counts.

    diffrax discards the backward solve's `stats`; the only way out of a VJP is a cotangent. The adjoint of `args`
    is integrated along the backward solve; the fields do not read `BackwardCounter.counts`, so its true cotangent
    is 0, and each backward `diffeqsolve` adds its `stats` to it. Without a `BackwardCounter` in `args` this is
    exactly `BacksolveAdjoint`.
    """

    @property
    def _diffeqsolve(self) -> Callable[..., diffrax.Solution]:
        return counted_diffeqsolve


def counted_diffeqsolve(**kwargs: object) -> diffrax.Solution:
    """`diffrax.diffeqsolve` of the augmented adjoint system (y, a_y, a_args, a_terms), its stats added to the
    adjoint of a `BackwardCounter` in `args`."""
    sol = diffrax.diffeqsolve(**kwargs)
    if not isinstance(kwargs.get("args"), BackwardCounter):
        return sol
    y, a_y, a_args, a_terms = sol.ys
    before = counted_evaluations_of(kwargs.get("controller_state"))  # a continued segment: count only this one
    evaluations = solve_counts(sol, kwargs["solver"])["nfe"] - before
    stats = jnp.stack([evaluations, sol.stats["num_accepted_steps"], sol.stats["num_rejected_steps"]])
    a_args = BackwardCounter(a_args.counts + stats.astype(a_args.counts.dtype))
    return eqx.tree_at(lambda s: s.ys, sol, (y, a_y, a_args, a_terms))


def counted_evaluations_of(state: object) -> Array:
    """The evaluations already in a passed-in controller state (0 for a fresh solve)."""
    return state.evaluations if isinstance(state, CountState) else jnp.zeros((), int)
