"""Continuous normalizing flows (Chen et al. 2018; FFJORD, Grathwohl et al. 2019): Ruseckas eq 28 as a model.

Data x sit at t = 0 and flow to z = x(T) under dx/dt = F(t, x); the base density at t = T is N(0, I). Along a
trajectory eq 28 gives d log p(x(t), t)/dt = -Tr dF/dx, so with the augmented state (x, c), dc/dt = Tr dF/dx,
c(0) = 0, one forward solve gives

    log p_data(x) = log N(x(T); 0, I) + c(T).

Sampling solves backwards from z ~ N(0, I) at t = T to t = 0 (as a forward solve of the time-reversed field).
The solves go through `ode_nets.solve`: any diffrax solver, `AdaptiveSteps`, and a gradient strategy
(`DiscretizeThenOptimize`, or `OptimizeThenDiscretize` = the adjoint of Chen et al.).
"""

import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ode_nets.continuous.trace import AbstractTraceEstimator, ExactTrace
from ode_nets.fields._base import AbstractField
from ode_nets.fields.time_params import LayerGrid
from ode_nets.solve import solve
from ode_nets.solvers.registry import solver_info
from ode_nets.solvers.stepping import AbstractStepping, AdaptiveSteps
from ode_nets.strategies._base import AbstractGradientStrategy
from ode_nets.strategies.diffrax_adjoints import DiscretizeThenOptimize


class LogDensityDynamics(eqx.Module):
    """The augmented field d/dt (x, c) = (F(t, x), Tr dF/dx) (eq 28 with c = -(log p - log p_0)).

    `args` is the Hutchinson probe, one per sample, the same for every evaluation of the solve (None: exact).
    """

    field: AbstractField
    estimator: AbstractTraceEstimator

    def __call__(self, t: Float[Array, ""], state: tuple[Array, Array], args: Array | None = None
                 ) -> tuple[Array, Array]:
        x, _ = state
        return self.estimator(lambda y: self.field(t, y), x, args)


class TimeReversed(eqx.Module):
    """G(s, x) = -F(T - s, x): solving it from s = 0 to T runs dx/dt = F backwards from t = T to 0."""

    field: AbstractField
    horizon: float = eqx.field(static=True)

    def __call__(self, s: Float[Array, ""], x: Array, args: object = None) -> Array:
        return -self.field(self.horizon - s, x, args)


def standard_normal_log_density(z: Array) -> Array:
    """log N(z; 0, I) per sample (last axis = features)."""
    return -0.5 * jnp.sum(z**2, axis=-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)


class CNF(eqx.Module):
    """A continuous normalizing flow: `field` on [0, `horizon`], log-density by `estimator` (eq 28)."""

    field: AbstractField
    estimator: AbstractTraceEstimator = ExactTrace()
    horizon: float = eqx.field(static=True, default=1.0)
    solver: diffrax.AbstractSolver = diffrax.Dopri5()
    stepping: AbstractStepping = AdaptiveSteps(rtol=1e-5, atol=1e-5)
    strategy: AbstractGradientStrategy = DiscretizeThenOptimize()

    def solve(self, field: eqx.Module, y0: object, args: object = None) -> diffrax.Solution:
        return solve(field, y0, solver=self.solver, grid=LayerGrid(self.horizon, 1), strategy=self.strategy,
                     stepping=self.stepping, args=args)

    def nfe(self, solution: diffrax.Solution) -> Array:
        """Field evaluations of a solve: steps (accepted + rejected) x evaluations per step."""
        return solution.stats["num_steps"] * solver_info(self.solver).stages

    def log_prob_and_nfe(self, x: Float[Array, "batch dim"], key: PRNGKeyArray | None = None
                         ) -> tuple[Array, Array]:
        """(log p(x) per sample, NFE of the solve); `key` draws the Hutchinson probes (unused for exact)."""
        probe = self.estimator.probe(key, x.shape) if self.estimator.stochastic else None
        c0 = jnp.zeros(x.shape[:-1], x.dtype)
        sol = self.solve(LogDensityDynamics(self.field, self.estimator), (x, c0), probe)
        z, c = sol.ys[0][-1], sol.ys[1][-1]
        return standard_normal_log_density(z) + c, self.nfe(sol)

    def log_prob(self, x: Float[Array, "batch dim"], key: PRNGKeyArray | None = None) -> Array:
        """log p(x) per sample (eq 28 integrated along the flow)."""
        return self.log_prob_and_nfe(x, key)[0]

    def transform(self, x: Float[Array, "batch dim"]) -> Array:
        """z = x(T), the data mapped to the base space."""
        return self.solve(self.field, x).ys[-1]

    def sample(self, key: PRNGKeyArray, n: int, dim: int) -> Array:
        """n samples: z ~ N(0, I) at t = T, solved back to t = 0."""
        z = jax.random.normal(key, (n, dim))
        return self.solve(TimeReversed(self.field, self.horizon), z).ys[-1]


class NegativeLogLikelihood(eqx.Module):
    """The CNF's training loss: mean -log p(x) over a batch (a fresh Hutchinson probe per step from `key`)."""

    def __call__(self, model: CNF, x: Array, key: PRNGKeyArray) -> tuple[Array, dict]:
        log_p, nfe = model.log_prob_and_nfe(x, key)
        loss = -jnp.mean(log_p)
        return loss, {"nll": loss, "nfe": nfe}
