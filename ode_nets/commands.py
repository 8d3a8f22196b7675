"""What `scripts/train.py` does, as a function of its parsed arguments (the script only parses them).

One process or several (`ode_nets.training.distributed`): process 0 reads the config, locks and prepares the run
folder and writes it; every process builds the data and the model and trains. The data and the model are built
before the folder is made, so a bad config or data set leaves no folder behind.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

from ode_nets.build import build_run, fit_run, prepare_folder, resume_config, shared_setup
from ode_nets.cli import RESUMABLE_EXIT
from ode_nets.config import Config, load_config
from ode_nets.plotting import plot_run
from ode_nets.training import distributed
from ode_nets.training.lock import hold


def run_config(args: argparse.Namespace) -> tuple[Path, Config]:
    """The run folder and config of `--resume RUN_DIR` or `--config FILE [--run-dir DIR]` with the overrides."""
    if args.resume:
        return Path(args.resume), resume_config(Path(args.resume), args.overrides)
    config = load_config(args.config, args.overrides)
    default = Path(config.train.runs_dir) / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Path(args.run_dir or default), config


def train(args: argparse.Namespace) -> int:
    """Train as `scripts/train.py` says; returns the exit code (`RESUMABLE_EXIT` when stopped by a signal)."""
    distributed.initialize(distributed.cluster_from_args(args))
    folder, config = shared_setup(lambda: run_config(args))
    run = build_run(config, folder)
    main = distributed.is_main()
    with contextlib.ExitStack() as held:
        def claim() -> str:  # process 0: lock the folder (one run per folder), then prepare it
            held.enter_context(hold(folder))
            prepare_folder(folder, config, overwrite=args.overwrite, resume=bool(args.resume))
            return str(folder)

        claimed = distributed.from_main(claim)  # a held or bad folder: the same error on every process
        if main:
            print(f"run folder: {claimed}")
        results = fit_run(run, resume=bool(args.resume), progress=not args.no_progress and main)
        if results.get("interrupted"):
            return RESUMABLE_EXIT
        if not args.no_plots and main:
            for path in plot_run(folder):
                print(f"figure: {path}")
    return 0
