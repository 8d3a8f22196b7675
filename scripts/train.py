"""Train a model from a config file: python scripts/train.py --config configs/circles_model2.yaml [key.sub=value ...]

Several processes (machines): run the same command on each with --coordinator HOST:PORT --num-processes N
--process-id I (or the JAX_* environment variables, or --cluster auto under SLURM); scripts/launch_local.py starts
N such processes on this machine.

Exit codes: 0 finished, 1 training failed, 2 bad input, 75 stopped by SIGTERM/SIGINT/SIGUSR1 (continue with --resume).
"""

from __future__ import annotations

import argparse
import sys

from ode_nets.cli import run_cli
from ode_nets.training import distributed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", help="YAML experiment file (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.epochs=5")
    parser.add_argument("--run-dir", help="run folder (default: <train.runs_dir>/<name>-<time>)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its newest checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    parser.add_argument("--no-plots", action="store_true", help="do not write figures at the end")
    distributed.add_flags(parser)
    args = parser.parse_intermixed_args(argv)  # overrides may come before and after the flags
    if not args.config and not args.resume:
        parser.error("--config is required (or --resume RUN_DIR)")

    def job() -> int:
        from ode_nets.commands import train

        return train(args)

    return distributed.run_job(job, run_cli)


if __name__ == "__main__":
    sys.exit(main())
