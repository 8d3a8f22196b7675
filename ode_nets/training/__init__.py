"""Training as a package: the objective, the compiled step, evaluation, the run folder, checkpoints, `fit`.

Nothing here reads a `Config`: `ode_nets.build` turns a config into the arguments of `fit`. In plain Python:

    from ode_nets.training import fit
    results = fit(model, dataset, optimizer=optax.adamw(1e-2), epochs=600, run_dir="runs/x")

- `objective`: `Objective`, the training loss (cross entropy + smoothness + z-loss).
- `step`: `train_step`, `finite_examples`/`without_nonfinite`, `eval_step`.
- `evaluation`: `evaluate`, `evaluate_split`, `split_metrics`, `predict`, `boundary_radii`, confusion matrices.
- `run_dir`: `RunDir` (config.yaml, metrics.jsonl, checkpoints/, model.eqx, results.json, figures/), `MetricsLog`.
- `checkpoint`: atomic, resumable checkpoints (`Position`, `save_checkpoint`, `load_latest`, ...).
- `options`: `TrainOptions`, the settings of `fit`.
- `loop`: `fit`.
- `parallel`, `distributed`: data parallelism over devices, and over processes/machines (`jax.distributed`).
"""

from ode_nets.errors import CheckpointError, RunDirError, TrainingError
from ode_nets.training.checkpoint import Position
from ode_nets.training.evaluation import (boundary_radii, confusion_matrix, evaluate, evaluate_split, evaluate_test,
                                          format_confusion, learned_gamma, predict, split_metrics)
from ode_nets.training.loop import fit
from ode_nets.training.objective import Objective
from ode_nets.training.options import TrainOptions
from ode_nets.training.run_dir import MetricsLog, RunDir
from ode_nets.training.step import eval_step, finite_examples, train_step, value_and_grad, without_nonfinite

__all__ = ["CheckpointError", "MetricsLog", "Objective", "Position", "RunDir", "RunDirError", "TrainOptions",
           "TrainingError", "boundary_radii", "confusion_matrix", "eval_step", "evaluate", "evaluate_split",
           "evaluate_test", "finite_examples", "fit", "format_confusion", "learned_gamma", "predict",
           "split_metrics", "train_step", "value_and_grad", "without_nonfinite"]
