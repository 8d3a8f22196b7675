"""Layer-parallel training experiments (docs/layer_parallel.md): MGRIT convergence, wall time against host devices,
the cost model, and serial vs layer-parallel training curves.

    python scripts/layer_parallel.py convergence --out docs/figures/layer_parallel_convergence.png \
        --setting stable=configs/peaks_stable.yaml --setting unstable=configs/peaks_unstable.yaml \
        --layers 64 256 1024 --m 2 4 8 --iterations 12 [--set solver.method=euler ...]
    python scripts/layer_parallel.py scaling --config configs/peaks_unstable.yaml --layers 256 --devices 1 2 4 8 \
        --out docs/figures/layer_parallel_scaling.png [--set key=value ...]
    python scripts/layer_parallel.py cost --out docs/figures/layer_parallel_cost_model.png
    python scripts/layer_parallel.py training RUN_DIR [RUN_DIR ...] --labels serial lp1 ... --out figure.png

Each writes its numbers as JSON next to the figure (same name, .json).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ode_nets.cli import run_cli


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convergence", help="forward MGRIT residual against iteration")
    conv.add_argument("--setting", action="append", required=True, help="name=config.yaml")
    conv.add_argument("--layers", type=int, nargs="+", default=[64, 256, 1024])
    conv.add_argument("--m", type=int, nargs="+", default=[2, 4, 8])
    conv.add_argument("--iterations", type=int, default=12)
    conv.add_argument("--examples", type=int, default=64)
    scale = sub.add_parser("scaling", help="fwd + bwd wall time against host devices")
    scale.add_argument("--config", required=True)
    scale.add_argument("--layers", type=int, default=256)
    scale.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    scale.add_argument("--examples", type=int, default=256)
    scale.add_argument("--iterations", type=int, default=2)
    scale.add_argument("--repeats", type=int, default=5)
    cost = sub.add_parser("cost", help="the critical-path cost model")
    cost.add_argument("--layers", type=int, nargs="+", default=[64, 256, 1024, 4096])
    cost.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024])
    cost.add_argument("--iterations", type=int, default=2)
    cost.add_argument("--m", type=int, default=4)
    train = sub.add_parser("training", help="training curves of runs side by side")
    train.add_argument("runs", nargs="+")
    train.add_argument("--labels", nargs="*")
    for p in (conv, scale, cost, train):
        p.add_argument("--out", required=True, type=Path)
    for p in (conv, scale):
        p.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)

    def job() -> None:
        from ode_nets.config import load_config
        from ode_nets.experiments import layer_parallel as lp

        data: object = None
        if args.command == "convergence":
            settings = dict(s.rsplit("=", 1) for s in args.setting)
            configs = {name: load_config(path, args.overrides) for name, path in settings.items()}
            data = lp.convergence(configs, args.layers, args.m, args.iterations, examples=args.examples)
            figure = lp.plot_convergence(data, args.out)
        elif args.command == "scaling":
            data = lp.scaling(Path(args.config), args.overrides, args.layers, args.devices, examples=args.examples,
                              iterations=args.iterations, repeats=args.repeats)
            figure = lp.plot_scaling(data, args.out)
        elif args.command == "cost":
            data = {"rows": lp.cost_table(args.layers, args.devices, args.m, args.iterations),
                    "break_even_L": {p: lp.break_even(p, args.m, args.iterations) for p in args.devices},
                    "break_even_L_two_level": {p: lp.break_even(p, args.m, args.iterations, multilevel=False)
                                               for p in args.devices}}
            figure = lp.plot_cost_model(data["rows"], args.out)
        else:
            labels = args.labels or [Path(r).name for r in args.runs]
            runs = dict(zip(labels, map(Path, args.runs)))
            data = lp.training_summary(runs)
            figure = lp.plot_training(runs, args.out)
        if data is not None:
            args.out.with_suffix(".json").write_text(json.dumps(data, indent=1))
        print(f"figure: {figure}")

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
