"""`fit`: the epoch loop with checkpoints, resume, non-finite recovery and preemption handling.

Checkpoints are written every `checkpoint_every` steps and at each epoch end; a run resumed from its newest
intact checkpoint reproduces the uninterrupted run bit for bit (same data order from `fold_in(PRNGKey(seed + 1),
epoch)`, input noise keyed per (epoch, batch)). SIGTERM, SIGINT (Ctrl-C) and SIGUSR1 finish the current step,
write a checkpoint and stop cleanly (`signals`). The run folder is locked while `fit` runs (`lock`); a write that
fails (disk full) stops the run naming the file (`storage`); a fresh run that fails before its first step is
marked `"status": "failed"` in `results.json`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import numpy as np
import optax
from tqdm.auto import tqdm

from ode_nets.data import Dataset, add_input_noise, batch_indices, random_crop
from ode_nets.errors import StorageError, TrainingError
from ode_nets.models import count_parameters
from ode_nets.solvers import SOLVERS
from ode_nets.training import distributed, parallel
from ode_nets.training.checkpoint import Position, train_state
from ode_nets.training.counting import backward_counts, counts_backward_solve
from ode_nets.training.evaluation import evaluate, learned_gamma, split_metrics
from ode_nets.training.lock import hold
from ode_nets.training.objective import Objective
from ode_nets.training.options import TrainOptions
from ode_nets.training.run_dir import MetricsLog, RunDir
from ode_nets.training.signals import StopSignals
from ode_nets.training.step import train_step, without_nonfinite



def fit(model: eqx.Module, data: Dataset, *, optimizer: optax.GradientTransformation, run_dir: str | Path | RunDir,
        objective: Objective | None = None, options: TrainOptions | None = None, resume: bool = False,
        overwrite: bool = False, progress: bool = True, config: dict | str | None = None, **settings: Any) -> dict:
    """Train `model` (called as `model(x) -> logits`) on `data.train`; returns the final results (also in
    `results.json`), or {"interrupted": True, "step": ..., "signal": ...} after SIGTERM, SIGINT or SIGUSR1.

    `settings` are `TrainOptions` fields (epochs=..., batch_size=..., seed=...) and override `options`.
    `run_dir`: a folder, created (refused if it holds files, unless `overwrite`) or with `resume` continued
    from its newest intact checkpoint (from step 0 if it has none yet); or a `RunDir` already prepared. `config`
    (a dict or YAML text) is written as `config.yaml` of a new folder; on resume a changed one is recorded in
    `resumes.jsonl`. The folder is locked against other processes while `fit` runs.
    """
    options = dataclasses.replace(options or TrainOptions(), **settings)
    options.check(len(data.train), data.train.x.shape[1:])
    main = distributed.is_main()  # several processes: only process 0 locks, reads and writes the folder
    with hold(run_dir.path if isinstance(run_dir, RunDir) else run_dir) if main else contextlib.nullcontext():
        if main:
            run_dir = RunDir.open(run_dir, config, resume=resume, overwrite=overwrite)
        run_dir = distributed.process_run_dir(run_dir)
        trainer = _Trainer(model, data, optimizer, objective or Objective(), options, run_dir, progress)
        try:
            return _train(trainer, resume, config)
        except StorageError as e:
            raise StorageError(f"training stopped at step {trainer.step}: {e}; {trainer.intact()}") from None
        except Exception as e:
            if not resume and trainer.step == 0:
                trainer.mark_failed(e)
            raise


def _train(trainer: "_Trainer", resume: bool, config: dict | str | None) -> dict:
    """Restore (on resume), then the epochs until done or a stop signal."""
    if resume:
        trainer.restore(config)
    trainer.begin(resume)
    with StopSignals() as stop:
        for epoch in range(trainer.position.epoch, trainer.options.epochs):
            if trainer.done and not trainer.resumes_within(epoch):
                break
            if trainer.run_epoch(epoch, stop):
                return {"interrupted": True, "step": trainer.step, "signal": stop.fired}
    return trainer.finish()


class _Trainer:
    """The mutable state of one `fit` call: model, optimizer state, key, step, and where to write."""

    def __init__(self, model: eqx.Module, data: Dataset, optimizer: optax.GradientTransformation,
                 objective: Objective, options: TrainOptions, run_dir: RunDir, progress: bool):
        self.model, self.data, self.optimizer, self.objective = model, data, optimizer, objective
        self.options, self.run_dir, self.progress = options, run_dir, progress
        self.opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
        self.key = jax.random.PRNGKey(options.seed + 1)
        self.position = Position(step=0, epoch=0, batch=0)
        self.total_steps = options.total_steps(len(data.train))
        self.name = options.name or run_dir.path.name
        self.mesh: Any = None
        self.skipped = 0  # consecutive batches skipped for a non-finite loss or gradient (skip_nonfinite)
        self.log: MetricsLog | None = None  # opened by `begin`, as are the following
        self.n_params, self.start, self.step, self.done = 0, 0.0, 0, False
        self.window = (0.0, 0)  # (start time, examples) of the current examples/s measurement
        self.resumed: dict = {}  # the `resume` record of metrics.jsonl, set by `restore`

    def state(self) -> dict:
        return train_state(self.model, self.opt_state, self.key)

    def restore(self, config: dict | str | None) -> None:
        """Continue from the newest intact checkpoint (from step 0 if none was written yet); damaged newer ones
        are set aside as `*.damaged`. Then record a changed `config` (a failed resume changes nothing)."""
        restored = self.run_dir.restore(self.state())
        self.resumed = {"kind": "resume", "step": 0, "checkpoint": None, "skipped": []}
        if restored is not None:
            self.model, self.opt_state, self.key = (restored.state[k] for k in ("model", "opt_state", "key"))
            self.position = restored.position
            skipped = [{"checkpoint": p.name, "reason": why} for p, why in restored.skipped]
            self.resumed.update(step=self.position.step, checkpoint=restored.path.name, skipped=skipped)
            for entry in skipped:
                print(f"skipped damaged checkpoint {entry['checkpoint']} ({entry['reason']}); kept as *.damaged")
        if config is not None:
            self.run_dir.record_resume(config)

    def begin(self, resume: bool) -> None:
        """Replicate over devices if asked, open the metrics log, print the run's size; the clock starts."""
        if self.options.devices > 1 or self.options.layer_devices > 1 or jax.process_count() > 1:  # data (x layer)
            # parallel: batch axis sharded, parameters replicated (ode_nets.training.parallel), over every process's
            # devices (ode_nets.training.distributed)

            parallel.check_devices(self.options.devices, self.options.batch_size)
            self.mesh = parallel.batch_mesh(self.options.devices, self.options.layer_devices)
            self.model, self.opt_state = parallel.replicate((self.model, self.opt_state), self.mesh)
        self.log = self.run_dir.metrics_log(self.position.step if resume else None)
        if resume:
            self.log.write(self.resumed)
        self.n_params = count_parameters(self.model)
        print(f"{self.name}: {self.n_params:,} trainable parameters; {len(self.data.train)} training examples; "
              f"device {jax.devices()[0].device_kind}")
        self.start = time.time()
        self.step = self.position.step
        self.done = self.step >= self.total_steps

    def elapsed(self) -> float:
        """Training wall time over all sessions of this run (resumes included)."""
        return self.position.elapsed_s + time.time() - self.start

    def save(self, position: Position) -> None:
        position = dataclasses.replace(position, elapsed_s=self.elapsed())
        self.run_dir.save_checkpoint(self.state(), position, self.options.keep_checkpoints)

    def resumes_within(self, epoch: int) -> bool:
        """Whether this session started inside `epoch` (its evaluation is still to do even if no step is left)."""
        return epoch == self.position.epoch and self.position.batch > 0

    def run_epoch(self, epoch: int, stop: StopSignals) -> bool:
        """Train one epoch (from the resumed batch), evaluate, checkpoint; True if a stop signal ended it."""
        first_batch = self.position.batch if epoch == self.position.epoch else 0
        order_key = jax.random.fold_in(self.key, epoch)
        batches = list(batch_indices(len(self.data.train), self.options.batch_size, order_key))[first_batch:]
        last = len(batches) + first_batch - 1
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{self.options.epochs}", disable=not self.progress, leave=False)
        self.window = (time.time(), 0)
        for i, (idx, mask) in enumerate(bar, start=first_batch):
            if self.done:
                break
            batch = self.batch(idx, mask, order_key, i)
            metrics = self.train_batch(*batch, epoch, i)
            self.step += 1
            self.window = (self.window[0], self.window[1] + int(mask.sum()))
            if self.step % self.options.log_every == 0 or i == last:
                if counts_backward_solve(self.model):  # NFE of the backward solve: one extra pass (training/counting.py)
                    metrics = {**metrics, **backward_counts(self.model, *batch, self.objective)}
                self.log_train(metrics, epoch, bar)
            self.done = self.step >= self.total_steps
            next_pos = Position(self.step, epoch, i + 1)  # after the last batch: the epoch's evaluation is still to do
            if distributed.any_process(bool(stop.fired)):  # all processes stop at the same step
                signal = stop.fired or "a signal to another process"
                self.save(next_pos)
                self.log.write({"kind": "interrupted", "step": self.step, "signal": signal})
                print(f"\ninterrupted at step {self.step} ({signal}): checkpoint written; continue with "
                      f"--resume {self.run_dir.path}")
                return True
            if self.options.checkpoint_every and self.step % self.options.checkpoint_every == 0 and i != last:
                self.save(next_pos)
        bar.close()
        self.end_epoch(epoch)
        return False

    def batch(self, idx: np.ndarray, mask: np.ndarray, order_key: jax.Array, i: int) -> tuple:
        """Inputs, labels and mask of batch `i` (crops and noise keyed per (epoch, batch): a resumed run draws the
        same)."""
        rows = parallel.process_rows(len(idx))  # this process's rows of the global batch (all, with one process)
        x, y, mask = self.data.train.x[idx[rows]], self.data.train.y[idx[rows]], mask[rows]
        key = jax.random.fold_in(order_key, i)
        if self.options.random_crop:
            x = random_crop(x, self.options.random_crop, jax.random.fold_in(key, 1), rows, len(idx),
                            self.data.background)
        if self.options.input_noise:
            x = add_input_noise(x, self.options.input_noise, key, rows, len(idx))
        if self.mesh is not None:

            x, y, mask = parallel.shard_batch((x, y, mask), self.mesh)
        return x, y, mask

    def train_batch(self, x: jax.Array, y: jax.Array, mask: jax.Array, epoch: int, i: int) -> dict:
        """One step; non-finite: retry without the bad examples (drop_nonfinite_examples), then skip or stop."""
        try:
            self.model, self.opt_state, metrics = train_step(self.optimizer, self.model, self.opt_state, x, y, mask,
                                                             self.objective)
        except Exception as e:  # noqa: BLE001 - diffrax reports solver failures as runtime errors
            if "maximum number of solver steps" not in str(e):
                raise
            self.save(Position(self.step, epoch, i))  # no donation: `model` is still the last good state
            raise TrainingError(_max_steps_message(self.step, self.options.solver)) from None
        if not bool(metrics["ok"]) and self.options.drop_nonfinite_examples:
            metrics = self.retry_finite(x, y, mask, epoch, i, metrics)
        if bool(metrics["ok"]):
            self.skipped = 0
            return metrics
        self.skipped += 1  # the step kept the last good state: skip the batch, or checkpoint that state and stop
        if self.skipped > self.options.skip_nonfinite:
            self.save(Position(self.step, epoch, i))
            raise TrainingError(_nonfinite_message(self.step, self.options, metrics, self.skipped))
        self.log.write({"kind": "skipped", "step": self.step, "epoch": epoch, "batch": i, **_floats(metrics)})
        return metrics

    def retry_finite(self, x: jax.Array, y: jax.Array, mask: jax.Array, epoch: int, i: int, metrics: dict) -> dict:
        """Retry the step on the examples whose loss and gradient stay finite (if some, but not all, overflow)."""
        x, kept_mask, dropped = without_nonfinite(self.model, x, y, mask, self.objective)
        if 0 < dropped < int(mask.sum()):
            self.model, self.opt_state, metrics = train_step(self.optimizer, self.model, self.opt_state, x, y,
                                                             kept_mask, self.objective)
            self.log.write({"kind": "dropped", "step": self.step, "epoch": epoch, "batch": i, "examples": dropped,
                            "ok": bool(metrics["ok"])})
        return metrics

    def log_train(self, metrics: dict, epoch: int, bar: Any) -> None:
        start, examples = self.window
        rate = examples / max(time.time() - start, 1e-9)
        record = {"kind": "train", "step": self.step, "epoch": epoch, **_floats(metrics),
                  "gamma": learned_gamma(self.model), "examples_per_sec": rate}
        self.log.write(record)
        bar.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record['acc']:.3f}", ex_s=f"{rate:.0f}")
        self.window = (time.time(), 0)

    def end_epoch(self, epoch: int) -> None:
        """The `eval` record of the epoch (train, validation, test metrics; `wall_time_s`: the run's wall time up to
        this evaluation, earlier evaluations included), printed, and a checkpoint."""
        wall_time = self.elapsed()
        metrics = split_metrics(self.model, self.data, self.options.eval_batch_size, self.options.eval_train_examples)
        record = {"kind": "eval", "step": self.step, "epoch": epoch + 1, **metrics, "wall_time_s": wall_time}
        self.log.write(record)
        print(f"epoch {epoch + 1}: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                                  for k, v in record.items()
                                                  if k not in ("kind", "step", "epoch", "wall_time_s")))
        self.save(Position(self.step, epoch + 1, 0))

    def intact(self) -> str:
        """Which checkpoint a stopped run can continue from (for failure messages)."""
        step = self.run_dir.latest_step()
        if step is None:
            return "no checkpoint was written yet"
        return f"the checkpoint of step {step} is intact: continue with --resume {self.run_dir.path}"

    def mark_failed(self, error: Exception) -> None:
        """`results.json` = {"status": "failed", ...} for a run that failed before its first step (best effort:
        the disk may be full)."""
        try:
            self.run_dir.write_results({"name": self.name, "status": "failed", "step": self.step,
                                        "error": f"{type(error).__name__}: {error}".splitlines()[0]})
        except (OSError, StorageError):
            pass

    def finish(self) -> dict:
        """Save the final model and `results.json` (`train_wall_time_s`: all sessions of the run)."""
        wall_time = self.elapsed()
        self.run_dir.save_model(self.model)
        test = evaluate(self.model, self.data.test, self.options.eval_batch_size)
        results = {"name": self.name, "parameters": self.n_params, "test_acc": test["acc"], "test_loss": test["loss"],
                   "test_non_finite": test["non_finite"], "gamma": learned_gamma(self.model),
                   "train_wall_time_s": wall_time, "device": jax.devices()[0].device_kind}
        self.run_dir.write_results(results)
        overflowed = f" ({test['non_finite']} overflowed, counted as errors)" if test["non_finite"] else ""
        print(f"test accuracy {test['acc']:.4f}{overflowed}; trainable parameters {self.n_params:,}; "
              f"learned gamma~ {results['gamma']}; results in {self.run_dir.path}")
        return results


def _floats(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if k != "ok"}


def _max_steps_message(step: int, solver: dict) -> str:
    limit = f"solver.max_steps = {solver['max_steps']}" if "max_steps" in solver else "solver.max_steps"
    tolerances = ", ".join(f"solver.{k} = {solver[k]}" for k in ("rtol", "atol") if k in solver)
    return (f"the adaptive solver hit {limit} at step {step}: the ODE became too stiff (large gamma~ x^2) for its "
            f"tolerances ({tolerances or 'solver.rtol, solver.atol'}); raise solver.max_steps or loosen the "
            f"tolerances. The last good state is checkpointed.")


def _nonfinite_message(step: int, options: TrainOptions, metrics: dict, consecutive: int = 1) -> str:
    what = "loss" if not np.isfinite(float(metrics["loss"])) else "gradient"
    hint = ("the explicit step dt = T/L may be too large for the stiffness 3*gamma*x^2 of the cubic term "
            "(raise model.layers, lower optim.learning_rate, or set optim.clip_norm)")
    info = SOLVERS.get(options.solver.get("method"))
    if info is None or info.adaptive:
        hint += "; with an adaptive solver, also check solver.max_steps and tolerances"
    if options.skip_nonfinite:
        hint += f" ({consecutive} consecutive batches, more than train.skip_nonfinite = {options.skip_nonfinite})"
    else:
        hint += "; train.skip_nonfinite=N skips up to N such batches in a row"
    return f"non-finite {what} at step {step} (epoch counted from 0): {hint}. The last good state is checkpointed."
