"""Write the paper's figures for a finished run: python scripts/plot.py <run dir>"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ode_nets.cli import run_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)

    def job() -> None:
        from ode_nets.plotting import plot_run

        for path in plot_run(args.run_dir):
            print(path)

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
