"""Multilevel prolongation (same continuous parameters on the finer grid) and the toy data sets."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import config, net_from_config
from ode_nets.config import DataConfig, from_dict
from ode_nets.data import load_dataset
from ode_nets.data.toy import ELLIPSE_RINGS, make_ellipses, make_peaks, make_swiss_roll, peaks
from ode_nets.experiments.multilevel import level_curves, plot_regions, prolong_values, prolongate, train_multilevel


def net(field: str, layers: int, method: str = "euler", augment: int = 2, horizon: float = 2.0):
    cfg = config(model={"field": field, "layers": layers, "horizon": horizon, "augment": augment, "init": "normal",
                        "init_scale": 0.5, "readout": "linear_softmax", "width": 3},
                 solver={"method": method})
    return net_from_config(cfg, (2,), 3, seed=layers)


@pytest.mark.parametrize("field, method", [("hamiltonian", "verlet"), ("resnet", "ab3"), ("cubic", "lm2")])
def test_constant_prolongation_keeps_the_vector_field(x64, field, method):
    """Piecewise-constant prolongation to 2n layers gives the same F(t, x) at every t (cubic: eq 110 rescaled)."""
    coarse = net(field, 4, method)
    fine = prolongate(coarse, net(field, 8, method), "constant")
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 4))
    for t in (0.01, 0.9, 1.99):
        np.testing.assert_allclose(fine.field(jnp.asarray(t), x), coarse.field(jnp.asarray(t), x), rtol=1e-12)
    np.testing.assert_allclose(fine.readout.linear.weight, coarse.readout.linear.weight)
    assert fine.grid.layers == 8


def test_prolongated_verlet_net_converges(x64):
    """h -> h/2 with the same continuous parameters: outputs change by O(h) and the change shrinks."""
    coarse = net("hamiltonian", 8, "verlet")
    x = jax.random.normal(jax.random.PRNGKey(2), (5, 2))
    outs = [coarse(x)] + [prolongate(coarse, net("hamiltonian", n, "verlet"))(x) for n in (16, 32)]
    d1, d2 = float(jnp.max(jnp.abs(outs[1] - outs[0]))), float(jnp.max(jnp.abs(outs[2] - outs[1])))
    assert d2 < 0.7 * d1


def test_linear_prolongation_interpolates_midpoints(x64):
    values = jnp.array([[0.0, 1.0], [2.0, -1.0], [4.0, 0.0]])
    fine = prolong_values(values, 2, "linear")
    assert fine.shape == (6, 2)
    np.testing.assert_allclose(fine[:, 0], [0.0, 0.5, 1.5, 2.5, 3.5, 4.0])  # midpoints 1/12, 3/12, ...
    np.testing.assert_allclose(prolong_values(values, 2, "constant")[:, 1], [1, 1, -1, -1, 0, 0])


def test_peaks_labels_are_level_sets():
    x, y = make_peaks(jax.random.PRNGKey(0), 2000)
    assert x.shape == (2000, 2) and np.all(np.abs(x) <= 3)
    assert np.all(np.bincount(y, minlength=5) > 200)  # equal-area level sets
    z = np.asarray(peaks(jnp.asarray(x[:, 0]), jnp.asarray(x[:, 1])))
    order = np.argsort(z)
    assert np.all(np.diff(y[order]) >= 0)  # class is monotone in the peaks value
    np.testing.assert_allclose(float(peaks(0.0, 0.0)), 3 * np.exp(-1) - np.exp(-1) / 3, rtol=1e-6)


def test_ellipses_and_swiss_roll_geometry():
    x, y = make_ellipses(jax.random.PRNGKey(1), 500)
    r = np.sqrt(x[:, 0] ** 2 + (x[:, 1] / 0.5) ** 2)
    np.testing.assert_array_equal(y, np.floor(ELLIPSE_RINGS * r).astype(int) % 2)
    x, y = make_swiss_roll(jax.random.PRNGKey(2), 500)
    r = np.linalg.norm(x, axis=1)
    angle = np.arctan2(x[:, 1], x[:, 0])
    expected = np.angle(np.exp(1j * (3 * np.pi * r + np.pi * y)))
    np.testing.assert_allclose(np.angle(np.exp(1j * (angle - expected))), 0, atol=1e-4)


def test_toy_data_deterministic_and_split():
    cfg = DataConfig(name="swiss_roll", n_train=512, n_test=256, validation=256)
    a, b = load_dataset(cfg, jax.random.PRNGKey(0)), load_dataset(cfg, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(a.train.x, b.train.x)
    assert (len(a.train), len(a.validation), len(a.test), a.num_classes) == (256, 256, 256, 2)


def test_multilevel_training_runs_every_level(tmp_path):
    config = from_dict({"name": "ml", "model": {"field": "hamiltonian", "layers": 2, "augment": 2, "init": "normal",
                                                "readout": "linear_softmax"},
                        "solver": {"method": "verlet"}, "gradient": {"strategy": "reversible"},
                        "optim": {"name": "adam", "learning_rate": 0.01},
                        "data": {"name": "ellipses", "n_train": 96, "n_test": 32, "validation": 32},
                        "train": {"epochs": 1, "batch_size": 32, "levels": [2, 4]}})
    results = train_multilevel(config, tmp_path, progress=False)
    assert [r["layers"] for r in results] == [2, 4]
    assert len(json.loads((tmp_path / "levels.json").read_text())) == 2
    curves = level_curves(tmp_path)
    np.testing.assert_array_equal(curves["epoch"], [1, 2])
    np.testing.assert_array_equal(curves["level"], [2, 4])
    assert plot_regions(tmp_path, tmp_path / "regions.png", grid=20).stat().st_size > 0
