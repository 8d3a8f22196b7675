"""Double descent / benign overfitting with polynomial least squares (Richter & Lessig 2021 slides, last part).

    python scripts/double_descent.py --out docs/figures [--points 10 --noise 0.2 --draws 20 --decay 1.0]

Writes double_descent_risk.png (test risk against the number of features M for the minimum-norm, gradient-descent and
ridge solutions), double_descent_fits.png (the fitted curves for a few M) and double_descent.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ode_nets.cli import run_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/double_descent")
    parser.add_argument("--points", type=int, default=10)
    parser.add_argument("--noise", type=float, default=0.2)
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--decay", type=float, default=1.0)
    parser.add_argument("--gd-steps", type=int, default=2000)
    parser.add_argument("--lam", type=float, default=1e-3)
    parser.add_argument("--fit-ms", nargs="+", type=int, default=[3, 10, 12, 400])
    args = parser.parse_args(argv)

    def job() -> None:
        from ode_nets.experiments.double_descent import DoubleDescent, fitted_curves, risk_curves
        from ode_nets.plotting.pde_cnns import plot_double_descent, plot_fits

        setup = DoubleDescent(n_points=args.points, noise=args.noise, draws=args.draws, decay=args.decay,
                              gd_steps=args.gd_steps, lam=args.lam)
        curves = risk_curves(setup)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "double_descent.json").write_text(json.dumps({"setup": vars(setup), "curves": curves}, default=list))
        for name, c in curves.items():
            best = min(range(len(setup.ms)), key=lambda i: c["test_median"][i])
            at_n = setup.ms.index(setup.n_points)
            print(f"{name}: median test risk {c['test_median'][best]:.3g} at M = {setup.ms[best]} (best), "
                  f"{c['test_median'][at_n]:.3g} at M = N = {setup.n_points}, {c['test_median'][-1]:.3g} at M = {setup.ms[-1]}")
        print(f"figure: {plot_double_descent(setup.n_points, list(setup.ms), curves, out / 'double_descent_risk.png')}")
        print(f"figure: {plot_fits(fitted_curves(setup, tuple(args.fit_ms)), out / 'double_descent_fits.png')}")

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
