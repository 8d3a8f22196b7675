"""Function evaluations (NFE) of a diffrax solve, counted by the step-size controller.

diffrax's `stats` count steps (`num_steps`, `num_accepted_steps`, `num_rejected_steps`), not evaluations, and the
evaluations per step are not constant: an explicit Runge-Kutta step of s stages evaluates the field s times, or
s - 1 with first-same-as-last (FSAL: Dopri5, Tsit5, Bosh3, Dopri8), whose first stage is the last stage of the
previous accepted step, except (diffrax 0.7 `AbstractRungeKutta.step`) on the first step and after a jump, which
evaluate it anew; a rejected first step leaves the solver state unchanged, so the next attempt evaluates it again.
Dopri5: 6 per step plus 1 for every attempt before the first accepted step and after a jump. (diffrax's initial
step-size selection, dt0 = None, adds none that execute: measured.)

`CountingController` wraps the adaptive controller and adds each attempt's evaluations to a counter carried in the
controller state, the one state diffrax keeps across rejected steps; `Discretisation.diffeqsolve` saves the final
controller state, and `solve_counts` reads it (fixed steps: stages x steps). No callbacks: pure, jit-able, exact
(`tests/test_neural_odes.py` compares with evaluations counted at run time).
"""

from __future__ import annotations

from typing import Any, Callable

import diffrax
import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array

from ode_nets.solvers.registry import solver_info


def evaluation_cost(solver: diffrax.AbstractSolver) -> tuple[int, bool]:
    """(evaluations per step attempt, whether the first stage is reused: FSAL) of `solver`."""
    tableau = getattr(solver, "tableau", None)
    if tableau is None:
        return solver_info(solver).stages, False
    stages = len(tableau.c) + 1
    return (stages - 1, True) if tableau.fsal else (stages, False)


class CountState(eqx.Module):
    """The wrapped controller's state and the evaluation counter: `started` (a step was accepted), `jumped`
    (the last accepted step ended on a jump: the next evaluates its first stage anew)."""

    inner: Any
    evaluations: Array
    started: Array
    jumped: Array


class CountingController(diffrax.AbstractStepSizeController):
    """`inner` (any diffrax controller), counting the field evaluations of every step attempt in its state."""

    inner: diffrax.AbstractStepSizeController
    per_step: int = eqx.field(static=True)
    fsal: bool = eqx.field(static=True)

    @classmethod
    def around(cls, inner: diffrax.AbstractStepSizeController, solver: diffrax.AbstractSolver
               ) -> "CountingController":
        per_step, fsal = evaluation_cost(solver)
        return cls(inner, per_step, fsal)

    def wrap(self, direction: Any) -> "CountingController":
        return CountingController(self.inner.wrap(direction), self.per_step, self.fsal)

    def init(self, terms: Any, t0: Any, t1: Any, y0: Any, dt0: Any, args: Any, func: Callable, error_order: Any
             ) -> tuple[Any, CountState]:
        tnext, inner = self.inner.init(terms, t0, t1, y0, dt0, args, func, error_order)
        return tnext, CountState(inner, jnp.array(0), jnp.array(False), jnp.array(False))

    def adapt_step_size(self, t0: Any, t1: Any, y0: Any, y1_candidate: Any, args: Any, y_error: Any,
                        error_order: Any, controller_state: CountState) -> tuple:
        """The inner controller's decision; the attempt just made cost `per_step` evaluations, plus one for an FSAL
        method whose first stage was evaluated anew (no step accepted yet, or after a jump)."""
        state = controller_state
        keep, next_t0, next_t1, made_jump, inner, result = self.inner.adapt_step_size(
            t0, t1, y0, y1_candidate, args, y_error, error_order, state.inner)
        fresh_first = jnp.logical_or(jnp.logical_not(state.started), state.jumped) if self.fsal else False
        evaluations = state.evaluations + self.per_step + jnp.where(fresh_first, 1, 0)
        jumped = jnp.where(keep, made_jump, state.jumped)
        new = CountState(inner, evaluations, jnp.logical_or(state.started, keep), jumped)
        return keep, next_t0, next_t1, made_jump, new, result


def counted_evaluations(sol: diffrax.Solution) -> Array | None:
    """The evaluations counted by a `CountingController`, if the solve had one (and saved its state)."""
    state = getattr(sol, "controller_state", None)  # `StepSolution` (Verlet, reversible) has none
    return state.evaluations if isinstance(state, CountState) else None


def solve_counts(sol: diffrax.Solution, solver: diffrax.AbstractSolver) -> dict[str, Array]:
    """{nfe, steps_accepted, steps_rejected} of one solve (traced arrays under jit): NFE from the counting
    controller, else (fixed steps, no FSAL reuse to account for) evaluations per step x steps."""
    per_step, fsal = evaluation_cost(solver)
    counted = counted_evaluations(sol)
    nfe = counted if counted is not None else per_step * jnp.asarray(sol.stats["num_steps"]) + int(fsal)
    return {"nfe": nfe, "steps_accepted": jnp.asarray(sol.stats["num_accepted_steps"]),
            "steps_rejected": jnp.asarray(sol.stats["num_rejected_steps"])}
