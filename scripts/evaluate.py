"""Test accuracy and confusion matrix of a trained run: python scripts/evaluate.py <run dir>"""

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
        import numpy as np
        from ode_nets.build import evaluate_run
        from ode_nets.training import format_confusion

        result = evaluate_run(args.run_dir)
        print(f"test accuracy {result['accuracy']:.4f} ({result['n']} examples)")
        if result["non_finite"]:
            print(f"{result['non_finite']} examples with a non-finite output (counted as errors, not in the matrix)")
        if "bayes_accuracy" in result:
            print(f"Bayes classifier on the same points {result['bayes_accuracy']:.4f} (no classifier does better in expectation)")
            r = result["boundary_radii"]
            print(f"decision boundary radius along {len(r)} rays: min {np.nanmin(r):.2f} mean {np.nanmean(r):.2f} "
                  f"max {np.nanmax(r):.2f} (Bayes {result['bayes_radius']:.3f})")
        print(format_confusion(result["confusion"]))

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
