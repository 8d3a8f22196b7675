"""Verlet / leapfrog for the Hamiltonian-like network, its exact inverse, and memory-free backprop.

Ruthotto slides ("Verlet integration for Hamiltonian-inspired NNs"), with Z_{-1/2} = 0:

    Z_{j+1/2} = Z_{j-1/2} - h sigma(K_j Y_j + b_j)          (= Z + h dz/dt(Y_j))
    Y_{j+1}   = Y_j + h sigma(K_j^T Z_{j+1/2} + b_j)        (= Y + h dy/dt(Z_{j+1/2}))

and backwards Y_j = Y_{j+1} - h sigma(K_j^T Z_{j+1/2} + b_j), Z_{j-1/2} = Z_{j+1/2} + h sigma(K_j Y_j + b_j).
The state is x = concat(Y, Z) (`ode_nets.fields.hamiltonian`); the steps work for any separable field
(dY/dt depends on Z only, dZ/dt on Y only), evaluating the field and keeping the half needed (XLA drops
the unused half). `reversible_solve` is `gradient.strategy: reversible`: a `jax.custom_vjp` whose backward
pass reconstructs Y_j, Z_{j-1/2} from the final state with the inverse step instead of storing them,
so activation memory does not grow with the number of layers.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Float

from ode_nets.fields.hamiltonian import split_state


def state_axis(field: Any) -> int:
    """The axis holding the (Y, Z) halves: the field's `feature_axis` (a diffrax term's wrappers are looked through)."""
    while hasattr(field, "term"):  # diffrax.WrapTerm(ODETerm(field))
        field = field.term
    return getattr(getattr(field, "vector_field", field), "feature_axis", -1)


def verlet_step(field: Callable, t: Float[Array, ""], h: Float[Array, ""], x: Array, args: Any = None,
                axis: int = -1) -> Array:
    """(Y_j, Z_{j-1/2}) -> (Y_{j+1}, Z_{j+1/2}), parameters of the layer at t; halves along `axis`."""
    y, z = split_state(x, axis)
    z = z + h * split_state(field(t, x, args), axis)[1]
    y = y + h * split_state(field(t, jnp.concatenate([y, z], axis), args), axis)[0]
    return jnp.concatenate([y, z], axis)


def verlet_inverse(field: Callable, t: Float[Array, ""], h: Float[Array, ""], x: Array, args: Any = None,
                   axis: int = -1) -> Array:
    """The exact inverse of `verlet_step`: (Y_{j+1}, Z_{j+1/2}) -> (Y_j, Z_{j-1/2})."""
    y, z = split_state(x, axis)
    y = y - h * split_state(field(t, x, args), axis)[0]
    z = z - h * split_state(field(t, jnp.concatenate([y, z], axis), args), axis)[1]
    return jnp.concatenate([y, z], axis)


def half_kick(field: Callable, t: Float[Array, ""], h: Float[Array, ""], x: Array, axis: int = -1) -> Array:
    """Z += h dZ/dt(Y), Y unchanged. With h = -dt/2 before the Verlet steps and +dt/2 after them, the Z of Verlet's
    half steps is moved to the whole steps: together the Stoermer-Verlet (velocity Verlet) scheme, second order,
    whose energy error is O(dt^2)."""
    y, z = split_state(x, axis)
    return jnp.concatenate([y, z + h * split_state(field(t, x, None), axis)[1]], axis)


class Verlet(diffrax.AbstractSolver):
    """`verlet_step` as a diffrax solver: symplectic, first order for (y(t_j), z(t_j)) with Z_{-1/2} = z(0) as on the
    slides ("1st order Verlet"; second order if Z is read as z at the half steps). Equivalent to
    `diffrax.SemiImplicitEuler` with Z updated first, but on the single concatenated state the ODENet uses."""

    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar[Callable[..., diffrax.LocalLinearInterpolation]] = diffrax.LocalLinearInterpolation

    def order(self, terms: Any) -> int:
        return 1

    def init(self, terms: Any, t0: Any, t1: Any, y0: Array, args: Any) -> None:
        if not eqx.is_array(y0):
            raise ValueError("solver.method 'verlet' steps one concatenated (y, z) array; use gradient.strategy "
                             "discretize_then_optimize or reversible (a backsolve's state is a tuple)")
        return None

    def step(self, terms: Any, t0: Any, t1: Any, y0: Array, args: Any, solver_state: None, made_jump: Any
             ) -> tuple[Array, None, dict, None, diffrax.RESULTS]:
        y1 = verlet_step(terms.vf, t0, t1 - t0, y0, args, state_axis(terms))
        return y1, None, dict(y0=y0, y1=y1), None, diffrax.RESULTS.successful

    def func(self, terms: Any, t0: Any, y0: Array, args: Any) -> Array:
        return terms.vf(t0, y0, args)


class StepSolution(eqx.Module):
    """What `reversible_solve` returns: the saved times `ts` and states `ys` (leading axis = saved times),
    the two attributes of `diffrax.Solution` the models use."""

    ts: Array
    ys: Array
    num_steps: int = eqx.field(static=True, default=0)

    @property
    def stats(self) -> dict[str, int]:
        """diffrax's step counts of a fixed-step solve (for `ode_nets.solvers.solve_counts`)."""
        return {"num_steps": self.num_steps, "num_accepted_steps": self.num_steps, "num_rejected_steps": 0}


def _scan_states(field: Callable, x0: Array, ts: np.ndarray, args: Any) -> Array:
    """All states on the grid `ts`, (len(ts), ...), by ordinary autodiff-able scan (no memory saving)."""
    def body(x: Array, th: tuple[Array, Array]) -> tuple[Array, Array]:
        x1 = verlet_step(field, th[0], th[1], x, args, state_axis(field))
        return x1, x1
    _, xs = lax.scan(body, x0, (jnp.asarray(ts[:-1]), jnp.asarray(np.diff(ts))))
    return jnp.concatenate([x0[None], xs])


def reversible_final_state(field: eqx.Module, x0: Array, ts: np.ndarray) -> Array:
    """Y_N, Z_{N-1/2} after Verlet steps on the grid `ts`; gradients by backward reconstruction (custom_vjp).

    Backward pass, for j = N-1, ..., 0: x_j = verlet_inverse(x_{j+1}); then the VJP of one step at x_j.
    Only the final state is kept from the forward pass. Gradients equal ordinary backprop up to the
    round-off of the reconstruction.
    """
    params, static = eqx.partition(field, eqx.is_inexact_array)
    axis = state_axis(field)
    t0s, hs = jnp.asarray(ts[:-1]), jnp.asarray(np.diff(ts))

    def step(p: Any, t: Array, h: Array, x: Array) -> Array:
        return verlet_step(eqx.combine(p, static), t, h, x, axis=axis)

    def forward(p: Any, x: Array) -> Array:
        return lax.scan(lambda xc, th: (step(p, th[0], th[1], xc), None), x, (t0s, hs))[0]

    @jax.custom_vjp
    def run(p: Any, x: Array) -> Array:
        return forward(p, x)

    def run_fwd(p: Any, x: Array) -> tuple[Array, tuple]:
        x_final = forward(p, x)
        return x_final, (p, x_final)

    def run_bwd(res: tuple, ct: Array) -> tuple[Any, Array]:
        p, x_final = res
        return _reconstructing_backward(step,
                                        lambda t, h, x1: verlet_inverse(eqx.combine(p, static), t, h, x1, axis=axis),
                                        p, x_final, ct, (t0s, hs))

    run.defvjp(run_fwd, run_bwd)
    return run(params, x0)


def _reconstructing_backward(step: Callable, inverse: Callable, p: Any, x_final: Array, ct: Array,
                             grid: tuple[Array, Array]) -> tuple[Any, Array]:
    """(dL/dp, dL/dx_0) from x_N and dL/dx_N: for j = N-1, ..., 0, x_j = inverse(t_j, h_j, x_{j+1}), then the VJP of
    `step(p, t_j, h_j, x_j)` at the cotangent carried back; the parameters' cotangents are summed."""
    def body(carry: tuple, th: tuple[Array, Array]) -> tuple[tuple, None]:
        x1, ct_x, ct_p = carry
        t, h = th
        x = inverse(t, h, x1)
        _, vjp = jax.vjp(lambda pp, xx: step(pp, t, h, xx), p, x)
        d_p, d_x = vjp(ct_x)
        return (x, d_x, jax.tree_util.tree_map(jnp.add, ct_p, d_p)), None

    zeros = jax.tree_util.tree_map(jnp.zeros_like, p)
    (_, ct_x0, ct_p), _ = lax.scan(body, (x_final, ct, zeros), grid, reverse=True)
    return ct_p, ct_x0


def reconstruct_initial_state(field: eqx.Module, x_final: Array, ts: np.ndarray) -> Array:
    """Y_0, Z_{-1/2} from Y_N, Z_{N-1/2} by the inverse steps (the slides' backward recursion)."""
    body = lambda x, th: (verlet_inverse(field, th[0], th[1], x, axis=state_axis(field)), None)  # noqa: E731
    return lax.scan(body, x_final, (jnp.asarray(ts[:-1]), jnp.asarray(np.diff(ts))), reverse=True)[0]


def reversible_solve(field: eqx.Module, x0: Array, step_ts: np.ndarray, saveat: diffrax.SaveAt | None,
                     args: Any = None) -> StepSolution:
    """Verlet solve on `step_ts` for `gradient.strategy: reversible`.

    Saving only t1 (the default) uses the memory-free gradient; saving at `ts` (trajectories for plots and
    diagnostics) needs the states anyway and uses a plain scan. `ts` must lie on the step grid.
    """
    if args is not None:
        raise ValueError("gradient.strategy 'reversible' does not support field args")
    subs = saveat.subs if saveat is not None else None
    if subs is None or (subs.ts is None and not subs.t0 and not subs.steps):
        return StepSolution(jnp.asarray(step_ts[-1:]), reversible_final_state(field, x0, step_ts)[None],
                            len(step_ts) - 1)
    if subs.ts is None or subs.steps or subs.t0:
        raise ValueError("gradient.strategy 'reversible' saves either t1 or given ts on the step grid")
    wanted = np.asarray(subs.ts)
    index = np.searchsorted(step_ts, wanted)
    if np.any(index >= len(step_ts)) or not np.allclose(step_ts[np.minimum(index, len(step_ts) - 1)], wanted):
        raise ValueError("gradient.strategy 'reversible': save times must lie on the step grid")
    return StepSolution(jnp.asarray(wanted), _scan_states(field, x0, step_ts, args)[index], len(step_ts) - 1)
