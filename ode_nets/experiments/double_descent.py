"""Benign overfitting / double descent (Richter & Lessig 2021 slides, last part; Belkin et al., PNAS 2019): least-squares
fits y = sum_{n<M} a_n p_n(x) with M polynomial features to N noisy 1-D points, through the interpolation threshold
M = N.

Three solutions of the (for M > N under-determined) least-squares problem min ||Phi a - y||^2:
- `min_norm`: the minimum-norm solution a = Phi^+ y (the pseudo-inverse);
- `gradient_descent`: gradient descent from a = 0 for a fixed number of steps; it stays in the row space of Phi, so it
  converges to the minimum-norm solution, and stopped early it is implicitly regularised ("optimization can choose
  the sub-space");
- `ridge`: min ||Phi a - y||^2 + lam ||a||^2 (explicit regularisation).

The features are Legendre polynomials P_n on [-1, 1] scaled to unit mean square and then by (n + 1)^-decay
(`legendre`), or monomials x^n (`monomial`, as written on the slides; badly conditioned beyond M ~ 20). The scaling
does not change the least-squares fits for M <= N; beyond N it makes the minimum-norm interpolant prefer low
degrees (the kernel sum_n (2n+1) P_n(x) P_n(x') / (n+1)^(2 decay) stays smooth as M grows): with decay = 0 the
minimum-norm fit at large M interpolates with spikes and predicts ~0 between the points (test risk ~ the target's
mean square). Test risk: mean squared error against the noise-free function on a fine grid, over noise draws.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.polynomial import legendre


def target(x: np.ndarray) -> np.ndarray:
    """The noise-free function: a smooth curve on [-1, 1]."""
    return np.sin(np.pi * x) + 0.5 * x


def features(x: np.ndarray, m: int, kind: str = "legendre", decay: float = 1.0) -> np.ndarray:
    """(len(x), m) feature matrix: sqrt(2n+1) P_n(x) / (n+1)^decay (unit mean square on [-1, 1] for decay 0) or x^n,
    n = 0..m-1."""
    if kind == "monomial":
        return x[:, None] ** np.arange(m)
    if kind != "legendre":
        raise ValueError(f"features: kind must be 'legendre' or 'monomial', got {kind!r}")
    n = np.arange(m)
    return legendre.legvander(x, m - 1) * np.sqrt(2 * n + 1) / (n + 1.0) ** decay


def min_norm(phi: np.ndarray, y: np.ndarray) -> np.ndarray:
    """a = Phi^+ y: least squares for M <= N (full rank), the interpolant of least norm for M > N."""
    return np.linalg.lstsq(phi, y, rcond=None)[0]


def gradient_descent(phi: np.ndarray, y: np.ndarray, steps: int) -> np.ndarray:
    """`steps` steps of gradient descent on ||Phi a - y||^2 / 2 from a = 0 with step 1 / ||Phi||_2^2."""
    lr = 1.0 / np.linalg.norm(phi, 2) ** 2
    a = np.zeros(phi.shape[1])
    for _ in range(steps):
        a -= lr * phi.T @ (phi @ a - y)
    return a


def ridge(phi: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    """argmin ||Phi a - y||^2 + lam ||a||^2 = Phi^T (Phi Phi^T + lam I)^{-1} y."""
    return phi.T @ np.linalg.solve(phi @ phi.T + lam * np.eye(len(y)), y)


@dataclass(frozen=True)
class DoubleDescent:
    """The experiment's settings: N points uniform on [-1, 1] with noise sigma, feature counts M, noise draws."""

    n_points: int = 10
    noise: float = 0.2
    ms: tuple[int, ...] = field(default_factory=lambda: tuple(range(1, 31)) + (40, 50, 75, 100, 150, 200, 300, 400))
    draws: int = 20
    gd_steps: int = 2000
    lam: float = 1e-3
    kind: str = "legendre"
    decay: float = 1.0
    seed: int = 0
    test_points: int = 1000


def fit_all(phi: np.ndarray, y: np.ndarray, setup: DoubleDescent) -> dict[str, np.ndarray]:
    """The coefficients of the three solutions."""
    return {"min_norm": min_norm(phi, y), "gradient_descent": gradient_descent(phi, y, setup.gd_steps),
            "ridge": ridge(phi, y, setup.lam)}


def draw_data(rng: np.random.Generator, setup: DoubleDescent) -> tuple[np.ndarray, np.ndarray]:
    """N training points x ~ U[-1, 1], y = target(x) + N(0, sigma^2)."""
    x = rng.uniform(-1.0, 1.0, setup.n_points)
    return x, target(x) + setup.noise * rng.normal(size=setup.n_points)


def risk_curves(setup: DoubleDescent) -> dict[str, dict[str, list[float]]]:
    """For each method: mean test risk and train risk over the noise draws at each M (median test risk too)."""
    rng = np.random.default_rng(setup.seed)
    grid = np.linspace(-1.0, 1.0, setup.test_points)
    risks: dict[str, np.ndarray] = {}
    for d in range(setup.draws):
        x, y = draw_data(rng, setup)
        for i, m in enumerate(setup.ms):
            phi, phi_test = features(x, m, setup.kind, setup.decay), features(grid, m, setup.kind, setup.decay)
            for name, a in fit_all(phi, y, setup).items():
                out = risks.setdefault(name, np.zeros((2, setup.draws, len(setup.ms))))
                out[0, d, i] = np.mean((phi_test @ a - target(grid)) ** 2)
                out[1, d, i] = np.mean((phi @ a - y) ** 2)
    return {name: {"test_mean": r[0].mean(0).tolist(), "test_median": np.median(r[0], 0).tolist(),
                   "train_mean": r[1].mean(0).tolist()} for name, r in risks.items()}


def fitted_curves(setup: DoubleDescent, ms: tuple[int, ...]) -> dict:
    """One noise draw: the data and, for each M in `ms`, each method's fitted curve on a grid."""
    x, y = draw_data(np.random.default_rng(setup.seed), setup)
    grid = np.linspace(-1.0, 1.0, 400)
    curves = {}
    for m in ms:
        fits = fit_all(features(x, m, setup.kind, setup.decay), y, setup)
        curves[m] = {name: features(grid, m, setup.kind, setup.decay) @ a for name, a in fits.items()}
    return {"x": x, "y": y, "grid": grid, "truth": target(grid), "curves": curves}
