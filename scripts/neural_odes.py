"""Neural ODE experiments (docs/neural_odes.md):

  python scripts/neural_odes.py flip --out docs/figures/anode_flip.png         # g(x) = -x: NODE vs ANODE
  python scripts/neural_odes.py flow runs/circles_node runs/circles_anode --out docs/figures/circles_flows.png
  python scripts/neural_odes.py compare runs/A runs/B ... [--out curves.png] [--epoch N]  # table: accuracy, NFE, wall time
  python scripts/neural_odes.py timing --config configs/mnist_odenet.yaml --steps 20 [key.sub=value ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ode_nets.cli import run_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    flip = sub.add_parser("flip", help="train NODE and ANODE on g(x) = -x and plot their flows")
    flip.add_argument("--out", type=Path, default=Path("docs/figures/anode_flip.png"))
    flip.add_argument("--steps", type=int, default=300)
    flow = sub.add_parser("flow", help="trajectories of test points through finished circles runs")
    flow.add_argument("runs", type=Path, nargs="+")
    flow.add_argument("--out", type=Path, default=Path("docs/figures/circles_flows.png"))
    flow.add_argument("--points", type=int, default=300)
    compare = sub.add_parser("compare", help="markdown table (and curves) of finished runs")
    compare.add_argument("runs", type=Path, nargs="+")
    compare.add_argument("--out", type=Path, default=None, help="PNG of loss and NFE curves")
    compare.add_argument("--epoch", type=int, default=None,
                         help="summarise every run after this epoch (its eval record) instead of at its end")
    timing = sub.add_parser("timing", help="time N training steps of a config (no evaluation)")
    timing.add_argument("--config", type=Path, required=True)
    timing.add_argument("--steps", type=int, default=20)
    timing.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    args = parser.parse_args(argv)
    return run_cli(lambda: COMMANDS[args.command](args))


def run_flip(args: argparse.Namespace) -> None:
    import jax
    import jax.numpy as jnp

    from ode_nets.experiments.neural_odes import fit_flip, flow
    from ode_nets.plotting.neural_odes import plot_flip

    x = jnp.linspace(-1.0, 1.0, 11)[:, None]
    states = {}
    for augment in (0, 1):
        model, losses = fit_flip(augment, jax.random.PRNGKey(0), steps=args.steps)
        print(f"{'ANODE' if augment else 'NODE'}: final MSE {losses[-1]:.4f} (x = -1 -> {float(model(x[:1])[0, 0]):.3f}, "
              f"x = 1 -> {float(model(x[-1:])[0, 0]):.3f})")
        times, states[augment] = flow(model, x)
    print(plot_flip(times, states[0], states[1], args.out))


def run_flow(args: argparse.Namespace) -> None:
    import numpy as np

    from ode_nets.build import load_run
    from ode_nets.experiments.neural_odes import flow
    from ode_nets.plotting.neural_odes import plot_flows

    panels = []
    for folder in args.runs:
        config, dataset, model = load_run(folder)
        x, y = dataset.test.x[:args.points], np.asarray(dataset.test.y[:args.points])
        panels.append((f"{config.name}: state dimension {x.shape[1] + config.model.augment}", flow(model, x)[1], y))
    print(plot_flows(panels, args.out))


def run_compare(args: argparse.Namespace) -> None:
    from ode_nets.experiments.neural_odes import run_summary, summary_table
    from ode_nets.plotting.neural_odes import plot_runs

    print(summary_table([run_summary(folder, args.epoch) for folder in args.runs]))
    if args.out:
        print(plot_runs(args.runs, args.out))


def run_timing(args: argparse.Namespace) -> None:
    import json

    from ode_nets.config import load_config
    from ode_nets.experiments.neural_odes import time_training

    print(json.dumps(time_training(load_config(args.config, args.overrides), args.steps), indent=1))


COMMANDS = {"flip": run_flip, "flow": run_flow, "compare": run_compare, "timing": run_timing}

if __name__ == "__main__":
    sys.exit(main())
