"""Forward-stability check of trained runs: Jacobian eigenvalues along the trajectories of validation (or test) data.

    python scripts/stability.py RUN_DIR [RUN_DIR ...] [--examples 200]

Prints max Re(lambda) (> 0: locally unstable continuous dynamics) and max |h lambda| (h = T/L; the
discrete step is stable only if h lambda lies in the method's stability region, e.g. |h lambda| < 0.72
on the imaginary axis for AB3, and never for forward Euler on the imaginary axis).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ode_nets.cli import run_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders (a multilevel level_<L> folder, or a plain run)")
    parser.add_argument("--examples", type=int, default=200)
    args = parser.parse_args(argv)

    def job() -> None:
        import numpy as np

        from ode_nets.analysis.stability import network_eigenvalues
        from ode_nets.build import load_run

        for run in args.runs:
            config, dataset, model = load_run(Path(run))
            split = dataset.validation or dataset.test
            eig = network_eigenvalues(model, split.x[:args.examples])
            h = config.model.horizon / config.model.layers
            print(f"{run}: field {config.model.field}, solver {config.solver.method}, T = {config.model.horizon}, "
                  f"L = {config.model.layers}: max Re(lambda) = {np.max(eig.real):.4f}, "
                  f"max |h lambda| = {h * np.max(np.abs(eig)):.4f}")
            k = getattr(model.field, "k", None)  # eq 111 (solver lm2): the trained per-layer k_l
            if k is not None:
                values = np.asarray(k.per_layer())
                print(f"  eq 111 k_l: min {values.min():.4f}, mean {values.mean():.4f}, max {values.max():.4f}")

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
