"""Typed experiment configuration: YAML file -> frozen dataclasses, with `key.sub=value` overrides.

Every experiment is one YAML file in `configs/`. It is loaded into `Config`; unknown keys,
wrong types and impossible values raise `ConfigError`, whose message names the key, the file
and (for misspellings) the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from ode_nets.data import DATASETS
from ode_nets.errors import ConfigError
from ode_nets.fields import ACTIVATIONS, CONV_IMPLS, FIELDS, INTERPOLATIONS, NORMS
from ode_nets.models import READOUTS, STEMS
from ode_nets.solvers import SOLVERS
from ode_nets.strategies import STRATEGIES

# The names a config may give are exactly the registries' keys: nothing passes validation that `build` cannot make.
FieldName = Literal[tuple(FIELDS)]  # type: ignore[valid-type]
SolverName = Literal[tuple(SOLVERS)]  # type: ignore[valid-type]
Strategy = Literal[tuple(STRATEGIES)]  # type: ignore[valid-type]
Readout = Literal[tuple(READOUTS)]  # type: ignore[valid-type]
DatasetName = Literal[tuple(DATASETS)]  # type: ignore[valid-type]
Activation = Literal[tuple(ACTIVATIONS)]  # type: ignore[valid-type]
ConvImpl = Literal[tuple(CONV_IMPLS)]  # type: ignore[valid-type]
Norm = Literal[tuple(NORMS)]  # type: ignore[valid-type]
Stem = Literal[tuple(STEMS)]  # type: ignore[valid-type]
Interpolation = Literal[tuple(INTERPOLATIONS)]  # type: ignore[valid-type]


@dataclass(frozen=True)
class ModelConfig:
    """The vector field and how the network wraps it (Ruseckas §3, §5)."""

    field: FieldName = "cubic"
    layers: int = 20  # L: number of layers = Euler steps = pieces of the piecewise-constant w(t), b(t)
    horizon: float = 1.0  # T: the ODE is solved on [0, T], dt = T / L
    augment: int = 0  # extra zero dimensions (dense) or channels (conv) appended to the input (§3.2)
    time_dependent: bool = True  # w(t), b(t) piecewise constant over L layers; False: one w, b for all t
    gamma: float = 0.0  # initial scaled nonlinearity gamma~ = dt * gamma (eq 110)
    learn_gamma: bool = True
    mu: float = 3.0  # exponent of the nonlinearity, eq 57
    init: Literal["zeros", "normal"] = "zeros"  # §4.4: zero init by default
    init_scale: float = 0.01  # std of the scaled parameters for init="normal"
    readout: Readout = "softmax"
    width: int = 0  # hidden width for the resnet field (0: same as the state)
    activation: Activation = "tanh"
    conv_impl: ConvImpl = "xla_split"  # 3x3 conv, eq 72 (docs/performance.md)
    hand_vjp: bool = False  # cubic fields: reverse mode by the hand-derived eqs 62/76, 65/66/71/77/78 (no jvp)
    norm: Norm = "none"  # N in the PDE-motivated conv fields, sigma(N(K Y + b)) (docs/pde_cnns.md)
    stages: tuple[int, ...] = ()  # multi-stage network: channels of each stage's state (empty: one ODE block)
    interpolation: Interpolation = "constant"  # per-layer parameters: pieces, or linear between knots
    stem: Stem = "identity"  # map before the ODE block (odenet_downsample: Chen et al.'s MNIST stack, model.width channels)

    def __post_init__(self) -> None:
        require(self.layers > 0, "model.layers", f"must be a positive number of layers, got {self.layers}")
        require(self.horizon > 0, "model.horizon", f"must be > 0, got {self.horizon}")
        require(self.augment >= 0, "model.augment", f"must be >= 0, got {self.augment}")
        require(self.gamma >= 0, "model.gamma", f"must be >= 0 (gamma > 0 damps, eq 52), got {self.gamma}")
        require(self.mu > 1, "model.mu", f"must be > 1 (eq 53), got {self.mu}")
        require(self.init_scale >= 0, "model.init_scale", f"must be >= 0, got {self.init_scale}")
        require(self.width >= 0, "model.width", f"must be >= 0, got {self.width}")
        require(all(c > 0 for c in self.stages), "model.stages", f"must be positive channel counts, got {list(self.stages)}")
        impls = getattr(FIELDS[self.field], "conv_impls", CONV_IMPLS)  # a layout's own convolutions (conv cubic fields)
        require(self.conv_impl in impls, "model.conv_impl",
                f"{self.conv_impl!r} does not exist for field {self.field} (one of {', '.join(impls)})")

    @property
    def dt(self) -> float:
        """Layer width in time, dt = T / L."""
        return self.horizon / self.layers


@dataclass(frozen=True)
class SolverConfig:
    """Which diffrax solver integrates the forward ODE."""

    method: SolverName = "euler"
    steps_per_layer: int = 1  # fixed-step methods: steps per layer (1 reproduces the ResNet, eq 109)
    rtol: float = 1e-3  # adaptive methods only
    atol: float = 1e-6
    max_steps: int = 4096  # adaptive methods: a solve that needs more steps raises an error
    seminorm: bool = False  # adaptive methods: error control on x (and a_x backwards) only, not on integrals

    def __post_init__(self) -> None:
        require(self.steps_per_layer > 0, "solver.steps_per_layer", f"must be > 0, got {self.steps_per_layer}")
        require(self.rtol > 0, "solver.rtol", f"must be > 0, got {self.rtol}")
        require(self.atol > 0, "solver.atol", f"must be > 0, got {self.atol}")
        require(self.max_steps > 0, "solver.max_steps", f"must be > 0, got {self.max_steps}")


@dataclass(frozen=True)
class GradientConfig:
    """How gradients through the solve are computed (the one key researchers switch)."""

    strategy: Strategy = "discretize_then_optimize"
    checkpoints: Optional[int] = None  # RecursiveCheckpointAdjoint: None = one per step for fixed-step solves
    adjoint_method: Optional[SolverName] = None  # optimize_then_discretize: backward solver (None: forward's)
    adjoint_rtol: Optional[float] = None
    adjoint_atol: Optional[float] = None
    mgrit_coarsening: int = 4  # layer_parallel: coarsening factor m of MGRIT (docs/layer_parallel.md)
    mgrit_levels: int = 2  # layer_parallel: grid levels (2: two-grid; more: V-cycles; 1: serial)
    mgrit_iterations: int = 2  # layer_parallel: at most this many MGRIT cycles per forward / adjoint solve
    mgrit_tol: float = 0.0  # layer_parallel: stop once the residual norm is <= this (0: always mgrit_iterations)
    mgrit_relaxation: Literal["F", "FCF"] = "FCF"  # layer_parallel: relaxation

    def __post_init__(self) -> None:
        require(self.checkpoints is None or self.checkpoints > 0, "gradient.checkpoints",
                 f"must be a positive integer or null, got {self.checkpoints}")
        require(self.mgrit_coarsening >= 2, "gradient.mgrit_coarsening", f"must be >= 2, got {self.mgrit_coarsening}")
        require(self.mgrit_levels >= 1, "gradient.mgrit_levels", f"must be >= 1, got {self.mgrit_levels}")
        require(self.mgrit_iterations >= 1, "gradient.mgrit_iterations", f"must be >= 1, got {self.mgrit_iterations}")
        require(self.mgrit_tol >= 0, "gradient.mgrit_tol", f"must be >= 0, got {self.mgrit_tol}")
        for key in ("adjoint_rtol", "adjoint_atol"):
            value = getattr(self, key)
            require(value is None or value > 0, f"gradient.{key}", f"must be > 0 or null, got {value}")


@dataclass(frozen=True)
class LossConfig:
    """Loss = cross entropy + smoothness regulariser (eq 113)."""

    smoothness: float = 0.0  # lambda of eq 113
    label_smoothing: float = 0.0  # training targets (1 - eps) one_hot + eps / K (bounds the logits; 0: off)
    logit_penalty: float = 0.0  # beta * mean logsumexp(logits)^2 (z-loss): bounds the logit level (0: off)
    kinetic: float = 0.0  # weight of int ||F||^2 dt (Finlay et al. 2020; 0: off)
    jacobian_frobenius: float = 0.0  # weight of int ||dF/dx||_F^2 dt, Hutchinson estimate (0: off)

    def __post_init__(self) -> None:
        require(self.smoothness >= 0, "loss.smoothness", f"must be >= 0 (lambda of eq 113), got {self.smoothness}")
        require(0 <= self.label_smoothing < 1, "loss.label_smoothing", f"must be in [0, 1), got {self.label_smoothing}")
        require(self.logit_penalty >= 0, "loss.logit_penalty", f"must be >= 0, got {self.logit_penalty}")
        require(self.kinetic >= 0, "loss.kinetic", f"must be >= 0, got {self.kinetic}")
        require(self.jacobian_frobenius >= 0, "loss.jacobian_frobenius", f"must be >= 0, got {self.jacobian_frobenius}")


@dataclass(frozen=True)
class OptimConfig:
    """optax optimizer and learning-rate schedule."""

    name: Literal["sgd", "adam", "adamw", "newton_pcg"] = "sgd"  # newton_pcg: lr = initial step, weight_decay = Tikhonov
    learning_rate: float = 0.1
    momentum: float = 0.0  # sgd only
    weight_decay: float = 0.0  # adamw only
    schedule: Literal["constant", "cosine", "exponential", "warmup_cosine", "step"] = "constant"
    decay_rate: float = 0.1  # exponential: lr multiplied by this over the whole run; step: at each of decay_at
    decay_at: tuple[float, ...] = ()  # step: fractions of the run's steps where lr drops (Chen: 60/160, 100/160, 140/160)
    warmup_steps: int = 0
    clip_norm: Optional[float] = None  # global gradient-norm clipping
    gamma_rate: float = 1.0  # rate of the shared gamma~ as a multiple of learning_rate (its gradient scaled first)
    cg_iterations: int = 10  # newton_pcg: preconditioned CG iterations (Gauss-Newton products) per step

    def __post_init__(self) -> None:
        require(self.learning_rate > 0, "optim.learning_rate", f"must be > 0, got {self.learning_rate}")
        require(0 <= self.momentum < 1, "optim.momentum", f"must be in [0, 1), got {self.momentum}")
        require(self.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {self.weight_decay}")
        require(0 < self.decay_rate <= 1, "optim.decay_rate", f"must be in (0, 1], got {self.decay_rate}")
        require(self.warmup_steps >= 0, "optim.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        require(all(0 < f < 1 for f in self.decay_at) and list(self.decay_at) == sorted(set(self.decay_at)),
                "optim.decay_at", f"must be increasing fractions of the run in (0, 1), got {list(self.decay_at)}")
        require(self.schedule != "step" or bool(self.decay_at), "optim.decay_at",
                "must list at least one fraction of the run for schedule: step")
        require(self.gamma_rate >= 0, "optim.gamma_rate", f"must be >= 0, got {self.gamma_rate}")
        require(self.cg_iterations > 0, "optim.cg_iterations", f"must be > 0, got {self.cg_iterations}")
        require(self.clip_norm is None or self.clip_norm > 0, "optim.clip_norm",
                 f"must be > 0 or null, got {self.clip_norm}")


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, and how it is generated or found."""

    name: DatasetName = "circles"
    n_train: int = 400
    n_test: int = 400
    noise: float = 0.2  # circles: std of the Gaussian noise (§5.1)
    validation: int = 0  # samples carved from train as a validation split
    dir: Optional[str] = None  # MNIST IDX files; else $ODE_NETS_DATA_DIR
    tfds_dir: Optional[str] = None  # prepared tfds data; else $TFDS_DATA_DIR / tfds default
    source: Literal["auto", "tfds", "idx"] = "auto"
    limit_train: Optional[int] = None  # use only the first N training examples (quick runs)
    standardize: bool = False  # shift and scale all inputs by the training split's mean and std (one scalar each)

    def __post_init__(self) -> None:
        require(self.n_train > 0, "data.n_train", f"must be > 0, got {self.n_train}")
        require(self.n_test > 0, "data.n_test", f"must be > 0, got {self.n_test}")
        require(self.noise >= 0, "data.noise", f"must be >= 0, got {self.noise}")
        require(self.validation >= 0, "data.validation", f"must be >= 0, got {self.validation}")
        require(self.limit_train is None or self.limit_train > 0, "data.limit_train",
                 f"must be > 0 or null, got {self.limit_train}")


@dataclass(frozen=True)
class TrainConfig:
    """The epoch loop, logging and where results go."""

    epochs: int = 10
    batch_size: int = 32
    eval_batch_size: int = 1000
    eval_train_examples: Optional[int] = None  # per-epoch train metrics on the first N training examples (null: all)
    log_every: int = 10  # steps between metric lines
    checkpoint_every: int = 0  # steps between checkpoints (0: only at the end of each epoch)
    keep_checkpoints: int = 3
    runs_dir: str = "runs"
    devices: int = 1  # data-parallel over this many devices (batch axis sharded)
    layer_devices: int = 1  # gradient.strategy layer_parallel: layer blocks split over this many devices
    max_steps: Optional[int] = None  # stop after this many steps (quick runs, tests)
    skip_nonfinite: int = 0  # skip up to this many consecutive batches with a non-finite loss/gradient (0: stop)
    drop_nonfinite_examples: bool = False  # retry a non-finite batch without the examples whose loss or gradient overflows
    input_noise: float = 0.0  # std of Gaussian noise added to each training input at every step (0: off)
    random_crop: int = 0  # images zero-padded by this many pixels and cropped back at a random shift (Chen: 4; 0: off)
    levels: tuple[int, ...] = ()  # multilevel training (scripts/multilevel.py): layers per level, e.g. [32, 64]
    prolongation: Literal["constant", "linear"] = "constant"  # how per-layer parameters go from L to r*L layers

    def __post_init__(self) -> None:
        require(self.epochs > 0, "train.epochs", f"must be > 0, got {self.epochs}")
        require(self.batch_size > 0, "train.batch_size", f"must be > 0, got {self.batch_size}")
        require(self.eval_batch_size > 0, "train.eval_batch_size", f"must be > 0, got {self.eval_batch_size}")
        require(self.eval_train_examples is None or self.eval_train_examples > 0, "train.eval_train_examples",
                 f"must be > 0 or null, got {self.eval_train_examples}")
        require(self.log_every > 0, "train.log_every", f"must be > 0, got {self.log_every}")
        require(self.checkpoint_every >= 0, "train.checkpoint_every", f"must be >= 0, got {self.checkpoint_every}")
        require(self.keep_checkpoints > 0, "train.keep_checkpoints", f"must be > 0, got {self.keep_checkpoints}")
        require(self.devices > 0, "train.devices", f"must be > 0, got {self.devices}")
        require(self.layer_devices > 0, "train.layer_devices", f"must be > 0, got {self.layer_devices}")
        require(self.skip_nonfinite >= 0, "train.skip_nonfinite", f"must be >= 0, got {self.skip_nonfinite}")
        require(self.input_noise >= 0, "train.input_noise", f"must be >= 0, got {self.input_noise}")
        require(self.random_crop >= 0, "train.random_crop", f"must be >= 0, got {self.random_crop}")
        require(self.batch_size % self.devices == 0, "train.batch_size",
                 f"{self.batch_size} is not divisible by train.devices = {self.devices} (data parallel splits the batch)")
        require(self.max_steps is None or self.max_steps > 0, "train.max_steps",
                 f"must be > 0 or null, got {self.max_steps}")
        require(all(n > 0 for n in self.levels) and all(b % a == 0 and b > a for a, b in zip(self.levels, self.levels[1:])),
                 "train.levels", f"must be increasing positive layer counts, each dividing the next, got {list(self.levels)}")


@dataclass(frozen=True)
class Config:
    """One experiment, completely."""

    name: str = "experiment"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    gradient: GradientConfig = field(default_factory=GradientConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def require(condition: bool, key: str, message: str) -> None:
    """`ConfigError` "<key>: <message>" unless `condition` (the schema's value checks)."""
    if not condition:
        raise ConfigError(f"{key}: {message}")


# ---------------------------------------------------------------------------------------------
# dict -> dataclass with type checking


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _wrong(key: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"{key}: expected {expected}, got {value!r} ({type(value).__name__})")


def _coerce_union(value: Any, tp: Any, key: str) -> Any:
    """The first member of the union `tp` that accepts `value` (null where the union allows it)."""
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    for arg in args:
        if arg is type(None):
            continue
        try:
            return coerce(value, arg, key)
        except ConfigError:
            pass
    raise _wrong(key, _type_name(tp), value)


def _coerce_literal(value: Any, tp: Any, key: str) -> Any:
    """`value` if it is one of the literal's names, else an error with the closest name."""
    if value not in typing.get_args(tp):
        close = difflib.get_close_matches(str(value), [str(a) for a in typing.get_args(tp)], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}{hint}")
    return value


def _coerce_float(value: Any, key: str) -> float:
    """A number (ints accepted; YAML 1.1 reads 1e-3, without a dot, as a string)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _wrong(key, "a number", value)
    return float(value)


SCALARS = {bool: ("true or false", lambda v: isinstance(v, bool)),
           int: ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
           str: ("a string", lambda v: isinstance(v, str))}


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, tp, key)
    if origin is Literal:
        return _coerce_literal(value, tp, key)
    if origin is tuple:  # tuple[X, ...], written as a YAML list
        if not isinstance(value, (list, tuple)):
            raise _wrong(key, "a list", value)
        return tuple(coerce(v, typing.get_args(tp)[0], f"{key}[{i}]") for i, v in enumerate(value))
    if tp is float:
        return _coerce_float(value, key)
    if tp in SCALARS:
        expected, accepts = SCALARS[tp]
        if not accepts(value):
            raise _wrong(key, expected, value)
        return value
    if dataclasses.is_dataclass(tp):
        return parse(tp, value, key)
    raise TypeError(f"unsupported annotation {tp!r} for {key}")  # a schema bug, not a user error


def parse(cls: type, data: Any, prefix: str = "") -> Any:
    """A validated instance of the frozen dataclass `cls` from a mapping: unknown keys (with the closest valid one)
    and wrong types raise `ConfigError` naming the key under `prefix`. Used for `Config` and for the bench schema."""
    where = prefix or "the top level"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            full = f"{prefix}.{key}" if prefix else str(key)
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {(prefix + '.' if prefix else '') + close[0]!r}?" if close else ""
            raise ConfigError(f"unknown key {full!r}{hint} (valid keys here: {', '.join(names)})")
    kwargs = {k: coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


def from_dict(data: dict, source: str = "<dict>") -> Config:
    """Build a validated `Config`; errors name the key and `source`."""
    try:
        return parse(Config, data)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def to_dict(config: Config) -> dict:
    """The config as plain nested dicts (for saving beside a run)."""
    return dataclasses.asdict(config)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `key.sub=value` overrides (values parsed as YAML) to a nested dict, returning a copy."""
    data = _deep_copy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key.sub=value")
        path, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else None
        node = data
        parts = path.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = value
    return data


def _deep_copy(data: dict) -> dict:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}


def read_yaml(path: str | Path, overrides: list[str] | None = None, what: str = "config file") -> dict:
    """The mapping in a YAML file with `key.sub=value` overrides applied; `ConfigError` naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {str(path)!r} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    try:
        return apply_overrides(data, overrides or [])
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load a YAML config file, apply overrides, validate. Raises `ConfigError` naming the file."""
    data = read_yaml(path, overrides)
    source = str(path) + (f" (with overrides {' '.join(overrides)})" if overrides else "")
    if "task" in data:  # the continuous-time models (ode_nets.continuous) have their own schema and script
        raise ConfigError(f"{source} is a continuous-time config (task: {data['task']}): train it with "
                          f"scripts/train_continuous.py --config {path}")
    return from_dict(data, source)


def save_config(config: Config, path: str | Path) -> None:
    """Write the full config (defaults filled in) as YAML."""
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
