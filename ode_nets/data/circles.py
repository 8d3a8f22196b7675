"""The concentric-circles set of Ruseckas §5.1: two classes, outer radius twice the inner, Gaussian noise."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray


def make_circles(key: PRNGKeyArray, n: int, noise: float = 0.2, inner_radius: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """`n` points: class 0 on the inner circle (radius r), class 1 on the outer (2r), plus N(0, noise^2) per coordinate.

    Returns x (n, 2) float32 and y (n,) int32; classes alternate so both have n/2 (+1) points.
    """
    k_angle, k_noise = jax.random.split(key)
    labels = np.arange(n) % 2
    radius = inner_radius * (1.0 + labels)
    angle = np.asarray(jax.random.uniform(k_angle, (n,), minval=0.0, maxval=2 * np.pi))
    points = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    points = points + noise * np.asarray(jax.random.normal(k_noise, (n, 2)))
    return points.astype(np.float32), labels.astype(np.int32)
