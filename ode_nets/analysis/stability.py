"""Stability of forward propagation (Ruthotto 2019 slides, "Stability of forward propagation").

The ODE dy/dt = f(t, y) is (locally) stable where the Jacobian J = df/dy has eigenvalues with
non-positive real parts; `max_real_eigenvalue` tracks the largest real part along a trajectory
(for non-stationary weights this is the "J changes slowly" heuristic of the slides, not a proof).
`revnet_iterates` is the slides' RevNet example, showing that an algebraically reversible
network can still blow up: Y_{j+1} - (2 + alpha beta) Y_j + Y_{j-1} = 0 grows when |a| > 1,
a = (2 + alpha beta) / 2.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Float


def jacobian(field: Callable, t: Float[Array, ""], y: Float[Array, " N"]) -> Float[Array, "N N"]:
    """J_ij = d f_i / d y_j at (t, y) for one unbatched state y, by forward-mode autodiff."""
    return jax.jacfwd(lambda v: field(t, v, None))(y)


def jacobian_eigenvalues(field: Callable, t: Float[Array, ""], y: Float[Array, " N"]) -> Array:
    """Complex eigenvalues of the Jacobian at (t, y)."""
    return jnp.linalg.eigvals(jacobian(field, t, y))


def eigenvalues_along(field: Callable, ts: Float[Array, " S"], ys: Float[Array, "S B N"]) -> Array:
    """Jacobian eigenvalues (S, B, N) at each saved time t_s and each example of ys[s] (e.g. `ODENet.trajectory`).

    Fields whose parameters jump at layer boundaries are evaluated at the saved time itself, i.e. with
    the parameters of the layer that starts there (the last time uses the last layer).
    """
    ts = jnp.asarray(ts)
    at = jax.jit(lambda t, batch: jax.vmap(lambda y: jacobian_eigenvalues(field, t, y))(batch))
    return jnp.stack([at(ts[s], ys[s]) for s in range(len(ts))])


def max_real_eigenvalue(field: Callable, ts: Float[Array, " S"], ys: Float[Array, "S B N"]) -> Float[Array, " S"]:
    """max over examples and eigenvalues of Re lambda(J(t_s, y_s)) at each saved time: <= 0 means locally stable."""
    return jnp.max(jnp.real(eigenvalues_along(field, ts, ys)), axis=(1, 2))


def network_eigenvalues(model: object, x: Array) -> np.ndarray:
    """`eigenvalues_along` for an `ODENet` along the trajectories of inputs x, at every layer boundary, (L+1, B, N)."""
    ts = model.grid.times()
    return np.asarray(eigenvalues_along(model.field, ts, model.trajectory(x)))


def revnet_iterates(alpha: float, beta: float, y0: float, steps: int) -> Float[Array, " S"]:
    """Y_0..Y_steps of the slides' linear RevNet Z_{j+1/2} = Z_{j-1/2} - alpha Y_j, Y_{j+1} = Y_j + beta Z_{j+1/2}, Z_{-1/2} = 0.

    Subtracting two Y updates gives Y_{j+1} - 2 Y_j + Y_{j-1} = beta (Z_{j+1/2} - Z_{j-1/2}) = -alpha beta Y_j.
    The slides write "+ alpha beta Y_j", i.e. 2 + alpha beta below: a sign slip (the same as alpha -> -alpha);
    the recursion of *this* update is Y_{j+1} - (2 - alpha beta) Y_j + Y_{j-1} = 0.
    """
    def body(carry: tuple[Array, Array], _: None) -> tuple[tuple[Array, Array], Array]:
        y, z = carry
        z = z - alpha * y
        y = y + beta * z
        return (y, z), y

    y0 = jnp.asarray(y0, dtype=float)
    _, ys = lax.scan(body, (y0, jnp.zeros_like(y0)), None, length=steps)
    return jnp.concatenate([y0[None], ys])


def revnet_growth_factor(alpha: float, beta: float) -> float:
    """Largest |xi| over the roots of xi^2 - 2 a xi + 1 = 0, a = (2 - alpha beta)/2 (the update of `revnet_iterates`).

    |xi| = 1 (stable) if a^2 <= 1; otherwise |a| + sqrt(a^2 - 1) > 1 and the iterates grow geometrically.
    """
    a = (2.0 - alpha * beta) / 2.0
    return 1.0 if a * a <= 1.0 else abs(a) + float(np.sqrt(a * a - 1.0))


# ---------------------------------------------------------------------------------------------
# The stability constant M of the Richter-Lessig slides: ||y(T) - y~(T)|| <= M ||y(0) - y~(0)||, measured on a
# trained network for random and adversarial perturbations of its inputs (docs/pde_cnns.md).

Features = Callable[[Array], Array]


def per_example_norm(x: Array) -> Array:
    """Euclidean norm of each example (all axes but the first)."""
    return jnp.sqrt(jnp.sum(x.reshape(x.shape[0], -1) ** 2, axis=1))


def amplification(features: Features, x: Array, x_tilde: Array) -> Array:
    """||y(T) - y~(T)|| / ||y(0) - y~(0)|| per example, y(T) = features(x): the slides' M for this pair of inputs."""
    return per_example_norm(features(x_tilde) - features(x)) / per_example_norm(x_tilde - x)


def random_sign_perturbation(key: Array, x: Array, eps: float | Array) -> Array:
    """x + eps * s with independent random signs s = +-1 (a random corner of the L-infinity ball of radius eps)."""
    return x + eps * jax.random.rademacher(key, x.shape, dtype=x.dtype)


def input_gradient(loss: Callable[[Array, Array], Array], x: Array, y: Array) -> Array:
    """d loss(x, y) / dx (loss summed over the batch, so each example gets its own gradient)."""
    return jax.grad(loss)(x, y)


def fgsm(loss: Callable[[Array, Array], Array], x: Array, y: Array, eps: float | Array) -> Array:
    """Fast gradient sign method (Goodfellow et al. 2015): x + eps sign(grad_x loss)."""
    return x + eps * jnp.sign(input_gradient(loss, x, y))


def pgd(loss: Callable[[Array, Array], Array], x: Array, y: Array, eps: float | Array, steps: int = 5,
        step_size: float | None = None) -> Array:
    """Projected gradient ascent on the loss in the L-infinity ball of radius eps (Madry et al. 2018), `steps` sign
    steps of `step_size` (default 2.5 eps / steps) from x, each projected back onto the ball."""
    alpha = 2.5 * eps / steps if step_size is None else step_size

    def body(x_adv: Array, _: None) -> tuple[Array, None]:
        x_adv = x_adv + alpha * jnp.sign(input_gradient(loss, x_adv, y))
        return x + jnp.clip(x_adv - x, -eps, eps), None

    return lax.scan(body, x, None, length=steps)[0]


def tanh_toy_flow(matrices: Float[Array, "L 2 2"], points: Float[Array, "P 2"], h: float = 1.0) -> Array:
    """The slides' toy network Y_{j+1} = Y_j + h tanh(K_j Y_j) (b_j = 0, 2-D), every layer: (L+1, P, 2)."""
    def body(y: Array, k: Array) -> tuple[Array, Array]:
        y = y + h * jnp.tanh(y @ k.T)
        return y, y

    return jnp.concatenate([points[None], lax.scan(body, points, matrices)[1]])


def toy_matrices(key: Array, layers: int = 20, scale: float = 1.0, antisymmetric: bool = False,
                 gamma: float = 0.0) -> Float[Array, "L 2 2"]:
    """Random K_j ~ N(0, scale^2) per layer, or their antisymmetric part K_j - K_j^T - gamma I (Haber & Ruthotto)."""
    k = scale * jax.random.normal(key, (layers, 2, 2))
    if not antisymmetric:
        return k
    return k - jnp.swapaxes(k, 1, 2) - gamma * jnp.eye(2)
