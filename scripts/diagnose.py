"""Physical diagnostics of a trained run, or training curves of several runs in one figure.

  python scripts/diagnose.py run <run dir> [--samples 400]
  python scripts/diagnose.py curves <run dir A> <run dir B> [--labels A B] --out runs/x.png
  python scripts/diagnose.py summary <run dir> ... [--target-acc 0.95]   (markdown table)
  python scripts/diagnose.py overshoot <run dir> [--split train] [--examples N]   (explicit cubic step near overflow)
  python scripts/diagnose.py hand-vjp <run dir> [--batches 6]   (model.hand_vjp vs autodiff at the run's state)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ode_nets.cli import run_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="Hamiltonian, energy balance, entropy rate, stability of one run")
    run.add_argument("run_dir", type=Path)
    run.add_argument("--samples", type=int, default=400, help="test points used")
    curves = sub.add_parser("curves", help="training curves of several runs in one PNG")
    curves.add_argument("run_dirs", type=Path, nargs="+")
    curves.add_argument("--labels", nargs="+")
    curves.add_argument("--out", type=Path, required=True)
    summary = sub.add_parser("summary", help="markdown table of finished runs (accuracy, time per epoch)")
    summary.add_argument("run_dirs", type=Path, nargs="+")
    summary.add_argument("--target-acc", type=float, default=0.95)
    overshoot = sub.add_parser("overshoot", help="how close examples come to gamma~ x^2 > 2 (explicit cubic overflow)")
    overshoot.add_argument("run_dir", type=Path)
    overshoot.add_argument("--split", choices=["train", "validation", "test"], default="train")
    overshoot.add_argument("--examples", type=int, default=None, help="first N examples of the split (default all)")
    hand_vjp = sub.add_parser("hand-vjp", help="hand-derived VJP vs autodiff: non-finite examples, gradients")
    hand_vjp.add_argument("run_dir", type=Path)
    hand_vjp.add_argument("--batches", type=int, default=6, help="random training batches of 128")
    args = parser.parse_args(argv)

    def job() -> None:
        from ode_nets.plotting import diagnostics as pd
        from ode_nets.errors import ConfigError

        if args.command == "summary":
            print(pd.summarize_runs(args.run_dirs, args.target_acc))
            return
        if args.command == "hand-vjp":
            print(pd.hand_vjp_report(args.run_dir, args.batches))
            return
        if args.command == "overshoot":
            print(pd.overshoot_report(args.run_dir, args.split, args.examples))
            return
        if args.command == "run":
            paths = pd.diagnose_run(args.run_dir, args.samples)
        else:
            labels = args.labels or [d.name for d in args.run_dirs]
            if len(labels) != len(args.run_dirs):
                raise ConfigError("--labels: give one label per run folder")
            paths = [pd.plot_training_pair(args.run_dirs, labels, args.out)]
        for path in paths:
            print(path)

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
