"""Newton–PCG with block coordinate descent, the optimiser of the Ruthotto slides' multilevel experiments
("block coordinate descent with Newton-PCG", "weight decay (Tikhonov) regularization"), as `optim.name: newton_pcg`.

One step on the block in turn (network parameters `field`, then everything else: the classifier), with Tikhonov
weight decay alpha/2 ||theta||^2 added to the objective:

- Gauss–Newton Hessian-vector products G v = J^T H_out J v + H_reg v + alpha v, J = d logits / d theta by `jax.jvp`,
  J^T by `jax.vjp`, H_out the exact Hessian of the loss in logit space (cross entropy, z-loss; a `jvp` of its
  gradient), H_reg that of the parameter regulariser (eq 113); never a dense matrix (`gauss_newton_hvp`);
- a few preconditioned conjugate-gradient iterations on G d = -g (`pcg`), preconditioner the diagonal of G
  estimated with one Rademacher probe (Hutchinson: diag ~ v * G v), floored at alpha (and 1e-8);
- an Armijo backtracking line search on the batch objective (`armijo`), initial step `learning_rate` (1: Newton).

The forward-mode products need a solve that supports `jax.jvp`: `gradient.strategy: direct_adjoint` (diffrax
`DirectAdjoint`). It is an optax `GradientTransformationExtraArgs`: `update(grads, state, params, value_fn=,
output_fn=, output_loss=, reg_fn=)` (the training step passes them); its state carries the step's statistics.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jax import lax

from ode_nets.training.objective import Objective

PyTree = Any
Fn = Callable[[PyTree], jax.Array]


def tree_dot(a: PyTree, b: PyTree) -> jax.Array:
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def _axpy(alpha: jax.Array, x: PyTree, y: PyTree) -> PyTree:
    return jax.tree_util.tree_map(lambda u, v: alpha * u + v, x, y)


def _mul(a: PyTree, b: PyTree) -> PyTree:
    return jax.tree_util.tree_map(jnp.multiply, a, b)


def gauss_newton_hvp(output_fn: Fn, output_loss: Fn, params: PyTree, reg_fn: Fn | None = None,
                     damping: float = 0.0) -> Callable[[PyTree], PyTree]:
    """v -> (J^T H_out J + H_reg + damping I) v at `params`, J the Jacobian of `output_fn`, H_out the Hessian of
    `output_loss` at output_fn(params), H_reg the Hessian of `reg_fn` (if given)."""
    outputs, vjp = jax.vjp(output_fn, params)
    grad_out = jax.grad(output_loss)

    def hvp(v: PyTree) -> PyTree:
        jv = jax.jvp(output_fn, (params,), (v,))[1]
        result = vjp(jax.jvp(grad_out, (outputs,), (jv,))[1])[0]
        if reg_fn is not None:
            result = jax.tree_util.tree_map(jnp.add, result, jax.jvp(jax.grad(reg_fn), (params,), (v,))[1])
        return _axpy(damping, v, result)

    return hvp


def pcg(hvp: Callable[[PyTree], PyTree], b: PyTree, inverse_diag: PyTree, iterations: int, tol: float = 1e-10
        ) -> tuple[PyTree, jax.Array]:
    """Preconditioned conjugate gradients for G x = b from x = 0 (at most `iterations` products with G, stopping
    once ||r|| <= tol ||b||); `inverse_diag` is the diagonal preconditioner M^-1. Returns x and the iterations run."""
    x = jax.tree_util.tree_map(jnp.zeros_like, b)
    z = _mul(inverse_diag, b)
    stop = (tol * jnp.sqrt(tree_dot(b, b))) ** 2

    def cond(c: tuple) -> jax.Array:
        _, r, _, _, k = c
        return (k < iterations) & (tree_dot(r, r) > stop)

    def body(c: tuple) -> tuple:
        x, r, p, rz, k = c
        gp = hvp(p)
        curvature = tree_dot(p, gp)
        alpha = jnp.where(curvature > 0, rz / jnp.where(curvature > 0, curvature, 1.0), 0.0)
        x, r = _axpy(alpha, p, x), _axpy(-alpha, gp, r)
        z = _mul(inverse_diag, r)
        rz_new = tree_dot(r, z)
        p = _axpy(rz_new / jnp.where(rz > 0, rz, 1.0), p, z)
        return x, r, p, rz_new, k + 1

    x, _, _, _, k = lax.while_loop(cond, body, (x, b, z, tree_dot(b, z), jnp.asarray(0)))
    return x, k


def hutchinson_inverse_diag(hvp: Callable[[PyTree], PyTree], like: PyTree, key: jax.Array, floor: float) -> PyTree:
    """1 / max(|v * G v|, floor) with one Rademacher probe v: a Jacobi preconditioner from one product."""
    leaves, treedef = jax.tree_util.tree_flatten(like)
    keys = jax.random.split(key, len(leaves))
    probe = treedef.unflatten([jax.random.rademacher(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])
    return jax.tree_util.tree_map(lambda v, gv: 1.0 / jnp.maximum(jnp.abs(v * gv), floor), probe, hvp(probe))


def armijo(value_fn: Fn, params: PyTree, direction: PyTree, slope: jax.Array, initial: float, backtracks: int,
           c: float = 1e-4) -> tuple[jax.Array, jax.Array]:
    """The first step t = initial, initial/2, .. with f(p + t d) <= f(p) + c t g.d (0 if none within `backtracks`
    halvings or d is not a descent direction); returns t and the objective there."""
    f0 = value_fn(params)

    def value(t: jax.Array) -> jax.Array:
        v = value_fn(_axpy(t, direction, params))
        return jnp.where(jnp.isfinite(v), v, jnp.inf)

    def cond(c_: tuple) -> jax.Array:
        t, v, k = c_
        return (k < backtracks) & (v > f0 + c * t * slope)

    def body(c_: tuple) -> tuple:
        t, _, k = c_
        return t / 2, value(t / 2), k + 1

    t0 = jnp.asarray(initial, f0.dtype)
    t, v, _ = lax.while_loop(cond, body, (t0, value(t0), jnp.asarray(0)))
    accept = (v <= f0 + c * t * slope) & (slope < 0)
    return jnp.where(accept, t, 0.0), jnp.where(accept, v, f0)


class NewtonPCGState(NamedTuple):
    """Step counter (which block is next) and the last step's statistics."""

    count: jax.Array
    cg_iterations: jax.Array
    hvps: jax.Array
    step_size: jax.Array


def block_mask(params: PyTree, block: jax.Array, network: str = "field") -> PyTree:
    """1 on the leaves of the active block (block 0: `params.<network>`, block 1: everything else), else 0."""
    def mask(path: tuple, x: jax.Array) -> jax.Array:
        in_network = bool(path) and getattr(path[0], "name", None) == network
        return jnp.where((block == 0) == in_network, 1.0, 0.0).astype(x.dtype)

    return jax.tree_util.tree_map_with_path(mask, params)


class NewtonPCG(optax.GradientTransformationExtraArgs):
    """The type of `newton_pcg`'s transformation: the training step passes it `newton_inputs`."""


def newton_pcg(cg_iterations: int = 10, weight_decay: float = 1e-4, initial_step: float = 1.0,
               backtracks: int = 8, blocks: int = 2, seed: int = 0) -> NewtonPCG:
    """The Newton–PCG optimiser (module docstring); `blocks` 2 alternates network / classifier, 1 updates all."""
    def init(params: PyTree) -> NewtonPCGState:
        zero = jnp.zeros(())
        return NewtonPCGState(jnp.asarray(0), zero, zero, zero)

    def update(grads: PyTree, state: NewtonPCGState, params: PyTree = None, *, value_fn: Fn, output_fn: Fn,
               output_loss: Fn, reg_fn: Fn | None = None, **extra: Any) -> tuple[PyTree, NewtonPCGState]:
        del extra
        mask = block_mask(params, state.count % blocks) if blocks > 1 else jax.tree_util.tree_map(jnp.ones_like, params)
        objective = lambda p: value_fn(p) + 0.5 * weight_decay * tree_dot(p, p)  # noqa: E731
        g = _mul(mask, _axpy(weight_decay, params, grads))
        full_hvp = gauss_newton_hvp(output_fn, output_loss, params, reg_fn, weight_decay)
        hvp = lambda v: _mul(mask, full_hvp(_mul(mask, v)))  # noqa: E731
        key = jax.random.fold_in(jax.random.PRNGKey(seed), state.count)
        inverse_diag = _mul(mask, hutchinson_inverse_diag(hvp, params, key, max(weight_decay, 1e-8)))
        direction, iterations = pcg(hvp, jax.tree_util.tree_map(jnp.negative, g), inverse_diag, cg_iterations)
        t, _ = armijo(objective, params, direction, tree_dot(g, direction), initial_step, backtracks)
        updates = jax.tree_util.tree_map(lambda d: t * d, direction)
        stats = NewtonPCGState(state.count + 1, iterations.astype(t.dtype), (iterations + 1).astype(t.dtype), t)
        return updates, stats

    return NewtonPCG(init, update)


def optimizer_stats(opt_state: Any) -> dict[str, jax.Array]:
    """The last step's statistics of a Newton–PCG state inside `opt_state` (empty for other optimisers)."""
    found = [s for s in jax.tree_util.tree_leaves(opt_state, is_leaf=lambda x: isinstance(x, NewtonPCGState))
             if isinstance(s, NewtonPCGState)]
    if not found:
        return {}
    s = found[0]
    return {"newton_cg_iterations": s.cg_iterations, "newton_hvps": s.hvps, "newton_step_size": s.step_size}


def newton_inputs(objective: Objective, model: eqx.Module, x: jax.Array, y: jax.Array, mask: jax.Array
                  ) -> dict[str, Fn]:
    """What `newton_pcg`'s update needs, as functions of the trainable part of `model` on one batch."""
    static = eqx.filter(model, eqx.is_inexact_array, inverse=True)
    whole = lambda p: eqx.combine(p, static)  # noqa: E731
    return {"value_fn": lambda p: objective(whole(p), x, y, mask)[0], "output_fn": lambda p: whole(p)(x),
            "output_loss": lambda logits: objective.on_logits(logits, y, mask),
            "reg_fn": lambda p: objective.regulariser(whole(p))}
