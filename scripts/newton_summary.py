"""Per-level table of multilevel runs: accuracies, steps, Newton–PCG products, wall time.

    python scripts/newton_summary.py runs/npcg_peaks_unstable [RUN_DIR ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ode_nets.cli import run_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args(argv)

    def job() -> None:
        from ode_nets.experiments.newton import level_summary

        print("| run | layers | steps | train acc | val acc | test acc | Gauss-Newton products | CG iterations | wall (s) |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for folder in args.runs:
            for r in level_summary(folder):
                val = "-" if r["validation_acc"] is None else f"{r['validation_acc']:.3f}"
                print(f"| {folder.name} | {r['layers']} | {r['steps']} | {r['train_acc']:.3f} | {val} | "
                      f"{r['test_acc']:.3f} | {r['hvps']:.0f} | {r['cg_iterations']:.0f} | {r['wall_s']:.0f} |")

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
