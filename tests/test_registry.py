"""Every name the config schema accepts for `model.field`, `solver.method`, `gradient.strategy` and `model.readout`
builds a model (`ode_nets.build.build_model`) that takes one jitted SGD step with a finite loss and gradient.

Each name is put into a small valid config; where the default partners are invalid by design, `PARTNERS` picks
compatible ones (reversible needs verlet and the hamiltonian field, the hamiltonian field an even state,
max_pool_softmax a conv field). Tiny sizes: 8 circle points (or 8 random 1x8x8 images), L = 4.
"""

from __future__ import annotations

import typing

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import config, net_from_config, trainable_leaves
from ode_nets.config import GradientConfig, ModelConfig, SolverConfig
from ode_nets.data.circles import make_circles
from ode_nets.fields import FIELDS
from ode_nets.losses import cross_entropy
from ode_nets.training import value_and_grad

BASE = {"model": {"field": "cubic", "layers": 4, "init": "normal", "init_scale": 0.1, "gamma": 0.1,
                  "readout": "softmax"}}
HAMILTONIAN = {"field": "hamiltonian", "augment": 2, "readout": "linear_softmax"}  # state (x, 0, 0): 4 = 2 y + 2 z
CONV = {"field": "conv_cubic", "augment": 1, "readout": "max_pool_softmax"}  # 1 + 1 channels = 2 classes
ODENET = {"field": "odenet_conv", "augment": 1, "readout": "odenet_head"}  # Chen et al.'s ODE-Net block and head

# (config key, name) -> the sections that make a valid config around that name (merged into BASE)
PARTNERS: dict[tuple[str, str], dict] = {
    ("model.field", "conv_cubic"): {"model": CONV},
    ("model.field", "hamiltonian"): {"model": HAMILTONIAN},
    ("model.field", "parabolic"): {"model": {**CONV, "field": "parabolic"}},
    ("model.field", "resnet_conv"): {"model": {**CONV, "field": "resnet_conv"}},
    ("model.field", "hyperbolic"): {"model": {**CONV, "field": "hyperbolic"}, "solver": {"method": "verlet"}},
    ("model.field", "hamiltonian_conv"): {"model": {**CONV, "field": "hamiltonian_conv"}, "solver": {"method": "verlet"}},
    ("model.readout", "sigmoid_last"): {"model": {"augment": 1}},
    ("model.readout", "max_pool_softmax"): {"model": CONV},
    ("model.field", "conv_cubic_nhwc"): {"model": {**CONV, "stem": "channels_last"}},  # channels-last state
    ("model.field", "odenet_conv"): {"model": ODENET},
    ("model.readout", "odenet_head"): {"model": ODENET},
    ("solver.method", "verlet"): {"model": HAMILTONIAN},  # leapfrog on the two-state (y, z) field
    ("gradient.strategy", "reversible"): {"model": HAMILTONIAN, "solver": {"method": "verlet"}},
    # analytic_adjoint: the base field (cubic) has the hand-derived equations; lm2: the default strategy
    # (discretize_then_optimize) is the one it needs.
}
SCHEMA = {"model.field": (ModelConfig, "field"), "model.readout": (ModelConfig, "readout"),
          "solver.method": (SolverConfig, "method"), "gradient.strategy": (GradientConfig, "strategy")}


def accepted(key: str) -> tuple[str, ...]:
    schema, name = SCHEMA[key]
    return typing.get_args(typing.get_type_hints(schema)[name])


CASES = [(key, name) for key in SCHEMA for name in accepted(key)]


def case_config(key: str, name: str):
    sections = {section: dict(values) for section, values in BASE.items()}
    for section, values in PARTNERS.get((key, name), {}).items():
        sections.setdefault(section, {}).update(values)
    section, option = key.split(".")
    sections.setdefault(section, {})[option] = name
    return config(**sections)


def tiny_batch(cfg):
    """8 circle points, or 8 random single-channel 8x8 images for the conv field; labels 0/1."""
    if FIELDS[cfg.model.field].feature_axis == -3 or cfg.model.stem == "channels_last":  # conv fields
        x = jax.random.uniform(jax.random.PRNGKey(1), (8, 1, 8, 8))
        return x, jnp.arange(8) % 2
    x, y = make_circles(jax.random.PRNGKey(1), 8, 0.2)
    return jnp.asarray(x), jnp.asarray(y)


@pytest.mark.parametrize("key, name", CASES, ids=[f"{k}={n}" for k, n in CASES])
def test_every_accepted_name_trains_one_step(key, name):
    cfg = case_config(key, name)
    x, y = tiny_batch(cfg)
    model = net_from_config(cfg, tuple(x.shape[1:]), 2)
    optimizer = optax.sgd(0.01)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(model, opt_state, x, y):
        (loss, _), grads = value_and_grad(lambda m: (cross_entropy(m(x), y), None), model)  # forward mode if needed
        updates, opt_state = optimizer.update(grads, opt_state)
        return eqx.apply_updates(model, updates), opt_state, loss, grads

    new_model, _, loss, grads = step(model, opt_state, x, y)
    assert np.isfinite(float(loss)), (key, name, float(loss))
    leaves = trainable_leaves(grads)
    assert leaves and all(bool(jnp.all(jnp.isfinite(g))) for g in leaves), (key, name)
    assert sum(float(jnp.sum(g ** 2)) for g in leaves) > 0, (key, name)  # the gradient reaches the parameters
    assert all(bool(jnp.all(jnp.isfinite(p))) for p in trainable_leaves(new_model))

