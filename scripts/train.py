"""Train a model from a config file: python scripts/train.py --config configs/circles_model2.yaml [key.sub=value ...]

Exit codes: 0 finished, 1 training failed, 2 bad input, 75 stopped by SIGTERM/SIGINT/SIGUSR1 (continue with --resume).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ode_nets.cli import run_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", help="YAML experiment file (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.epochs=5")
    parser.add_argument("--run-dir", help="run folder (default: <train.runs_dir>/<name>-<time>)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its newest checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    parser.add_argument("--no-plots", action="store_true", help="do not write figures at the end")
    args = parser.parse_intermixed_args(argv)  # overrides may come before and after the flags

    def job() -> int:
        from ode_nets.config import load_config
        from ode_nets.build import build_run, fit_run, prepare_folder, resume_config
        from ode_nets.cli import RESUMABLE_EXIT
        from ode_nets.training.lock import hold

        if args.resume:
            folder = Path(args.resume)
            config = resume_config(folder, args.overrides)
        else:
            if not args.config:
                parser.error("--config is required (or --resume RUN_DIR)")
            config = load_config(args.config, args.overrides)
            folder = Path(args.run_dir or Path(config.train.runs_dir) / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        run = build_run(config, folder)  # data and model first: a bad config or data set leaves no folder behind
        with hold(folder):  # one process per run folder
            prepare_folder(folder, config, overwrite=args.overwrite, resume=bool(args.resume))
            print(f"run folder: {folder}")
            results = fit_run(run, resume=bool(args.resume), progress=not args.no_progress)
            if results.get("interrupted"):
                return RESUMABLE_EXIT
            if not args.no_plots:
                from ode_nets.plotting import plot_run

                for path in plot_run(folder):
                    print(f"figure: {path}")
        return 0

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
