"""Discretisations diffrax lacks, as diffrax solvers (Haber–Ruthotto slides; Ruseckas eq 111).

- `AdamsBashforth3` (`ab3`): Y_{j+1} = Y_j + h/12 (23 f_j - 16 f_{j-1} + 5 f_{j-2});
- `TwoStepLM` (`lm2`): x_{l+1} = (1 - k_l) x_l + k_l x_{l-1} + h f_l with trainable k_l (eq 111);
- `Verlet` (`verlet`): leapfrog for the Hamiltonian two-state field, and `reversible_solve`, its
  memory-free gradient that recomputes the states backwards (`gradient.strategy: reversible`).
"""

from ode_nets.solvers.multistep import AdamsBashforth3, TwoStepField, TwoStepLM, with_two_step_memory
from ode_nets.solvers.verlet import StepSolution, Verlet, reversible_solve, verlet_inverse, verlet_step

__all__ = ["AdamsBashforth3", "TwoStepField", "TwoStepLM", "with_two_step_memory", "StepSolution", "Verlet",
           "reversible_solve", "verlet_inverse", "verlet_step"]
