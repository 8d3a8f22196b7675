"""Config -> objects: the one place where a `Config` becomes a field, solver, strategy, model, optimizer and dataset.

The numerical core (fields, solvers, gradient strategies, `solve`, `ODENet`) knows nothing of configs; plain-Python
users build those objects themselves. Every name a config may give is looked up in that extension point's registry
(`FIELDS`, `SOLVERS`, `STRATEGIES`, `READOUTS`, `DATASETS`), which is also where `ode_nets.config` takes the
allowed names from.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import PRNGKeyArray

from ode_nets.config import (Config, GradientConfig, ModelConfig, OptimConfig, SolverConfig, TrainConfig, from_dict,
                             load_config, to_dict)
from ode_nets.data import Dataset, check_dataset, load_dataset
from ode_nets.errors import ConfigError
from ode_nets.fields import FIELDS, AbstractField, LayerGrid, ParamInit
from ode_nets.models import READOUTS, STEMS, ODENet, check_readout
from ode_nets.multistage import MultiStageNet, stage_shapes
from ode_nets.solvers import SOLVERS, AbstractStepping, AdaptiveSteps, FixedSteps
from ode_nets.strategies import STRATEGIES, AbstractGradientStrategy
from ode_nets.training import Objective, RunDir, TrainOptions, evaluate_test, fit
from ode_nets.training import distributed
from ode_nets.training.checkpoint import train_state
from ode_nets.training.newton_pcg import newton_pcg
from ode_nets.training.rates import scale_named


def param_init(model: ModelConfig) -> ParamInit:
    """How the field's parameters are laid out in t and initialised (`model.layers`, `horizon`, `time_dependent`,
    `init`, `init_scale`)."""
    return ParamInit(layers=model.layers, horizon=model.horizon, time_dependent=model.time_dependent,
                     init=model.init, scale=model.init_scale, interpolation=model.interpolation)


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
                             steps_per_layer=solver.steps_per_layer, seminorm=solver.seminorm)
    return FixedSteps(steps_per_layer=solver.steps_per_layer)


def build_strategy(gradient: GradientConfig, solver: SolverConfig, train: TrainConfig | None = None
                   ) -> AbstractGradientStrategy:
    """The strategy named `gradient.strategy`, given the `gradient.*` (and device) options it declares."""
    backward = gradient.adjoint_method is not None or gradient.adjoint_rtol or gradient.adjoint_atol
    available: dict[str, Any] = {
        "checkpoints": gradient.checkpoints,
        "backward_solver": build_solver(gradient.adjoint_method) if gradient.adjoint_method else None,
        "backward_stepping": (build_stepping(solver, gradient.adjoint_method, gradient.adjoint_rtol,
                                             gradient.adjoint_atol) if backward else None),
        "coarsening": gradient.mgrit_coarsening, "levels": gradient.mgrit_levels,
        "iterations": gradient.mgrit_iterations, "tol": gradient.mgrit_tol, "relaxation": gradient.mgrit_relaxation,
        "layer_devices": train.layer_devices if train else 1, "data_devices": train.devices if train else 1,
    }
    cls = STRATEGIES[gradient.strategy]
    return cls(**{name: available[name] for name in cls.config_options})


def state_shape(model: ModelConfig, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The ODE state's shape: the (stem's features of the) input with `model.augment` zero features/channels added."""
    needed = FIELDS[model.field].input_stem
    if needed is not None and model.stem != needed:
        raise ConfigError(f"model.field {model.field!r} takes its state in another layout: set model.stem: {needed} "
                          f"(got {model.stem!r})")
    stem = STEMS[model.stem].init(input_shape, model.width, jax.random.PRNGKey(0))
    shape = list(stem.output_shape(input_shape))
    shape[FIELDS[model.field].feature_axis] += model.augment
    return tuple(shape)


def build_model(config: Config, input_shape: tuple[int, ...], num_classes: int, key: PRNGKeyArray) -> ODENet:
    """The `ODENet` of `config` (model, solver, gradient sections) for inputs of `input_shape` (no batch axis)."""
    model, solver = config.model, config.solver
    if model.stages:
        return build_multistage(config, input_shape, num_classes, key)
    shape = state_shape(model, input_shape)
    k_field, k_head = jax.random.split(key)
    field = build_field(model, shape, k_field)
    stem = STEMS[model.stem].init(input_shape, model.width, jax.random.fold_in(key, 1))
    wrap = SOLVERS[solver.method].wrap_field
    if wrap is not None:  # lm2: the per-layer k_l of eq 111 are trainable parameters held beside the field
        field = wrap(field, param_init(model))
    net = ODENet(field, build_solver(solver.method), build_strategy(config.gradient, solver, config.train),
                 READOUTS[model.readout].init(shape, num_classes, k_head, field.feature_axis), augment=model.augment,
                 grid=LayerGrid(model.horizon, model.layers), stepping=build_stepping(solver), stem=stem)
    try:
        check_readout(net, shape, num_classes)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if model.hand_vjp:
        if "hand_vjp" not in FIELDS[model.field].config_options:
            raise ConfigError(f"model.hand_vjp: only the cubic fields have hand-derived adjoint terms, not "
                              f"{model.field!r}")
        check_reverse_mode(net, input_shape, config.gradient.strategy)
    return net


def check_reverse_mode(net: ODENet, input_shape: tuple[int, ...], strategy: str) -> None:
    """Fail early if the gradient strategy differentiates the field in forward mode, which `model.hand_vjp` (a
    reverse-mode rule only) cannot (traced abstractly, nothing is computed)."""
    loss = lambda m: jnp.sum(m(jnp.zeros((1, *input_shape))))  # noqa: E731
    try:
        jax.eval_shape(eqx.filter_grad(loss), net)
    except TypeError as e:
        if "custom_vjp" not in str(e):
            raise
        raise ConfigError(f"model.hand_vjp: gradient.strategy {strategy!r} differentiates the field in forward mode "
                          "(jvp), which the hand-derived VJP does not provide; set model.hand_vjp: false") from None


def build_multistage(config: Config, input_shape: tuple[int, ...], num_classes: int, key: PRNGKeyArray
                     ) -> MultiStageNet:
    """The `MultiStageNet` of `config`: one `model.field` block of `model.layers` layers per entry of `model.stages`
    (its channels), joined by 1x1 convolutions and 2x2 average pooling (Ruthotto & Haber §4)."""
    model, solver = config.model, config.solver
    if len(input_shape) != 3:
        raise ConfigError(f"model.stages: a multi-stage network takes images (C, H, W), the data has shape {input_shape}")
    wrap = SOLVERS[solver.method].wrap_field
    make = lambda shape, k: build_field(model, shape, k) if wrap is None else wrap(build_field(model, shape, k),  # noqa: E731
                                                                                   param_init(model))
    try:
        net = MultiStageNet.init(make, input_shape, model.stages, solver=build_solver(solver.method),
                                 strategy=build_strategy(config.gradient, solver), readout=READOUTS[model.readout],
                                 num_classes=num_classes, grid=LayerGrid(model.horizon, model.layers),
                                 stepping=build_stepping(solver), key=key)
        check_readout(net, stage_shapes(input_shape, model.stages, 2)[-1], num_classes)
    except ValueError as e:
        raise ConfigError(f"model.stages: {e}") from None
    return net


def with_model(config: Config, **changes: Any) -> Config:
    """`config` with `model.*` keys replaced (e.g. another depth), validated again."""
    return dataclasses.replace(config, model=dataclasses.replace(config.model, **changes))


def step_schedule(lr: float, total_steps: int, decay_at: tuple[float, ...], rate: float) -> optax.Schedule:
    """`lr`, multiplied by `rate` at each fraction `decay_at` of the run's `total_steps` (Chen et al.'s MNIST
    recipe: x0.1 at epochs 60, 100 and 140 of 160, i.e. at 0.375, 0.625, 0.875 of the run)."""
    scales: dict[int, float] = {}
    for f in decay_at:  # in a very short run two fractions can round to one step: both drops apply there
        step = int(round(f * total_steps))
        scales[step] = scales.get(step, 1.0) * rate
    return optax.piecewise_constant_schedule(lr, scales)


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
    elif cfg.schedule == "step":
        schedule = step_schedule(lr, total_steps, cfg.decay_at, cfg.decay_rate)
    else:
        schedule = optax.warmup_cosine_decay_schedule(0.0, lr, cfg.warmup_steps, max(total_steps, cfg.warmup_steps + 1))
    if cfg.name == "newton_pcg":  # line search instead of a schedule; no clipping (ode_nets.training.newton_pcg)
        return newton_pcg(cfg.cg_iterations, cfg.weight_decay, cfg.learning_rate)
    if cfg.name == "sgd":
        opt = optax.sgd(schedule, momentum=cfg.momentum or None)
    elif cfg.name == "adam":
        opt = optax.adam(schedule)
    else:
        opt = optax.adamw(schedule, weight_decay=cfg.weight_decay)
    if cfg.clip_norm is not None:
        opt = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), opt)
    if cfg.gamma_rate != 1.0:
        opt = optax.chain(scale_named("gamma", cfg.gamma_rate), opt)
    return opt


# ---------------------------------------------------------------------------------------------
# Config -> training run (ode_nets.training knows nothing of configs)


@dataclass
class Run:
    """Everything a training run needs, built from its config."""

    config: Config
    folder: Path
    dataset: Dataset
    model: ODENet
    optimizer: optax.GradientTransformation
    steps_per_epoch: int
    total_steps: int


def build_objective(config: Config) -> Objective:
    """The training loss of the `loss` section."""
    return Objective(config.loss.smoothness, config.loss.label_smoothing, config.loss.logit_penalty,
                     kinetic=config.loss.kinetic, jacobian_frobenius=config.loss.jacobian_frobenius)


def build_train_options(config: Config) -> TrainOptions:
    """`fit`'s settings from the `train` section (and the seed, name and solver settings for messages)."""
    t, s = config.train, config.solver
    return TrainOptions(
        epochs=t.epochs, batch_size=t.batch_size, seed=config.seed, eval_batch_size=t.eval_batch_size,
        eval_train_examples=t.eval_train_examples, log_every=t.log_every, checkpoint_every=t.checkpoint_every,
        keep_checkpoints=t.keep_checkpoints, max_steps=t.max_steps, skip_nonfinite=t.skip_nonfinite,
        drop_nonfinite_examples=t.drop_nonfinite_examples, input_noise=t.input_noise, random_crop=t.random_crop,
        devices=t.devices, layer_devices=t.layer_devices,
        name=config.name, solver={"method": s.method, "max_steps": s.max_steps, "rtol": s.rtol, "atol": s.atol})


def build_run(config: Config, folder: Path, dataset: Dataset | None = None) -> Run:
    """Dataset, model and optimizer for `config` (all randomness from `config.seed`)."""
    k_data, k_model = jax.random.split(jax.random.PRNGKey(config.seed))
    if dataset is None:
        dataset = load_dataset(config.data, k_data)
    check_dataset(dataset)
    strategy = STRATEGIES[config.gradient.strategy]
    if config.optim.name == "newton_pcg" and not (strategy.forward_mode and strategy.reverse_mode):
        raise ConfigError(f"optim.name newton_pcg needs forward- and reverse-mode products (jax.jvp, jax.vjp) through "
                          f"the solve: set gradient.strategy: direct_adjoint (got {config.gradient.strategy})")
    options = build_train_options(config)
    options.check(len(dataset.train), dataset.input_shape)
    model = build_model(config, dataset.input_shape, dataset.num_classes, k_model)
    total = options.total_steps(len(dataset.train))
    return Run(config, Path(folder), dataset, model, build_optimizer(config.optim, total),
               options.steps_per_epoch(len(dataset.train)), total)


def prepare_folder(folder: Path, config: Config, *, overwrite: bool, resume: bool) -> RunDir:
    """The run folder of `config`: created with its `config.yaml` (an existing one is refused unless
    `overwrite`), or with `resume` checked for checkpoints."""
    if resume:
        return RunDir.resume(folder)
    return RunDir.create(folder, to_dict(config), overwrite=overwrite)


def resume_config(folder: Path, overrides: list[str]) -> Config:
    """The config saved in a run folder (plus overrides), for `--resume`."""
    RunDir.resume(folder, need_config=True)
    return load_config(Path(folder) / "config.yaml", overrides)


def shared_setup(setup: Callable[[], tuple[Path, Config]]) -> tuple[Path, Config]:
    """The run folder and config from `setup` (load the config, prepare the folder), which runs on process 0 only;
    every process of a multi-process run gets process 0's (the others need not see its files). One process: `setup()`."""
    if jax.process_count() == 1:
        return setup()

    def read() -> str:
        folder, config = setup()
        return json.dumps({"folder": str(folder), "config": to_dict(config)})

    shared = json.loads(distributed.from_main(read))  # a bad config or folder: the same error on every process
    return Path(shared["folder"]), from_dict(shared["config"], "process 0's config")


def fit_run(run: Run, *, resume: bool = False, progress: bool = True) -> dict:
    """`ode_nets.training.fit` with the settings of `run.config`, into the (prepared) folder `run.folder`;
    on resume a changed config is recorded (`resumes.jsonl`)."""
    return fit(run.model, run.dataset, optimizer=run.optimizer, run_dir=RunDir(run.folder),
               objective=build_objective(run.config), options=build_train_options(run.config), resume=resume,
               progress=progress, config=to_dict(run.config) if resume else None)


def checkpoint_template(run: Run) -> dict:
    """A train state of `run`'s structure (fresh model and optimizer state) to restore checkpoints into."""
    opt_state = run.optimizer.init(eqx.filter(run.model, eqx.is_inexact_array))
    return train_state(run.model, opt_state, jax.random.PRNGKey(0))


def load_run(folder: Path) -> tuple[Config, Dataset, ODENet]:
    """Config, dataset and final (or newest checkpointed) model of a run folder."""
    run_dir = RunDir.existing(folder)
    config = load_config(run_dir.config_path)
    run = build_run(config, run_dir.path)
    if run_dir.model_path.is_file():
        return config, run.dataset, run_dir.load_model(run.model)
    state, _ = run_dir.load_latest(checkpoint_template(run))
    return config, run.dataset, state["model"]


def evaluate_run(folder: Path) -> dict:
    """Load a run folder (final model, else newest checkpoint) and evaluate it on its test split
    (`ode_nets.training.evaluate_test`; circles runs also get the Bayes reference and boundary radii)."""
    config, dataset, model = load_run(Path(folder))
    noise = config.data.noise if config.data.name == "circles" else None
    return evaluate_test(model, dataset, config.train.eval_batch_size, noise)
