"""Training: one `eqx.filter_jit` step, the epoch loop, evaluation, the run folder and checkpoints.

A run folder holds `config.yaml`, `metrics.jsonl` (one JSON object per line), `checkpoints/`,
`model.eqx` (final parameters), `results.json` and `figures/`.
"""

from __future__ import annotations

import json
import signal
import time
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import yaml
from tqdm.auto import tqdm

from ode_nets import checkpoint as ckpt
from ode_nets.config import Config, save_config
from ode_nets.data import Dataset, Split, add_input_noise, batch_indices, check_finite, load_dataset, num_batches
from ode_nets.losses import accuracy, cross_entropy, logit_level, predicted_class, smoothness
from ode_nets.build import build_model, build_optimizer
from ode_nets.models import ODENet, count_parameters, project_parameters


from ode_nets.errors import RunDirError, TrainingError  # noqa: E402  (re-exported)


# ---------------------------------------------------------------------------------------------
# pure pieces


def loss_fn(model: ODENet, x: jax.Array, y: jax.Array, mask: jax.Array, lam: float, label_smoothing: float = 0.0,
            logit_penalty: float = 0.0) -> tuple[jax.Array, dict]:
    """Cross entropy (optionally label-smoothed) + lambda * eq-113 regulariser (+ beta * logit level), and metrics."""
    logits = model(x)
    ce = cross_entropy(logits, y, mask, label_smoothing)
    reg = smoothness(model)
    loss, aux = ce + lam * reg, {"ce": ce, "reg": reg, "acc": accuracy(logits, y, mask)}
    if logit_penalty:
        aux["logit_level"] = logit_level(logits, mask)
        loss = loss + logit_penalty * aux["logit_level"]
    return loss, aux


@eqx.filter_jit
def train_step(optimizer: optax.GradientTransformation, model: ODENet, opt_state: Any, x: jax.Array, y: jax.Array,
               mask: jax.Array, lam: float, label_smoothing: float = 0.0, logit_penalty: float = 0.0
               ) -> tuple[ODENet, Any, dict]:
    """One optimizer step (then gamma~ >= 0, `project_parameters`).

    A non-finite loss or gradient leaves model and optimizer state unchanged (`ok` = False).
    """
    (loss, aux), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(model, x, y, mask, lam, label_smoothing,
                                                                          logit_penalty)
    updates, new_opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
    new_model = project_parameters(eqx.apply_updates(model, updates))
    grad_norm = optax.global_norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa: E731
    model = eqx.combine(keep(eqx.filter(new_model, eqx.is_array), eqx.filter(model, eqx.is_array)),
                        eqx.filter(model, eqx.is_array, inverse=True))
    opt_state = keep(new_opt_state, opt_state)
    return model, opt_state, {"loss": loss, "grad_norm": grad_norm, "ok": ok, **aux}


@eqx.filter_jit
def finite_examples(model: ODENet, x: jax.Array, y: jax.Array, lam: float, label_smoothing: float = 0.0,
                    logit_penalty: float = 0.0) -> jax.Array:
    """True for the examples whose own loss and gradient are finite (one vmapped fwd + bwd per example).

    The forward alone is not enough: on MNIST a loss of ~1e32 stayed finite while its backward overflowed.
    """
    def finite(xi: jax.Array, yi: jax.Array) -> jax.Array:
        loss, grads = eqx.filter_value_and_grad(lambda m: loss_fn(m, xi[None], yi[None], jnp.ones(1), lam,
                                                                  label_smoothing, logit_penalty)[0])(model)
        return jnp.isfinite(loss) & jnp.isfinite(optax.global_norm(grads))

    return jax.vmap(finite)(x, y)


def without_nonfinite(model: ODENet, x: jax.Array, y: jax.Array, mask: jax.Array, lam: float,
                      label_smoothing: float = 0.0, logit_penalty: float = 0.0) -> tuple[jax.Array, jax.Array, int]:
    """The batch with the examples whose loss or gradient overflows zeroed and masked out (loss weight 0),
    and how many were dropped. Zeroing the input keeps 0 * inf = NaN out of the backward pass."""
    keep = finite_examples(model, x, y, lam, label_smoothing, logit_penalty)
    x = jnp.where(keep.reshape((-1,) + (1,) * (x.ndim - 1)), x, 0.0)
    return x, mask * keep, int(jnp.sum((~keep) & (mask > 0)))


@eqx.filter_jit
def eval_step(model: ODENet, x: jax.Array, y: jax.Array, mask: jax.Array
              ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Summed loss over the finite unmasked examples, number correct, and number whose loss is not finite."""
    logits = model(x)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    finite = jnp.isfinite(losses)
    correct = (predicted_class(logits) == y).astype(jnp.float32)
    return (jnp.sum(jnp.where(finite, losses, 0.0) * mask), jnp.sum(correct * mask),
            jnp.sum(jnp.where(finite, 0.0, mask)))


def evaluate(model: ODENet, split: Split, batch_size: int) -> dict[str, float]:
    """Accuracy over a whole split, mean cross entropy over its examples with a finite loss, and the number of
    examples whose explicit solve overflowed (`non_finite`; they count as errors, and the loss is NaN if all do)."""
    batch_size = min(batch_size, len(split))
    total_loss, total_correct, non_finite = 0.0, 0.0, 0.0
    for idx, mask in batch_indices(len(split), batch_size, None):
        loss, correct, bad = eval_step(model, split.x[idx], split.y[idx], mask)
        total_loss += float(loss)
        total_correct += float(correct)
        non_finite += float(bad)
    finite = len(split) - non_finite
    return {"loss": total_loss / finite if finite else float("nan"), "acc": total_correct / len(split),
            "non_finite": int(non_finite)}


@eqx.filter_jit
def _probabilities(model: ODENet, x: jax.Array) -> jax.Array:
    return jax.nn.softmax(model(x), -1)


def predict(model: ODENet, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Class probabilities for all of `x`, (n, classes); one compiled function shared by all calls."""
    chunks = [np.asarray(_probabilities(model, x[i:i + batch_size])) for i in range(0, len(x), batch_size)]
    return np.concatenate(chunks)


def learned_gamma(model: ODENet) -> float | None:
    """The scaled nonlinearity gamma~ of the field, if it has one."""
    gamma = getattr(model.field, "gamma", None)
    return None if gamma is None else float(gamma)


# ---------------------------------------------------------------------------------------------
# the run


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


def build_run(config: Config, folder: Path, dataset: Dataset | None = None) -> Run:
    """Dataset, model and optimizer for `config` (all randomness from `config.seed`)."""
    k_data, k_model = jax.random.split(jax.random.PRNGKey(config.seed))
    if dataset is None:
        dataset = load_dataset(config.data, k_data)
    check_finite(dataset)
    if config.train.batch_size > len(dataset.train):
        raise ValueError(f"train.batch_size = {config.train.batch_size} is larger than the training set "
                         f"({len(dataset.train)} examples); lower it")
    model = build_model(config, dataset.input_shape, dataset.num_classes, k_model)
    steps_per_epoch = num_batches(len(dataset.train), config.train.batch_size)
    total = steps_per_epoch * config.train.epochs
    if config.train.max_steps is not None:
        total = min(total, config.train.max_steps)
    return Run(config, folder, dataset, model, build_optimizer(config.optim, total), steps_per_epoch, total)


def prepare_folder(folder: Path, config: Config, *, overwrite: bool, resume: bool) -> None:
    """Create the run folder; refuse to reuse one unless `overwrite` (wipes it) or `resume`."""
    import shutil

    if resume:
        if not (folder / "checkpoints").is_dir():
            raise RunDirError(f"cannot resume: {folder} has no checkpoints/ folder")
        return
    if folder.exists() and any(folder.iterdir()):
        if not overwrite:
            raise RunDirError(f"run folder {folder} already exists; pass --overwrite to replace it or "
                              f"--resume {folder} to continue it")
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_config(config, folder / "config.yaml")


def _flat(tree: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def record_resume(folder: Path, config: Config) -> None:
    """On `--resume` with overrides: save the new config.yaml and log what changed to `resumes.jsonl`.

    The run folder then always holds the config that is running, and the history of changes (with the
    checkpoint step each took effect from) stays readable next to it.
    """
    from ode_nets.config import load_config, to_dict

    old, new = _flat(to_dict(load_config(folder / "config.yaml"))), _flat(to_dict(config))
    changed = {k: [old.get(k), v] for k, v in new.items() if old.get(k) != v}
    if not changed:
        return
    checkpoints = ckpt.list_checkpoints(folder / "checkpoints")
    step = ckpt.checkpoint_step(checkpoints[-1]) if checkpoints else None
    with (folder / "resumes.jsonl").open("a") as f:
        f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "from_step": step, "changed": changed}) + "\n")
    ckpt.atomic_write_bytes(folder / "config.yaml", yaml.safe_dump(to_dict(config), sort_keys=False).encode())


def resume_config(folder: Path, overrides: list[str]) -> Config:
    """The config saved in a run folder (plus overrides), for `--resume`."""
    from ode_nets.config import load_config

    if not (folder / "config.yaml").is_file() or not (folder / "checkpoints").is_dir():
        raise RunDirError(f"cannot resume: {folder} is not a run folder with checkpoints "
                          f"(expected {folder / 'config.yaml'} and {folder / 'checkpoints'}/)")
    return load_config(folder / "config.yaml", overrides)


class MetricsLog:
    """Append-only JSON-lines metrics; on resume, lines after the checkpoint's step are dropped."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = path
        if resume_step is not None and path.exists():
            lines = [line for line in path.read_text().splitlines() if line.strip()]
            kept = [line for line in lines if json.loads(line).get("step", 0) <= resume_step]
            ckpt.atomic_write_bytes(path, "".join(line + "\n" for line in kept).encode())

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def _train_state(model: ODENet, opt_state: Any, key: jax.Array) -> dict:
    return {"model": model, "opt_state": opt_state, "key": key}


def checkpoint_template(run: Run) -> dict:
    """A train state of `run`'s structure (fresh model and optimizer state) to restore checkpoints into."""
    opt_state = run.optimizer.init(eqx.filter(run.model, eqx.is_inexact_array))
    return _train_state(run.model, opt_state, jax.random.PRNGKey(0))


def fit(run: Run, *, resume: bool = False, progress: bool = True) -> dict:
    """Train `run.model`; returns the final results (also written to `results.json`).

    Checkpoints are written every `train.checkpoint_every` steps and at each epoch end; a run
    resumed from its newest checkpoint reproduces the uninterrupted run bit for bit (same data
    order, same PRNG keys). Ctrl-C writes a checkpoint and stops cleanly.
    """
    cfg, folder = run.config, run.folder
    model = run.model
    opt_state = run.optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    key = jax.random.PRNGKey(cfg.seed + 1)
    position = ckpt.Position(step=0, epoch=0, batch=0)
    if resume:
        state, position = ckpt.load_latest(folder / "checkpoints", _train_state(model, opt_state, key))
        model, opt_state, key = state["model"], state["opt_state"], state["key"]
        record_resume(folder, cfg)  # only once the checkpoint has loaded: a failed resume changes nothing
    mesh = None
    if cfg.train.devices > 1:  # data parallel: batch axis sharded, parameters replicated (ode_nets.parallel)
        from ode_nets import parallel

        parallel.check_devices(cfg.train.devices, cfg.train.batch_size)
        mesh = parallel.batch_mesh(cfg.train.devices)
        model, opt_state = parallel.replicate((model, opt_state), mesh)
    log = MetricsLog(folder / "metrics.jsonl", position.step if resume else None)
    n_params = count_parameters(model)
    print(f"{cfg.name}: {n_params:,} trainable parameters; {len(run.dataset.train)} training examples; "
          f"device {jax.devices()[0].device_kind}")
    lam = cfg.loss.smoothness

    def elapsed() -> float:  # training wall time over all sessions of this run (resumes included)
        return position.elapsed_s + time.time() - start

    def save(pos: ckpt.Position) -> None:
        pos = dataclasses.replace(pos, elapsed_s=elapsed())
        ckpt.save_checkpoint(folder / "checkpoints", _train_state(model, opt_state, key), pos, cfg.train.keep_checkpoints)

    interrupted = _InterruptFlag()
    start = time.time()
    step = position.step
    done = step >= run.total_steps
    skipped = 0  # consecutive batches skipped for a non-finite loss or gradient (train.skip_nonfinite)
    with interrupted:
        for epoch in range(position.epoch, cfg.train.epochs):
            if done:
                break
            first_batch = position.batch if epoch == position.epoch else 0
            order_key = jax.random.fold_in(key, epoch)
            batches = list(batch_indices(len(run.dataset.train), cfg.train.batch_size, order_key))[first_batch:]
            bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", disable=not progress, leave=False)
            window_start, window_examples = time.time(), 0
            for i, (idx, mask) in enumerate(bar, start=first_batch):
                x, y = run.dataset.train.x[idx], run.dataset.train.y[idx]
                if cfg.train.input_noise:  # a key per (epoch, batch): a resumed run draws the same noise
                    x = add_input_noise(x, cfg.train.input_noise, jax.random.fold_in(order_key, i))
                if mesh is not None:
                    x, y, mask = parallel.shard_batch((x, y, mask), mesh)
                try:
                    model, opt_state, metrics = train_step(run.optimizer, model, opt_state, x, y, mask, lam,
                                                            cfg.loss.label_smoothing, cfg.loss.logit_penalty)
                except Exception as e:  # noqa: BLE001 - diffrax reports solver failures as runtime errors
                    if "maximum number of solver steps" not in str(e):
                        raise
                    save(ckpt.Position(step, epoch, i))  # no donation: `model` is still the last good state
                    raise TrainingError(f"the adaptive solver hit solver.max_steps = {cfg.solver.max_steps} at step "
                                        f"{step}: the ODE became too stiff (large gamma~ x^2) for rtol = "
                                        f"{cfg.solver.rtol}; raise solver.max_steps or loosen the tolerances. "
                                        f"The last good state is checkpointed.") from None
                if not bool(metrics["ok"]) and cfg.train.drop_nonfinite_examples:
                    x, dropped_mask, dropped = without_nonfinite(model, x, y, mask, lam, cfg.loss.label_smoothing,
                                                                 cfg.loss.logit_penalty)
                    if 0 < dropped < int(mask.sum()):  # retry the step on the examples that stay finite
                        model, opt_state, metrics = train_step(run.optimizer, model, opt_state, x, y, dropped_mask,
                                                                lam, cfg.loss.label_smoothing, cfg.loss.logit_penalty)
                        log.write({"kind": "dropped", "step": step, "epoch": epoch, "batch": i, "examples": dropped,
                                   "ok": bool(metrics["ok"])})
                if bool(metrics["ok"]):
                    skipped = 0
                else:  # the step kept the last good state: skip the batch, or checkpoint that state and stop
                    skipped += 1
                    if skipped > cfg.train.skip_nonfinite:
                        save(ckpt.Position(step, epoch, i))
                        raise TrainingError(_nonfinite_message(step, cfg, metrics, skipped))
                    log.write({"kind": "skipped", "step": step, "epoch": epoch, "batch": i, **_floats(metrics)})
                step += 1
                window_examples += int(mask.sum())
                if step % cfg.train.log_every == 0 or i == len(batches) + first_batch - 1:
                    rate = window_examples / max(time.time() - window_start, 1e-9)
                    record = {"kind": "train", "step": step, "epoch": epoch, **_floats(metrics),
                              "gamma": learned_gamma(model), "examples_per_sec": rate}
                    log.write(record)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record['acc']:.3f}", ex_s=f"{rate:.0f}")
                    window_start, window_examples = time.time(), 0
                done = step >= run.total_steps
                epoch_over = i == len(batches) + first_batch - 1
                next_pos = ckpt.Position(step, epoch + 1, 0) if epoch_over else ckpt.Position(step, epoch, i + 1)
                if interrupted.fired:
                    save(next_pos)
                    print(f"\ninterrupted at step {step}: checkpoint written; continue with --resume {folder}")
                    return {"interrupted": True, "step": step}
                if cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0 and not epoch_over:
                    save(next_pos)
                if done:
                    break
            bar.close()
            record = {"kind": "eval", "step": step, "epoch": epoch + 1, **split_metrics(model, run.dataset, cfg)}
            log.write(record)
            print(f"epoch {epoch + 1}: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                                      for k, v in record.items() if k not in ("kind", "step", "epoch")))
            save(ckpt.Position(step, epoch + 1, 0))
    return finish(run, model, n_params, elapsed())


def finish(run: Run, model: ODENet, n_params: int, wall_time: float) -> dict:
    """Save the final model and `results.json` (`train_wall_time_s`: all sessions of the run); returns the results."""
    ckpt.atomic_save_tree(run.folder / "model.eqx", model)
    test = evaluate(model, run.dataset.test, run.config.train.eval_batch_size)
    results = {"name": run.config.name, "parameters": n_params, "test_acc": test["acc"], "test_loss": test["loss"],
               "test_non_finite": test["non_finite"],
               "gamma": learned_gamma(model), "train_wall_time_s": wall_time, "device": jax.devices()[0].device_kind}
    ckpt.atomic_write_bytes(run.folder / "results.json", json.dumps(results, indent=2).encode())
    overflowed = f" ({test['non_finite']} overflowed, counted as errors)" if test["non_finite"] else ""
    print(f"test accuracy {test['acc']:.4f}{overflowed}; trainable parameters {n_params:,}; "
          f"learned gamma~ {results['gamma']}; results in {run.folder}")
    return results


def split_metrics(model: ODENet, dataset: Dataset, cfg: Config) -> dict[str, float]:
    """Loss and accuracy on train (its first `train.eval_train_examples`), validation and test splits, and
    `<split>_non_finite` where some examples overflowed (see `evaluate`)."""
    out = {}
    train = dataset.train
    if cfg.train.eval_train_examples is not None and cfg.train.eval_train_examples < len(train):
        train = Split(train.x[:cfg.train.eval_train_examples], train.y[:cfg.train.eval_train_examples])
    for name, split in (("train", train), ("validation", dataset.validation), ("test", dataset.test)):
        if split is not None:
            m = evaluate(model, split, cfg.train.eval_batch_size)
            out[f"{name}_loss"], out[f"{name}_acc"] = m["loss"], m["acc"]
            if m["non_finite"]:
                out[f"{name}_non_finite"] = m["non_finite"]
    return out


def _floats(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if k != "ok"}


def _nonfinite_message(step: int, cfg: Config, metrics: dict, consecutive: int = 1) -> str:
    what = "loss" if not np.isfinite(float(metrics["loss"])) else "gradient"
    hint = ("the explicit step dt = T/L may be too large for the stiffness 3*gamma*x^2 of the cubic term "
            "(raise model.layers, lower optim.learning_rate, or set optim.clip_norm)")
    if cfg.solver.method not in ("euler", "heun", "midpoint", "ralston"):
        hint += "; with an adaptive solver, also check solver.max_steps and tolerances"
    if cfg.train.skip_nonfinite:
        hint += f" ({consecutive} consecutive batches, more than train.skip_nonfinite = {cfg.train.skip_nonfinite})"
    else:
        hint += "; train.skip_nonfinite=N skips up to N such batches in a row"
    return f"non-finite {what} at step {step} (epoch counted from 0): {hint}. The last good state is checkpointed."


class _InterruptFlag:
    """Context manager: the first Ctrl-C sets `fired` instead of raising, so the loop can checkpoint."""

    def __init__(self) -> None:
        self.fired = False
        self._previous: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        self.fired = True

    def __enter__(self) -> "_InterruptFlag":
        try:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not in the main thread
            self._previous = None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def load_run(folder: Path) -> tuple[Config, Dataset, ODENet]:
    """Config, dataset and final (or newest checkpointed) model of a run folder."""
    from ode_nets.config import load_config

    config = load_config(folder / "config.yaml")
    run = build_run(config, folder)
    if (folder / "model.eqx").is_file():
        model = ckpt.load_tree(folder / "model.eqx", run.model)
    else:
        state, _ = ckpt.load_latest(folder / "checkpoints", checkpoint_template(run))
        model = state["model"]
    return config, run.dataset, model
