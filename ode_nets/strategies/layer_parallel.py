"""Layer-parallel gradients: MGRIT forward and backward propagation (the `LayerParallel` strategy).

Ruthotto 2019 slides, "Layer-Parallel Training" (use-case 1: replace forward and backward propagation in SGD);
Günther, Ruthotto, Schroder, Cyr, Gauger, SIMODS 2020. For a one-step network x_{k+1} = Phi_k(x_k) (the field and a
fixed-step one-step solver: Euler, eq 109, or Verlet):

- forward: `ode_nets.solvers.mgrit.MGRIT` on x_{k+1} - Phi_k(x_k) = 0, x_0 given; the coarse propagator of level l
  is one step of the same solver over m^l fine steps with the parameters injected at the coarse point's time
  (`layer_view`: every piecewise-constant parameter replaced by its value there);
- backward: the discrete adjoint lambda_k = (dPhi_k/dx)^T(x_k) lambda_{k+1}, lambda_N = dL/dx_N (eq 112 for Euler,
  the transposed Verlet step for Verlet; each a `jax.vjp` of the one step), solved by the same MGRIT from N down to
  0 on the forward states, the coarse adjoint propagator the transposed coarse step at the coarse points' states;
- gradients: dL/dq = sum_k (dPhi_k/dq)^T lambda_{k+1}, every term layer-local (a vmap over the steps of the vjp with
  respect to that step's layer values), then summed into the layers (`fold_gradients`).

At convergence this is the gradient of the serial network (`discretize_then_optimize`); with a few iterations it is
the inexact gradient Günther et al. train with. The residual norms and iteration counts of both solves leave the
backward pass as the cotangent of the strategy's `Monitor` (`ode_nets.strategies._base.pop_monitors`), which the
training step logs. `layer_devices` > 1 splits the blocks of layers over devices (`layer_mesh`; the batch axis
over `data_devices` on the same 2-D mesh).
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Literal

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array

from ode_nets.errors import ConfigError
from ode_nets.fields._base import AbstractField
from ode_nets.fields.time_params import Constant, PiecewiseConstant, is_time_param, layer_grid, layer_index
from ode_nets.solvers.mgrit import MGRIT, MGRITResult
from ode_nets.solvers.registry import solver_info
from ode_nets.solvers.stepping import Discretisation, FixedSteps
from ode_nets.solvers.verlet import StepSolution
from ode_nets.strategies._base import AbstractGradientStrategy, Monitor
from ode_nets.strategies.analytic import _is_t1_only
from ode_nets.strategies.diffrax_adjoints import DiscretizeThenOptimize

BATCH_AXIS, LAYER_AXIS = "batch", "layers"
MONITOR_NAMES = ("mgrit_forward_residual", "mgrit_forward_iterations", "mgrit_adjoint_residual",
                 "mgrit_adjoint_iterations")


# ---------------------------------------------------------------------------------------------
# one step with the parameters of one time


def layer_view(field: AbstractField, t: Array) -> AbstractField:
    """The field with every piecewise-constant parameter replaced by its value at time t (a `Constant`):
    the parameters of one layer, injected at t (how the coarse grids see the fine parameters)."""
    leaves, treedef = jax.tree_util.tree_flatten(field, is_leaf=is_time_param)
    return treedef.unflatten([Constant(p(t)) if isinstance(p, PiecewiseConstant) else p for p in leaves])


def one_step(solver: diffrax.AbstractSolver, field: AbstractField, t0: Array, t1: Array, x: Array) -> Array:
    """One step of the diffrax `solver` from (t0, x) to t1: the layer x + h F(x) for Euler (eq 109), `verlet_step`."""
    term = diffrax.ODETerm(field)
    state = solver.init(term, t0, t1, x, None)
    return solver.step(term, t0, t1, x, None, state, False)[0]


def forward_propagator(solver: diffrax.AbstractSolver, field: AbstractField, ts: Array, m: int
                       ) -> Callable[[int, Array, Array], Array]:
    """Phi(level, i, x): step i of level `level`, from ts[i m^level] to ts[(i+1) m^level], parameters at its start."""
    def phi(level: int, i: Array, x: Array) -> Array:
        stride = m ** level
        t0, t1 = ts[i * stride], ts[(i + 1) * stride]
        return one_step(solver, layer_view(field, t0), t0, t1, x)

    return phi


def adjoint_propagator(phi: Callable[[int, Array, Array], Array], xs: Array, m: int
                       ) -> Callable[[int, Array, Array], Array]:
    """Psi(level, i, a): the transposed step a -> (dPhi_p/dx)^T(x_p) a of level `level` with p = N_level - 1 - i
    (the adjoint runs from N to 0), linearised at the forward state of the level's point p."""
    steps = xs.shape[0] - 1

    def psi(level: int, i: Array, a: Array) -> Array:
        stride = m ** level
        p = steps // stride - 1 - i
        _, vjp = jax.vjp(lambda x: phi(level, p, x), xs[p * stride])
        return vjp(a)[0]

    return psi


# ---------------------------------------------------------------------------------------------
# layer-local parameter gradients


def step_gradients(solver: diffrax.AbstractSolver, field: AbstractField, ts: Array, xs: Array, adjoints: Array
                   ) -> Any:
    """(dPhi_k/dq_k)^T lambda_{k+1} for every step k, with respect to the step's own layer view (leading axis N)."""
    def one(k: Array) -> Any:
        params, static = eqx.partition(layer_view(field, ts[k]), eqx.is_inexact_array)
        step = lambda p: one_step(solver, eqx.combine(p, static), ts[k], ts[k + 1], xs[k])  # noqa: E731
        return jax.vjp(step, params)[1](adjoints[k + 1])[0]

    return jax.vmap(one)(jnp.arange(xs.shape[0] - 1))


def fold_gradients(field: AbstractField, per_step: Any, ts: Array) -> Any:
    """Per-step gradients of the layer views -> a gradient shaped like the field's trainable part: a piecewise-
    constant parameter collects its steps into its layers (a segment sum), anything else sums over all steps."""
    leaves, treedef = jax.tree_util.tree_flatten(field, is_leaf=is_time_param)
    slots = treedef.flatten_up_to(per_step)

    def fold(p: Any, g: Any) -> Any:
        if g is None:
            return None
        if isinstance(p, PiecewiseConstant):
            ids = layer_index(ts[:-1], layer_grid(p.t0, p.t1, p.layers))
            return PiecewiseConstant(jax.ops.segment_sum(g.value, ids, p.layers), p.t0, p.t1)
        if isinstance(p, Constant):
            return Constant(jnp.sum(g.value, 0))
        return jnp.sum(g, 0)

    return treedef.unflatten([fold(p, g) for p, g in zip(leaves, slots)])


# ---------------------------------------------------------------------------------------------
# devices


def layer_mesh(data_devices: int, layer_devices: int) -> Mesh:
    """The 2-D mesh ("batch", "layers") over the first data x layer devices (data parallel x layer parallel)."""
    need, available = data_devices * layer_devices, jax.device_count()
    if need > available:
        raise ConfigError(f"train.devices x train.layer_devices = {need}, but only {available} JAX device(s) are "
                          f"available ({jax.devices()[0].platform}); on CPU, "
                          f"XLA_FLAGS=--xla_force_host_platform_device_count=N makes N host devices")
    return Mesh(np.asarray(jax.devices()[:need]).reshape(data_devices, layer_devices), (BATCH_AXIS, LAYER_AXIS))


def block_constraint(data_devices: int, layer_devices: int, state_ndim: int) -> Callable[[Array], Array]:
    """A sharding constraint for (blocks, ..., state) arrays: blocks over "layers", the state's leading (batch)
    axis over "batch"; identity without layer parallelism or where the blocks do not split evenly."""
    if layer_devices == 1:  # data parallel only: the inputs carry the batch sharding (training.parallel)
        return lambda x: x
    mesh = layer_mesh(data_devices, layer_devices)

    def constrain(x: Array) -> Array:
        if x.shape[0] % layer_devices:
            return x
        spec = [LAYER_AXIS] + [None] * (x.ndim - 1)
        if data_devices > 1 and state_ndim > 1:
            spec[x.ndim - state_ndim] = BATCH_AXIS
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec(*spec)))

    return constrain


# ---------------------------------------------------------------------------------------------
# the strategy


class LayerParallel(AbstractGradientStrategy):
    """MGRIT forward and adjoint solves across the layers (`gradient.strategy: layer_parallel`).

    `coarsening` m, `levels` (2: two-grid; more: recursive V-cycles; 1: serial), at most `iterations` cycles per
    solve, stopping at residual norm <= `tol` (0: always `iterations`), `relaxation` F or FCF; the layers split in
    contiguous blocks over `layer_devices` devices (times `data_devices` for the batch). Only `SaveAt(t1=True)` is
    solved by MGRIT; trajectories (plots, diagnostics) are the serial solve.
    """

    coarsening: int = eqx.field(static=True, default=4)
    levels: int = eqx.field(static=True, default=2)
    iterations: int = eqx.field(static=True, default=2)
    tol: float = eqx.field(static=True, default=0.0)
    relaxation: Literal["F", "FCF"] = eqx.field(static=True, default="FCF")
    layer_devices: int = eqx.field(static=True, default=1)
    data_devices: int = eqx.field(static=True, default=1)
    monitor: Monitor = eqx.field(default_factory=lambda: Monitor.zeros(MONITOR_NAMES))
    config_options: ClassVar[tuple[str, ...]] = ("coarsening", "levels", "iterations", "tol", "relaxation",
                                                 "layer_devices", "data_devices")

    @property
    def mgrit(self) -> MGRIT:
        return MGRIT(self.coarsening, self.levels, self.iterations, self.tol, self.relaxation)

    def check(self, discretisation: Discretisation, args: object) -> None:
        """A one-step fixed-step solver, no field args, and steps that coarsen evenly."""
        info = solver_info(discretisation.solver)
        if (info.adaptive or info.multistep or info.splits_at_jumps
                or not isinstance(discretisation.stepping, FixedSteps)):
            raise ConfigError(f"gradient.strategy 'layer_parallel' needs a one-step fixed-step solver whose stages "
                              f"stay inside the layer (euler, verlet), got {type(discretisation.solver).__name__}")
        if args is not None:
            raise ConfigError("gradient.strategy 'layer_parallel' does not support field args")
        self.mgrit.check_steps(len(discretisation.step_ts()) - 1)

    def solve(self, field: AbstractField, x0: Array, discretisation: Discretisation, saveat: diffrax.SaveAt,
              args: object = None) -> StepSolution | diffrax.Solution:
        self.check(discretisation, args)
        if not _is_t1_only(saveat):
            return DiscretizeThenOptimize().solve(field, x0, discretisation, saveat, args)
        ts = discretisation.step_ts()
        x0 = x0.astype(state_dtype(field, x0))  # float32 inputs, float64 parameters: the steps' dtype
        final = _mgrit_final_state(self, field, x0, discretisation.solver, jnp.asarray(ts, dtype=x0.dtype))
        return StepSolution(jnp.asarray(ts[-1:]), final[None])

    def forward(self, field: AbstractField, x0: Array, solver: diffrax.AbstractSolver, ts: Array) -> MGRITResult:
        """MGRIT on x_{k+1} = Phi_k(x_k) from x0: all states x_0 .. x_N, residual norms, iterations."""
        g = jnp.zeros((ts.shape[0], *x0.shape), x0.dtype).at[0].set(x0)
        phi = forward_propagator(solver, field, ts, self.coarsening)
        return self.mgrit.solve(phi, g, self.constrain(x0.ndim))

    def backward(self, field: AbstractField, xs: Array, a_final: Array, solver: diffrax.AbstractSolver, ts: Array
                 ) -> tuple[Array, Any, MGRITResult]:
        """MGRIT on the discrete adjoint from lambda_N = a_final down to lambda_0 on the forward states `xs`; returns
        the adjoints lambda_0 .. lambda_N, the field's gradient and the solve (states in reversed order)."""
        g = jnp.zeros_like(xs).at[0].set(a_final)
        psi = adjoint_propagator(forward_propagator(solver, field, ts, self.coarsening), xs, self.coarsening)
        result = self.mgrit.solve(psi, g, self.constrain(a_final.ndim))
        adjoints = result.states[::-1]
        return adjoints, fold_gradients(field, step_gradients(solver, field, ts, xs, adjoints), ts), result

    def constrain(self, state_ndim: int) -> Callable[[Array], Array]:
        return block_constraint(self.data_devices, self.layer_devices, state_ndim)


def state_dtype(field: AbstractField, x0: Array) -> Any:
    """The dtype a step of `field` from `x0` produces (the MGRIT loops' carries must keep one dtype)."""
    leaves = jax.tree_util.tree_leaves(eqx.filter(field, eqx.is_inexact_array))
    return jnp.result_type(x0.dtype, *[leaf.dtype for leaf in leaves])


def _last_residual(result: MGRITResult) -> Array:
    """The residual norm of the last iteration run (0 for a serial solve)."""
    if result.residuals.shape[0] == 0:
        return jnp.zeros((), result.states.dtype)
    return result.residuals[jnp.maximum(result.iterations - 1, 0)]


def _mgrit_final_state(strategy: LayerParallel, field: AbstractField, x0: Array, solver: diffrax.AbstractSolver,
                       ts: Array) -> Array:
    """x_N by forward MGRIT; its VJP is the adjoint MGRIT (a `jax.custom_vjp`), the monitor's cotangent the
    residual norms and iteration counts of both solves."""
    params, static = eqx.partition(field, eqx.is_inexact_array)

    def forward(p: Any, x: Array) -> MGRITResult:
        return strategy.forward(eqx.combine(p, static), x, solver, ts)

    @jax.custom_vjp
    def run(p: Any, x: Array, probe: Array) -> Array:
        return forward(p, x).states[-1]

    def run_fwd(p: Any, x: Array, probe: Array) -> tuple[Array, tuple]:
        result = forward(p, x)
        stats = jnp.stack([_last_residual(result), result.iterations.astype(result.states.dtype)])
        return result.states[-1], (p, result.states, stats, probe)

    def run_bwd(res: tuple, ct: Array) -> tuple[Any, Array, Array]:
        p, xs, forward_stats, probe = res
        adjoints, grads, result = strategy.backward(eqx.combine(p, static), xs, ct, solver, ts)
        stats = jnp.stack([_last_residual(result), result.iterations.astype(xs.dtype)])
        return grads, adjoints[0], jnp.concatenate([forward_stats, stats]).astype(probe.dtype)

    run.defvjp(run_fwd, run_bwd)
    return run(params, x0, strategy.monitor.values)
