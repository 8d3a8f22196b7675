"""Newton–PCG (Ruthotto slides' optimiser, `optim.name: newton_pcg`): one step with enough CG iterations solves a
linear least-squares problem exactly; in training it alternates network and classifier blocks and lowers the loss."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ode_nets as on
from helpers import config, net_from_config
from ode_nets.build import build_optimizer, build_run
from ode_nets.errors import ConfigError
from ode_nets.training.newton_pcg import gauss_newton_hvp, newton_pcg, pcg
from ode_nets.training.step import train_step


def _least_squares():
    a = jax.random.normal(jax.random.PRNGKey(0), (20, 5))
    b = jax.random.normal(jax.random.PRNGKey(1), (20,))
    output_fn = lambda p: a @ p["w"]  # noqa: E731
    output_loss = lambda z: 0.5 * jnp.sum((z - b) ** 2)  # noqa: E731
    return a, b, output_fn, output_loss


def test_one_step_solves_linear_least_squares(x64):
    """min 0.5 ||A w - b||^2: Gauss–Newton is the exact Hessian A^T A, so one step with 5 CG iterations (n = 5)
    and the full step accepted by the line search lands on the least-squares solution; 2 iterations do not."""
    a, b, output_fn, output_loss = _least_squares()
    params = {"w": jnp.zeros(5)}
    value_fn = lambda p: output_loss(output_fn(p))  # noqa: E731
    exact = np.linalg.lstsq(np.asarray(a), np.asarray(b), rcond=None)[0]
    for iterations, close in ((5, True), (2, False)):
        opt = newton_pcg(cg_iterations=iterations, weight_decay=0.0, blocks=1)
        grads = jax.grad(value_fn)(params)
        updates, state = opt.update(grads, opt.init(params), params, value_fn=value_fn, output_fn=output_fn,
                                    output_loss=output_loss)
        error = np.max(np.abs(np.asarray(params["w"] + updates["w"]) - exact))
        assert (error < 1e-10) == close, (iterations, error)
    assert float(state.step_size) == 1.0


def test_gauss_newton_product_and_pcg(x64):
    """The matrix-free product equals A^T A v + damping v; PCG solves (A^T A) x = r to 1e-10 in n iterations."""
    a, _, output_fn, output_loss = _least_squares()
    params = {"w": jnp.ones(5)}
    hvp = gauss_newton_hvp(output_fn, output_loss, params, damping=0.1)
    v = {"w": jnp.arange(5.0)}
    np.testing.assert_allclose(hvp(v)["w"], a.T @ a @ v["w"] + 0.1 * v["w"], rtol=1e-12)
    x, k = pcg(hvp, v, {"w": jnp.ones(5)}, iterations=5)
    np.testing.assert_allclose(x["w"], np.linalg.solve(a.T @ a + 0.1 * np.eye(5), v["w"]), rtol=1e-10)


def test_training_steps_alternate_blocks_and_lower_the_loss():
    """gradient.strategy direct (forward-mode products): step 1 moves only the network (field), step 2 only the
    classifier; the batch loss falls; CG iterations and products are logged."""
    cfg = config(model={"field": "resnet", "layers": 4, "augment": 2, "init": "normal", "init_scale": 0.3,
                        "readout": "linear_softmax"}, gradient={"strategy": "direct_adjoint"},
                 optim={"name": "newton_pcg", "learning_rate": 1.0, "weight_decay": 1e-3, "cg_iterations": 5})
    net = net_from_config(cfg)
    opt = build_optimizer(cfg.optim, 10)
    x = jax.random.normal(jax.random.PRNGKey(2), (16, 2))
    y = (x[:, 0] * x[:, 1] > 0).astype(jnp.int32)
    state = opt.init(eqx.filter(net, eqx.is_inexact_array))
    losses, models = [], [net]
    for _ in range(2):
        model, state, metrics = train_step(opt, models[-1], state, x, y, jnp.ones(16))
        models.append(model)
        losses.append(float(metrics["loss"]))
        assert 1 <= float(metrics["newton_cg_iterations"]) <= 5 and float(metrics["newton_step_size"]) > 0
    moved = lambda a, b: not np.allclose(np.asarray(a), np.asarray(b))  # noqa: E731
    assert moved(models[1].field.K1.values, net.field.K1.values) and not moved(models[1].readout.linear.weight,
                                                                               net.readout.linear.weight)
    assert moved(models[2].readout.linear.weight, models[1].readout.linear.weight)
    assert not moved(models[2].field.K1.values, models[1].field.K1.values)
    _, _, after = train_step(opt, models[-1], state, x, y, jnp.ones(16))
    assert float(after["loss"]) < losses[0]


def test_newton_pcg_needs_forward_mode(tmp_path):
    cfg = config(optim={"name": "newton_pcg"}, data={"n_train": 40, "n_test": 10}, train={"batch_size": 8})
    with pytest.raises(ConfigError, match="gradient.strategy: direct"):
        build_run(cfg, tmp_path)
