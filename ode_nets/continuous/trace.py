"""Tr(dF/dx), the right side of eq 28 (d log p / dt = -Tr dF/dx), exactly or by Hutchinson's estimator.

An estimator returns F(x) and the trace per sample from forward-mode products J v (`jax.jvp`), so F is evaluated
along with it. The Hutchinson probe is drawn once per sample (`probe`) and passed to every evaluation of the
field during a solve: a probe resampled inside the solve makes the trace a noisy function of t and the adaptive
solver's step count explode (FFJORD; torchdiffeq issue tracker).
"""

import abc
from typing import Callable, ClassVar, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray


PROBES: dict[str, Callable[[PRNGKeyArray, tuple[int, ...]], Array]] = {
    "rademacher": lambda key, shape: jax.random.rademacher(key, shape, dtype=jnp.float32),
    "gaussian": lambda key, shape: jax.random.normal(key, shape),
}


class AbstractTraceEstimator(eqx.Module):
    """(F(x), Tr dF/dx per sample) for a field `f` on states (..., D)."""

    stochastic: eqx.AbstractClassVar[bool]

    @abc.abstractmethod
    def probe(self, key: PRNGKeyArray, shape: tuple[int, ...]) -> Array | None:
        """The probe vectors for states of `shape` (None for an exact trace)."""

    @abc.abstractmethod
    def __call__(self, f: Callable[[Array], Array], x: Array, probe: Array | None) -> tuple[Array, Array]:
        """(f(x), trace) with the trace of shape x.shape[:-1]."""


class ExactTrace(AbstractTraceEstimator):
    """Tr J = sum_i e_i^T J e_i from D Jacobian-vector products: exact, D times the cost (low dimension)."""

    stochastic: ClassVar[bool] = False

    def probe(self, key: PRNGKeyArray, shape: tuple[int, ...]) -> None:
        return None

    def __call__(self, f: Callable[[Array], Array], x: Array, probe: Array | None = None) -> tuple[Array, Array]:
        basis = jnp.eye(x.shape[-1], dtype=x.dtype)
        column = lambda e: jax.jvp(f, (x,), (jnp.broadcast_to(e, x.shape),))  # noqa: E731
        fx, columns = jax.vmap(column)(basis)  # columns[i] = J e_i, shape (D, ..., D)
        return fx[0], jnp.einsum("i...i->...", columns)


class HutchinsonTrace(AbstractTraceEstimator):
    """Tr J ~ v^T J v with E[v v^T] = I (Hutchinson 1990): one J v product, unbiased (FFJORD, Grathwohl 2019).

    `distribution`: "rademacher" (entries +-1, the smaller variance) or "gaussian".
    """

    distribution: Literal["rademacher", "gaussian"] = eqx.field(static=True, default="rademacher")
    stochastic: ClassVar[bool] = True

    def __check_init__(self) -> None:
        if self.distribution not in PROBES:
            raise ValueError(f"HutchinsonTrace: distribution must be one of {tuple(PROBES)}, got "
                             f"{self.distribution!r}")

    def probe(self, key: PRNGKeyArray, shape: tuple[int, ...]) -> Array:
        return PROBES[self.distribution](key, shape)

    def __call__(self, f: Callable[[Array], Array], x: Array, probe: Array | None) -> tuple[Array, Array]:
        fx, jv = jax.jvp(f, (x,), (probe.astype(x.dtype),))
        return fx, jnp.sum(probe * jv, axis=-1)


TRACE_ESTIMATORS: dict[str, Callable[[], AbstractTraceEstimator]] = {
    "exact": ExactTrace,
    "hutchinson": HutchinsonTrace,
    "hutchinson_gaussian": lambda: HutchinsonTrace("gaussian"),
}
