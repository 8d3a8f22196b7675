"""Function evaluations of the backward pass, for the `metrics.jsonl` records (`nfe_backward`).

Reverse mode through the solver's steps (`discretize_then_optimize`, `direct_adjoint`) evaluates one
vector-Jacobian product per forward evaluation: the objective reports `nfe_backward = nfe_forward` itself
(recomputation from checkpoints not counted); so does `reversible`, whose backward pass per forward evaluation is one
F (the reconstructing inverse step) and one VJP. `analytic_adjoint` reports its own backward pass's counts (Euler: one
a dF/dx and a dF/dq per step, eq 112; otherwise the layer solves of the backward system) through the same
`BackwardCounter` cotangent as the backward solve below. A backward *solve* (`optimize_then_discretize`, diffrax's
`BacksolveAdjoint`) chooses its own steps and diffrax does not return their stats; `backward_counts` runs one extra
forward and backward pass on the logged batch with a `BackwardCounter` as the solve's `args`, whose cotangent carries
the backward solve's evaluation and step counts (`CountingBacksolveAdjoint`, evaluations counted by its
`CountingController`). Each of its evaluations is one F and one vector-Jacobian product (the augmented adjoint
system).
"""

from __future__ import annotations

import equinox as eqx
import jax

from ode_nets.strategies.diffrax_adjoints import BackwardCounter
from ode_nets.training.objective import Objective


def counts_backward_solve(model: eqx.Module) -> bool:
    """True if `model`'s gradient strategy reports its backward pass's counts through a `BackwardCounter` (a backward
    solve, `optimize_then_discretize`, or the paper's backward pass, `analytic_adjoint`)."""
    return getattr(getattr(model, "strategy", None), "backward_counting", "none") == "solve"


@eqx.filter_jit
def backward_counts(model: eqx.Module, x: jax.Array, y: jax.Array, mask: jax.Array, objective: Objective
                    ) -> dict[str, jax.Array]:
    """{nfe_backward, steps_accepted_backward, steps_rejected_backward} of the backward solve of one batch."""
    def loss(counter: BackwardCounter) -> jax.Array:
        return objective(model, x, y, mask, args=counter)[0]

    evaluations, accepted, rejected = jax.grad(loss)(BackwardCounter.zeros()).counts
    return {"nfe_backward": evaluations, "steps_accepted_backward": accepted, "steps_rejected_backward": rejected}
