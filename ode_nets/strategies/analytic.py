"""The paper's hand-derived backward pass, as a custom VJP: the `AnalyticAdjoint` strategy.

Ruseckas §3.3/§3.4 write the gradient of a loss on x(T) without automatic differentiation:

- the adjoint a(t) = dL/dx(t) solves -da/dt = a dF/dx backwards from a(T) = dL/dx(T) (eqs 10, 11), which for
  the cubic field is eq 62 (mu = 3), eq 63 (general mu) and eq 76 (convolution);
- the functional derivatives of L w.r.t. the parameters are a dF/dq: eqs 65, 66 (dense w, b), 77, 78 (kernel,
  bias), and eq 71 (gamma); a parameter that is constant over an interval collects the integral of a dF/dq
  over that interval (eqs 13-15).

The field supplies those terms itself (`AbstractAnalyticField`: `rhs`, `vjp_state`, `vjp_params`, both at once `vjp`); for the cubic
fields they are written once in `ode_nets.fields.cubic`. With one state for the whole batch, every density is summed
over the batch. Two backward schemes:

- forward Euler (fixed steps): the discrete adjoint of eq 112, a_k = a_{k+1} + h a_{k+1} dF/dx(x_k), over the
  stored states of every step (a `lax.scan`, reading each stored state in place where the field can:
  `stored_step_vjp`); it is the exact gradient of the discrete network (eq 109);
- any other solver: the continuous eqs 62/63/76 integrated backwards with diffrax over each layer, together with
  x (restarted at every layer from the stored forward state, so the backward x cannot drift far) and the
  gradient integrals; fixed-step solvers step back over the forward grid, adaptive ones use a PID controller
  with the backward stepping's tolerances (default: the forward's).

Backward work (`nfe_backward` in training, `ode_nets.training.counting`): with a `BackwardCounter` as the solve's
`args`, its cotangent is (evaluations, accepted steps, rejected steps) of the backward pass: for Euler K steps of
one a dF/dx and a dF/dq each (eq 112); otherwise the layer solves' evaluations of the backward system (x, a, G),
each one F, one a dF/dx and one a dF/dq, summed over the layers.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Optional

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array

from ode_nets.fields._base import AbstractAnalyticField, LayerParams
from ode_nets.solvers.counting import CountingController, solve_counts
from ode_nets.solvers.stepping import AbstractStepping, AdaptiveSteps, Discretisation
from ode_nets.strategies._base import AbstractGradientStrategy
from ode_nets.strategies.diffrax_adjoints import BackwardCounter, DiscretizeThenOptimize


class AnalyticAdjoint(AbstractGradientStrategy):
    """The same forward solve, with the paper's backward equations as its VJP (fields with hand-derived terms only).

    `backward_solver` / `backward_stepping`: how the continuous adjoint is integrated when the forward solver is not
    Euler (defaults: the forward's). Only `SaveAt(t1=True)` gets the custom gradient; any other `saveat`
    (trajectories for plots and diagnostics) is the plain forward solve.
    """

    backward_solver: Optional[diffrax.AbstractSolver] = None
    backward_stepping: Optional[AbstractStepping] = None
    config_options: ClassVar[tuple[str, ...]] = ("backward_solver", "backward_stepping")
    backward_counting: ClassVar[str] = "solve"

    def solve(self, field: AbstractAnalyticField, x0: Array, discretisation: Discretisation, saveat: diffrax.SaveAt,
              args: object = None) -> diffrax.Solution:
        """The forward solve; its VJP is the paper's backward pass. `args`: a `BackwardCounter` (whose cotangent
        is the backward pass's counts) or None (the cubic fields take no args)."""
        check_analytic(field)
        if not _is_t1_only(saveat):
            return DiscretizeThenOptimize().solve(field, x0, discretisation, saveat, args)
        counter = args if isinstance(args, BackwardCounter) else BackwardCounter.zeros()
        return _solve_stored((field, x0, counter), discretisation, self)

    def uses_discrete_adjoint(self, discretisation: Discretisation) -> bool:
        """Forward Euler (with an Euler or default backward solver): the backward pass is eq 112 over the stored steps."""
        euler = lambda s: isinstance(s, diffrax.Euler)  # noqa: E731
        return euler(discretisation.solver) and (self.backward_solver is None or euler(self.backward_solver))

    def stored_times(self, discretisation: Discretisation) -> np.ndarray:
        """Times of the states the backward pass reads: every step for Euler (eq 112), the layer grid otherwise;
        the first, 0, is x0 itself, the others are stored by the forward solve."""
        if self.uses_discrete_adjoint(discretisation):
            return discretisation.step_ts()
        return discretisation.grid.times()

    def backward(self, field: AbstractAnalyticField, x0: Array, stored: Array, a_final: Array,
                 discretisation: Discretisation, keep_adjoints: bool = False
                 ) -> tuple[Array, LayerParams, Array | None, Array]:
        """a(0), per-layer parameter gradients, (if `keep_adjoints`) the adjoint on `stored_times`, and the
        backward pass's (evaluations, accepted steps, rejected steps). `stored`: the forward states at
        `stored_times()[1:]` (`_forward`)."""
        field.check_layers(discretisation.grid.layers)
        if self.uses_discrete_adjoint(discretisation):
            return euler_backward(field, x0, stored, a_final, discretisation, keep_adjoints)
        return continuous_backward(field, stored, a_final, discretisation, self, keep_adjoints)


def check_analytic(field: object) -> None:
    """Fail early, naming the alternatives, for a field without hand-derived adjoint terms."""
    if not isinstance(field, AbstractAnalyticField):
        raise ValueError(f"gradient.strategy: 'analytic_adjoint' is derived for the cubic fields (eqs 62, 76) only, "
                         f"not for {type(field).__name__}; use discretize_then_optimize or optimize_then_discretize")


def euler_backward(field: AbstractAnalyticField, x0: Array, stored: Array, a_final: Array,
                   discretisation: Discretisation, keep_adjoints: bool = False
                   ) -> tuple[Array, LayerParams, Array | None, Array]:
    """Discrete adjoint of forward Euler (eq 112, with s = steps_per_layer steps of h = dt/s per layer).

    x0 and stored (K, ...) = x_1 .. x_K, the states after every step; a_final = dL/dx(T) (eq 10).
    a_k = a_{k+1} + h (a_{k+1} dF/dx)(x_k); dL/dq_l = h sum_{k in layer l} (a_{k+1} dF/dq)(x_k).
    Steps K-1 .. 1 read x_k = stored[k-1] (in place where the field can, `stored_step_vjp`), step 0 reads x0.
    Returns a(0), the per-layer gradients (L, ...), if `keep_adjoints` the adjoints at every step (K+1, ...)
    (not kept in training: they would cost one state per step of memory), and the counts (K, K, 0).
    """
    layers, steps_per_layer = discretisation.grid.layers, discretisation.stepping.steps_per_layer
    h = discretisation.grid.dt / steps_per_layer
    steps = layers * steps_per_layer
    if stored.shape[0] != steps:
        raise ValueError(f"analytic_adjoint: {stored.shape[0]} stored states for {steps} Euler steps")

    def step(a_next: Array, k: Array) -> tuple[Array, tuple[LayerParams, Array | None]]:
        p = field.layer_params(k // steps_per_layer)
        grads, a = field.stored_step_vjp(p, stored, k - 1, a_next, h)
        return a, (grads, a if keep_adjoints else None)

    a1, (grads, adjoints) = lax.scan(step, a_final, jnp.arange(1, steps), reverse=True)
    first, a0 = field.euler_step_vjp(field.layer_params(jnp.asarray(0)), x0, a1, h)
    grads = jax.tree_util.tree_map(lambda g0, g: jnp.concatenate([g0[None], g]), first, grads)
    per_layer = jax.tree_util.tree_map(lambda g: jnp.sum(g.reshape(layers, steps_per_layer, *g.shape[1:]), 1), grads)
    if keep_adjoints:
        adjoints = jnp.concatenate([a0[None], adjoints, a_final[None]])
    return a0, per_layer, adjoints, jnp.array([steps, steps, 0])


def _with_final(adjoints: Array | None, a_final: Array) -> Array | None:
    return None if adjoints is None else jnp.concatenate([adjoints, a_final[None]])


def _layer_solve(field: AbstractAnalyticField, solver: diffrax.AbstractSolver, stepping: AbstractStepping
                 ) -> Callable[[Array, Array, Array, LayerParams], tuple[Array, LayerParams, Array]]:
    """One layer of the continuous backward pass: dx/dt = F, da/dt = -a dF/dx, dG/dt = -a dF/dq from t_{l+1} down
    to t_l (`ts`, decreasing); returns a(t_l), G (the layer's gradient integrals) and the solve's counts."""
    def rhs(t: Array, state: tuple[Array, Array, LayerParams], p: LayerParams) -> tuple[Array, Array, LayerParams]:
        x, a, _ = state
        dens, vjp_x = field.vjp(p, x, a)
        return field.rhs(p, x), -vjp_x, jax.tree_util.tree_map(jnp.negative, dens)

    def run(x_end: Array, a_end: Array, ts: Array, p: LayerParams) -> tuple[Array, LayerParams, Array]:
        zero = jax.tree_util.tree_map(jnp.zeros_like, p)
        if isinstance(stepping, AdaptiveSteps):
            controller: Any = CountingController.around(stepping.controller(None), solver)
            max_steps = stepping.max_steps
        else:
            controller, max_steps = diffrax.StepTo(ts=ts), stepping.steps_per_layer
        sol = diffrax.diffeqsolve(diffrax.ODETerm(rhs), solver, ts[0], ts[-1], None, (x_end, a_end, zero), args=p,
                                  saveat=diffrax.SaveAt(t1=True, controller_state=True),
                                  stepsize_controller=controller, max_steps=max_steps,
                                  adjoint=diffrax.RecursiveCheckpointAdjoint(checkpoints=1))
        _, a_start, grads = jax.tree_util.tree_map(lambda y: y[-1], sol.ys)
        counts = solve_counts(sol, solver)
        return a_start, grads, jnp.stack([counts["nfe"], counts["steps_accepted"], counts["steps_rejected"]])

    return run


def continuous_backward(field: AbstractAnalyticField, stored: Array, a_final: Array, discretisation: Discretisation,
                        strategy: AnalyticAdjoint, keep_adjoints: bool = False
                        ) -> tuple[Array, LayerParams, Array | None, Array]:
    """The continuous adjoint (eqs 62/63/76) and gradient integrals (eqs 65, 66, 71, 77, 78), layer by layer.

    stored: (L, ...) states at the layer ends t_1 .. t_L; a_final = dL/dx(T). On layer l the backward system is
    solved with diffrax from t_{l+1} (x = stored[l], a, G = 0) down to t_l (`_layer_solve`). Returns a(0),
    per-layer gradients, if `keep_adjoints` a(t_l), and the counts summed over the layers.
    """
    layers = discretisation.grid.layers
    stepping = strategy.backward_stepping or discretisation.stepping
    run = _layer_solve(field, strategy.backward_solver or discretisation.solver, stepping)
    steps = stepping.steps_per_layer
    points = discretisation.grid.step_times(steps)
    layer_points = np.stack([points[l * steps:(l + 1) * steps + 1][::-1] for l in range(layers)])  # (L, s+1)

    def layer(a_end: Array, inputs: tuple[Array, Array]) -> tuple[Array, tuple[LayerParams, Array | None, Array]]:
        l, ts = inputs
        a_start, grads, counts = run(stored[l], a_end, ts, field.layer_params(l))
        return a_start, (grads, a_start if keep_adjoints else None, counts)

    inputs = (jnp.arange(layers), jnp.asarray(layer_points, dtype=stored.dtype))
    a0, (per_layer, adjoints, counts) = lax.scan(layer, a_final, inputs, reverse=True)
    return a0, per_layer, _with_final(adjoints, a_final), jnp.sum(counts, axis=0)


# ---------------------------------------------------------------------------------------------
# the custom VJP


def _forward(field: AbstractAnalyticField, x0: Array, discretisation: Discretisation, strategy: AnalyticAdjoint
             ) -> diffrax.Solution:
    """The forward solve, storing the states on `strategy.stored_times()[1:]` (x0 is at hand). For Euler these are
    the K states after the grid's K steps, saved as the steps produce them (`SaveAt(steps=True)`), not by
    evaluating the interpolant at each step's end as `SaveAt(ts)` does (an extra pass over the state per step),
    and without x0 in front (a copy of the whole stored trajectory to put it there)."""
    if strategy.uses_discrete_adjoint(discretisation):
        saveat = diffrax.SaveAt(steps=True)
    else:
        saveat = diffrax.SaveAt(ts=strategy.stored_times(discretisation)[1:])
    return DiscretizeThenOptimize().solve(field, x0, discretisation, saveat)


def _final_only(sol: diffrax.Solution) -> diffrax.Solution:
    """The Solution with only its last saved time (x(T)), as a solve with SaveAt(t1=True) returns."""
    return eqx.tree_at(lambda s: (s.ts, s.ys), sol, (sol.ts[-1:], sol.ys[-1:]))


VjpArg = tuple[AbstractAnalyticField, Array, BackwardCounter]


@eqx.filter_custom_vjp
def _solve_stored(vjp_arg: VjpArg, discretisation: Discretisation, strategy: AnalyticAdjoint) -> diffrax.Solution:
    field, x0, _ = vjp_arg
    return _final_only(_forward(field, x0, discretisation, strategy))


@_solve_stored.def_fwd
def _solve_stored_fwd(perturbed: Any, vjp_arg: VjpArg, discretisation: Discretisation, strategy: AnalyticAdjoint
                      ) -> tuple[diffrax.Solution, Array]:
    del perturbed
    field, x0, _ = vjp_arg
    sol = _forward(field, x0, discretisation, strategy)
    return _final_only(sol), sol.ys


@_solve_stored.def_bwd
def _solve_stored_bwd(stored: Array, grad_obj: diffrax.Solution, perturbed: Any, vjp_arg: VjpArg,
                      discretisation: Discretisation, strategy: AnalyticAdjoint
                      ) -> tuple[AbstractAnalyticField, Array, BackwardCounter]:
    """Gradients of the field and x0, and the backward pass's counts as the `BackwardCounter`'s cotangent."""
    del perturbed
    field, x0, counter = vjp_arg
    a_final = grad_obj.ys[-1] if grad_obj.ys is not None else jnp.zeros_like(stored[-1])
    a0, per_layer, _, counts = strategy.backward(field, x0, stored, a_final, discretisation)
    return field.fold_gradients(per_layer), a0, BackwardCounter(counts.astype(counter.counts.dtype))


def _is_t1_only(saveat: diffrax.SaveAt) -> bool:
    sub = saveat.subs
    return (not saveat.dense and isinstance(sub, diffrax.SubSaveAt) and sub.t1 and not sub.t0 and sub.ts is None
            and not sub.steps)


def adjoint_on_grid(field: AbstractAnalyticField, x0: Array, loss: Callable[[Array], Array],
                    discretisation: Discretisation, strategy: AnalyticAdjoint | None = None
                    ) -> tuple[Array, Array, Array]:
    """Times, states x(t) and adjoints a(t) = dL/dx(t) on the stored grid, for a loss of x(T) (eqs 10, 11).

    Used by the diagnostics (Hamiltonian H = a F, eq 21). The grid is every step for Euler, else the layer grid.
    """
    strategy = strategy or AnalyticAdjoint()
    check_analytic(field)
    field.check_layers(discretisation.grid.layers)
    stored = _forward(field, x0, discretisation, strategy).ys
    _, _, adjoints, _ = strategy.backward(field, x0, stored, jax.grad(loss)(stored[-1]), discretisation,
                                          keep_adjoints=True)
    times = jnp.asarray(strategy.stored_times(discretisation), dtype=x0.dtype)
    return times, jnp.concatenate([x0[None], stored]), adjoints
