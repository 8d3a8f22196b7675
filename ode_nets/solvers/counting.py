"""Function evaluations (NFE) of a diffrax solve, from the solution's `stats` and the solver's tableau.

diffrax counts steps (`num_steps`, `num_accepted_steps`, `num_rejected_steps`), not evaluations. An explicit
Runge-Kutta step of s stages evaluates the field s times, s - 1 with first-same-as-last (FSAL: the last stage of an
accepted step is the first of the next; a rejected step keeps it too), plus one evaluation at t0 for an FSAL method.
Dopri5/Tsit5: 1 + 6 * num_steps. A solver without a tableau (Euler, the multistep methods, Verlet) evaluates
`SolverInfo.stages` times per step. `tests/test_neural_odes.py` checks this against evaluations counted at run time.
(diffrax's initial step-size selection, dt0 = None, shares its evaluations with the solver's first ones: measured, no
extra evaluations appear in the count.)
"""

from __future__ import annotations

import diffrax
import jax.numpy as jnp
from jaxtyping import Array

from ode_nets.solvers.registry import solver_info


def evaluation_cost(solver: diffrax.AbstractSolver) -> tuple[int, int]:
    """(evaluations at t0, evaluations per step, accepted or rejected) of `solver`."""
    tableau = getattr(solver, "tableau", None)
    if tableau is None:
        return 0, solver_info(solver).stages
    stages = len(tableau.c) + 1
    return (1, stages - 1) if tableau.fsal else (0, stages)


def solve_counts(stats: dict, solver: diffrax.AbstractSolver) -> dict[str, Array]:
    """{nfe, steps_accepted, steps_rejected} of one solve from its `stats` (traced arrays under jit)."""
    initial, per_step = evaluation_cost(solver)
    return {"nfe": initial + per_step * jnp.asarray(stats["num_steps"]),
            "steps_accepted": jnp.asarray(stats["num_accepted_steps"]),
            "steps_rejected": jnp.asarray(stats["num_rejected_steps"])}
