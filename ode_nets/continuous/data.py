"""Data of the continuous-time models, generated offline from a PRNG key.

- 2-D densities for continuous normalizing flows (FFJORD's toy sets, Grathwohl et al. 2019): two moons, eight
  Gaussians, checkerboard, concentric rings (`DENSITIES`).
- Irregularly sampled time series for latent ODEs (`TIME_SERIES`): the spirals of Chen et al. (2018, §5;
  counter-clockwise outward and clockwise inward Archimedean spirals, Gaussian noise) and a damped pendulum solved
  by diffrax at each series' own random times, with entries missing at random. Every series has `obs` points
  (the context the models see) and held-out points: `int` inside the observed window (interpolation) and `ext`
  after it (extrapolation).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray

# ----------------------------------------------------------------------------------------------- 2-D densities


def two_moons(key: PRNGKeyArray, n: int) -> Array:
    """Two interleaved half circles, noise 0.1, scaled by 2 and centred (FFJORD's "moons")."""
    k_side, k_angle, k_noise = jax.random.split(key, 3)
    side = jax.random.bernoulli(k_side, 0.5, (n,))
    angle = jax.random.uniform(k_angle, (n,), maxval=math.pi)
    upper = jnp.stack([jnp.cos(angle), jnp.sin(angle)], -1)
    lower = jnp.stack([1 - jnp.cos(angle), 0.5 - jnp.sin(angle)], -1)
    x = jnp.where(side[:, None], upper, lower) + 0.1 * jax.random.normal(k_noise, (n, 2))
    return 2 * x + jnp.array([-1.0, -0.2])


def eight_gaussians(key: PRNGKeyArray, n: int) -> Array:
    """A mixture of 8 Gaussians (std 0.5/sqrt 2) on a circle of radius 4/sqrt 2 (FFJORD's "8gaussians")."""
    k_centre, k_noise = jax.random.split(key)
    angle = jax.random.randint(k_centre, (n,), 0, 8) * (math.pi / 4)
    centre = 4 * jnp.stack([jnp.cos(angle), jnp.sin(angle)], -1)
    return (centre + 0.5 * jax.random.normal(k_noise, (n, 2))) / math.sqrt(2)


def checkerboard(key: PRNGKeyArray, n: int) -> Array:
    """Uniform on the 8 black squares of a 4 x 4 checkerboard on [-4, 4]^2 (FFJORD's "checkerboard")."""
    k1, k2, k3 = jax.random.split(key, 3)
    x1 = jax.random.uniform(k1, (n,)) * 4 - 2
    x2 = jax.random.uniform(k2, (n,)) - 2 * jax.random.randint(k3, (n,), 0, 2)
    x2 = x2 + jnp.floor(x1) % 2
    return 2 * jnp.stack([x1, x2], -1)


def rings(key: PRNGKeyArray, n: int) -> Array:
    """Four concentric rings, radii 1, 2, 3, 4 (x 0.9), radial noise 0.08 (FFJORD's "rings")."""
    k_ring, k_angle, k_noise = jax.random.split(key, 3)
    radius = 0.9 * (1 + jax.random.randint(k_ring, (n,), 0, 4)) + 0.08 * jax.random.normal(k_noise, (n,))
    angle = jax.random.uniform(k_angle, (n,), maxval=2 * math.pi)
    return jnp.stack([radius * jnp.cos(angle), radius * jnp.sin(angle)], -1)


DENSITIES: dict[str, Callable[[PRNGKeyArray, int], Array]] = {
    "two_moons": two_moons, "eight_gaussians": eight_gaussians, "checkerboard": checkerboard, "rings": rings,
}


def density_data(name: str, key: PRNGKeyArray, n_train: int, n_test: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) points of the 2-D density `name`, float32, drawn from independent keys."""
    k_train, k_test = jax.random.split(key)
    make = DENSITIES[name]
    return np.asarray(make(k_train, n_train), np.float32), np.asarray(make(k_test, n_test), np.float32)


# ------------------------------------------------------------------------------------ irregular time series


class IrregularSeries(NamedTuple):
    """A batch of irregularly sampled series (a pytree: index every leaf by series).

    `obs_t` (n, K) sorted times in the observed window [0, t_obs], `obs_x` (n, K, D) noisy values, `obs_m`
    (n, K, D) 1 where an entry was observed (missing entries are 0 in `obs_x`); `int_*` held-out points inside the window, `ext_*` points after it
    (t_obs, t_end]; `*_clean` the noise-free values there.
    """

    obs_t: Array
    obs_x: Array
    obs_m: Array
    obs_clean: Array
    int_t: Array
    int_x: Array
    int_clean: Array
    ext_t: Array
    ext_x: Array
    ext_clean: Array

    def __len__(self) -> int:
        return self.obs_t.shape[0]


@dataclass(frozen=True)
class SeriesSpec:
    """How many points of each kind per series, the windows, the noise and the fraction of missing entries."""

    n_obs: int = 30
    n_int: int = 10
    n_ext: int = 15
    t_obs: float = 5.0
    t_end: float = 8.0
    noise: float = 0.1
    missing: float = 0.0


def sorted_uniform(key: PRNGKeyArray, n: int, k: int, low: float, high: float) -> Array:
    """(n, k) sorted uniform times on [low, high]: each series its own irregular grid."""
    return jnp.sort(jax.random.uniform(key, (n, k), minval=low, maxval=high), axis=-1)


def series_times(key: PRNGKeyArray, n: int, spec: SeriesSpec) -> tuple[Array, Array, Array]:
    k_obs, k_int, k_ext = jax.random.split(key, 3)
    return (sorted_uniform(k_obs, n, spec.n_obs, 0.0, spec.t_obs), sorted_uniform(k_int, n, spec.n_int, 0.0, spec.t_obs),
            sorted_uniform(k_ext, n, spec.n_ext, spec.t_obs, spec.t_end))


def spiral_points(t: Array, theta0: Array, clockwise: Array) -> Array:
    """Chen et al.'s spirals, r = 0.3 theta: counter-clockwise outward (centre (5, 0)), or clockwise inward
    (the mirror image traversed backwards, centre (-5, 0)). `t` (n, K); `theta0`, `clockwise` (n,)."""
    theta = theta0[:, None] + jnp.where(clockwise[:, None], -t, t)
    r = 0.3 * theta
    sign = jnp.where(clockwise, -1.0, 1.0)[:, None]
    return jnp.stack([sign * (r * jnp.cos(theta) + 5.0), r * jnp.sin(theta)], -1)


def spiral_truth(key: PRNGKeyArray, n: int, spec: SeriesSpec) -> Callable[[Array], Array]:
    """The clean trajectories of `n` random spirals as a function of times (n, K) -> values (n, K, 2)."""
    k_dir, k_start = jax.random.split(key)
    clockwise = jax.random.bernoulli(k_dir, 0.5, (n,))
    u = jax.random.uniform(k_start, (n,))
    span = 6 * math.pi - 2.0 - spec.t_end  # theta stays in [2, 6 pi] over [0, t_end]
    theta0 = jnp.where(clockwise, 6 * math.pi - u * span, 2.0 + u * span)
    return lambda t: spiral_points(t, theta0, clockwise)


def pendulum_field(t: Array, y: Array, args: tuple[float, float]) -> Array:
    """Damped pendulum: d(theta, omega)/dt = (omega, -w0^2 sin theta - gamma omega)."""
    w0, gamma = args
    return jnp.stack([y[1], -w0**2 * jnp.sin(y[0]) - gamma * y[1]])


def pendulum_solve(y0: Array, ts: Array, w0: float = 1.5, gamma: float = 0.15) -> Array:
    """One pendulum solved by diffrax (Dopri5, rtol = atol = 1e-8) at its own times `ts` (sorted)."""
    sol = diffrax.diffeqsolve(diffrax.ODETerm(pendulum_field), diffrax.Dopri5(), 0.0, ts[-1], None, y0,
                              args=(w0, gamma), saveat=diffrax.SaveAt(ts=ts),
                              stepsize_controller=diffrax.PIDController(rtol=1e-8, atol=1e-8), max_steps=100_000)
    return sol.ys


def pendulum_truth(key: PRNGKeyArray, n: int, spec: SeriesSpec) -> Callable[[Array], Array]:
    """`n` damped pendulums from theta0 ~ U(-2.5, 2.5), omega0 ~ U(-1, 1): times (n, K) -> values (n, K, 2)."""
    k_theta, k_omega = jax.random.split(key)
    y0 = jnp.stack([jax.random.uniform(k_theta, (n,), minval=-2.5, maxval=2.5),
                    jax.random.uniform(k_omega, (n,), minval=-1.0, maxval=1.0)], -1)
    return lambda t: jax.vmap(pendulum_solve)(y0, t)


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def _series_arrays(truth_fn: Callable, key: PRNGKeyArray, n: int, spec: SeriesSpec) -> IrregularSeries:
    """`make_series` as one compiled function (the vmapped diffrax solves of the pendulum among it)."""
    k_truth, k_times, k_noise, k_missing = jax.random.split(key, 4)
    truth = truth_fn(k_truth, n, spec)
    obs_t, int_t, ext_t = series_times(k_times, n, spec)
    both = truth(jnp.concatenate([int_t, ext_t], 1))  # one solve for the held-out points (times stay sorted)
    clean = {"obs": truth(obs_t), "int": both[:, :spec.n_int], "ext": both[:, spec.n_int:]}
    noisy = {k: v + spec.noise * jax.random.normal(jax.random.fold_in(k_noise, i), v.shape)
             for i, (k, v) in enumerate(clean.items())}
    mask = jax.random.bernoulli(k_missing, 1 - spec.missing, noisy["obs"].shape).astype(jnp.float32)
    mask = mask.at[:, 0, 0].set(1.0)
    return IrregularSeries(obs_t, noisy["obs"] * mask, mask, clean["obs"], int_t, noisy["int"], clean["int"], ext_t,
                           noisy["ext"], clean["ext"])


def make_series(truth_fn: Callable, key: PRNGKeyArray, n: int, spec: SeriesSpec) -> IrregularSeries:
    """Irregular series from `truth_fn(key, n, spec)`: per-series times, Gaussian noise `spec.noise`, and each
    observed entry missing with probability `spec.missing` (at least one entry per series stays observed);
    NumPy float32 arrays."""
    return IrregularSeries(*(np.asarray(a, np.float32) for a in _series_arrays(truth_fn, key, n, spec)))


TIME_SERIES: dict[str, Callable[[PRNGKeyArray, int, SeriesSpec], Callable[[Array], Array]]] = {
    "spirals": spiral_truth, "pendulum": pendulum_truth,
}


def series_data(name: str, key: PRNGKeyArray, n_train: int, n_test: int, spec: SeriesSpec
                ) -> tuple[IrregularSeries, IrregularSeries]:
    """(train, test): the first `n_train` and the last `n_test` of n_train + n_test series of the set `name`
    (independent series, generated by one compiled function)."""
    both = make_series(TIME_SERIES[name], key, n_train + n_test, spec)
    return (IrregularSeries(*(a[:n_train] for a in both)), IrregularSeries(*(a[n_train:] for a in both)))
