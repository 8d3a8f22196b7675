"""ode_nets: deep neural networks as differential equations (JAX + Equinox + Diffrax).

The training API is available at the top level, imported on first use (so `import ode_nets.config` stays light):

    import ode_nets as on, optax
    results = on.fit(model, dataset, optimizer=optax.adamw(1e-2), epochs=600, run_dir="runs/x")
"""

from __future__ import annotations

from typing import Any

_TRAINING = ("fit", "Objective", "RunDir", "TrainOptions", "train_step", "evaluate", "evaluate_split", "predict",
             "split_metrics")


def __getattr__(name: str) -> Any:
    if name in _TRAINING:
        from ode_nets import training

        return getattr(training, name)
    raise AttributeError(f"module 'ode_nets' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_TRAINING])
