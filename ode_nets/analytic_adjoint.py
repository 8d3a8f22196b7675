"""The paper's hand-derived backward pass for the cubic fields, as a custom VJP (`gradient.strategy: analytic_adjoint`).

Ruseckas §3.3/§3.4 write the gradient of a loss on x(T) without automatic differentiation:

- the adjoint a(t) = dL/dx(t) solves -da/dt = a dF/dx backwards from a(T) = dL/dx(T) (eqs 10, 11), which for
  the cubic field is eq 62 (mu = 3), eq 63 (general mu) and eq 76 (convolution);
- the functional derivatives of L w.r.t. the parameters are a dF/dq: eqs 65, 66 (dense w, b), 77, 78 (kernel,
  bias), and eq 71 (gamma); a parameter that is constant over an interval collects the integral of a dF/dq
  over that interval (eqs 13-15).

Our trainable leaves are the *scaled* parameters of eq 110 and F = (w~ x + b~ - gamma~ x^mu) / dt, so every
density carries the factor 1/dt: dL/dw~_l = (1/dt) int_{layer l} a(t)^T x(t) dt, and so on. With one state for
the whole batch, every density is summed over the batch.

Two backward schemes:

- forward Euler (fixed steps): the discrete adjoint of eq 112, a_k = a_{k+1} + h a_{k+1} dF/dx(x_k), over the
  stored states of every step (a `lax.scan`); it is the exact gradient of the discrete network (eq 109);
- any other solver: the continuous eqs 62/63/76 integrated backwards with diffrax over each layer, together with
  x (restarted at every layer from the stored forward state, so the backward x cannot drift far) and the
  gradient integrals; fixed-step solvers step back over the forward grid, adaptive ones use a PID controller
  with `gradient.adjoint_rtol/atol` (default: the forward tolerances).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array

from ode_nets.config import GradientConfig, SolverConfig
from ode_nets.fields.cubic import _CONV_IMPLS, ConvCubicField, CubicField, odd_power
from ode_nets.fields.time_params import Constant, PiecewiseConstant, layer_grid


# ---------------------------------------------------------------------------------------------
# the hand-derived equations, per field


class LayerParams(NamedTuple):
    """The scaled parameters of one layer: weight (w~ or kappa~), bias b~, gamma~ (a scalar)."""

    weight: Array
    bias: Array
    gamma: Array


def dense_forward(p: LayerParams, x: Array, dt: float, mu: float) -> Array:
    """F = (w~ x + b~ - gamma~ x^mu) / dt (eqs 56, 57, 110); x: (..., N)."""
    return (x @ p.weight.T + p.bias - p.gamma * odd_power(x, mu)) / dt


def dense_adjoint(p: LayerParams, x: Array, a: Array, dt: float, mu: float) -> Array:
    """(a dF/dx)_i = (sum_j a_j w~_ji - mu gamma~ |x_i|^(mu-1) a_i) / dt: the right side of eq 62/63 (= -da/dt)."""
    return (a @ p.weight - mu * p.gamma * jnp.abs(x) ** (mu - 1) * a) / dt


def dense_densities(x: Array, a: Array, dt: float, mu: float) -> LayerParams:
    """a dF/dq summed over the batch: dL/dw~ = a^T x / dt (eq 65), dL/db~ = a / dt (eq 66),
    dL/dgamma~ = -sum_i a_i x_i^mu / dt (eq 71)."""
    a2, x2 = a.reshape(-1, a.shape[-1]), x.reshape(-1, x.shape[-1])
    return LayerParams(a2.T @ x2 / dt, jnp.sum(a2, 0) / dt, -jnp.sum(a * odd_power(x, mu)) / dt)


def conv_forward(p: LayerParams, x: Array, dt: float, mu: float, impl: str = "im2col") -> Array:
    """F = (kappa~ * x + b~ - gamma~ x^mu) / dt (eq 75); x: (..., C, H, W)."""
    return (_CONV_IMPLS[impl](x, p.weight) + p.bias[:, None, None] - p.gamma * odd_power(x, mu)) / dt


def conv_adjoint(p: LayerParams, x: Array, a: Array, dt: float, mu: float, impl: str = "im2col") -> Array:
    """(a dF/dx) = (sum_j a_{i-j} kappa~_j - mu gamma~ |x_i|^(mu-1) a_i) / dt (eq 76, with channels).

    The transpose of a zero-padded cross-correlation is the cross-correlation with the kernel flipped in space
    and its channel axes swapped.
    """
    flipped = jnp.swapaxes(p.weight[:, :, ::-1, ::-1], 0, 1)
    return (_CONV_IMPLS[impl](a, flipped) - mu * p.gamma * jnp.abs(x) ** (mu - 1) * a) / dt


def conv_densities(x: Array, a: Array, dt: float, mu: float) -> LayerParams:
    """dL/dkappa~_{o,c,p} = sum_j a_{o,j} x_{c,j+p} / dt (eq 77), dL/db~_o = sum_j a_{o,j} / dt (eq 78), eq 71.

    One contraction per kernel offset p (9 of them) over the zero-padded x: no 9x patch tensor in memory.
    """
    height, width = x.shape[-2:]
    padded = jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(1, 1), (1, 1)])
    kernel = jnp.stack([jnp.einsum("...ohw,...chw->oc", a, padded[..., i:i + height, j:j + width])
                        for i in range(3) for j in range(3)], axis=-1)
    bias = jnp.sum(a, axis=tuple(i for i in range(a.ndim) if i != a.ndim - 3))
    return LayerParams(kernel.reshape(*kernel.shape[:2], 3, 3) / dt, bias / dt, -jnp.sum(a * odd_power(x, mu)) / dt)


class FieldOps(NamedTuple):
    """The pieces of one field family: its weight attribute and the three functions above."""

    weight_name: str
    forward: Callable[..., Array]
    adjoint: Callable[..., Array]
    densities: Callable[..., LayerParams]


def field_ops(field: eqx.Module) -> FieldOps:
    """The hand-derived equations for `field` (cubic or conv_cubic); ValueError for any other field."""
    if isinstance(field, CubicField):
        return FieldOps("w", dense_forward, dense_adjoint, dense_densities)
    if isinstance(field, ConvCubicField):
        impl = field.conv_impl
        return FieldOps("kernel", lambda p, x, dt, mu: conv_forward(p, x, dt, mu, impl),
                        lambda p, x, a, dt, mu: conv_adjoint(p, x, a, dt, mu, impl), conv_densities)
    raise ValueError(f"gradient.strategy: 'analytic_adjoint' is derived for the cubic fields (eqs 62, 76) only, "
                     f"not for {type(field).__name__}; use discretize_then_optimize or optimize_then_discretize")


def _per_layer(param: PiecewiseConstant | Constant) -> Array:
    return param.values if isinstance(param, PiecewiseConstant) else param.value[None]


def layer_params(field: eqx.Module, layer: Array) -> LayerParams:
    """The scaled parameters in force on layer `layer` (a traced index; time-independent ones ignore it)."""
    ops = field_ops(field)

    def pick(param: PiecewiseConstant | Constant) -> Array:
        values = _per_layer(param)
        return values[jnp.minimum(layer, values.shape[0] - 1)]

    return LayerParams(pick(getattr(field, ops.weight_name)), pick(field.b), jnp.asarray(field.gamma))


def _check_layers(field: eqx.Module, layers: int) -> None:
    for param in (getattr(field, field_ops(field).weight_name), field.b):
        if isinstance(param, PiecewiseConstant) and param.layers != layers:
            raise ValueError(f"analytic_adjoint: a parameter has {param.layers} pieces but the solve has {layers} layers")


def fold_gradients(field: eqx.Module, per_layer: LayerParams) -> eqx.Module:
    """Per-layer gradients (L, ...) -> a gradient pytree shaped like the field's trainable part.

    A time-independent parameter sums its layers' integrals (eq 15); a fixed gamma (a Python float) gets None.
    """
    ops = field_ops(field)

    def fold(param: PiecewiseConstant | Constant, g: Array) -> Array:
        return g if isinstance(param, PiecewiseConstant) else jnp.sum(g, 0)

    weight = getattr(field, ops.weight_name)
    grads = eqx.filter(field, eqx.is_inexact_array)
    leaf = lambda p: p.values if isinstance(p, PiecewiseConstant) else p.value  # noqa: E731
    grads = eqx.tree_at(lambda f: (leaf(getattr(f, ops.weight_name)), leaf(f.b)), grads,
                        (fold(weight, per_layer.weight), fold(field.b, per_layer.bias)))
    if eqx.is_inexact_array(field.gamma):
        grads = eqx.tree_at(lambda f: f.gamma, grads, jnp.sum(per_layer.gamma).astype(field.gamma.dtype))
    return grads


# ---------------------------------------------------------------------------------------------
# backward passes


def uses_discrete_adjoint(solver: SolverConfig, gradient: GradientConfig) -> bool:
    """Forward Euler (with the default backward method): the backward pass is eq 112 over the stored steps."""
    return solver.method == "euler" and gradient.adjoint_method in (None, "euler")


def forward_grid(horizon: float, layers: int, solver: SolverConfig, gradient: GradientConfig) -> np.ndarray:
    """Times at which the forward states are stored: every step for Euler (eq 112), the layer grid otherwise."""
    from ode_nets.solve import step_grid

    if uses_discrete_adjoint(solver, gradient):
        return step_grid(horizon, layers, solver.steps_per_layer)
    return layer_grid(0.0, horizon, layers)


def euler_backward(field: eqx.Module, xs: Array, a_final: Array, *, layers: int, steps_per_layer: int,
                   keep_adjoints: bool = False) -> tuple[Array, LayerParams, Array | None]:
    """Discrete adjoint of forward Euler (eq 112, with s = steps_per_layer steps of h = dt/s per layer).

    xs: (K+1, ...) states x_k at every step; a_final = dL/dx(T) (eq 10).
    a_k = a_{k+1} + h (a_{k+1} dF/dx)(x_k); dL/dq_l = h sum_{k in layer l} (a_{k+1} dF/dq)(x_k).
    Returns a(0), the per-layer gradients (L, ...) and, if `keep_adjoints`, the adjoints at every step (K+1, ...)
    (not kept in training: they would cost one state per step of memory).
    """
    ops, dt, mu = field_ops(field), field.dt, field.mu
    h = dt / steps_per_layer
    steps = xs.shape[0] - 1

    def step(a_next: Array, k: Array) -> tuple[Array, tuple[LayerParams, Array | None]]:
        x = xs[k]  # indexed, not sliced: no copy of the stored states
        p = layer_params(field, k // steps_per_layer)
        grads = jax.tree_util.tree_map(lambda g: h * g, ops.densities(x, a_next, dt, mu))
        a = a_next + h * ops.adjoint(p, x, a_next, dt, mu)
        return a, (grads, a if keep_adjoints else None)

    a0, (grads, adjoints) = lax.scan(step, a_final, jnp.arange(steps), reverse=True)
    per_layer = jax.tree_util.tree_map(lambda g: jnp.sum(g.reshape(layers, steps_per_layer, *g.shape[1:]), 1), grads)
    return a0, per_layer, _with_final(adjoints, a_final)


def _backward_solver(solver: SolverConfig, gradient: GradientConfig) -> tuple[diffrax.AbstractSolver, bool]:
    from ode_nets.solve import make_solver

    return make_solver(gradient.adjoint_method or solver.method)


def _with_final(adjoints: Array | None, a_final: Array) -> Array | None:
    return None if adjoints is None else jnp.concatenate([adjoints, a_final[None]])


def continuous_backward(field: eqx.Module, xs: Array, a_final: Array, *, horizon: float, layers: int,
                        solver: SolverConfig, gradient: GradientConfig, keep_adjoints: bool = False
                        ) -> tuple[Array, LayerParams, Array | None]:
    """The continuous adjoint (eqs 62/63/76) and gradient integrals (eqs 65, 66, 71, 77, 78), layer by layer.

    xs: (L+1, ...) states at the layer boundaries; a_final = dL/dx(T). On layer l, the system
    dx/dt = F, da/dt = -a dF/dx, dG/dt = -a dF/dq (G: the integral of the density from t to t_{l+1}) is solved
    with diffrax from t_{l+1} (x = xs[l+1], a, G = 0) down to t_l. Returns a(0), per-layer gradients and, if
    `keep_adjoints`, a(t_l).
    """
    ops, dt, mu = field_ops(field), field.dt, field.mu
    method, adaptive = _backward_solver(solver, gradient)
    from ode_nets.solve import step_grid

    steps = solver.steps_per_layer
    points = step_grid(horizon, layers, steps)
    layer_points = np.stack([points[l * steps:(l + 1) * steps + 1][::-1] for l in range(layers)])  # (L, s+1)

    def rhs(t: Array, state: tuple[Array, Array, LayerParams], p: LayerParams) -> tuple[Array, Array, LayerParams]:
        x, a, _ = state
        dens = ops.densities(x, a, dt, mu)
        return (ops.forward(p, x, dt, mu), -ops.adjoint(p, x, a, dt, mu),
                jax.tree_util.tree_map(jnp.negative, dens))

    def layer(a_end: Array, inputs: tuple[Array, Array]) -> tuple[Array, tuple[LayerParams, Array | None]]:
        l, ts = inputs
        x_end = xs[l + 1]
        p = layer_params(field, l)
        zero = jax.tree_util.tree_map(jnp.zeros_like, p)
        if adaptive:
            controller: Any = diffrax.PIDController(rtol=gradient.adjoint_rtol or solver.rtol,
                                                    atol=gradient.adjoint_atol or solver.atol)
            max_steps = solver.max_steps
        else:
            controller, max_steps = diffrax.StepTo(ts=ts), steps
        sol = diffrax.diffeqsolve(diffrax.ODETerm(rhs), method, ts[0], ts[-1], None, (x_end, a_end, zero), args=p,
                                  stepsize_controller=controller, max_steps=max_steps,
                                  adjoint=diffrax.RecursiveCheckpointAdjoint(checkpoints=1))
        _, a_start, grads = jax.tree_util.tree_map(lambda y: y[-1], sol.ys)
        return a_start, (grads, a_start if keep_adjoints else None)

    inputs = (jnp.arange(layers), jnp.asarray(layer_points, dtype=xs.dtype))
    a0, (per_layer, adjoints) = lax.scan(layer, a_final, inputs, reverse=True)
    return a0, per_layer, _with_final(adjoints, a_final)


def backward(field: eqx.Module, xs: Array, a_final: Array, *, horizon: float, layers: int, solver: SolverConfig,
             gradient: GradientConfig, keep_adjoints: bool = False) -> tuple[Array, LayerParams, Array | None]:
    """a(0), per-layer parameter gradients and (if `keep_adjoints`) the adjoint on the stored grid (`forward_grid`)."""
    _check_layers(field, layers)
    if uses_discrete_adjoint(solver, gradient):
        return euler_backward(field, xs, a_final, layers=layers, steps_per_layer=solver.steps_per_layer,
                              keep_adjoints=keep_adjoints)
    return continuous_backward(field, xs, a_final, horizon=horizon, layers=layers, solver=solver, gradient=gradient,
                               keep_adjoints=keep_adjoints)


# ---------------------------------------------------------------------------------------------
# the custom VJP


def _forward(field: eqx.Module, x0: Array, horizon: float, layers: int, solver: SolverConfig,
             gradient: GradientConfig) -> diffrax.Solution:
    from ode_nets.solve import solve

    ts = forward_grid(horizon, layers, solver, gradient)
    return solve(field, x0, horizon=horizon, layers=layers, solver=solver, gradient=GradientConfig(),
                 saveat=diffrax.SaveAt(ts=ts))


@eqx.filter_custom_vjp
def _solve_stored(vjp_arg: tuple[eqx.Module, Array], horizon: float, layers: int, solver: SolverConfig,
                  gradient: GradientConfig) -> diffrax.Solution:
    field, x0 = vjp_arg
    return _final_only(_forward(field, x0, horizon, layers, solver, gradient))


def _final_only(sol: diffrax.Solution) -> diffrax.Solution:
    """The Solution with only its last saved time (x(T)), as `solve` returns for SaveAt(t1=True)."""
    return eqx.tree_at(lambda s: (s.ts, s.ys), sol, (sol.ts[-1:], sol.ys[-1:]))


@_solve_stored.def_fwd
def _solve_stored_fwd(perturbed: Any, vjp_arg: tuple[eqx.Module, Array], horizon: float, layers: int,
                      solver: SolverConfig, gradient: GradientConfig) -> tuple[diffrax.Solution, Array]:
    del perturbed
    field, x0 = vjp_arg
    sol = _forward(field, x0, horizon, layers, solver, gradient)
    return _final_only(sol), sol.ys


@_solve_stored.def_bwd
def _solve_stored_bwd(xs: Array, grad_obj: diffrax.Solution, perturbed: Any, vjp_arg: tuple[eqx.Module, Array],
                      horizon: float, layers: int, solver: SolverConfig, gradient: GradientConfig
                      ) -> tuple[eqx.Module, Array]:
    del perturbed
    field, _ = vjp_arg
    a_final = grad_obj.ys[-1] if grad_obj.ys is not None else jnp.zeros_like(xs[-1])
    a0, per_layer, _ = backward(field, xs, a_final, horizon=horizon, layers=layers, solver=solver, gradient=gradient)
    return fold_gradients(field, per_layer), a0


def solve_analytic(field: eqx.Module, x0: Array, *, horizon: float, layers: int, solver: SolverConfig,
                   gradient: GradientConfig, saveat: diffrax.SaveAt | None = None) -> diffrax.Solution:
    """`solve` with the paper's backward pass: the same forward solve, a Solution holding x(T) in `ys[-1]`.

    Only `saveat=SaveAt(t1=True)` (the default) gets the custom gradient; any other `saveat` (trajectories for
    plots and diagnostics) is the plain forward solve, differentiated by autodiff if at all.
    """
    field_ops(field)  # fail early for fields without hand-derived equations
    if saveat is not None and not _is_t1_only(saveat):
        from ode_nets.solve import solve

        return solve(field, x0, horizon=horizon, layers=layers, solver=solver, gradient=GradientConfig(),
                     saveat=saveat)
    return _solve_stored((field, x0), horizon, layers, solver, gradient)


def _is_t1_only(saveat: diffrax.SaveAt) -> bool:
    sub = saveat.subs
    return (not saveat.dense and isinstance(sub, diffrax.SubSaveAt) and sub.t1 and not sub.t0 and sub.ts is None
            and not sub.steps)


def adjoint_on_grid(field: eqx.Module, x0: Array, loss: Callable[[Array], Array], *, horizon: float, layers: int,
                    solver: SolverConfig, gradient: GradientConfig) -> tuple[Array, Array, Array]:
    """Times, states x(t) and adjoints a(t) = dL/dx(t) on the stored grid, for a loss of x(T) (eqs 10, 11).

    Used by the diagnostics (Hamiltonian H = a F, eq 21). The grid is every step for Euler, else the layer grid.
    """
    _check_layers(field, layers)
    sol = _forward(field, x0, horizon, layers, solver, gradient)
    xs = sol.ys
    _, _, adjoints = backward(field, xs, jax.grad(loss)(xs[-1]), horizon=horizon, layers=layers, solver=solver, gradient=gradient,
                              keep_adjoints=True)
    return sol.ts, xs, adjoints
