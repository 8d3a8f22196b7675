"""Explicit linear multistep networks as diffrax solvers: Adams–Bashforth 3 and Ruseckas' two-step eq 111.

The solver state carries the history (previous field values or increments) from step to step, so
the layers stay one `lax` loop inside `diffrax.diffeqsolve`. Both assume the uniform step grids of
`LayerGrid.step_times`. The history crosses layer boundaries on purpose: AB3 combines
f(Y_j, theta_j), f(Y_{j-1}, theta_{j-1}), f(Y_{j-2}, theta_{j-2}) exactly as on the slides.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import diffrax
import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
from jax import lax
from jaxtyping import Array, Float, PyTree

from ode_nets.fields._base import AbstractField
from ode_nets.fields.time_params import Constant, ParamInit, PiecewiseConstant, TimeParam

_AB2 = (1.5, -0.5, 0.0)
_AB3 = (23.0 / 12.0, -16.0 / 12.0, 5.0 / 12.0)


class AdamsBashforth3(diffrax.AbstractSolver):
    """Third-order Adams–Bashforth: y_{n+1} = y_n + h/12 (23 f_n - 16 f_{n-1} + 5 f_{n-2}) (Ruthotto slides).

    Start-up (no history yet): step 0 is the explicit midpoint rule (local error O(h^3), stage at
    t0 + h/2 so it stays inside the layer), step 1 is AB2 (local error O(h^3)); from step 2 on AB3.
    Both start-up steps are of lower order but their O(h^3) local errors keep the global error O(h^3)
    (a forward-Euler start, local O(h^2), would make the whole method second order).
    Solver state: (step counter n, f_{n-1}, f_{n-2}). States may be pytrees (as in diffrax's backsolve adjoint).
    """

    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar[Callable[..., diffrax.LocalLinearInterpolation]] = diffrax.LocalLinearInterpolation

    def order(self, terms: Any) -> int:
        return 3

    def init(self, terms: Any, t0: Any, t1: Any, y0: PyTree, args: Any) -> tuple[Array, PyTree, PyTree]:
        zeros = jtu.tree_map(jnp.zeros_like, y0)
        return jnp.zeros((), jnp.int32), zeros, zeros

    def step(self, terms: Any, t0: Any, t1: Any, y0: Array, args: Any, solver_state: tuple, made_jump: Any
             ) -> tuple[Array, None, dict, tuple, diffrax.RESULTS]:
        del made_jump  # the history deliberately spans the parameter jumps at layer boundaries
        n, f1, f2 = solver_state
        control = terms.contr(t0, t1)  # h, with the sign diffrax uses for backward solves
        increment = lambda vf: terms.prod(vf, control)  # noqa: E731  h * f
        f0 = terms.vf(t0, y0, args)

        def start() -> PyTree:  # explicit midpoint
            mid = jtu.tree_map(lambda y, d: y + 0.5 * d, y0, increment(f0))
            return jtu.tree_map(jnp.add, y0, increment(terms.vf(t0 + 0.5 * (t1 - t0), mid, args)))

        def multistep() -> PyTree:
            c0, c1, c2 = (jnp.where(n == 1, a, b) for a, b in zip(_AB2, _AB3))
            combined = jtu.tree_map(lambda a, b, c: c0 * a + c1 * b + c2 * c, f0, f1, f2)
            return jtu.tree_map(jnp.add, y0, increment(combined))

        y1 = lax.cond(n == 0, start, multistep)
        return y1, None, dict(y0=y0, y1=y1), (n + 1, f0, f1), diffrax.RESULTS.successful

    def func(self, terms: Any, t0: Any, y0: Array, args: Any) -> Array:
        return terms.vf(t0, y0, args)


class TwoStepField(AbstractField):
    """A vector field together with the per-layer coefficients k_l of eq 111 (trainable model parameters).

    Evaluates as the wrapped field; `TwoStepLM` reads `k(t)`. Built by `with_two_step_memory`.
    """

    field: eqx.Module
    k: TimeParam
    feature_axis: ClassVar[int] = -1

    def __call__(self, t: Float[Array, ""], x: Array, args: object = None) -> Array:
        return self.field(t, x, args)

    @classmethod
    def init(cls, state_shape: tuple[int, ...], params: ParamInit, key: Any, **options: object) -> "TwoStepField":
        raise TypeError("a TwoStepField wraps a built field: use with_two_step_memory(field, params)")

    @property
    def gamma(self) -> Any:
        """The wrapped field's gamma~, if any (logged by the training loop)."""
        return getattr(self.field, "gamma", None)


class ConvTwoStepField(TwoStepField):
    """`TwoStepField` around a convolutional field (channels at axis -3)."""

    feature_axis: ClassVar[int] = -3


def with_two_step_memory(field: eqx.Module, params: ParamInit, k_init: float = 0.0) -> TwoStepField:
    """Wrap `field` with k_l, one scalar per layer (or one for all t), initialised to `k_init` (0: ResNet, eq 109)."""
    k: TimeParam = (PiecewiseConstant(jnp.full((params.layers,), k_init), 0.0, params.horizon) if params.time_dependent
                    else Constant(jnp.asarray(k_init, dtype=float)))
    wrapper = ConvTwoStepField if type(field).feature_axis == -3 else TwoStepField
    return wrapper(field, k)


def _vector_field(terms: Any) -> Any:
    """The user's vector field inside diffrax's term wrappers (`WrapTerm(ODETerm(field))`)."""
    while hasattr(terms, "term"):
        terms = terms.term
    return getattr(terms, "vector_field", None)


class TwoStepLM(diffrax.AbstractSolver):
    """Ruseckas eq 111: x_{l+1} = (1 - k_l) x_l + k_l x_{l-1} + h f(t_l, x_l), k_l trainable.

    Written with increments d_l = x_{l+1} - x_l: x_{l+1} = x_l - k_l d_{l-1} + h f_l; k = 0 is forward
    Euler (eq 109). Characteristic roots 1 and -k_l: zero-stable for -1 < k_l <= 1. For constant k the
    scheme is a consistent linear multistep method for the *rescaled* ODE (1 + k) dx/dt = f (first
    order; second order, the leapfrog x_{l+1} = x_{l-1} + h f_l, for k = 1), so k_l also acts as a
    learned per-layer step size h/(1 + k_l). Start-up: the missing x_{-1} is taken so that
    d_{-1} = h f_0 / (1 + k_0) (the steady increment), i.e. the first step is Euler for the rescaled ODE.
    Needs the field wrapped in `TwoStepField` (`with_two_step_memory`; `ode_nets.build` does it for `solver.method: lm2`).
    Solver state: (first step?, d_{l-1}).
    """

    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar[Callable[..., diffrax.LocalLinearInterpolation]] = diffrax.LocalLinearInterpolation

    def order(self, terms: Any) -> int:
        return 1

    def init(self, terms: Any, t0: Any, t1: Any, y0: Array, args: Any) -> tuple[Array, Array]:
        if not isinstance(_vector_field(terms), TwoStepField) or not eqx.is_array(y0):
            raise ValueError("solver.method 'lm2' needs the field wrapped with its k_l (with_two_step_memory) "
                             "and gradient.strategy discretize_then_optimize (k_l has no meaning in a backsolve)")
        return jnp.ones((), bool), jnp.zeros_like(y0)

    def step(self, terms: Any, t0: Any, t1: Any, y0: Array, args: Any, solver_state: tuple, made_jump: Any
             ) -> tuple[Array, None, dict, tuple, diffrax.RESULTS]:
        del made_jump
        first, d_prev = solver_state
        k = _vector_field(terms).k(t0)
        hf = terms.vf_prod(t0, y0, args, terms.contr(t0, t1))  # h f(t_l, x_l)
        d_prev = jnp.where(first, hf / (1 + k), d_prev)
        y1 = y0 - k * d_prev + hf
        return y1, None, dict(y0=y0, y1=y1), (jnp.zeros((), bool), y1 - y0), diffrax.RESULTS.successful

    def func(self, terms: Any, t0: Any, y0: Array, args: Any) -> Array:
        return terms.vf(t0, y0, args)
