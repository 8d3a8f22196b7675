"""Train a continuous-time model from a config: a CNF (configs/cnf_*.yaml) or a latent ODE with its GRU-Δt
baseline (configs/*_latent_ode.yaml); docs/continuous_time.md.

    python scripts/train_continuous.py --config configs/cnf_two_moons.yaml [key.sub=value ...] [--run-dir DIR]
"""

from __future__ import annotations

import argparse
import sys

from ode_nets.cli import run_cli
from ode_nets.continuous.experiments import run_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML experiment file")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.steps=100")
    parser.add_argument("--run-dir", help="run folder (default: runs/<name>-<time>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its checkpoints")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    args = parser.parse_intermixed_args(argv)
    return run_cli(lambda: run_config(args.config, args.overrides, args.run_dir, progress=not args.no_progress,
                                      resume=args.resume, overwrite=args.overwrite))


if __name__ == "__main__":
    sys.exit(main())
