"""The compiled pieces of training: one optimizer step, the non-finite example filter, one evaluation batch."""

from __future__ import annotations

from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from ode_nets.losses import predicted_class
from ode_nets.models import project_parameters
from ode_nets.strategies import pop_monitors
from ode_nets.training.newton_pcg import NewtonPCG, newton_inputs, optimizer_stats
from ode_nets.training.objective import Objective


def reverse_mode(model: eqx.Module) -> bool:
    """False when the model's gradient strategy has no reverse mode (`ForwardMode`)."""
    return getattr(getattr(model, "strategy", None), "reverse_mode", True)


def value_and_grad(fn: Callable[..., tuple[jax.Array, Any]], model: eqx.Module, *args: Any
                   ) -> tuple[tuple[jax.Array, Any], eqx.Module]:
    """((value, aux), gradient w.r.t. the model's arrays) of `fn(model, *args) -> (scalar, aux)`: reverse mode, or
    forward mode (`eqx.filter_jacfwd`, one JVP per trainable entry) for a strategy without reverse mode."""
    if reverse_mode(model):
        return eqx.filter_value_and_grad(fn, has_aux=True)(model, *args)

    def with_value(m: eqx.Module) -> tuple[jax.Array, tuple[jax.Array, Any]]:
        value, aux = fn(m, *args)
        return value, (value, aux)

    grads, (value, aux) = eqx.filter_jacfwd(with_value, has_aux=True)(model)
    return (value, aux), grads


@eqx.filter_jit
def train_step(optimizer: optax.GradientTransformation, model: eqx.Module, opt_state: Any, x: jax.Array,
               y: jax.Array, mask: jax.Array, objective: Objective = Objective()) -> tuple[eqx.Module, Any, dict]:
    """One optimizer step on `objective` (then gamma~ >= 0, `project_parameters`).

    A non-finite loss or gradient leaves model and optimizer state unchanged (`ok` = False).
    """
    (loss, aux), grads = value_and_grad(objective.__call__, model, x, y, mask)
    grads, solver_stats = pop_monitors(grads)  # layer_parallel: MGRIT residuals / iterations (strategies._base.Monitor)
    extra = newton_inputs(objective, model, x, y, mask) if isinstance(optimizer, NewtonPCG) else {}
    updates, new_opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array), **extra)
    new_model = project_parameters(eqx.apply_updates(model, updates))
    grad_norm = optax.global_norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa: E731
    model = eqx.combine(keep(eqx.filter(new_model, eqx.is_array), eqx.filter(model, eqx.is_array)),
                        eqx.filter(model, eqx.is_array, inverse=True))
    opt_state = keep(new_opt_state, opt_state)
    stats = {**solver_stats, **optimizer_stats(opt_state)}
    return model, opt_state, {"loss": loss, "grad_norm": grad_norm, "ok": ok, **aux, **stats}


def finite_loss_and_gradient(loss: jax.Array, grads: Any) -> jax.Array:
    """True if the loss and the gradient's global norm are finite (a gradient whose norm overflows counts as not)."""
    return jnp.isfinite(loss) & jnp.isfinite(optax.global_norm(grads))


@eqx.filter_jit
def finite_examples(model: eqx.Module, x: jax.Array, y: jax.Array, objective: Objective = Objective()) -> jax.Array:
    """True for the examples whose own loss and gradient are finite (one vmapped fwd + bwd per example).

    The forward alone is not enough: on MNIST a loss of ~1e32 stayed finite while its backward overflowed.
    """
    def finite(xi: jax.Array, yi: jax.Array) -> jax.Array:
        (loss, _), grads = value_and_grad(objective.__call__, model, xi[None], yi[None], jnp.ones(1))
        return finite_loss_and_gradient(loss, grads)

    return jax.vmap(finite)(x, y)


def without_nonfinite(model: eqx.Module, x: jax.Array, y: jax.Array, mask: jax.Array,
                      objective: Objective = Objective()) -> tuple[jax.Array, jax.Array, int]:
    """The batch with the examples whose loss or gradient overflows zeroed and masked out (loss weight 0),
    and how many were dropped. Zeroing the input keeps 0 * inf = NaN out of the backward pass."""
    keep = finite_examples(model, x, y, objective)
    x = jnp.where(keep.reshape((-1,) + (1,) * (x.ndim - 1)), x, 0.0)
    return x, mask * keep, int(jnp.sum((~keep) & (mask > 0)))


@eqx.filter_jit
def eval_step(model: eqx.Module, x: jax.Array, y: jax.Array, mask: jax.Array
              ) -> tuple[tuple[jax.Array, jax.Array, jax.Array], jax.Array]:
    """One evaluation batch: (summed cross entropy over the finite unmasked examples, number correct, number
    non-finite), and the predicted class per example (-1 for a non-finite one).

    An example is *non-finite* when its logits are not all finite or its cross entropy is not (the solve
    overflowed). It counts as an error, is left out of the loss and of the confusion matrix.
    """
    logits = model(x)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    finite = jnp.isfinite(losses) & jnp.all(jnp.isfinite(logits), -1)
    predicted = jnp.where(finite, predicted_class(logits), -1)
    correct = (predicted == y).astype(jnp.float32)
    sums = (jnp.sum(jnp.where(finite, losses, 0.0) * mask), jnp.sum(correct * mask),
            jnp.sum(jnp.where(finite, 0.0, mask)))
    return sums, predicted
