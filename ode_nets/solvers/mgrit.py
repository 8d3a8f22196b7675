"""MGRIT: multigrid reduction in time for a one-step recurrence u_{i+1} = Phi_i(u_i) + g_{i+1}, i = 0 .. N-1.

Ruthotto 2019 slides, "Layer-Parallel Training"; Günther, Ruthotto, Schroder, Cyr, Gauger, "Layer-parallel training
of deep residual neural networks" (SIMODS 2020); Falgout et al., "Parallel time integration with multigrid" (SISC
2014) for the algorithm, in its nonlinear FAS form. Forward propagation through a ResNet is the block lower-bidiagonal
system A(u) = g with A(u)_0 = u_0, A(u)_i = u_i - Phi_{i-1}(u_{i-1}); forward substitution solves it exactly but
sequentially. MGRIT instead iterates:

- the points i = 0, m, 2m, .. are C-points (m = `coarsening`), the others F-points; every block of m steps from a
  C-point is independent of the others, so *F-relaxation* (propagate through the m - 1 F-points of every block) is a
  `vmap` over the blocks of a `lax.scan` over m - 1 steps, and *C-relaxation* (one step onto every C-point) a `vmap`;
- the residual r_j = g_{jm} - u_{jm} + Phi_{jm-1}(u_{jm-1}) lives on the C-points after F-relaxation; its 2-norm
  over all C-points is the residual norm of the iteration;
- coarse-grid correction (FAS): the coarse problem A_c(v) = R(g - A(u)) + A_c(R u) with R injection onto the
  C-points and A_c built from the coarse propagator Phi^c_j (one step of size m h, parameters injected at the
  coarse point's time; supplied by the caller as level 1 of `phi`), solved by forward substitution on the coarsest
  level or recursively by one V-cycle; the C-points take the coarse solution, an F-relaxation brings the F-points.

With F-relaxation two-level MGRIT is exact after N/m iterations (each iteration makes at least one more coarse
interval exact), with FCF-relaxation after N/(2m); the point is that far fewer iterations suffice when the problem
is stable (contractive Phi). `phi(level, i, u)` is step i of the level's grid (level l has N/m^l steps); `constrain`
places every (blocks, ...) array, e.g. a sharding constraint that splits the blocks over devices.
"""

from __future__ import annotations

from typing import Callable, Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array

from ode_nets.errors import ConfigError

Propagator = Callable[[int, Array, Array], Array]
Constrain = Callable[[Array], Array]
RELAXATIONS = ("F", "FCF")


class MGRITResult(NamedTuple):
    """All points u_0 .. u_N of the finest grid, the residual norm after each iteration (NaN after the last one
    run) and the number of iterations run."""

    states: Array
    residuals: Array
    iterations: Array


def _keep(x: Array) -> Array:
    return x


class MGRIT(eqx.Module):
    """Multigrid-reduction-in-time settings: coarsening factor m, number of levels (1: serial forward substitution),
    at most `iterations` V-cycles, stop once the residual norm is <= `tol`, F or FCF relaxation."""

    coarsening: int = eqx.field(static=True, default=4)
    levels: int = eqx.field(static=True, default=2)
    iterations: int = eqx.field(static=True, default=10)
    tol: float = eqx.field(static=True, default=0.0)
    relaxation: Literal["F", "FCF"] = eqx.field(static=True, default="FCF")

    def __check_init__(self) -> None:
        if self.coarsening < 2 or self.levels < 1 or self.iterations < 1 or self.tol < 0:
            raise ConfigError(f"gradient.mgrit_*: need coarsening >= 2, levels >= 1, iterations >= 1, tol >= 0; got "
                              f"m = {self.coarsening}, levels = {self.levels}, iterations = {self.iterations}, "
                              f"tol = {self.tol}")
        if self.relaxation not in RELAXATIONS:
            raise ConfigError(f"gradient.mgrit_relaxation: {self.relaxation!r} is not one of {RELAXATIONS}")

    def check_steps(self, steps: int) -> None:
        """The N steps must split into m^(levels-1) equal coarse steps."""
        factor = self.coarsening ** (self.levels - 1)
        if steps % factor:
            raise ConfigError(f"gradient.mgrit_levels / mgrit_coarsening: {steps} steps (model.layers x "
                              f"solver.steps_per_layer) are not divisible by m^(levels-1) = {factor}")

    def solve(self, phi: Propagator, g: Array, constrain: Constrain = _keep) -> MGRITResult:
        """Solve A(u) = g (u_0 = g_0; u_{i+1} = phi(0, i, u_i) + g_{i+1}) on the finest grid of len(g) - 1 steps."""
        self.check_steps(g.shape[0] - 1)
        hist = jnp.full((self.iterations,), jnp.nan, dtype=g.dtype)
        if self.levels == 1:
            return MGRITResult(forward_substitution(phi, 0, g), hist[:0], jnp.asarray(0))
        levels = _Levels(phi, self.coarsening, self.levels, self.relaxation == "FCF", constrain)

        def cond(carry: tuple) -> Array:
            _, k, _, done = carry
            return (k < self.iterations) & ~done

        def body(carry: tuple) -> tuple:
            u, k, hist, _ = carry
            u = levels.relax(0, u, g)
            r = levels.residual(0, u, g)
            norm = jnp.sqrt(jnp.sum(r * r))
            done = norm <= self.tol
            u = lax.cond(done, lambda: u, lambda: levels.correct(0, u, g, r))
            return u, k + 1, hist.at[k].set(norm), done

        u0 = jnp.broadcast_to(g[:1], g.shape).astype(g.dtype)  # initial guess: u_i = g_0 everywhere
        u, k, hist, _ = lax.while_loop(cond, body, (u0, jnp.asarray(0), hist, jnp.asarray(False)))
        return MGRITResult(levels.f_relax(0, u, g), hist, k)


def forward_substitution(phi: Propagator, level: int, g: Array) -> Array:
    """The exact sequential solve u_{i+1} = phi(level, i, u_i) + g_{i+1} (a `lax.scan`)."""
    def body(u: Array, ig: tuple[Array, Array]) -> tuple[Array, Array]:
        u1 = phi(level, ig[0], u) + ig[1]
        return u1, u1

    _, us = lax.scan(body, g[0], (jnp.arange(g.shape[0] - 1), g[1:]))
    return jnp.concatenate([g[:1], us])


class _Levels:
    """The MGRIT operations on level `level` (N/m^level steps), for one propagator."""

    def __init__(self, phi: Propagator, m: int, levels: int, fcf: bool, constrain: Constrain):
        self.phi, self.m, self.levels, self.fcf, self.constrain = phi, m, levels, fcf, constrain

    def f_relax(self, level: int, u: Array, g: Array) -> Array:
        """Every block: u_{jm+k} = phi(jm+k-1, u_{jm+k-1}) + g_{jm+k}, k = 1 .. m-1 (vmap over blocks of a scan)."""
        m, n = self.m, u.shape[0] - 1
        blocks, tail = n // m, u.shape[1:]
        starts = self.constrain(u[:-1:m])
        gb = self.constrain(g[:-1].reshape(blocks, m, *tail))
        index = jnp.arange(n).reshape(blocks, m)

        def block(x0: Array, i: Array, gi: Array) -> Array:
            def body(x: Array, ig: tuple[Array, Array]) -> tuple[Array, Array]:
                x1 = self.phi(level, ig[0], x) + ig[1]
                return x1, x1

            _, xs = lax.scan(body, x0, (i[:-1], gi[1:]))
            return jnp.concatenate([x0[None], xs])

        new = self.constrain(jax.vmap(block)(starts, index, gb))
        return jnp.concatenate([new.reshape(n, *tail), u[-1:]])

    def into_c(self, level: int, u: Array) -> Array:
        """phi(jm-1, u_{jm-1}) for every C-point j = 1 .. N/m (a vmap)."""
        m = self.m
        before = self.constrain(u[m - 1::m])
        index = jnp.arange(1, before.shape[0] + 1) * m - 1
        return self.constrain(jax.vmap(lambda i, x: self.phi(level, i, x))(index, before))

    def relax(self, level: int, u: Array, g: Array) -> Array:
        """F-relaxation, or F, C, F (FCF)."""
        u = self.f_relax(level, u, g)
        if self.fcf:
            u = u.at[self.m::self.m].set(g[self.m::self.m] + self.into_c(level, u))
            u = self.f_relax(level, u, g)
        return u

    def residual(self, level: int, u: Array, g: Array) -> Array:
        """r_j = g_{jm} - u_{jm} + phi(jm-1, u_{jm-1}) on the C-points j = 1 .. N/m (zero on F-points after F)."""
        return g[self.m::self.m] - u[self.m::self.m] + self.into_c(level, u)

    def correct(self, level: int, u: Array, g: Array, r: Array) -> Array:
        """FAS coarse-grid correction: solve A_c(v) = r + A_c(u_C) on level + 1, set the C-points to v."""
        v = u[::self.m]
        coarse = level + 1
        steps = jax.vmap(lambda i, x: self.phi(coarse, i, x))(jnp.arange(v.shape[0] - 1), v[:-1])
        g_coarse = jnp.concatenate([v[:1], r + v[1:] - steps])
        if coarse == self.levels - 1:
            v = forward_substitution(self.phi, coarse, g_coarse)
        else:
            v = self.v_cycle(coarse, v, g_coarse)
        return u.at[::self.m].set(v)

    def v_cycle(self, level: int, u: Array, g: Array) -> Array:
        """One V-cycle on a coarse level: relax, coarse-grid correction, F-relaxation."""
        u = self.relax(level, u, g)
        u = self.correct(level, u, g, self.residual(level, u, g))
        return self.f_relax(level, u, g)
