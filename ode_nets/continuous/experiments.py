"""The continuous-time experiments from YAML (`configs/cnf_*.yaml`, `configs/*_latent_ode.yaml`): the schema,
the objects each config makes, training, evaluation, results and figures (`scripts/train_continuous.py`).

A config names its `task`; `TASKS` maps the task to its schema and its runner, so a new task is one entry. The
schemas reuse `ode_nets.config`'s parser (unknown keys, wrong types: one-line `ConfigError` naming the key) and
the solver and gradient-strategy registries.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ode_nets.config import SolverName, Strategy, parse, read_yaml, require
from ode_nets.continuous import figures
from ode_nets.continuous.cnf import CNF, NegativeLogLikelihood
from ode_nets.continuous.data import DENSITIES, TIME_SERIES, IrregularSeries, SeriesSpec, density_data, series_data
from ode_nets.continuous.latent_ode import GRUDeltaT, LatentODE, MaskedPredictionMSE, NegativeELBO, forecast_metrics
from ode_nets.continuous.trace import TRACE_ESTIMATORS
from ode_nets.continuous.training import fit_continuous
from ode_nets.errors import ConfigError
from ode_nets.fields.concat_squash import ConcatSquashField
from ode_nets.fields.time_params import ParamInit
from ode_nets.models import count_parameters
from ode_nets.solvers import SOLVERS, AdaptiveSteps
from ode_nets.strategies import STRATEGIES
from ode_nets.training.run_dir import RunDir

DensityName = Literal[tuple(DENSITIES)]  # type: ignore[valid-type]
SeriesName = Literal[tuple(TIME_SERIES)]  # type: ignore[valid-type]
TraceName = Literal[tuple(TRACE_ESTIMATORS)]  # type: ignore[valid-type]


@dataclass(frozen=True)
class SolveSection:
    """An adaptive diffrax solve: `method` from `SOLVERS` (adaptive ones), tolerances, step limit, gradient."""

    method: SolverName = "dopri5"
    rtol: float = 1e-5
    atol: float = 1e-5
    max_steps: int = 4096
    strategy: Strategy = "discretize_then_optimize"

    def __post_init__(self) -> None:
        require(SOLVERS[self.method].adaptive, "solver.method", f"must be an adaptive solver, got {self.method!r}")
        require(self.rtol > 0 and self.atol > 0, "solver.rtol/atol", "must be > 0")
        require(self.max_steps > 0, "solver.max_steps", f"must be > 0, got {self.max_steps}")

    def stepping(self) -> AdaptiveSteps:
        return AdaptiveSteps(rtol=self.rtol, atol=self.atol, max_steps=self.max_steps)


@dataclass(frozen=True)
class TrainSection:
    """Adam(W) for `steps` steps on random batches; `train`/`eval` records every `log_every`/`eval_every` steps."""

    steps: int = 1000
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    final_lr_factor: float = 1.0  # < 1: cosine decay of the learning rate to this fraction at the last step
    seed: int = 0
    log_every: int = 25
    eval_every: int = 0
    checkpoint_every: int = 500

    def __post_init__(self) -> None:
        for key in ("steps", "batch_size", "log_every"):
            require(getattr(self, key) > 0, f"train.{key}", f"must be > 0, got {getattr(self, key)}")
        require(self.learning_rate > 0, "train.learning_rate", f"must be > 0, got {self.learning_rate}")
        require(0 < self.final_lr_factor <= 1, "train.final_lr_factor", f"must be in (0, 1], got {self.final_lr_factor}")

    def optimizer(self) -> optax.GradientTransformation:
        schedule = optax.cosine_decay_schedule(self.learning_rate, self.steps, alpha=self.final_lr_factor)
        return optax.adamw(schedule, weight_decay=self.weight_decay)


@dataclass(frozen=True)
class CNFData:
    name: DensityName = "two_moons"
    n_train: int = 20000
    n_test: int = 5000
    seed: int = 0


@dataclass(frozen=True)
class CNFModel:
    """FFJORD field: `hidden_layers` concat-squash layers of `width`; flow on [0, horizon]; `trace` estimator of
    training (evaluation always uses the exact trace in 2-D)."""

    width: int = 64
    hidden_layers: int = 3
    activation: Literal["tanh", "relu"] = "tanh"
    horizon: float = 1.0
    trace: TraceName = "exact"
    init: Literal["zeros", "normal"] = "zeros"  # zeros: last layer 0, the flow starts as the identity


@dataclass(frozen=True)
class CNFEval:
    """The density grid [-extent, extent]^2 of `grid` x `grid` points (figure and integral) and `samples` drawn."""

    grid: int = 120
    extent: float = 4.5
    samples: int = 5000
    batch: int = 2500


@dataclass(frozen=True)
class CNFConfig:
    name: str = "cnf"
    task: str = "cnf"
    data: CNFData = field(default_factory=CNFData)
    model: CNFModel = field(default_factory=CNFModel)
    solver: SolveSection = field(default_factory=SolveSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: CNFEval = field(default_factory=CNFEval)


@dataclass(frozen=True)
class SeriesData:
    """A time-series set from `TIME_SERIES`; `series`: points per series, windows, noise, missing fraction."""

    name: SeriesName = "spirals"
    n_train: int = 1000
    n_test: int = 200
    seed: int = 0
    series: SeriesSpec = field(default_factory=SeriesSpec)

    def __post_init__(self) -> None:
        spec = self.series
        require(0 < spec.t_obs < spec.t_end, "data.series.t_obs", "must satisfy 0 < t_obs < t_end")
        require(0 <= spec.missing < 1, "data.series.missing", f"must be in [0, 1), got {spec.missing}")
        require(min(spec.n_obs, spec.n_int, spec.n_ext) > 0, "data.series", "n_obs, n_int, n_ext must be > 0")


@dataclass(frozen=True)
class LatentModel:
    """Latent ODE sizes, the observation std of its likelihood, the GRU-Δt baseline's hidden size, and the
    training context of both (`NegativeELBO`, `MaskedPredictionMSE`)."""

    latent_dim: int = 4
    rec_hidden: int = 25
    field_width: int = 32
    dec_width: int = 32
    dec_activation: Literal["relu", "tanh"] = "relu"
    obs_std: float = 0.1
    baseline_hidden: int = 64
    min_context: float = 0.4  # both models read the points before a random cut in [min_context, 1] x the window


@dataclass(frozen=True)
class LatentConfig:
    name: str = "latent_ode"
    task: str = "latent_ode"
    data: SeriesData = field(default_factory=SeriesData)
    model: LatentModel = field(default_factory=LatentModel)
    solver: SolveSection = field(default_factory=lambda: SolveSection(method="tsit5", rtol=1e-3, atol=1e-4))
    train: TrainSection = field(default_factory=lambda: TrainSection(batch_size=50, learning_rate=1e-2))


# ------------------------------------------------------------------------------------------------- CNF


def build_cnf(config: CNFConfig, key: jax.Array) -> CNF:
    """The CNF of a config (`model.init: zeros`: last layer zero, the flow starts as the identity; `normal`: a
    random last layer, which breaks the symmetry of a rotation-invariant target such as the rings)."""
    m, s = config.model, config.solver
    field_ = ConcatSquashField.init((2,), ParamInit(init=m.init), key, width=m.width, activation=m.activation,
                                    hidden_layers=m.hidden_layers)
    return CNF(field_, TRACE_ESTIMATORS[m.trace](), m.horizon, SOLVERS[s.method].cls(), s.stepping(),
               STRATEGIES[s.strategy]())


@eqx.filter_jit
def _exact_log_prob(model: CNF, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return eqx.tree_at(lambda c: c.estimator, model, TRACE_ESTIMATORS["exact"]()).log_prob_and_nfe(x)


def log_density(model: CNF, x: np.ndarray, batch: int) -> tuple[np.ndarray, float]:
    """Exact log p at every point (batches of `batch`) and the mean NFE of the solves."""
    out, nfe = [], []
    for i in range(0, len(x), batch):
        lp, n = _exact_log_prob(model, jnp.asarray(x[i:i + batch]))
        out.append(np.asarray(lp))
        nfe.append(float(n))
    return np.concatenate(out), float(np.mean(nfe))


def density_grid(extent: float, n: int) -> tuple[np.ndarray, float]:
    """(points (n*n, 2) of the grid of cell centres on [-extent, extent]^2, cell area)."""
    h = 2 * extent / n
    axis = -extent + h * (np.arange(n) + 0.5)
    xx, yy = np.meshgrid(axis, axis, indexing="xy")
    return np.stack([xx.ravel(), yy.ravel()], -1).astype(np.float32), h * h


def cnf_results(model: CNF, test: np.ndarray, config: CNFConfig, key: jax.Array) -> tuple[dict, dict]:
    """Held-out NLL (exact trace), NFE, the density's integral on the grid; and the arrays for the figure."""
    ev = config.eval
    log_p, nfe = log_density(model, test, ev.batch)
    grid, area = density_grid(ev.extent, ev.grid)
    grid_log_p, _ = log_density(model, grid, ev.batch)
    samples = np.asarray(eqx.filter_jit(lambda m, k: m.sample(k, ev.samples, 2))(model, key))
    results = {"test_nll": float(-log_p.mean()), "test_nll_sem": float(log_p.std() / np.sqrt(len(log_p))),
               "nfe_forward": nfe, "grid_integral": float(np.exp(grid_log_p).sum() * area),
               "parameters": count_parameters(model)}
    return results, {"test": test, "samples": samples, "density": np.exp(grid_log_p).reshape(ev.grid, ev.grid)}


def run_cnf(config: CNFConfig, folder: Path, *, progress: bool = True, resume: bool = False,
            overwrite: bool = False, raw_config: dict | None = None) -> dict:
    """Train the CNF of `config` in `folder`, evaluate, write `results.json` and `figures/<name>.png`."""
    train, test = density_data(config.data.name, jax.random.PRNGKey(config.data.seed), config.data.n_train,
                               config.data.n_test)
    k_model, k_sample = jax.random.split(jax.random.PRNGKey(config.train.seed))
    model = build_cnf(config, k_model)
    run = _open(folder, raw_config, resume, overwrite)
    nll = lambda m: {"test_nll": float(-log_density(m, test[:config.eval.batch], config.eval.batch)[0].mean())}  # noqa: E731
    model, wall = _timed_fit(model, NegativeLogLikelihood(), train, run, config.train, progress, resume, nll)
    results, arrays = cnf_results(model, test, config, k_sample)
    results.update(name=config.name, data=config.data.name, trace=config.model.trace, train_wall_time_s=wall,
                   device=jax.devices()[0].device_kind)
    run.write_results(results)
    figures.plot_cnf(arrays, config.eval.extent, f"{config.name}: test NLL {results['test_nll']:.3f}",
                     run.figure(f"{config.name}.png"))
    return results


# ----------------------------------------------------------------------------------------- latent ODE


def build_latent(config: LatentConfig, key: jax.Array) -> tuple[LatentODE, GRUDeltaT]:
    """The latent ODE and the GRU-Δt baseline of a config."""
    m, s = config.model, config.solver
    k_ode, k_rnn = jax.random.split(key)
    ode = LatentODE.init(k_ode, data_dim=2, latent_dim=m.latent_dim, rec_hidden=m.rec_hidden,
                         field_width=m.field_width, dec_width=m.dec_width, dec_activation=m.dec_activation,
                         solver=SOLVERS[s.method].cls(),
                         stepping=s.stepping(), obs_std=m.obs_std)
    return ode, GRUDeltaT.init(k_rnn, data_dim=2, hidden=m.baseline_hidden)


@eqx.filter_jit
def _test_elbo(model: LatentODE, data: IrregularSeries, key: jax.Array) -> jax.Array:
    return NegativeELBO()(model, data, key)[0]


def run_latent(config: LatentConfig, folder: Path, *, progress: bool = True, resume: bool = False,
               overwrite: bool = False, raw_config: dict | None = None) -> dict:
    """Train the latent ODE and the GRU-Δt baseline (subfolders `latent_ode/`, `baseline/`), compare their
    interpolation and extrapolation MSE, write `results.json` and `figures/<name>.png`."""
    d = config.data
    train, test = series_data(d.name, jax.random.PRNGKey(d.seed), d.n_train, d.n_test, d.series)
    ode, rnn = build_latent(config, jax.random.PRNGKey(config.train.seed))
    run = _open(folder, raw_config, resume, overwrite)
    cut = config.model.min_context
    models = {"latent_ode": (ode, NegativeELBO(cut)), "baseline": (rnn, MaskedPredictionMSE(min_context=cut))}
    results: dict[str, Any] = {"name": config.name, "data": d.name, "device": jax.devices()[0].device_kind}
    for label, (model, objective) in models.items():
        sub_resume = resume and (folder / label / "checkpoints").is_dir()
        sub = _open(folder / label, None, sub_resume, overwrite or resume)
        trained, wall = _timed_fit(model, objective, train, sub, config.train, progress, sub_resume,
                                   lambda m: forecast_metrics(m, test))
        results[label] = {**forecast_metrics(trained, test), "parameters": count_parameters(trained),
                          "train_wall_time_s": wall}
        models[label] = (trained, objective)
    results["latent_ode"]["test_neg_elbo"] = float(_test_elbo(models["latent_ode"][0], test, jax.random.PRNGKey(1)))
    run.write_results(results)
    figures.plot_series(test, {k: v[0] for k, v in models.items()}, d.series.t_obs, config.name,
                        run.figure(f"{config.name}.png"))
    return results


# ------------------------------------------------------------------------------------------------ shared


def _open(folder: Path, raw_config: dict | None, resume: bool, overwrite: bool) -> RunDir:
    """The run folder: continued (one with checkpoints, or the parent of per-model folders) or created."""
    if resume:
        return RunDir.resume(folder) if (folder / "checkpoints").is_dir() else RunDir.existing(folder)
    return RunDir.create(folder, raw_config, overwrite=overwrite)


def _timed_fit(model: eqx.Module, objective: eqx.Module, data: Any, run: RunDir, train: TrainSection, progress: bool,
               resume: bool, evaluate: Callable[[eqx.Module], dict]) -> tuple[eqx.Module, float]:
    start = time.time()
    model = fit_continuous(model, objective, data, optimizer=train.optimizer(), run_dir=run, steps=train.steps,
                           batch_size=train.batch_size, seed=train.seed, log_every=train.log_every,
                           eval_every=train.eval_every, evaluate=evaluate, checkpoint_every=train.checkpoint_every,
                           progress=progress, resume=resume)
    return model, time.time() - start


class Task(NamedTuple):
    schema: type
    run: Callable[..., dict]


TASKS: dict[str, Task] = {"cnf": Task(CNFConfig, run_cnf), "latent_ode": Task(LatentConfig, run_latent)}


def load_continuous(path: str | Path, overrides: list[str] | None = None) -> tuple[Task, Any, dict]:
    """(task, validated config, raw dict with the overrides applied) of a continuous-time YAML file."""
    raw = read_yaml(path, overrides)
    task = raw.get("task")
    if task not in TASKS:
        raise ConfigError(f"{path}: task: expected one of {', '.join(map(repr, TASKS))}, got {task!r}")
    try:
        config = parse(TASKS[task].schema, raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return TASKS[task], config, dataclasses.asdict(config)


def run_config(path: str | Path, overrides: list[str] | None, folder: str | Path | None, **options: Any) -> dict:
    """Load, train, evaluate one config (`scripts/train_continuous.py`); prints and returns the results."""
    task, config, raw = load_continuous(path, overrides)
    folder = Path(folder or Path("runs") / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    results = task.run(config, folder, raw_config=raw, **options)
    print(json.dumps(results, indent=2))
    print(f"results in {folder}")
    return results
