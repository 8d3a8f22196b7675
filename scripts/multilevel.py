"""Multilevel training (train.levels, e.g. [32, 64]) and its curves.

    python scripts/multilevel.py train --config configs/peaks_stable.yaml [key.sub=value ...] [--run-dir D --overwrite]
    python scripts/multilevel.py plot RUN_DIR [RUN_DIR ...] --labels a b --out figure.png
    python scripts/multilevel.py regions RUN_DIR [--levels 2 8 64] --out figure.png
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ode_nets.cli import run_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train every level of train.levels")
    train.add_argument("--config", required=True)
    train.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    train.add_argument("--run-dir", help="run folder (default: <train.runs_dir>/<name>-<time>)")
    train.add_argument("--overwrite", action="store_true")
    train.add_argument("--no-progress", action="store_true")
    plot = sub.add_parser("plot", help="training/validation curves of multilevel runs in one PNG")
    plot.add_argument("runs", nargs="+")
    plot.add_argument("--labels", nargs="*")
    plot.add_argument("--out", required=True)
    regions = sub.add_parser("regions", help="predicted classes over the input plane after each level (2-D data)")
    regions.add_argument("run")
    regions.add_argument("--levels", nargs="*", type=int, help="only these levels (default: all)")
    regions.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    def job() -> None:
        from ode_nets.experiments import multilevel
        from ode_nets.errors import ConfigError

        if args.command == "regions":
            print(f"figure: {multilevel.plot_regions(Path(args.run), Path(args.out), args.levels)}")
            return
        if args.command == "plot":
            labels = args.labels or [Path(r).name for r in args.runs]
            if len(labels) != len(args.runs):
                raise ConfigError(f"--labels: {len(labels)} labels for {len(args.runs)} runs")
            print(f"figure: {multilevel.plot_curves(dict(zip(labels, map(Path, args.runs))), Path(args.out))}")
            return
        from ode_nets.config import load_config

        config = load_config(args.config, args.overrides)
        folder = Path(args.run_dir or Path(config.train.runs_dir) / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        for r in multilevel.train_multilevel(config, folder, overwrite=args.overwrite, progress=not args.no_progress):
            print(f"level {r['layers']}: test accuracy {r['test_acc']:.4f} ({r['folder']})")

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
