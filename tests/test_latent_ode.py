"""Latent ODEs on irregular time series (Chen et al. 2018 §5; Rubanova et al. 2019): vmapped solves at per-series
time grids equal solving each series alone; a short run lowers the negative ELBO; the data are seeded and
irregular; the GRU-Δt baseline's prediction at a time does not depend on which other times are queried; a config
trains end to end."""

from __future__ import annotations

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ode_nets.continuous.data import TIME_SERIES, SeriesSpec, series_data
from ode_nets.continuous.experiments import load_continuous, run_config
from ode_nets.continuous.latent_ode import (GRUDeltaT, LatentODE, MaskedPredictionMSE, NegativeELBO,
                                            kl_standard_normal, solve_at)
from ode_nets.continuous.training import continuous_step
from ode_nets.errors import ConfigError

SPEC = SeriesSpec(n_obs=12, n_int=4, n_ext=5)


def test_vmapped_per_series_time_grids_match_solving_each_series_alone():
    model = LatentODE.init(jax.random.PRNGKey(0), latent_dim=3, field_width=8)
    z0 = jax.random.normal(jax.random.PRNGKey(1), (4, 3))
    ts = jnp.sort(jax.random.uniform(jax.random.PRNGKey(2), (4, 7), maxval=3.0), axis=1)
    together = model.latent_paths(z0, ts)
    for i in range(4):
        alone = solve_at(model.field, z0[i], ts[i], model.solver, model.stepping)
        np.testing.assert_allclose(together[i], alone, rtol=1e-5, atol=1e-6)
    assert not np.allclose(ts[0], ts[1])  # the grids really differ


@pytest.mark.parametrize("name", list(TIME_SERIES))
def test_series_are_seeded_irregular_and_split_by_window(name):
    spec = SeriesSpec(n_obs=12, n_int=4, n_ext=5, missing=0.3)
    train, _ = series_data(name, jax.random.PRNGKey(0), 8, 4, spec)
    again, _ = series_data(name, jax.random.PRNGKey(0), 8, 4, spec)
    np.testing.assert_array_equal(train.obs_x, again.obs_x)
    assert (np.diff(train.obs_t, axis=1) >= 0).all() and not np.allclose(train.obs_t[0], train.obs_t[1])
    assert (train.int_t <= spec.t_obs).all() and (train.ext_t > spec.t_obs).all() and (train.ext_t <= spec.t_end).all()
    assert 0.5 < train.obs_m.mean() < 0.9 and (train.obs_x[train.obs_m == 0] == 0).all()
    noise = np.std(train.int_x - train.int_clean)
    assert 0.5 * spec.noise < noise < 1.5 * spec.noise


def test_kl_closed_form():
    mean, log_std = jnp.array([[0.3, -1.0]]), jnp.array([[0.2, -0.5]])
    var = jnp.exp(2 * log_std)
    expected = 0.5 * jnp.sum(var + mean**2 - 1 - jnp.log(var))
    np.testing.assert_allclose(kl_standard_normal(mean, log_std), [expected], rtol=1e-6)


def train_steps(model, objective, data, steps, lr=1e-2):
    optimizer = optax.adam(lr)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    for step in range(steps):
        model, opt_state, _ = continuous_step(objective, optimizer, model, opt_state, data, jax.random.PRNGKey(step))
    return model


def test_a_short_latent_ode_run_lowers_the_elbo_loss():
    data, _ = series_data("spirals", jax.random.PRNGKey(0), 32, 4, SPEC)
    model = LatentODE.init(jax.random.PRNGKey(1), rec_hidden=8, field_width=8, dec_width=8)
    loss = lambda m: float(NegativeELBO()(m, data, jax.random.PRNGKey(99))[0])  # noqa: E731
    before = loss(model)
    after = loss(train_steps(model, NegativeELBO(), data, 15))
    assert np.isfinite(after) and after < 0.8 * before


def test_baseline_predictions_do_not_depend_on_other_queries():
    """The GRU-Δt state changes only at observations: a query's prediction is the same alone or among others."""
    data, _ = series_data("spirals", jax.random.PRNGKey(0), 3, 2, SPEC)
    model = GRUDeltaT.init(jax.random.PRNGKey(1), hidden=8)
    query = jnp.concatenate([data.int_t, data.ext_t], 1)
    both = model.predict(data.obs_t, data.obs_x, data.obs_m, query)
    alone = model.predict(data.obs_t, data.obs_x, data.obs_m, data.ext_t)
    np.testing.assert_allclose(both[:, SPEC.n_int:], alone, rtol=1e-5, atol=1e-6)
    loss = MaskedPredictionMSE()(model, data, jax.random.PRNGKey(0))[0]
    assert np.isfinite(float(loss))


def test_config_trains_end_to_end(tmp_path):
    results = run_config("configs/spirals_latent_ode.yaml",
                         ["data.n_train=16", "data.n_test=6", "data.series.n_obs=8", "data.series.n_int=3", "data.series.n_ext=3",
                          "train.steps=2", "train.batch_size=8", "model.rec_hidden=4", "model.field_width=4",
                          "model.dec_width=4", "model.baseline_hidden=4"], tmp_path / "run", progress=False)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    for model in ("latent_ode", "baseline"):
        assert np.isfinite(saved[model]["interp_mse"]) and np.isfinite(saved[model]["extrap_mse"])
        assert (tmp_path / "run" / model / "metrics.jsonl").is_file()
    assert (tmp_path / "run" / "figures" / "spirals_latent_ode.png").is_file()
    assert results["latent_ode"]["parameters"] > 0


def test_every_continuous_config_parses_and_bad_keys_are_named():
    for path in ["configs/spirals_latent_ode.yaml", "configs/pendulum_latent_ode.yaml",
                 *[f"configs/cnf_{n}.yaml" for n in ("two_moons", "eight_gaussians", "checkerboard", "rings")]]:
        load_continuous(path)
    with pytest.raises(ConfigError, match="model.widht"):
        load_continuous("configs/cnf_rings.yaml", ["model.widht=3"])
    with pytest.raises(ConfigError, match="adaptive"):
        load_continuous("configs/cnf_rings.yaml", ["solver.method=euler"])
    with pytest.raises(ConfigError, match="task"):
        load_continuous("configs/cnf_rings.yaml", ["task=classify"])
