"""Physical diagnostics of a trained cubic network (Ruseckas §2.2-2.4, §4.1, §4.3).

- `hamiltonian`: H = a F(x, q) (eq 21), conserved where q does not depend on t (eq 25);
- `cubic_energy`: E(x) = -1/2 x^T w x - b^T x + 1/(mu+1) gamma sum |x|^(mu+1) (eq 83), non-increasing for a
  symmetric, time-independent w (eq 36);
- `energy_balance`: d/dt (x^2/2) = P_w + P_b - P_gamma (eqs 103-108);
- `entropy_rate`: E_x[Tr dF/dx] = dH_entropy/dt (eq 32);
- stability: the largest real part of the Jacobian's eigenvalues (`ode_nets.analysis.stability`).

All functions take the dense `CubicField` with its scaled parameters (eq 110): w = w~/dt etc. States are
(batch, N); quantities are per example unless they say "mean".
"""

from __future__ import annotations

from typing import Callable

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ode_nets.fields.cubic import odd_power
from ode_nets.losses import cross_entropy
from ode_nets.solvers.stepping import Discretisation
from ode_nets.analysis.stability import jacobian, max_real_eigenvalue
from ode_nets.training.step import finite_loss_and_gradient, value_and_grad
from ode_nets.strategies.analytic import adjoint_on_grid


def field_at(field: eqx.Module, ts: Float[Array, " S"], xs: Float[Array, "S B N"]) -> Float[Array, "S B N"]:
    """F(t_s, x_s) at each saved time (a jump time takes the layer that starts there)."""
    return jax.vmap(lambda t, x: field(t, x))(jnp.asarray(ts), xs)


def hamiltonian(field: eqx.Module, ts: Float[Array, " S"], xs: Float[Array, "S B N"], adjoints: Float[Array, "S B N"]
                ) -> Float[Array, " S"]:
    """H(t_s) = sum over the batch of a(t_s) . F(x(t_s), q(t_s)) (eq 21); constant in t for constant q (eq 25)."""
    return jnp.sum(adjoints * field_at(field, ts, xs), axis=tuple(range(1, xs.ndim)))


def hamiltonian_along(field: eqx.Module, x0: Array, loss: Callable[[Array], Array], discretisation: Discretisation
                      ) -> tuple[Array, Array]:
    """Times and H(t) on the layer grid (every step for Euler) for `loss` of x(T); a(t) from the backward pass of
    `AnalyticAdjoint` (eq 62 solved backwards, or eq 112 for Euler)."""
    ts, xs, adjoints = adjoint_on_grid(field, x0, loss, discretisation)
    return ts, hamiltonian(field, ts, xs, adjoints)


def cubic_energy(field: eqx.Module, t: Float[Array, ""], x: Float[Array, "... N"]) -> Float[Array, "..."]:
    """E(x) = -1/2 x^T w x - b^T x + gamma/(mu+1) sum_i |x_i|^(mu+1) (eq 83, mu = 3 gives 1/4 gamma sum x^4).

    F = -dE/dx exactly when w is symmetric (eq 34); with the scaled parameters every term carries 1/dt.
    """
    w, b, mu = field.w(t), field.b(t), field.mu
    quad = jnp.einsum("...i,ij,...j->...", x, w, x)
    power = jnp.sum(jnp.abs(x) ** (mu + 1), axis=-1) / (mu + 1)
    return (-0.5 * quad - x @ b + field.gamma * power) / field.dt


def energy_balance(field: eqx.Module, t: Float[Array, ""], x: Float[Array, "... N"]) -> dict[str, Array]:
    """Powers of eqs 106-108 for the kinetic energy E = x^2/2 (eq 103), per example:

    P_w = x^T w_sym x, P_b = b^T x, P_gamma = gamma sum_i x_i^4 (x . |x|^mu in general), and dE/dt = P_w + P_b -
    P_gamma (eqs 104, 105). The antisymmetric part of w (the "magnetic field") does no work.
    """
    w = field.w(t)
    sym = 0.5 * (w + w.T)
    p_w = jnp.einsum("...i,ij,...j->...", x, sym, x) / field.dt
    p_b = x @ field.b(t) / field.dt
    p_gamma = field.gamma * jnp.sum(x * odd_power(x, field.mu), axis=-1) / field.dt
    return {"P_w": p_w, "P_b": p_b, "P_gamma": p_gamma, "dE_dt": p_w + p_b - p_gamma}


def kinetic_energy(x: Float[Array, "... N"]) -> Float[Array, "..."]:
    """E = x^2 / 2 (eq 103)."""
    return 0.5 * jnp.sum(x * x, axis=-1)


def jacobian_trace(field: eqx.Module, t: Float[Array, ""], x: Float[Array, "B N"]) -> Float[Array, " B"]:
    """Tr dF/dx at each example (the divergence of the flow, eq 28)."""
    return jax.vmap(lambda y: jnp.trace(jacobian(field, t, y)))(x)


def entropy_rate(field: eqx.Module, ts: Float[Array, " S"], xs: Float[Array, "S B N"]) -> Float[Array, " S"]:
    """dH/dt = E_x[Tr dF/dx] over the data at each saved time (eq 32); <= 0 means features are being discarded."""
    return jnp.stack([jnp.mean(jacobian_trace(field, jnp.asarray(ts)[s], xs[s])) for s in range(len(ts))])


def stability(field: eqx.Module, ts: Float[Array, " S"], xs: Float[Array, "S B N"]) -> Float[Array, " S"]:
    """max over examples of the largest Re(eigenvalue) of dF/dx (eq 61) at each saved time."""
    return max_real_eigenvalue(field, ts, xs)


# ---------------------------------------------------------------------------------------------
# a trained network


def network_diagnostics(model: eqx.Module, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """All diagnostics of an `ODENet` with a dense cubic field on inputs x (labels y), at the layer boundaries.

    Keys: t (L+1,), E_kinetic, P_w, P_b, P_gamma, dE_dt (balance), dE_dt_numeric ((E_{l+1} - E_l)/dt, (L,): the
    layer's forward difference, which for Euler exceeds the balance at t_l by dt |F|^2 / 2), entropy_rate, max_real_eig, and t_H, H (the Hamiltonian, eq 21, for the
    cross-entropy of the readout, with a(t) from the backward pass).
    """
    ts = model.grid.times()
    xs = model.trajectory(x)
    # the powers in force on each layer: evaluated at the layer's start (the last point uses the last layer)
    powers = jax.vmap(lambda t, xx: energy_balance(model.field, t, xx))(jnp.asarray(ts), xs)
    balance = {k: np.mean(np.asarray(v), 1) for k, v in powers.items()}
    energy = np.mean(np.asarray(kinetic_energy(xs)), 1)
    x0 = model.initial_state(jnp.asarray(x))
    t_h, h = hamiltonian_along(model.field, x0, lambda xt: cross_entropy(model.logits(xt), jnp.asarray(y)),
                               Discretisation(model.solver, model.grid, model.stepping))
    return {"t": ts, "E_kinetic": energy, **balance, "dE_dt_numeric": np.diff(energy) / np.diff(ts),
            "entropy_rate": np.asarray(entropy_rate(model.field, ts, xs)),
            "max_real_eig": np.asarray(stability(model.field, ts, xs)), "t_H": np.asarray(t_h), "H": np.asarray(h)}



def cubic_overshoot(model: eqx.Module, x: Array, batch: int = 500) -> np.ndarray:
    """Per example, max over the layers l < L of gamma~ max_i |x_{l,i}|^2 (mu = 3, any cubic field, eq 109).

    One explicit layer maps x -> x + w~ x + b~ - gamma~ x^3; its cubic part x - gamma~ x^3 has |.| > |x| exactly where
    gamma~ x^2 > 2: a state that gets there is thrown outward and overflows within a few layers (docs/mnist.md,
    "The paper's SGD recipe"). Values near 2 are examples about to overflow; inf/NaN ones have.
    """
    gamma = float(model.field.gamma)
    worst = []
    for start in range(0, len(x), batch):
        states = eqx.filter_jit(lambda m, xb: m.trajectory(xb))(model, jnp.asarray(x[start:start + batch]))[:-1]
        peak = jnp.max(jnp.abs(states).reshape(states.shape[0], states.shape[1], -1), axis=(0, 2))
        worst.append(np.asarray(gamma * peak ** 2))
    return np.concatenate(worst)


@eqx.filter_jit
def per_example_gradients(model: eqx.Module, objective: eqx.Module, x: Array, y: Array
                          ) -> tuple[Array, Array]:
    """Per example: whether its loss and gradient are finite (as `training.finite_examples` decides) and its
    parameter gradient flattened to one vector."""
    def one(xi: Array, yi: Array) -> tuple[Array, Array]:
        (loss, _), grads = value_and_grad(objective.__call__, model, xi[None], yi[None], jnp.ones(1))
        grads = eqx.filter(grads, eqx.is_array)
        return finite_loss_and_gradient(loss, grads), jax.flatten_util.ravel_pytree(grads)[0]

    return jax.vmap(one)(x, y)


def gradient_agreement(model_a: eqx.Module, model_b: eqx.Module, objective: eqx.Module, x: Array, y: Array
                       ) -> dict[str, np.ndarray]:
    """Two models of the same function (e.g. `hand_vjp` on and off): which examples each finds non-finite, and
    the relative difference |g_a - g_b| / |g_a| of the per-example gradients where both are finite."""
    finite_a, grads_a = per_example_gradients(model_a, objective, x, y)
    finite_b, grads_b = per_example_gradients(model_b, objective, x, y)
    both = np.asarray(finite_a & finite_b)
    diff = np.linalg.norm(np.asarray(grads_a - grads_b)[both], axis=1)
    scale = np.maximum(np.linalg.norm(np.asarray(grads_a)[both], axis=1), np.finfo(np.float32).tiny)
    return {"finite_a": np.asarray(finite_a), "finite_b": np.asarray(finite_b), "rel_diff": diff / scale}
