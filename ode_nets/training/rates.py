"""Per-parameter learning rates as an optax transformation: `scale_named`.

Used for a separate rate of the shared nonlinearity gamma~ (`optim.gamma_rate`): gamma~ is one scalar acting in all
L layers, so its gradient is a sum of L layer terms (eq 71 integrated over t, eq 15) while each layer's kernel and
bias get one term; under plain SGD it moves about L times faster than the per-layer parameters (docs/mnist.md).
"""

from __future__ import annotations

import jax
import optax


def _leaf_name(path: tuple) -> str | None:
    """The attribute or key name of a leaf's last path entry (`.field.gamma` -> "gamma")."""
    last = path[-1] if path else None
    return getattr(last, "name", None) or getattr(last, "key", None)


def scale_named(name: str, factor: float) -> optax.GradientTransformation:
    """Multiply the updates of every leaf whose own name is `name` by `factor`; other leaves pass unchanged.

    Placed first in a chain (before clipping and the optimizer), it scales that parameter's gradient, i.e. its
    learning rate for SGD with or without momentum, and its share of a global-norm clip.
    """
    def update(updates, state, params=None):
        del params
        scaled = jax.tree_util.tree_map_with_path(
            lambda path, u: u * factor if _leaf_name(path) == name and u is not None else u, updates)
        return scaled, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)
