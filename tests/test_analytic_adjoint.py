"""The paper's hand-derived backward pass (eqs 62-71, 76-78, 112) against autodiff, in float64."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import relative_errors, small_net, trainable_leaves
from ode_nets.fields import CubicField, LayerGrid, LayerParams, ResNetField, ParamInit
from ode_nets.fields.time_params import Constant
from ode_nets.losses import cross_entropy
from ode_nets.solve import solve
from ode_nets.solvers import Discretisation, FixedSteps
from ode_nets.strategies import AnalyticAdjoint, adjoint_on_grid
from ode_nets.training import Objective
from ode_nets.training.counting import backward_counts

CASES = {  # field -> (input shape, classes, readout, augment)
    "cubic": ((2,), 2, "sigmoid_last", 1),
    "conv_cubic": ((1, 4, 4), 3, "max_pool_softmax", 2),
}
EULER = {"method": "euler"}
TSIT5 = {"method": "tsit5", "rtol": 1e-10, "atol": 1e-12}


def gradient_leaves(field: str, strategy: str, solver: dict, time_dependent: bool = True):
    shape, classes, readout, augment = CASES[field]
    net = small_net(shape, classes, model={"field": field, "layers": 10, "augment": augment, "gamma": 0.1,
                                           "init": "normal", "init_scale": 0.1, "readout": readout,
                                           "time_dependent": time_dependent},
                    solver=solver, gradient={"strategy": strategy})
    x = jax.random.normal(jax.random.PRNGKey(1), (4, *shape))
    y = jnp.array([0, 1, 1, 0]) % classes
    grads = eqx.filter_grad(lambda n: cross_entropy(n(x), y))(net)
    leaves = trainable_leaves(grads)
    assert len(leaves) == 3  # weight, bias, gamma
    return leaves


@pytest.mark.parametrize("field", ["cubic", "conv_cubic"])
@pytest.mark.parametrize("solver,tol", [(EULER, 1e-10), (TSIT5, 1e-5)], ids=["euler", "tsit5"])
def test_analytic_adjoint_matches_autodiff(x64, field, solver, tol):
    """w, b and gamma gradients agree with discretize-then-optimize at the same discretisation (L = 10)."""
    reference = gradient_leaves(field, "discretize_then_optimize", solver)
    analytic = gradient_leaves(field, "analytic_adjoint", solver)
    assert max(relative_errors(analytic, reference)) < tol


def test_time_independent_and_substeps(x64):
    """Constant parameters sum their layers' integrals (eq 15); Euler with 3 steps per layer stays exact."""
    solver = {"method": "euler", "steps_per_layer": 3}
    reference = gradient_leaves("cubic", "discretize_then_optimize", solver, time_dependent=False)
    analytic = gradient_leaves("cubic", "analytic_adjoint", solver, time_dependent=False)
    assert max(relative_errors(analytic, reference)) < 1e-10


def test_adjoint_equation_is_the_transposed_jacobian(x64):
    """eq 62 right side = a dF/dx with dF/dx from eq 61 (CubicField.jacobian); eq 65/66 densities = vjp in q."""
    k = jax.random.split(jax.random.PRNGKey(3), 4)
    w, b, x, a = (jax.random.normal(k[0], (3, 3)), jax.random.normal(k[1], (3,)), jax.random.normal(k[2], (3,)),
                  jax.random.normal(k[3], (3,)))
    field = CubicField(Constant(w), Constant(b), jnp.asarray(0.3), dt=0.1)
    p = LayerParams(w, b, jnp.asarray(0.3))
    assert jnp.allclose(field.vjp_state(p, x, a), a @ field.jacobian(0.0, x), atol=1e-12)
    _, vjp = jax.vjp(lambda f: f(0.0, x), field)
    (g,) = vjp(a)
    dens = field.vjp_params(x, a)
    assert jnp.allclose(dens.weight, g.w.value) and jnp.allclose(dens.bias, g.b.value)
    assert jnp.allclose(dens.gamma, g.gamma)


def test_rejects_fields_without_hand_derived_equations():
    field = ResNetField.init((2,), ParamInit(layers=3), jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="analytic_adjoint"):
        solve(field, jnp.zeros((1, 2)), solver=diffrax.Euler(), grid=LayerGrid(1.0, 3), strategy=AnalyticAdjoint())


def backward_counts_of(solver: dict, gradient: dict) -> tuple[int, int, int]:
    """(nfe_backward, accepted, rejected) of the paper's backward pass on a 5-layer cubic net, as training logs them."""
    net = small_net((2,), 2, model={"field": "cubic", "layers": 5, "augment": 1, "gamma": 0.1, "init": "normal",
                                    "init_scale": 0.1, "readout": "sigmoid_last"},
                    solver=solver, gradient={"strategy": "analytic_adjoint", **gradient})
    x, y = jax.random.normal(jax.random.PRNGKey(1), (4, 2)), jnp.array([0, 1, 1, 0])
    counts = backward_counts(net, x, y, jnp.ones(4), Objective())
    return int(counts["nfe_backward"]), int(counts["steps_accepted_backward"]), int(counts["steps_rejected_backward"])


def test_backward_pass_counts(x64):
    """nfe_backward of analytic_adjoint: Euler, one a dF/dx and a dF/dq per step (eq 112): L x steps; RK4 backward
    on the forward grid: 4 per step; adaptive Tsit5 (FSAL, restarted in every layer): 1 + 6 per attempted step in
    each of the L layer solves, more steps at a tighter backward tolerance."""
    assert backward_counts_of({"method": "euler", "steps_per_layer": 3}, {}) == (15, 15, 0)
    assert backward_counts_of({"method": "euler", "steps_per_layer": 2}, {"adjoint_method": "rk4"}) == (40, 10, 0)
    loose, _, _ = backward_counts_of(TSIT5, {"adjoint_rtol": 1e-3, "adjoint_atol": 1e-6})
    nfe, accepted, rejected = backward_counts_of(TSIT5, {})
    assert accepted >= 5 and 5 + 6 * (accepted + rejected) <= nfe <= 5 + 6 * (accepted + rejected) + rejected
    assert nfe > loose


@pytest.mark.parametrize("steps_per_layer", [1, 3])
def test_stored_states_are_the_euler_recurrence(x64, steps_per_layer):
    """The states the backward pass of eq 112 reads are those of eq 109 itself (to rounding: the solve runs
    compiled), one per step of the grid and the initial one, at the grid's times."""
    k = jax.random.split(jax.random.PRNGKey(4), 3)
    field = CubicField(Constant(0.3 * jax.random.normal(k[0], (3, 3))), Constant(jax.random.normal(k[1], (3,))),
                       jnp.asarray(0.2), dt=0.25)
    discretisation = Discretisation(diffrax.Euler(), LayerGrid(1.0, 4), FixedSteps(steps_per_layer))
    x0 = jax.random.normal(k[2], (5, 3))
    ts, xs, adjoints = adjoint_on_grid(field, x0, lambda x: jnp.sum(x ** 2), discretisation)
    h = 0.25 / steps_per_layer
    want = [x0]
    for t in discretisation.step_ts()[:-1]:
        want.append(want[-1] + h * field(jnp.asarray(t), want[-1]))
    assert xs.shape == (4 * steps_per_layer + 1, 5, 3) and adjoints.shape == xs.shape
    np.testing.assert_array_equal(ts, discretisation.step_ts())
    np.testing.assert_allclose(xs, jnp.stack(want), rtol=1e-14, atol=1e-15)
