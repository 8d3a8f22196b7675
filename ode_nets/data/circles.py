"""The concentric-circles set of Ruseckas §5.1: two classes, outer radius twice the inner, Gaussian noise."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray
from scipy.special import i0e  # scipy comes with jax


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


def _log_rice(r: float, ring: float, noise: float) -> float:
    """log density of |x| for x = ring·(cos θ, sin θ) + N(0, noise² I), θ uniform (Rice), up to log r/σ²."""
    z = r * ring / noise**2
    return -(r**2 + ring**2) / (2 * noise**2) + np.log(i0e(z)) + z


def bayes_radius(noise: float = 0.2, inner_radius: float = 1.0) -> float:
    """The Bayes decision radius: where the two classes' radial densities are equal (equal priors).

    Points with |x| above it are more likely from the outer circle; no classifier has a lower expected error.
    """
    lo, hi = inner_radius, 2 * inner_radius
    for _ in range(60):  # bisection on the log-likelihood ratio, which increases with r
        mid = 0.5 * (lo + hi)
        if _log_rice(mid, 2 * inner_radius, noise) > _log_rice(mid, inner_radius, noise):
            hi = mid
        else:
            lo = mid
    return 0.5 * (lo + hi)


def circle_accuracy(x: np.ndarray, y: np.ndarray, radius: float) -> float:
    """Accuracy of the classifier "outer iff |x| > `radius`" on the points `x`, labels `y`
    (the Bayes classifier for `radius` = `bayes_radius`)."""
    outer = np.linalg.norm(x, axis=1) > radius
    return float(np.mean(outer.astype(np.int32) == y))
