"""Stochastic weight averaging of a run's checkpoints into a new run folder:
python scripts/average.py <run dir> <new run dir> --from-step N [--to-step M]

The new folder holds config.yaml, model.eqx (the mean parameters) and results.json (with the source and steps);
scripts/evaluate.py and scripts/plot.py read it like any run. The source run is only read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ode_nets.cli import run_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="run folder whose checkpoints/ are averaged")
    parser.add_argument("out_dir", type=Path, help="new run folder for the averaged model")
    parser.add_argument("--from-step", type=int, required=True, help="first checkpoint step to include")
    parser.add_argument("--to-step", type=int, default=None, help="last checkpoint step to include (default: all)")
    parser.add_argument("--overwrite", action="store_true", help="replace out_dir if it exists")
    args = parser.parse_args(argv)

    def job() -> None:
        from ode_nets.experiments.averaging import average_run

        r = average_run(args.run_dir, args.out_dir, args.from_step, args.to_step, overwrite=args.overwrite)
        print(f"averaged {len(r['steps'])} checkpoints (steps {r['steps'][0]}..{r['steps'][-1]}): test accuracy "
              f"{r['test_acc']:.4f}, test loss {r['test_loss']:.4f}, train accuracy {r['train_acc']:.4f}, "
              f"gamma~ {r['gamma']}; written to {args.out_dir}")

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
