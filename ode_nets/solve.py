"""`solve`: one network's forward solve, dx/dt = field(t, x, args) on [0, T], with the gradient strategy's backward pass.

It takes objects, not names or configs: the field, a diffrax solver, a gradient strategy, the layer grid and the
stepping. With `FixedSteps()` and `diffrax.Euler()`, one step per layer, the solve *is* the residual network of
eq 109. `x0` may carry a batch axis: the whole batch is one state (one shared step-size sequence).
"""

from __future__ import annotations

import diffrax
from jaxtyping import Array, PyTree

from ode_nets.fields._base import AbstractField
from ode_nets.fields.time_params import LayerGrid
from ode_nets.solvers.stepping import AbstractStepping, Discretisation, FixedSteps
from ode_nets.strategies._base import AbstractGradientStrategy
from ode_nets.strategies.diffrax_adjoints import DiscretizeThenOptimize


def solve(field: AbstractField, x0: PyTree[Array], *, solver: diffrax.AbstractSolver, grid: LayerGrid,
          strategy: AbstractGradientStrategy = DiscretizeThenOptimize(), stepping: AbstractStepping = FixedSteps(),
          saveat: diffrax.SaveAt | None = None, args: object = None) -> diffrax.Solution:
    """Integrate dx/dt = field(t, x, args) from x(0) = x0 to t = T (`grid.horizon`), saving `saveat` (default x(T))."""
    discretisation = Discretisation(solver, grid, stepping)
    return strategy.solve(field, x0, discretisation, saveat or diffrax.SaveAt(t1=True), args)
