"""The PDE-motivated conv fields (Ruthotto & Haber 2020; ode_nets/fields/pde_conv.py), in float64:

- parabolic with N = identity is the gradient flow of E(Y) = sum log cosh(K Y + b): F = -grad E, and E does not
  increase along a fine-step solve;
- hyperbolic with Verlet is the leapfrog scheme Y_{j+1} - 2 Y_j + Y_{j-1} = -h^2 K^T sigma(K Y_j + b); it reconstructs
  its inputs from its outputs to round-off, and its memory-free gradient (`Reversible`) equals autodiff through the
  stored solve to 1e-10;
- hamiltonian_conv with linear sigma conserves H to O(h^2) (Stoermer-Verlet: halving h divides the error by ~4);
- multi-stage networks of every field build from a config and take a finite training step; reversible = stored.
"""

from __future__ import annotations

from pathlib import Path

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import config, net_from_config, relative_error, trainable_leaves
from ode_nets import (DiscretizeThenOptimize, HamiltonianConvField, HyperbolicField, LayerGrid, ParabolicField,
                      ParamInit, Reversible, Verlet, solve)
from ode_nets.build import build_run, fit_run, load_run, prepare_folder
from ode_nets.config import load_config
from ode_nets.errors import ConfigError
from ode_nets.fields.pde_conv import normalise, split_channels
from ode_nets.losses import cross_entropy
from ode_nets.models import count_parameters
from ode_nets.multistage import average_pool
from ode_nets.plotting import plot_run
from ode_nets.solvers.verlet import half_kick, reconstruct_initial_state, reversible_final_state

SHAPE = (2, 6, 6)  # batch of 2 is added below; C = 2 (parabolic) or (Y, Z) = 2 + 2 channels


def random_state(key, channels: int) -> jax.Array:
    return jax.random.normal(jax.random.PRNGKey(key), (2, channels, *SHAPE[1:]))


def trajectory(field, x0, layers: int, horizon: float = 1.0, solver=None, steps_per_layer: int = 1):
    grid = LayerGrid(horizon, layers)
    sol = solve(field, x0, solver=solver or diffrax.Euler(), grid=grid, saveat=diffrax.SaveAt(ts=grid.times()))
    return sol.ys


def test_parabolic_is_a_gradient_flow(x64):
    field = ParabolicField.init((3, *SHAPE[1:]), ParamInit(layers=1, time_dependent=False, init="normal", scale=0.4),
                                jax.random.PRNGKey(0), conv_impl="im2col")
    x0 = random_state(1, 3)
    t = jnp.zeros(())
    grad_e = jax.grad(lambda x: jnp.sum(field.energy(t, x)))(x0)
    assert relative_error(field(t, x0), -grad_e) < 1e-12  # F = -grad E (K^T is the adjoint of K)
    ys = trajectory(field, x0, layers=200, horizon=2.0)
    energies = np.asarray(jax.vmap(lambda x: field.energy(t, x))(ys))
    assert np.all(np.diff(energies, axis=0) <= 1e-12)  # E(Y(t)) never increases, each example
    assert np.all(energies[-1] < 0.9 * energies[0])  # and really decreases
    # E is convex (log cosh of an affine map), so the flow is non-expansive: two solutions never move apart (M <= 1)
    distance = np.linalg.norm(np.asarray(ys[:, 0] - ys[:, 1]).reshape(len(ys), -1), axis=1)
    assert np.all(np.diff(distance) <= 1e-12)


def test_normalisations():
    u = random_state(2, 3) * 5 + 3
    assert np.allclose(jnp.mean(normalise(u, "instance"), (-2, -1)), 0, atol=1e-5)
    assert np.allclose(jnp.var(normalise(u, "layer"), (-3, -2, -1)), 1, atol=1e-3)
    assert normalise(u, "none") is u
    with pytest.raises(ValueError, match="model.norm"):
        ParabolicField.init((2, 4, 4), ParamInit(layers=2), jax.random.PRNGKey(0), norm="batch")


def hyperbolic(layers: int = 12, scale: float = 0.5, activation: str = "tanh") -> HyperbolicField:
    return HyperbolicField.init((4, *SHAPE[1:]), ParamInit(layers=layers, init="normal", scale=scale),
                                jax.random.PRNGKey(3), activation=activation, conv_impl="im2col")


def test_hyperbolic_verlet_is_leapfrog(x64):
    field, layers = hyperbolic(), 12
    h = 1.0 / layers
    y = split_channels(trajectory(field, random_state(4, 4), layers, solver=Verlet()))[0]
    ts = jnp.asarray(LayerGrid(1.0, layers).times()[1:-1])
    v_dot = jax.vmap(lambda t, yj: split_channels(field(t, jnp.concatenate([yj, jnp.zeros_like(yj)], -3)))[1])(ts, y[1:-1])
    assert relative_error(y[2:] - 2 * y[1:-1] + y[:-2], h * h * v_dot) < 1e-12


def test_hyperbolic_reconstructs_inputs(x64):
    field, layers = hyperbolic(), 12
    ts = LayerGrid(1.0, layers).times()
    x0 = random_state(5, 4)
    x_final = reversible_final_state(field, x0, ts)
    stored = solve(field, x0, solver=Verlet(), grid=LayerGrid(1.0, layers)).ys[-1]
    assert relative_error(x_final, stored) < 1e-13  # the diffrax Verlet solve and the scan agree
    assert float(jnp.max(jnp.abs(reconstruct_initial_state(field, x_final, ts) - x0))) < 1e-12
    assert float(jnp.max(jnp.abs(x_final - x0))) > 0.1  # the network did move the state


def test_hyperbolic_memory_free_gradient(x64):
    field, layers = hyperbolic(), 12
    x0, weights = random_state(6, 4), random_state(7, 4)

    def loss(f, x, strategy):
        y = solve(f, x, solver=Verlet(), grid=LayerGrid(1.0, layers), strategy=strategy).ys[-1]
        return jnp.sum(jnp.sin(y) * weights)

    grad = lambda strategy: jax.grad(loss, argnums=(0, 1))(field, x0, strategy)  # noqa: E731
    (f_rev, x_rev), (f_dto, x_dto) = grad(Reversible()), grad(DiscretizeThenOptimize())
    for a, b in zip(trainable_leaves(f_rev), trainable_leaves(f_dto)):
        assert relative_error(a, b) < 1e-10
    assert relative_error(x_rev, x_dto) < 1e-10


def hamiltonian_energy_error(layers: int) -> float:
    """max_j |H(Y_j, Z_j) - H(Y_0, Z_0)| / |H_0| of Stoermer-Verlet on [0, 2] with linear sigma, Z_j synchronised."""
    field = HamiltonianConvField.init((4, *SHAPE[1:]), ParamInit(layers=1, time_dependent=False, init="normal",
                                                                 scale=0.4), jax.random.PRNGKey(8),
                                      activation="identity", conv_impl="im2col")
    h, t = 2.0 / layers, jnp.zeros(())
    x0 = random_state(9, 4)
    xs = trajectory(field, half_kick(field, t, -h / 2, x0, axis=-3), layers, horizon=2.0, solver=Verlet())
    synced = half_kick(field, t, h / 2, xs, axis=-3)  # (Y_j, Z_{j-1/2}) -> (Y_j, Z_j), every saved j at once
    energies = jax.vmap(lambda x: field.energy(t, x))(synced)
    return float(jnp.max(jnp.abs(energies - field.energy(t, x0))) / jnp.max(jnp.abs(field.energy(t, x0))))


def test_hamiltonian_conv_conserves_energy_second_order(x64):
    errors = [hamiltonian_energy_error(layers) for layers in (20, 40, 80)]
    assert errors[0] < 0.05
    for coarse, fine in zip(errors, errors[1:]):
        assert 3.0 < coarse / fine < 5.0  # O(h^2): halving h divides the error by ~4


def test_hamiltonian_conv_energy_is_conserved_by_the_flow(x64):
    """dH/dt = <grad H, F> = 0 for any sigma (tanh here), at a random state."""
    field = HamiltonianConvField.init((4, *SHAPE[1:]), ParamInit(layers=1, time_dependent=False, init="normal",
                                                                 scale=0.4), jax.random.PRNGKey(10))
    x, t = random_state(11, 4), jnp.zeros(())
    grad_h = jax.grad(lambda v: jnp.sum(field.energy(t, v)))(x)
    assert abs(float(jnp.sum(grad_h * field(t, x)))) < 1e-12 * float(jnp.sum(grad_h ** 2))


def test_average_pool():
    x = jnp.arange(16.0).reshape(1, 1, 4, 4)
    assert np.allclose(average_pool(x, 2)[0, 0], [[2.5, 4.5], [10.5, 12.5]])


VERLET = {"solver": {"method": "verlet"}}
FIELD_SETUPS = {"parabolic": {}, "resnet_conv": {}, "hyperbolic": VERLET, "hamiltonian_conv": VERLET}


def multistage_config(field: str, stages: list[int], **sections):
    model = {"field": field, "stages": stages, "layers": 2, "init": "normal", "init_scale": 0.1,
             "readout": "linear_softmax", "conv_impl": "im2col", **sections.pop("model", {})}
    return config(model=model, **sections)


@pytest.mark.parametrize("field", list(FIELD_SETUPS))
def test_multistage_parameters(field):
    net = net_from_config(multistage_config(field, [4, 6], **FIELD_SETUPS[field]), (1, 8, 8), 3)
    per_layer = {"parabolic": 9 * (16 + 36) + 4 + 6, "resnet_conv": 18 * (16 + 36) + 4 + 6,
                 "hyperbolic": 9 * (4 + 9) + 2 + 3, "hamiltonian_conv": 9 * (4 + 9) + 2 + 3}[field]
    connectives = (1 * 4 + 4) + (4 * 6 + 6)
    assert count_parameters(net) == 2 * per_layer + connectives + (6 * 4 * 4 * 3 + 3)


def test_multistage_trains_one_step():
    net = net_from_config(multistage_config("parabolic", [2, 4]), (1, 4, 4), 3)
    x = jax.random.uniform(jax.random.PRNGKey(0), (5, 1, 4, 4))
    y = jnp.array([0, 1, 2, 0, 1])
    assert [o.shape for o in net.stage_outputs(x)] == [(5, 2, 4, 4), (5, 4, 2, 2)]
    loss, grads = eqx.filter_value_and_grad(lambda m: cross_entropy(m(x), y))(net)
    assert np.isfinite(float(loss)) and all(np.all(np.isfinite(g)) for g in trainable_leaves(grads))
    assert all(float(jnp.sum(g ** 2)) > 0 for g in trainable_leaves(grads))  # every stage and connective is reached


def test_multistage_reversible_gradient_equals_stored(x64):
    base = multistage_config("hyperbolic", [2, 4], **VERLET)
    rev = multistage_config("hyperbolic", [2, 4], gradient={"strategy": "reversible"}, **VERLET)
    x = jax.random.uniform(jax.random.PRNGKey(0), (3, 1, 4, 4), dtype=jnp.float64)
    y = jnp.array([0, 1, 2])
    grads = [eqx.filter_grad(lambda m: cross_entropy(m(x), y))(net_from_config(c, (1, 4, 4), 3)) for c in (rev, base)]
    assert relative_error(trainable_leaves(grads[0]), trainable_leaves(grads[1])) < 1e-10


def test_multistage_config_errors():
    with pytest.raises(ConfigError, match="model.stages"):
        net_from_config(multistage_config("parabolic", [4, 6, 8, 8]), (1, 6, 6), 3)  # 6 -> 3 -> not divisible
    with pytest.raises(ConfigError, match="model.augment"):
        net_from_config(multistage_config("hyperbolic", [3], **VERLET), (1, 8, 8), 3)
    with pytest.raises(ConfigError, match="model.stages"):
        config(model={"stages": [4, 0]})


def test_digits_config_trains_saves_and_reloads(tmp_path):
    """configs/digits_hamiltonian_conv.yaml, shrunk, through build_run -> fit -> load_run and the figures."""
    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "configs" / "digits_hamiltonian_conv.yaml",
                      ["model.stages=[4, 8]", "model.layers=2", "train.epochs=1", "train.max_steps=2",
                       "data.n_train=128", "data.n_test=64", "train.eval_batch_size=64"])
    prepare_folder(tmp_path / "run", cfg, overwrite=False, resume=False)
    results = fit_run(build_run(cfg, tmp_path / "run"), progress=False)
    _, data, model = load_run(tmp_path / "run")
    assert data.input_shape == (1, 8, 8) and results["parameters"] == count_parameters(model)
    assert np.isclose(float(jnp.mean(jnp.argmax(model(jnp.asarray(data.test.x)), -1) == data.test.y)),
                      results["test_acc"])
    assert [p.name for p in plot_run(tmp_path / "run")] == ["curves.png"]
