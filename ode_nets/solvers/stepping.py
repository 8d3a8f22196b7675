"""How a solve steps over the layer grid: `FixedSteps` (exactly on the grid, the ResNet of eq 109 for Euler) or
`AdaptiveSteps` (an error-controlled PID, clipped at the layer boundaries where parameters jump), and
`Discretisation`, the solver, grid and stepping of one network together.

Fixed steps use `StepTo`, or `LayerSteps` for solvers with a stage at the step end, so that no stage reads the
next layer's parameters. Depth is a `lax` loop inside diffrax: compile time does not grow with L.

Adaptive error control with `seminorm` (Kidger, Chen & Lyons 2021, "Hey, that's not an ODE"; torchdiffeq's
`adjoint_options=dict(norm="seminorm")`): only the components that feed back into the dynamics are error-controlled,
x forwards (not the regulariser integrals of a `Regularised` state (x, E, J)) and (x, a_x) backwards (not the
parameter-gradient integrals of diffrax's backsolve state (y, a_y, a_args, a_terms)). Integrals whose values never
enter the right-hand side cannot make the solution of x inaccurate, only themselves.
"""

import abc
from typing import Any, ClassVar

import diffrax
import equinox as eqx
import numpy as np
import optimistix as optx
from jaxtyping import Array

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


def dynamic_part(state: Any) -> Any:
    """The part of a state that its right-hand side reads: x of a tuple (x, integrals...), else the whole state."""
    return state[0] if isinstance(state, tuple) else state


def state_seminorm(state: Any) -> Array:
    """RMS norm of the forward state's x only (a `Regularised` state's integrals E, J excluded)."""
    return optx.rms_norm(dynamic_part(state))


def adjoint_seminorm(state: tuple[Any, Any, Any, Any]) -> Array:
    """RMS norm of (x, a_x) of diffrax's backsolve state (y, a_y, a_args, a_terms): the parameter-gradient
    integrals a_args, a_terms and the regulariser parts excluded (`diffrax.adjoint_rms_seminorm`, also for
    augmented states)."""
    y, a_y, _, _ = state
    return optx.rms_norm((dynamic_part(y), dynamic_part(a_y)))


class AdaptiveSteps(AbstractStepping):
    """A PID controller at tolerances `rtol`, `atol`, its steps clipped at the parameter jumps; a solve that needs
    more than `max_steps` steps fails. `steps_per_layer` is the grid a fixed-step backward solver would use.
    `seminorm`: error control on x (forwards) and (x, a_x) (backwards) only (module docstring)."""

    rtol: float = eqx.field(static=True, default=1e-3)
    atol: float = eqx.field(static=True, default=1e-6)
    max_steps: int = eqx.field(static=True, default=4096)
    steps_per_layer: int = eqx.field(static=True, default=1)
    seminorm: bool = eqx.field(static=True, default=False)
    adaptive: ClassVar[bool] = True

    def controller(self, jump_ts: np.ndarray | None, norm: Any = optx.rms_norm) -> Controller:
        pid = diffrax.PIDController(rtol=self.rtol, atol=self.atol, norm=norm)
        return pid if jump_ts is None else diffrax.ClipStepSizeController(pid, jump_ts=jump_ts)

    def forward(self, solver: diffrax.AbstractSolver, step_ts: np.ndarray, jump_ts: np.ndarray | None
                ) -> tuple[Controller, None, int]:
        """dt0 None: diffrax picks the first step (Hairer's heuristic)."""
        tableau = getattr(solver, "tableau", None)
        if tableau is not None and not np.any(tableau.b_error):
            raise ValueError(f"{type(solver).__name__} has no embedded error estimate: use FixedSteps")
        norm = state_seminorm if self.seminorm else optx.rms_norm
        return CountingController.around(self.controller(jump_ts, norm), solver), None, self.max_steps

    def backward(self, solver: diffrax.AbstractSolver, step_ts: np.ndarray, jump_ts: np.ndarray | None) -> Controller:
        """The PID of `controller`, its field evaluations counted (`CountingController`)."""
        norm = adjoint_seminorm if self.seminorm else optx.rms_norm
        return CountingController.around(self.controller(jump_ts, norm), solver)


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
