"""Benchmark training steps: python scripts/benchmark.py --config configs/bench/mnist_peer.yaml [--set key=value ...]

Each bench config writes results.json, results.md and plots into <out_dir>/<name>-<time>/ (or --out).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ode_nets.cli import run_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", nargs="+", required=True, help="bench YAML file(s) (configs/bench/*.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override applied to every config, e.g. --set steps=30 (repeatable)")
    parser.add_argument("--out", help="output folder (only with a single config)")
    args = parser.parse_args(argv)
    if args.out and len(args.config) > 1:
        parser.error("--out needs a single --config")

    def job() -> None:
        from ode_nets.experiments.benchmark import load_bench_config, run_bench

        benches = [load_bench_config(path, args.overrides) for path in args.config]  # validate all first
        for bench in benches:
            out = Path(args.out or Path(bench.out_dir) / f"{bench.name}-{time.strftime('%Y%m%d-%H%M%S')}")
            run_bench(bench, out)

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
