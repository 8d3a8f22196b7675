"""Layer-parallel training (MGRIT, Ruthotto slides "Layer-Parallel Training"; Günther et al. 2020): the forward solve
reproduces the serial network exactly after at most N/m iterations, converges in a few on a contractive field, the
`layer_parallel` gradient equals discretize-then-optimize at convergence, and sharding over 4 host devices changes
nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ode_nets as on
from helpers import config, net_from_config, relative_error, trainable_leaves
from ode_nets.errors import ConfigError
from ode_nets.solvers.mgrit import MGRIT
from ode_nets.solvers.stepping import Discretisation, FixedSteps
from ode_nets.training.step import train_step


def _setup(field_cls, layers=32, horizon=2.0, width=3, scale=0.5, solver=diffrax.Euler(), **options):
    field = field_cls.init((width,), on.ParamInit(layers=layers, horizon=horizon, init="normal", scale=scale),
                           jax.random.PRNGKey(0), **options)
    x0 = jax.random.normal(jax.random.PRNGKey(1), (5, width))
    disc = Discretisation(solver, on.LayerGrid(horizon, layers), FixedSteps())
    return field, x0, disc


def _serial(field, x0, disc):
    return on.solve(field, x0, solver=disc.solver, grid=disc.grid, saveat=diffrax.SaveAt(ts=disc.step_ts())).ys


def _forward(strategy, field, x0, disc):
    ts = jnp.asarray(disc.step_ts())
    return jax.jit(lambda f, x: strategy.forward(f, x, disc.solver, ts))(field, x0)


@pytest.mark.parametrize("relaxation, levels, iterations", [("FCF", 2, 4), ("F", 2, 8), ("F", 3, 8)])
def test_exact_after_at_most_n_over_m_iterations(x64, relaxation, levels, iterations):
    """N = 32, m = 4: F-relaxation is exact after N/m = 8 iterations, FCF after N/(2m) = 4 (two-level and 3-level);
    one iteration fewer is not."""
    field, x0, disc = _setup(on.ResNetField)
    serial = _serial(field, x0, disc)
    exact = _forward(on.LayerParallel(iterations=iterations, relaxation=relaxation, levels=levels), field, x0, disc)
    assert float(jnp.max(jnp.abs(exact.states - serial))) < 1e-12
    assert int(exact.iterations) == iterations
    short = _forward(on.LayerParallel(iterations=iterations - 1, relaxation=relaxation, levels=levels), field, x0, disc)
    assert float(jnp.max(jnp.abs(short.states - serial))) > 1e-11


def test_converges_in_few_iterations_on_contractive_field(x64):
    """dx/dt = -x + small perturbations (a dissipative cubic field), N = 256: FCF two-level reaches 1e-10 in a few
    iterations (far below the N/(2m) = 32 of exactness), the residual falls by > 10x per iteration, the states
    match serial."""
    field, x0, disc = _setup(on.CubicField, layers=256, horizon=1.0, scale=0.0005, gamma=0.01)
    field = eqx.tree_at(lambda f: f.w.values, field, field.w.values - disc.grid.dt * jnp.eye(3))  # w~ = dt (-I + ..)
    result = _forward(on.LayerParallel(iterations=20, tol=1e-10, levels=2), field, x0, disc)
    k = int(result.iterations)
    hist = np.asarray(result.residuals)
    assert k <= 8 and hist[k - 1] <= 1e-10 and np.all(np.isnan(hist[k:]))
    assert np.all(hist[1:k] < 0.1 * hist[:k - 1])
    assert float(jnp.max(jnp.abs(result.states - _serial(field, x0, disc)))) < 1e-9


def _grad(strategy, field, x0, disc):
    def loss(fx):
        y = on.solve(fx[0], fx[1], solver=disc.solver, grid=disc.grid, strategy=strategy).ys[-1]
        return jnp.sum(jnp.sin(y) * jnp.arange(1, y.shape[-1] + 1))

    return eqx.filter_jit(eqx.filter_grad(loss))((field, x0))


@pytest.mark.parametrize("name", ["cubic", "resnet", "antisymmetric", "hamiltonian"])
def test_gradient_equals_discretize_then_optimize(x64, name):
    """At convergence (FCF, 3 levels, tol 1e-14), the MGRIT adjoint gives dL/dq and dL/dx0 of the serial network
    to 1e-10: Euler for the cubic (learnable gamma~), ResNet and antisymmetric fields, Verlet for the Hamiltonian."""
    setups = {"cubic": dict(field_cls=on.CubicField, scale=0.1, gamma=0.05), "resnet": dict(field_cls=on.ResNetField),
              "antisymmetric": dict(field_cls=on.AntisymmetricField, gamma=0.1),
              "hamiltonian": dict(field_cls=on.HamiltonianField, width=4, solver=on.Verlet())}
    field, x0, disc = _setup(**setups[name], layers=16)
    strategy = on.LayerParallel(iterations=8, tol=1e-14, levels=3, coarsening=2)  # N = 16: exact after 4
    g_lp = _grad(strategy, field, x0, disc)
    g_ref = _grad(on.DiscretizeThenOptimize(), field, x0, disc)
    assert len(trainable_leaves(g_ref)) >= 3  # parameters and x0
    for a, b in zip(trainable_leaves(g_lp), trainable_leaves(g_ref)):
        assert relative_error(a, b) < 1e-10


def test_inexact_gradient_and_training_step_logs_residuals():
    """With 1 iteration the gradient differs from serial (inexact MGRIT); the training step logs both solves'
    residuals and iteration counts, and the Monitor is neither a parameter nor updated."""
    cfg = config(model={"field": "resnet", "layers": 16, "horizon": 4.0, "augment": 2, "init": "normal",
                        "init_scale": 0.5, "readout": "linear_softmax"},
                 gradient={"strategy": "layer_parallel", "mgrit_iterations": 1, "mgrit_relaxation": "F"})
    net = net_from_config(cfg)
    serial = eqx.tree_at(lambda n: n.strategy, net, on.DiscretizeThenOptimize())
    assert on.count_parameters(net) == on.count_parameters(serial)
    x, y = jax.random.normal(jax.random.PRNGKey(2), (8, 2)), jnp.arange(8) % 2
    opt = optax.adam(1e-2)
    new, _, metrics = train_step(opt, net, opt.init(eqx.filter(net, eqx.is_inexact_array)), x, y, jnp.ones(8))
    assert float(metrics["mgrit_forward_iterations"]) == 1 and float(metrics["mgrit_adjoint_iterations"]) == 1
    assert float(metrics["mgrit_forward_residual"]) > 0 and float(metrics["mgrit_adjoint_residual"]) > 0
    assert np.all(np.asarray(new.strategy.monitor.values) == 0)
    _, _, ref = train_step(opt, serial, opt.init(eqx.filter(serial, eqx.is_inexact_array)), x, y, jnp.ones(8))
    assert abs(float(metrics["grad_norm"]) - float(ref["grad_norm"])) > 1e-6


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="mgrit_relaxation"):
        config(gradient={"mgrit_relaxation": "C"})
    with pytest.raises(ConfigError, match="mgrit_coarsening"):
        config(gradient={"mgrit_coarsening": 1})
    with pytest.raises(ConfigError, match="not divisible"):
        MGRIT(coarsening=4, levels=3).check_steps(20)
    field, x0, disc = _setup(on.ResNetField, layers=8, solver=on.RK4())
    with pytest.raises(ConfigError, match="one-step fixed-step"):
        on.solve(field, x0, solver=disc.solver, grid=disc.grid, strategy=on.LayerParallel())


SCRIPT = textwrap.dedent("""
    import json, sys
    import diffrax, equinox as eqx, jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    import ode_nets as on
    assert jax.device_count() == 4, jax.devices()
    field = on.ResNetField.init((3,), on.ParamInit(layers=64, horizon=2.0, init="normal", scale=0.5),
                                jax.random.PRNGKey(0))
    x0 = jax.random.normal(jax.random.PRNGKey(1), (8, 3))
    grid = on.LayerGrid(2.0, 64)

    def run(**devices):
        strategy = on.LayerParallel(iterations=2, relaxation="FCF", **devices)
        def loss(f, x):
            return jnp.sum(jnp.tanh(on.solve(f, x, solver=diffrax.Euler(), grid=grid, strategy=strategy).ys[-1]))
        value, grads = eqx.filter_jit(eqx.filter_value_and_grad(loss))(field, x0)
        leaves = [np.asarray(g).ravel() for g in jax.tree_util.tree_leaves(eqx.filter(grads, eqx.is_inexact_array))]
        states = jax.jit(lambda f, x: strategy.forward(f, x, diffrax.Euler(), jnp.asarray(grid.times())).states)(
            field, x0)
        return float(value), np.concatenate(leaves), np.asarray(states), len(states.sharding.device_set)

    one = run()
    out = {}
    for name, devices in {"layers4": dict(layer_devices=4), "data2xlayers2": dict(layer_devices=2, data_devices=2)}.items():
        v, g, s, n = run(**devices)
        out[name] = {"value": abs(v - one[0]), "grad": float(np.max(np.abs(g - one[1]))),
                     "states": float(np.max(np.abs(s - one[2]))), "devices": n}
    from pathlib import Path
    from ode_nets.build import build_run, fit_run, prepare_folder
    from ode_nets.config import from_dict
    losses = {}
    for data, layers in ((1, 1), (2, 2)):  # the training loop on a 2 x 2 (data x layers) mesh
        config = from_dict({"model": {"field": "resnet", "layers": 16, "augment": 2, "init": "normal",
                                      "init_scale": 0.5, "readout": "linear_softmax"},
                            "gradient": {"strategy": "layer_parallel", "mgrit_iterations": 1},
                            "optim": {"name": "adam", "learning_rate": 0.01}, "data": {"n_train": 32, "n_test": 8},
                            "train": {"batch_size": 16, "epochs": 1, "log_every": 1, "devices": data,
                                      "layer_devices": layers}})
        folder = Path(sys.argv[1]) / f"d{data}x{layers}"
        prepare_folder(folder, config, overwrite=True, resume=False)
        fit_run(build_run(config, folder), progress=False)
        records = [json.loads(l) for l in (folder / "metrics.jsonl").read_text().splitlines()]
        losses[layers] = [(r["loss"], r["mgrit_forward_residual"]) for r in records if r["kind"] == "train"]
    out["fit"] = {"one": losses[1], "mesh": losses[2]}
    print("RESULT " + json.dumps(out))
""")


def test_sharded_over_four_host_devices_equals_unsharded(tmp_path):
    """Layer blocks over 4 host devices, and a 2 x 2 (data x layers) mesh: same loss, gradient and states; the
    training loop on the 2 x 2 mesh logs the same losses and MGRIT residuals as on one device."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))[len("RESULT "):])
    fit = out.pop("fit")
    assert len(fit["one"]) == len(fit["mesh"]) == 2
    np.testing.assert_allclose(fit["mesh"], fit["one"], rtol=1e-5, atol=1e-6)
    for name, r in out.items():
        assert r["devices"] == 4, (name, r)
        assert r["value"] < 1e-12 and r["grad"] < 1e-12 and r["states"] < 1e-12, (name, r)
