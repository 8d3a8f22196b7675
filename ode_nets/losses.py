"""Loss = cross entropy + the smoothness regulariser of eq 113."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int

from ode_nets.fields.time_params import PER_LAYER, is_time_param


def cross_entropy(logits: Float[Array, "B K"], labels: Int[Array, " B"], weights: Float[Array, " B"] | None = None,
                  label_smoothing: float = 0.0) -> Float[Array, ""]:
    """Mean softmax cross entropy; `weights` (0/1) mask padded examples of a partial batch.

    `label_smoothing` = eps trains against (1 - eps) one_hot + eps / K: the optimal logit margin is then
    finite (log(1 + K (1 - eps) / eps)), so the loss stops rewarding ever larger activations.
    """
    if label_smoothing:
        targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
        losses = optax.softmax_cross_entropy(logits, targets)
    else:
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    if weights is None:
        return jnp.mean(losses)
    return jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def logit_level(logits: Float[Array, "B K"], weights: Float[Array, " B"] | None = None) -> Float[Array, ""]:
    """Mean of logsumexp(logits)^2 (the "z-loss" of PaLM, Chowdhery et al. 2022).

    Softmax is invariant to adding a constant to all logits, so neither cross entropy nor label smoothing
    bounds the *level* of the max-pooled activations; this term does, pulling logsumexp towards 0.
    """
    z = jax.nn.logsumexp(logits, axis=-1) ** 2
    if weights is None:
        return jnp.mean(z)
    return jnp.sum(z * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def smoothness(model: eqx.Module) -> Float[Array, ""]:
    """(1/2) sum_l ||q~_l - q~_{l-1}||^2 over every piecewise-constant scaled parameter (eq 113).

    For the cubic fields these are w~ and b~ (kappa~ and b~ for the conv field), eq 110.
    Time-independent parameters do not vary between layers and contribute 0; piecewise-linear ones contribute
    the differences of their knots (the same values, one per layer).
    """
    params = [p for p in jax.tree_util.tree_leaves(model, is_leaf=is_time_param) if isinstance(p, PER_LAYER)]
    total = jnp.zeros(())
    for p in params:
        total = total + jnp.sum(jnp.diff(p.values, axis=0) ** 2)
    return 0.5 * total


def masked_mean(values: Float[Array, " B"], weights: Float[Array, " B"] | None = None) -> Float[Array, ""]:
    """Mean of per-example values, weighted by the 0/1 padding mask."""
    if weights is None:
        return jnp.mean(values)
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def predicted_class(logits: Float[Array, "B K"]) -> Int[Array, " B"]:
    """argmax of each row, or -1 where a row is not finite (an overflowed solve must not count as class 0)."""
    return jnp.where(jnp.all(jnp.isfinite(logits), -1), jnp.argmax(logits, -1), -1)


def accuracy(logits: Float[Array, "B K"], labels: Int[Array, " B"], weights: Float[Array, " B"] | None = None
             ) -> Float[Array, ""]:
    """Fraction of correct argmax predictions (weighted by the padding mask); non-finite outputs are errors."""
    correct = (predicted_class(logits) == labels).astype(jnp.float32)
    if weights is None:
        return jnp.mean(correct)
    return jnp.sum(correct * weights) / jnp.maximum(jnp.sum(weights), 1.0)
