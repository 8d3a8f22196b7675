"""The settings of a training run (the `train` section of a config, without the config)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ode_nets.errors import ConfigError


@dataclass(frozen=True)
class TrainOptions:
    """How `fit` trains; each field has the meaning of the config key `train.<field>` (`seed`: the run's seed,
    the data order and noise come from PRNGKey(seed + 1)).

    `name` labels the run in its output and `results.json` (default: the run folder's name). `solver` holds
    solver settings by config key (`method`, `max_steps`, `rtol`, `atol`), used only to word failure messages.
    """

    epochs: int = 10
    batch_size: int = 32
    seed: int = 0
    eval_batch_size: int = 1000
    eval_train_examples: Optional[int] = None
    log_every: int = 10
    checkpoint_every: int = 0  # 0: only at the end of each epoch
    keep_checkpoints: int = 3
    max_steps: Optional[int] = None
    skip_nonfinite: int = 0
    drop_nonfinite_examples: bool = False
    input_noise: float = 0.0
    random_crop: int = 0
    devices: int = 1
    layer_devices: int = 1
    name: Optional[str] = None
    solver: dict[str, Any] = field(default_factory=dict)

    def steps_per_epoch(self, n_train: int) -> int:
        return -(-n_train // self.batch_size)

    def total_steps(self, n_train: int) -> int:
        """Optimizer steps of the whole run: all epochs, capped by `max_steps`."""
        total = self.steps_per_epoch(n_train) * self.epochs
        return total if self.max_steps is None else min(total, self.max_steps)

    def check(self, n_train: int, input_shape: tuple[int, ...]) -> None:
        """Refuse settings that cannot train on `n_train` examples of shape `input_shape`."""
        if self.random_crop and len(input_shape) != 3:
            raise ConfigError(f"train.random_crop = {self.random_crop} shifts images (C, H, W), but the inputs have "
                              f"shape {tuple(input_shape)}; set it to 0 for this dataset")
        if self.batch_size > n_train:
            raise ConfigError(f"train.batch_size = {self.batch_size} is larger than the training set "
                              f"({n_train} examples); lower it")
        for name in ("epochs", "batch_size", "log_every", "keep_checkpoints", "devices", "eval_batch_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name}: must be > 0, got {getattr(self, name)}")
