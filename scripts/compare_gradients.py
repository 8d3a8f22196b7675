"""Gradient strategies side by side: accuracy, time, memory and evaluations vs depth L.

  python scripts/compare_gradients.py --config configs/circles_model2_sgd.yaml --layers 10 20 50 \
      --solvers euler midpoint tsit5:1e-6 --out runs/compare_circles [key.sub=value ...]

Writes results.json, table.md and comparison.png to --out (default runs/compare_<config name>).
The model uses a random non-zero init unless overridden (model.init=normal, model.init_scale=0.05 at the config's L;
scaled parameters are rescaled by L_config / L so that the continuous model is the same at every depth).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ode_nets.cli import run_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path)
    parser.add_argument("--rerender", type=Path, default=None, help="only rewrite table.md/comparison.png of DIR")
    parser.add_argument("--layers", type=int, nargs="+", default=[10, 20, 50, 100, 200])
    parser.add_argument("--solvers", nargs="+", default=["euler"], help="euler | midpoint:4 | tsit5:1e-6 ...")
    parser.add_argument("--strategies", nargs="+", default=None)
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: train.batch_size)")
    parser.add_argument("--random-batch", action="store_true", help="random N(0,1) inputs of the data's shape")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    args = parser.parse_args(argv)

    def job() -> None:
        import jax
        import numpy as np

        from ode_nets.experiments import compare
        from ode_nets.config import load_config
        from ode_nets.data import load_dataset
        from ode_nets.errors import ConfigError

        if args.rerender:
            for path in compare.rerender(args.rerender):
                print(path)
            return
        if args.config is None:
            raise ConfigError("--config is required (or --rerender FOLDER)")
        overrides = ["model.init=normal", "model.init_scale=0.05", *args.overrides]
        config = load_config(args.config, overrides)
        solvers = [compare.parse_solver(s) for s in args.solvers]
        strategies = tuple(args.strategies or compare.STRATEGIES)
        batch = args.batch or config.train.batch_size
        dataset = load_dataset(config.data, jax.random.PRNGKey(config.seed))
        x, y = dataset.train.x[:batch], dataset.train.y[:batch]
        if args.random_batch:
            x = np.random.default_rng(config.seed).standard_normal(x.shape).astype(np.float32)
        rows = compare.compare(config, x, y, dataset.num_classes, layers=args.layers, solvers=solvers,
                               strategies=strategies, repeats=args.repeats)
        out = args.out or Path(config.train.runs_dir) / f"compare_{config.name}"
        command = "python scripts/compare_gradients.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
        meta = {"command": command, "config": str(args.config), "overrides": overrides, "batch": int(len(x)),
                "random_batch": args.random_batch, "device": jax.devices()[0].device_kind,
                "reference": "discretize_then_optimize, tsit5 rtol=1e-10 atol=1e-12, float64",
                "timing": f"float32, median of {args.repeats} after warm-up"}
        for path in compare.write_results(rows, out, meta):
            print(path)

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
