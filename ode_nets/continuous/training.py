"""Training of the continuous-time models (not classifiers): a step loop over random batches of any pytree of
arrays, with the run folder, `metrics.jsonl` and checkpoints of `ode_nets.training`.

An objective is any `eqx.Module` called as `objective(model, batch, key) -> (loss, aux)` (`NegativeLogLikelihood`,
`NegativeELBO`, `MaskedPredictionMSE`): unlike the classifiers' `Objective` it takes a key, for the Hutchinson
probes and the reparameterised z0. Batch b of a run is drawn from fold_in(PRNGKey(seed + 1), b), so a run
resumed from a checkpoint continues exactly as the uninterrupted one would.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import PyTree
from tqdm.auto import tqdm

from ode_nets.errors import TrainingError
from ode_nets.training.checkpoint import Position, train_state
from ode_nets.training.run_dir import MetricsLog, RunDir


@eqx.filter_jit
def continuous_step(objective: eqx.Module, optimizer: optax.GradientTransformation, model: eqx.Module,
                    opt_state: Any, batch: PyTree, key: jax.Array) -> tuple[eqx.Module, Any, dict]:
    """One optimizer step on `objective(model, batch, key)`; returns the loss, aux and gradient norm."""
    (loss, aux), grads = eqx.filter_value_and_grad(lambda m: objective(m, batch, key), has_aux=True)(model)
    updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
    return eqx.apply_updates(model, updates), opt_state, {"loss": loss, "grad_norm": optax.global_norm(grads), **aux}


def random_batch(data: PyTree, batch_size: int, key: jax.Array) -> PyTree:
    """`batch_size` examples drawn without replacement (every leaf indexed alike on its leading axis)."""
    n = len(jax.tree_util.tree_leaves(data)[0])
    idx = np.asarray(jax.random.choice(key, n, (batch_size,), replace=False))
    return jax.tree_util.tree_map(lambda a: a[idx], data)


def fit_continuous(model: eqx.Module, objective: eqx.Module, data: PyTree, *, optimizer: optax.GradientTransformation,
                   run_dir: str | Path | RunDir, steps: int, batch_size: int, seed: int = 0, log_every: int = 25,
                   eval_every: int = 0, evaluate: Callable[[eqx.Module], dict] | None = None,
                   checkpoint_every: int = 500, progress: bool = True, resume: bool = False, overwrite: bool = False,
                   config: dict | str | None = None) -> eqx.Module:
    """Train for `steps` steps; `train` records every `log_every` steps and `eval` records (`evaluate(model)`)
    every `eval_every` steps and at the end go to `metrics.jsonl`; the final model to `model.eqx`."""
    run = RunDir.open(run_dir, config, resume=resume, overwrite=overwrite)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    key, start = jax.random.PRNGKey(seed + 1), 0
    if resume:
        state, position = run.load_latest(train_state(model, opt_state, key))
        model, opt_state, key, start = state["model"], state["opt_state"], state["key"], position.step
    log, begun = run.metrics_log(start if resume else None), time.time()
    for step in tqdm(range(start, steps), disable=not progress, desc=run.path.name):
        k_batch, k_step = jax.random.split(jax.random.fold_in(key, step))
        batch = random_batch(data, batch_size, k_batch)
        model, opt_state, metrics = _checked_step(objective, optimizer, (model, opt_state, key), batch, k_step, run,
                                                  step)
        done = step + 1
        if done % log_every == 0 or done == steps:
            log.write({"kind": "train", "step": done, **{k: float(v) for k, v in metrics.items()},
                       "wall_s": time.time() - begun})
        if evaluate is not None and ((eval_every and done % eval_every == 0) or done == steps):
            log.write({"kind": "eval", "step": done, **evaluate(model)})
        if (checkpoint_every and done % checkpoint_every == 0) or done == steps:
            run.save_checkpoint(train_state(model, opt_state, key), Position(done, 0, 0), keep=2)
    run.save_model(model)
    return model


def _checked_step(objective: eqx.Module, optimizer: optax.GradientTransformation, state: tuple, batch: PyTree,
                  key: jax.Array, run: RunDir, step: int) -> tuple:
    """`continuous_step`, stopping with `TrainingError` (last good state checkpointed) on a non-finite loss or
    gradient or a solve that hit its step limit."""
    model, opt_state, run_key = state
    try:
        new_model, new_opt_state, metrics = continuous_step(objective, optimizer, model, opt_state, batch, key)
        finite = bool(jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"]))
    except Exception as e:  # noqa: BLE001 - diffrax reports a solve over max_steps as a runtime error
        if "maximum number of solver steps" not in str(e):
            raise
        finite = False
    if not finite:
        run.save_checkpoint(train_state(model, opt_state, run_key), Position(step, 0, 0), keep=2)
        raise TrainingError(f"non-finite loss or gradient, or a solve over solver.max_steps, at step {step}: lower "
                            f"train.learning_rate or loosen solver.rtol/atol. The last good state is checkpointed "
                            f"in {run.checkpoints}")
    return new_model, new_opt_state, metrics
