"""Config -> objects: the one place where a `Config` becomes a field, solver, strategy, model, optimizer and dataset.

The numerical core (fields, solvers, gradient strategies, `solve`, `ODENet`) knows nothing of configs; plain-Python
users build those objects themselves. Every name a config may give is looked up in that extension point's registry
(`FIELDS`, `SOLVERS`, `STRATEGIES`, `READOUTS`, `DATASETS`), which is also where `ode_nets.config` takes the
allowed names from.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import diffrax
import jax
import optax
from jaxtyping import PRNGKeyArray

from ode_nets.config import Config, GradientConfig, ModelConfig, OptimConfig, SolverConfig
from ode_nets.errors import ConfigError
from ode_nets.fields import FIELDS, AbstractField, LayerGrid, ParamInit
from ode_nets.models import READOUTS, ODENet, check_readout
from ode_nets.solvers import SOLVERS, AbstractStepping, AdaptiveSteps, FixedSteps
from ode_nets.strategies import STRATEGIES, AbstractGradientStrategy


def param_init(model: ModelConfig) -> ParamInit:
    """How the field's parameters are laid out in t and initialised (`model.layers`, `horizon`, `time_dependent`,
    `init`, `init_scale`)."""
    return ParamInit(layers=model.layers, horizon=model.horizon, time_dependent=model.time_dependent,
                     init=model.init, scale=model.init_scale)


def build_field(model: ModelConfig, state_shape: tuple[int, ...], key: PRNGKeyArray) -> AbstractField:
    """The field named `model.field`, for states of `state_shape`, with the `model.*` options it declares."""
    cls = FIELDS[model.field]
    options = {name: getattr(model, name) for name in cls.config_options}
    return cls.init(state_shape, param_init(model), key, **options)


def build_solver(method: str) -> diffrax.AbstractSolver:
    """The diffrax solver registered as `method`."""
    return SOLVERS[method].cls()


def build_stepping(solver: SolverConfig, method: str | None = None, rtol: float | None = None,
                   atol: float | None = None) -> AbstractStepping:
    """Adaptive (PID at rtol/atol) for a solver registered as adaptive, else fixed steps on the layer grid."""
    if SOLVERS[method or solver.method].adaptive:
        return AdaptiveSteps(rtol=rtol or solver.rtol, atol=atol or solver.atol, max_steps=solver.max_steps,
                             steps_per_layer=solver.steps_per_layer)
    return FixedSteps(steps_per_layer=solver.steps_per_layer)


def build_strategy(gradient: GradientConfig, solver: SolverConfig) -> AbstractGradientStrategy:
    """The strategy named `gradient.strategy`, given the `gradient.*` options it declares."""
    backward = gradient.adjoint_method is not None or gradient.adjoint_rtol or gradient.adjoint_atol
    available: dict[str, Any] = {
        "checkpoints": gradient.checkpoints,
        "backward_solver": build_solver(gradient.adjoint_method) if gradient.adjoint_method else None,
        "backward_stepping": (build_stepping(solver, gradient.adjoint_method, gradient.adjoint_rtol,
                                             gradient.adjoint_atol) if backward else None),
    }
    cls = STRATEGIES[gradient.strategy]
    return cls(**{name: available[name] for name in cls.config_options})


def state_shape(model: ModelConfig, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The ODE state's shape: the input with `model.augment` zero features/channels added."""
    shape = list(input_shape)
    shape[FIELDS[model.field].feature_axis] += model.augment
    return tuple(shape)


def build_model(config: Config, input_shape: tuple[int, ...], num_classes: int, key: PRNGKeyArray) -> ODENet:
    """The `ODENet` of `config` (model, solver, gradient sections) for inputs of `input_shape` (no batch axis)."""
    model, solver = config.model, config.solver
    shape = state_shape(model, input_shape)
    k_field, k_head = jax.random.split(key)
    field = build_field(model, shape, k_field)
    wrap = SOLVERS[solver.method].wrap_field
    if wrap is not None:  # lm2: the per-layer k_l of eq 111 are trainable parameters held beside the field
        field = wrap(field, param_init(model))
    net = ODENet(field, build_solver(solver.method), build_strategy(config.gradient, solver),
                 READOUTS[model.readout].init(shape, num_classes, k_head), augment=model.augment,
                 grid=LayerGrid(model.horizon, model.layers), stepping=build_stepping(solver))
    try:
        check_readout(net, shape, num_classes)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return net


def with_model(config: Config, **changes: Any) -> Config:
    """`config` with `model.*` keys replaced (e.g. another depth), validated again."""
    return dataclasses.replace(config, model=dataclasses.replace(config.model, **changes))


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
