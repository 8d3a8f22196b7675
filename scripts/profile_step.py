"""Profile one benchmark case's training step: python scripts/profile_step.py --config configs/bench/mnist_peer.yaml --case 11

Writes profile.json, profile.md (milliseconds per step of each XLA operation and custom call) and the raw jax.profiler
trace into <out_dir>/<name>-case<N>-<time>/ (or --out).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ode_nets.cli import run_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="bench YAML file (configs/bench/*.yaml)")
    parser.add_argument("--case", type=int, default=0, help="index of the gradient case in the bench's list")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override of the bench config, e.g. --set conv_impl=xla_split (repeatable)")
    parser.add_argument("--out", help="output folder")
    args = parser.parse_args(argv)

    def job() -> None:
        from ode_nets.experiments.benchmark import load_bench_config
        from ode_nets.experiments.step_profile import profile_case, profile_table

        bench = load_bench_config(args.config, args.overrides)
        out = Path(args.out or Path(bench.out_dir) / f"{bench.name}-case{args.case}-{time.strftime('%Y%m%d-%H%M%S')}")
        out.mkdir(parents=True, exist_ok=True)
        print(profile_table(profile_case(bench, args.case, out)) + f"\nwritten: {out}")

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
