"""Solvers: the diffrax solvers a config can name (`SOLVERS`, with their metadata), the ones diffrax lacks, and how
a solve steps over the layer grid (`FixedSteps`, `AdaptiveSteps`).

Written here as diffrax solvers (Haber–Ruthotto slides; Ruseckas eq 111):
- `RK4` (`rk4`): the classic fourth-order Runge–Kutta tableau;
- `AdamsBashforth3` (`ab3`): Y_{j+1} = Y_j + h/12 (23 f_j - 16 f_{j-1} + 5 f_{j-2});
- `TwoStepLM` (`lm2`): x_{l+1} = (1 - k_l) x_l + k_l x_{l-1} + h f_l with trainable k_l (eq 111);
- `FieldEuler` (`euler`): `diffrax.Euler`, with the step taken by the field in one pass when it offers one;
- `Verlet` (`verlet`): leapfrog for the Hamiltonian two-state field (its memory-free gradient is the
  `Reversible` strategy).

To add a solver: write a `diffrax.AbstractSolver` and add a `SolverInfo` to `SOLVERS`.
"""

from __future__ import annotations

from ode_nets.solvers.counting import CountingController, CountState, evaluation_cost, solve_counts
from ode_nets.solvers.field_euler import FieldEuler
from ode_nets.solvers.layer_steps import LayerSteps
from ode_nets.solvers.multistep import AdamsBashforth3, TwoStepField, TwoStepLM, with_two_step_memory
from ode_nets.solvers.registry import SOLVERS, SolverInfo, solver_info, solver_name
from ode_nets.solvers.rk4 import LinearInterpolation, RK4
from ode_nets.solvers.stepping import AbstractStepping, AdaptiveSteps, Discretisation, FixedSteps
from ode_nets.solvers.verlet import StepSolution, Verlet, reversible_solve, verlet_inverse, verlet_step

__all__ = ["SOLVERS", "SolverInfo", "solver_info", "solver_name", "FieldEuler",
           "RK4", "LinearInterpolation", "AdamsBashforth3", "TwoStepField",
           "TwoStepLM", "with_two_step_memory", "StepSolution", "Verlet", "reversible_solve", "verlet_inverse",
           "verlet_step", "LayerSteps", "AbstractStepping", "FixedSteps", "AdaptiveSteps", "Discretisation",
           "evaluation_cost", "solve_counts", "CountingController", "CountState"]
