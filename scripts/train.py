"""Train a model from a config file: python scripts/train.py --config configs/circles_model2.yaml [key.sub=value ...]

Several processes (machines): run the same command on each with --coordinator HOST:PORT --num-processes N
--process-id I (or the JAX_* environment variables, or --cluster auto under SLURM); scripts/launch_local.py starts
N such processes on this machine."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

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

    def setup() -> tuple[Path, object]:  # on process 0 only (every process of a single-process run)
        from ode_nets.config import load_config
        from ode_nets.build import prepare_folder, resume_config

        if args.resume:
            folder = Path(args.resume)
            config = resume_config(folder, args.overrides)
        else:
            config = load_config(args.config, args.overrides)
            folder = Path(args.run_dir or Path(config.train.runs_dir) / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        prepare_folder(folder, config, overwrite=args.overwrite, resume=bool(args.resume))
        return folder, config

    def job() -> None:
        from ode_nets.build import build_run, fit_run, shared_setup

        distributed.initialize(distributed.cluster_from_args(args))
        folder, config = shared_setup(setup)
        main_process = distributed.is_main()
        results = fit_run(build_run(config, folder), resume=bool(args.resume),
                          progress=not args.no_progress and main_process)
        if not args.no_plots and not results.get("interrupted") and main_process:
            from ode_nets.plotting import plot_run

            for path in plot_run(folder):
                print(f"figure: {path}")

    return distributed.run_job(job, run_cli)


if __name__ == "__main__":
    sys.exit(main())
