"""Weight averaging of checkpoints: stochastic weight averaging (SWA, Izmailov et al. 2018).

Train on at a constant (not annealed) learning rate, keep the checkpoints it passes, and average their
parameters. The mean of points scattered around a minimum lies nearer its flat centre than any one of them.
The average is taken offline over the checkpoints of one run folder and written as a new run folder
(`config.yaml`, `model.eqx`, `results.json`, which names the source run and the steps averaged) that `scripts/evaluate.py` and
`scripts/plot.py` read like any other run; the source run is only read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import equinox as eqx
import jax
from jaxtyping import PyTree

from ode_nets.build import build_run, checkpoint_template
from ode_nets.config import load_config, to_dict
from ode_nets.errors import RunDirError
from ode_nets.models import count_parameters
from ode_nets.training import RunDir, learned_gamma, split_metrics
from ode_nets.training import checkpoint as ckpt


def average_models(models: Sequence[PyTree]) -> PyTree:
    """Element-wise mean of the floating-point arrays of `models` (one structure); the rest from the first."""
    if not models:
        raise ValueError("no models to average")
    params = [eqx.filter(m, eqx.is_inexact_array) for m in models]
    mean = jax.tree_util.tree_map(lambda *leaves: sum(leaves[1:], leaves[0]) / len(leaves), *params)
    return eqx.combine(mean, eqx.filter(models[0], eqx.is_inexact_array, inverse=True))


def select_checkpoints(folder: Path, from_step: int, to_step: int | None = None) -> list[Path]:
    """The checkpoints of `folder` with from_step <= step (<= to_step), oldest first; an error if there are none."""
    found = ckpt.list_checkpoints(folder)
    steps = [ckpt.checkpoint_step(p) for p in found]
    chosen = [p for p, step in zip(found, steps) if step >= from_step and (to_step is None or step <= to_step)]
    if not chosen:
        raise ckpt.CheckpointError(f"no checkpoint in {folder} with step in [{from_step}, {to_step or 'end'}] "
                                   f"(it holds steps {steps or 'none'}; train.keep_checkpoints limits how many are kept)")
    return chosen


def average_run(source: Path, target: Path, from_step: int, to_step: int | None = None, *,
                overwrite: bool = False) -> dict:
    """Average the checkpoints of run `source` from `from_step` on into a new run folder `target`.

    Returns (and writes to `target/results.json`) the averaged model's test accuracy and loss, its train
    metrics on `train.eval_train_examples`, gamma~ and the steps averaged.
    """
    source, target = RunDir.existing(source), RunDir(target)
    if source.path.resolve() == target.path.resolve():
        raise RunDirError("the averaged run needs its own folder (the source run is never modified)")
    if target.path.exists() and any(target.path.iterdir()) and not overwrite:
        raise RunDirError(f"{target.path} already exists; pass --overwrite to replace it")
    paths = select_checkpoints(source.checkpoints, from_step, to_step)
    config = load_config(source.config_path)
    run = build_run(config, target.path)
    like = checkpoint_template(run)
    model = average_models([ckpt.load_checkpoint(p, like)[0]["model"] for p in paths])
    target = RunDir.create(target.path, to_dict(config), overwrite=True)
    target.save_model(model)
    metrics = split_metrics(model, run.dataset, config.train.eval_batch_size, config.train.eval_train_examples)
    steps = [ckpt.checkpoint_step(p) for p in paths]
    results = {"name": config.name, "averaged_from": str(source.path), "steps": steps, "test_acc": metrics["test_acc"],
               "test_loss": metrics["test_loss"], "test_non_finite": metrics.get("test_non_finite", 0),
               "train_acc": metrics["train_acc"], "gamma": learned_gamma(model),
               "parameters": count_parameters(model)}
    target.write_results(results)
    return results
