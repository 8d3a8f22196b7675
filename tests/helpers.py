"""Helpers shared by several test files: float64 on demand, central finite differences over the trainable entries
of a model, relative errors, and small config-built models."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import equinox as eqx
import jax
import numpy as np

from ode_nets.build import build_model
from ode_nets.config import Config, from_dict


@contextlib.contextmanager
def float64() -> Iterator[None]:
    """Enable float64 inside the block (references, finite differences), then restore the previous setting."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


WALL_CLOCK_FIELDS = ("examples_per_sec", "wall_time_s")  # metrics.jsonl fields that differ between identical runs


def without_wall_clock(records: list[dict]) -> list[dict]:
    """metrics.jsonl records without their wall-clock fields (for bit-identical run comparisons)."""
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK_FIELDS} for r in records]


def trainable_leaves(tree: Any) -> list:
    """The floating-point array leaves (what an optimizer sees), in tree order."""
    return jax.tree_util.tree_leaves(eqx.filter(tree, eqx.is_inexact_array))


def flat(leaves: Any) -> np.ndarray:
    """All leaves of a pytree (or a list of arrays) raveled into one vector."""
    return np.concatenate([np.ravel(np.asarray(a)) for a in jax.tree_util.tree_leaves(leaves)])


def central_differences(loss: Callable[[Any], Any], model: Any, n_entries: int = 8, eps: float = 1e-6
                        ) -> tuple[list, list[tuple[int, int, float]]]:
    """d loss / d theta by central differences for the first `n_entries` entries of every trainable leaf.

    Returns the trainable leaves and (leaf index, flat entry index, derivative) for each entry.
    """
    params, static = eqx.partition(model, eqx.is_inexact_array)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    grads = []
    for i, leaf in enumerate(leaves):
        values = np.asarray(leaf).ravel()
        for j in range(min(n_entries, values.size)):
            def shifted(delta: float) -> float:
                new = values.copy()
                new[j] += delta
                new_leaves = list(leaves)
                new_leaves[i] = jax.numpy.asarray(new.reshape(np.shape(leaf)))
                return float(loss(eqx.combine(jax.tree_util.tree_unflatten(treedef, new_leaves), static)))
            grads.append((i, j, (shifted(eps) - shifted(-eps)) / (2 * eps)))
    return leaves, grads


def relative_error(a: Any, b: Any) -> float:
    """||a - b|| / ||b|| over all leaves (b the reference)."""
    a, b = flat(a), flat(b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def relative_errors(a: list, b: list) -> list[float]:
    """Leaf-by-leaf `relative_error` of two lists of arrays (b the reference)."""
    return [relative_error(u, v) for u, v in zip(a, b)]


def config(**sections: dict) -> Config:
    """A validated `Config` from section dicts, e.g. `config(model={"layers": 4}, solver={"method": "rk4"})`."""
    return from_dict({name: dict(values) for name, values in sections.items()})


def net_from_config(cfg: Config, input_shape: tuple[int, ...] = (2,), num_classes: int = 2, seed: int = 0):
    """`ode_nets.build.build_model(cfg, ...)` with an integer seed."""
    return build_model(cfg, input_shape, num_classes, jax.random.PRNGKey(seed))


def small_net(input_shape: tuple[int, ...] = (2,), num_classes: int = 2, seed: int = 0, **sections: dict):
    """A config-built model: `small_net(model={...}, solver={...}, gradient={...})` (other keys: defaults)."""
    return net_from_config(config(**sections), input_shape, num_classes, seed)
