"""How a solve steps over the layer grid: `FixedSteps` (exactly on the grid, the ResNet of eq 109 for Euler) or
`AdaptiveSteps` (an error-controlled PID, clipped at the layer boundaries where parameters jump), and
`Discretisation`, the solver, grid and stepping of one network together.

Fixed steps use `StepTo`, or `LayerSteps` for solvers with a stage at the step end, so that no stage reads the
next layer's parameters. Depth is a `lax` loop inside diffrax: compile time does not grow with L.
"""

import abc
from typing import ClassVar

import diffrax
import equinox as eqx
import numpy as np

from ode_nets.fields.time_params import LayerGrid, has_jumps
from ode_nets.solvers.counting import CountingController
from ode_nets.solvers.layer_steps import LayerSteps
from ode_nets.solvers.registry import solver_info

Controller = diffrax.AbstractStepSizeController


class AbstractStepping(eqx.Module):
    """Step-size control of a solve over the layer grid, forwards and (for a backward solve) backwards."""

    steps_per_layer: eqx.AbstractVar[int]
    adaptive: eqx.AbstractClassVar[bool]

    @abc.abstractmethod
    def forward(self, solver: diffrax.AbstractSolver, step_ts: np.ndarray, jump_ts: np.ndarray | None
                ) -> tuple[Controller, float | None, int]:
        """(controller, dt0, max_steps) for a solve from 0 to T."""

    @abc.abstractmethod
    def backward(self, solver: diffrax.AbstractSolver, step_ts: np.ndarray, jump_ts: np.ndarray | None) -> Controller:
        """The controller of a backward solve from T to 0 (`diffrax.BacksolveAdjoint`)."""


def backward_grid(step_ts: np.ndarray) -> np.ndarray:
    """The forward grid reversed, interior points moved one ulp down.

    A backward step over [t_l, t_{l+1}] starts at t_{l+1}, where the piecewise-constant
    parameters already take layer l+1's value; starting one ulp below evaluates the left limit,
    i.e. the parameters of the interval actually traversed (layer l).
    """
    reverse = step_ts[::-1].copy()
    reverse[1:-1] = np.nextafter(reverse[1:-1], -np.inf)
    return reverse


class FixedSteps(AbstractStepping):
    """`steps_per_layer` equal steps per layer; one Euler step per layer *is* the residual network (eq 109)."""

    steps_per_layer: int = eqx.field(static=True, default=1)
    adaptive: ClassVar[bool] = False

    def __check_init__(self) -> None:
        if self.steps_per_layer < 1:
            raise ValueError(f"steps_per_layer must be >= 1, got {self.steps_per_layer}")

    def forward(self, solver: diffrax.AbstractSolver, step_ts: np.ndarray, jump_ts: np.ndarray | None
                ) -> tuple[Controller, None, int]:
        """`StepTo` on the grid (Euler stays bit-identical to eq 109), `LayerSteps` for stages at the step end."""
        if jump_ts is not None and solver_info(solver).splits_at_jumps:
            return LayerSteps.over(step_ts, jump_ts), None, len(step_ts) - 1
        return diffrax.StepTo(ts=step_ts), None, len(step_ts) - 1

    def backward(self, solver: diffrax.AbstractSolver, step_ts: np.ndarray, jump_ts: np.ndarray | None) -> Controller:
        """Back over the forward grid (`backward_grid`); split one-sidedly at the jumps for stages at both ends."""
        if jump_ts is not None and solver_info(solver).splits_at_jumps:
            return LayerSteps.over(step_ts[::-1].copy(), jump_ts)
        return diffrax.StepTo(ts=backward_grid(step_ts))


class AdaptiveSteps(AbstractStepping):
    """A PID controller at tolerances `rtol`, `atol`, its steps clipped at the parameter jumps; a solve that needs
    more than `max_steps` steps fails. `steps_per_layer` is the grid a fixed-step backward solver would use."""

    rtol: float = eqx.field(static=True, default=1e-3)
    atol: float = eqx.field(static=True, default=1e-6)
    max_steps: int = eqx.field(static=True, default=4096)
    steps_per_layer: int = eqx.field(static=True, default=1)
    adaptive: ClassVar[bool] = True

    def controller(self, jump_ts: np.ndarray | None) -> Controller:
        pid = diffrax.PIDController(rtol=self.rtol, atol=self.atol)
        return pid if jump_ts is None else diffrax.ClipStepSizeController(pid, jump_ts=jump_ts)

    def forward(self, solver: diffrax.AbstractSolver, step_ts: np.ndarray, jump_ts: np.ndarray | None
                ) -> tuple[Controller, None, int]:
        """dt0 None: diffrax picks the first step (Hairer's heuristic)."""
        tableau = getattr(solver, "tableau", None)
        if tableau is not None and not np.any(tableau.b_error):
            raise ValueError(f"{type(solver).__name__} has no embedded error estimate: use FixedSteps")
        return CountingController.around(self.controller(jump_ts), solver), None, self.max_steps

    def backward(self, solver: diffrax.AbstractSolver, step_ts: np.ndarray, jump_ts: np.ndarray | None) -> Controller:
        """The PID of `controller`, its field evaluations counted (`CountingController`)."""
        return CountingController.around(self.controller(jump_ts), solver)


class Discretisation(eqx.Module):
    """The solver, the layer grid and the stepping of one network: everything `diffeqsolve` needs besides the
    field, the initial state and the gradient strategy."""

    solver: diffrax.AbstractSolver
    grid: LayerGrid
    stepping: AbstractStepping

    def step_ts(self) -> np.ndarray:
        """The fixed-step grid: the layer grid split into `stepping.steps_per_layer` steps per layer."""
        return self.grid.step_times(self.stepping.steps_per_layer)

    def jump_ts(self, field: eqx.Module) -> np.ndarray | None:
        """Interior layer boundaries if the field's parameters jump there, else None."""
        return self.grid.jump_times() if has_jumps(field) else None

    def controller(self, field: eqx.Module) -> tuple[Controller, float | None, int]:
        """(controller, dt0, max_steps) of the forward solve of `field`."""
        return self.stepping.forward(self.solver, self.step_ts(), self.jump_ts(field))

    def diffeqsolve(self, field: eqx.Module, x0: object, adjoint: diffrax.AbstractAdjoint, saveat: diffrax.SaveAt,
                    args: object = None) -> diffrax.Solution:
        """`diffrax.diffeqsolve` of dx/dt = field(t, x, args) on [0, T] with this discretisation and `adjoint`."""
        controller, dt0, max_steps = self.controller(field)
        if isinstance(controller, CountingController):  # keep its state: it holds the evaluation count
            saveat = eqx.tree_at(lambda s: s.controller_state, saveat, True)
        return diffrax.diffeqsolve(diffrax.ODETerm(field), self.solver, 0.0, self.grid.horizon, dt0, x0, args=args,
                                   saveat=saveat, stepsize_controller=controller, adjoint=adjoint,
                                   max_steps=max_steps)
