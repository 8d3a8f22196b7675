"""Config -> objects: the one place where a `Config` becomes a model, an optimizer and a dataset.

The numerical core (fields, solvers, gradient strategies, `solve`, `ODENet`) knows nothing of configs;
plain-Python users build those objects themselves. This module reads `Config` for them.
"""

from __future__ import annotations

from typing import Any

import optax
from jaxtyping import PRNGKeyArray

from ode_nets.config import Config, OptimConfig
from ode_nets.models import ODENet, build_model as _build_model


def build_model(config: Config, input_shape: tuple[int, ...], num_classes: int, key: PRNGKeyArray) -> ODENet:
    """The `ODENet` of `config` (model, solver, gradient sections) for inputs of `input_shape` (no batch axis)."""
    return _build_model(config.model, config.solver, config.gradient, input_shape, num_classes, key)


def build_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    """optax optimizer with the configured schedule (SGD as in the paper by default)."""
    lr = cfg.learning_rate
    schedule: Any
    if cfg.schedule == "constant":
        schedule = lr
    elif cfg.schedule == "cosine":
        schedule = optax.cosine_decay_schedule(lr, max(total_steps, 1))
    elif cfg.schedule == "exponential":
        schedule = optax.exponential_decay(lr, max(total_steps, 1), cfg.decay_rate)
    else:
        schedule = optax.warmup_cosine_decay_schedule(0.0, lr, cfg.warmup_steps, max(total_steps, cfg.warmup_steps + 1))
    if cfg.name == "sgd":
        opt = optax.sgd(schedule, momentum=cfg.momentum or None)
    elif cfg.name == "adam":
        opt = optax.adam(schedule)
    else:
        opt = optax.adamw(schedule, weight_decay=cfg.weight_decay)
    if cfg.clip_norm is not None:
        opt = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), opt)
    return opt
