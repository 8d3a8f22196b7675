"""Fixed steps that see each layer's own parameters, for Runge–Kutta stages at the step end.

With piecewise-constant parameters (layer l on [g_l, g_{l+1})), a step over exactly
[g_l, g_{l+1}] evaluates a stage at c = 1 (Heun's second stage) at g_{l+1}, where the lookup
already returns layer l+1: the step mixes two layers. `LayerSteps` is `diffrax.StepTo` whose
steps end at the one-sided limit of a jump instead: a forward step ends one ulp before g_{l+1}
and the next starts at g_{l+1} (as diffrax's own `jump_ts` clipping does for adaptive solvers),
so every stage of the step over layer l reads layer l.
"""

from __future__ import annotations

from typing import Callable

import diffrax
import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Real


def layer_step_bounds(step_ts: np.ndarray, jump_ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the steps over `step_ts` (increasing or decreasing), split at the jumps.

    A step's end that lands on a jump is moved one ulp back into the step, towards its start;
    the next step starts exactly at the jump, except when going backwards in time, where the
    start is the jump's left limit (one ulp below) and the end is exact. Either way both ends of
    a step read the parameters of the interval it crosses.
    """
    ts = np.asarray(step_ts)
    starts, ends = ts[:-1].copy(), ts[1:].copy()
    forward = ts[-1] > ts[0]
    if forward:
        on_jump = np.isin(ends, jump_ts)
        ends[on_jump] = np.nextafter(ends[on_jump], -np.inf)
    else:
        on_jump = np.isin(starts, jump_ts)
        starts[on_jump] = np.nextafter(starts[on_jump], -np.inf)
    return starts, ends


class LayerSteps(diffrax.AbstractStepSizeController):
    """Step over [starts[i], ends[i]] in turn; a gap between ends[i] and starts[i+1] is a jump.

    Build with `LayerSteps.over(step_ts, jump_ts)`. Like `StepTo`, `dt0` must be None.
    """

    starts: Real[Array, " steps"] = eqx.field(converter=jnp.asarray)
    ends: Real[Array, " steps"] = eqx.field(converter=jnp.asarray)

    @classmethod
    def over(cls, step_ts: np.ndarray, jump_ts: np.ndarray) -> "LayerSteps":
        """Steps over `step_ts`, split one-sidedly at the parameter jumps `jump_ts`."""
        return cls(*layer_step_bounds(step_ts, jump_ts))

    def wrap(self, direction) -> "LayerSteps":
        return type(self)(starts=self.starts * direction, ends=self.ends * direction)

    def init(self, terms, t0, t1, y0, dt0, args, func: Callable, error_order) -> tuple[Array, Array]:
        del terms, t0, t1, y0, args, func, error_order
        if dt0 is not None:
            raise ValueError("LayerSteps fixes the steps itself: dt0 must be None")
        return self.ends[0], jnp.asarray(1)

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state):
        del t0, y0, y1_candidate, args, y_error, error_order
        last = controller_state >= len(self.starts)  # solve finished: report t1 so diffrax's loop stops
        index = jnp.minimum(controller_state, len(self.starts) - 1)
        next_t0 = jnp.where(last, self.ends[-1], self.starts[index])
        next_t1 = jnp.where(last, self.ends[-1], self.ends[index])
        made_jump = next_t0 != t1
        return True, next_t0, next_t1, made_jump, controller_state + 1, diffrax.RESULTS.successful
