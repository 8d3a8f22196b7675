"""The solver registry: each name a config may give as `solver.method`, with the solver's metadata."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import diffrax

from ode_nets.fields._base import AbstractField
from ode_nets.fields.time_params import ParamInit
from ode_nets.solvers.field_euler import FieldEuler
from ode_nets.solvers.multistep import AdamsBashforth3, TwoStepLM, with_two_step_memory
from ode_nets.solvers.rk4 import RK4
from ode_nets.solvers.verlet import Verlet


@dataclass(frozen=True)
class SolverInfo:
    """A solver class and what the rest of the code needs to know about it.

    - `adaptive`: stepped by an error controller (rtol, atol) when named in a config;
    - `stages`: vector-field evaluations per step (1 for the multistep methods, which reuse their history);
    - `multistep`: carries history from step to step;
    - `splits_at_jumps`: has a stage at the step end, so fixed steps are split one-sidedly at parameter jumps
      (`LayerSteps`) and no stage reads the next layer's parameters;
    - `wrap_field`: how the field must be wrapped for this solver (lm2 adds its trainable k_l), or None.
    """

    cls: type[diffrax.AbstractSolver]
    adaptive: bool
    stages: int
    multistep: bool = False
    splits_at_jumps: bool = False
    wrap_field: Optional[Callable[[AbstractField, ParamInit], AbstractField]] = None


SOLVERS: dict[str, SolverInfo] = {
    "euler": SolverInfo(FieldEuler, adaptive=False, stages=1),  # diffrax.Euler, the step by the field if it can
    "heun": SolverInfo(diffrax.Heun, adaptive=False, stages=2, splits_at_jumps=True),
    "midpoint": SolverInfo(diffrax.Midpoint, adaptive=False, stages=2, splits_at_jumps=True),
    "ralston": SolverInfo(diffrax.Ralston, adaptive=False, stages=2, splits_at_jumps=True),
    "rk4": SolverInfo(RK4, adaptive=False, stages=4, splits_at_jumps=True),
    "bosh3": SolverInfo(diffrax.Bosh3, adaptive=True, stages=3),
    "tsit5": SolverInfo(diffrax.Tsit5, adaptive=True, stages=6),
    "dopri5": SolverInfo(diffrax.Dopri5, adaptive=True, stages=6),
    "dopri8": SolverInfo(diffrax.Dopri8, adaptive=True, stages=12),
    "verlet": SolverInfo(Verlet, adaptive=False, stages=2),  # Hamiltonian two-state fields (Haber–Ruthotto)
    "ab3": SolverInfo(AdamsBashforth3, adaptive=False, stages=1, multistep=True),
    "lm2": SolverInfo(TwoStepLM, adaptive=False, stages=1, multistep=True, wrap_field=with_two_step_memory),  # eq 111
}


def solver_info(solver: diffrax.AbstractSolver) -> SolverInfo:
    """The registry entry of `solver`'s class; for a class not in `SOLVERS`, metadata read off the solver itself
    (an explicit Runge–Kutta tableau gives its stages; fixed stepping is assumed)."""
    for info in SOLVERS.values():
        if type(solver) is info.cls:
            return info
    tableau = getattr(solver, "tableau", None)
    stages = 1 if tableau is None else len(tableau.c) + 1
    return SolverInfo(type(solver), adaptive=False, stages=stages, splits_at_jumps=stages > 1)


def solver_name(solver: diffrax.AbstractSolver) -> str:
    """The registry name of `solver` (its class name if it is not registered)."""
    return next((name for name, info in SOLVERS.items() if type(solver) is info.cls), type(solver).__name__)
