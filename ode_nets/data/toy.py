"""2-D toy classification sets of the Haber–Ruthotto experiments (Ruthotto 2019 slides), generated from a key.

- peaks: points uniform in [-3, 3]^2, 5 classes = level sets of MATLAB's `peaks` (slides: 2,000 points);
- ellipses: points in 2 concentric elliptical regions (inner ellipse, outer ring), 2 classes (slides: 1k train, 2k validation);
- swiss_roll: two interleaved spirals, 2 classes (slides: 256 train, 256 validation).

`cfg.n_train` / `cfg.n_test` points are drawn for train / test; `cfg.validation` of the training points
are then carved off by `load_dataset`. `cfg.noise` is not used (the classes are exact functions of x).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray

from ode_nets.data._dataset import Dataset, Split

PEAKS_CLASSES = 5
ELLIPSE_RINGS = 2  # class 0: inner ellipse, class 1: the ring around it
ELLIPSE_AXES = (1.0, 0.5)
SPIRAL_TURNS = 1.5


def peaks(x: Array, y: Array) -> Array:
    """MATLAB peaks: 3(1-x)^2 e^{-x^2-(y+1)^2} - 10(x/5 - x^3 - y^5) e^{-x^2-y^2} - 1/3 e^{-(x+1)^2-y^2}."""
    return (3 * (1 - x) ** 2 * jnp.exp(-x ** 2 - (y + 1) ** 2) - 10 * (x / 5 - x ** 3 - y ** 5) * jnp.exp(-x ** 2 - y ** 2)
            - jnp.exp(-(x + 1) ** 2 - y ** 2) / 3)


def peaks_thresholds(classes: int = PEAKS_CLASSES, grid: int = 301) -> np.ndarray:
    """Level-set thresholds: quantiles of peaks over a uniform grid on [-3, 3]^2, so the classes have equal area."""
    u = jnp.linspace(-3.0, 3.0, grid)
    xx, yy = jnp.meshgrid(u, u)
    return np.quantile(np.asarray(peaks(xx, yy)), np.arange(1, classes) / classes)


def make_peaks(key: PRNGKeyArray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n points uniform in [-3, 3]^2, labelled by which of the 5 level sets of peaks they fall in."""
    xy = jax.random.uniform(key, (n, 2), minval=-3.0, maxval=3.0)
    labels = np.digitize(np.asarray(peaks(xy[:, 0], xy[:, 1])), peaks_thresholds())
    return np.asarray(xy, np.float32), labels.astype(np.int32)


def make_ellipses(key: PRNGKeyArray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n points with elliptical radius r uniform in [0, 1) (axes 1, 0.5); class = ring index mod 2 (2 rings: inside r < 1/2, outside)."""
    kr, ka = jax.random.split(key)
    r = np.asarray(jax.random.uniform(kr, (n,)))
    angle = np.asarray(jax.random.uniform(ka, (n,), maxval=2 * np.pi))
    xy = np.stack([ELLIPSE_AXES[0] * r * np.cos(angle), ELLIPSE_AXES[1] * r * np.sin(angle)], -1)
    return xy.astype(np.float32), (np.floor(ELLIPSE_RINGS * r).astype(np.int32) % 2)


def make_swiss_roll(key: PRNGKeyArray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved spirals r = s, angle = 2 pi turns s (+ pi for class 1), s uniform in (0.1, 1]."""
    ks, kc = jax.random.split(key)
    s = np.asarray(jax.random.uniform(ks, (n,), minval=0.1, maxval=1.0))
    labels = np.asarray(jax.random.bernoulli(kc, 0.5, (n,))).astype(np.int32)
    angle = 2 * np.pi * SPIRAL_TURNS * s + np.pi * labels
    return np.stack([s * np.cos(angle), s * np.sin(angle)], -1).astype(np.float32), labels


GENERATORS: dict[str, tuple[Callable[[PRNGKeyArray, int], tuple[np.ndarray, np.ndarray]], int]] = {
    "peaks": (make_peaks, PEAKS_CLASSES), "ellipses": (make_ellipses, 2), "swiss_roll": (make_swiss_roll, 2)}


def load(cfg: Any, k_train: PRNGKeyArray, k_test: PRNGKeyArray) -> Dataset:
    """The toy set named `cfg.name` with `cfg.n_train` training and `cfg.n_test` test points."""
    make, classes = GENERATORS[cfg.name]
    return Dataset(Split(*make(k_train, cfg.n_train)), Split(*make(k_test, cfg.n_test)), num_classes=classes)
