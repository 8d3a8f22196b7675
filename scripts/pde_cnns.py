"""PDE-motivated CNNs (docs/pde_cnns.md): depth study, stability constant M, and the 20-layer tanh toy.

    python scripts/pde_cnns.py depth --configs configs/digits_*.yaml --layers 4 16 64 --out runs/pde_cnns [key=value ...]
    python scripts/pde_cnns.py stability RUN_DIR [RUN_DIR ...] --eps 0.01 0.02 0.05 0.1 0.2 --examples 400 --out runs/pde_cnns
    python scripts/pde_cnns.py toy --out runs/pde_cnns
    python scripts/pde_cnns.py table --out runs/pde_cnns --table-eps 0.05

`depth` trains every config at every depth (layers per stage; the config's epochs, so the same budget for each) and
measures one compiled training step (time, XLA peak memory; Verlet fields also with stored activations);
`stability` perturbs test inputs (random signs, FGSM, PGD) and reports accuracy and M = |y(T) - y~(T)| / |y(0) - y~(0)|;
`toy` draws the slides' 20-layer tanh example; `table` joins the depth and stability results of --out into one table and draws the perturbation figure.
Each writes JSON, a Markdown table and figures into --out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ode_nets.cli import run_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", choices=("depth", "stability", "toy", "table"))
    parser.add_argument("runs", nargs="*", help="stability: run folders; depth: key.sub=value overrides")
    parser.add_argument("--configs", nargs="+", default=[])
    parser.add_argument("--layers", nargs="+", type=int, default=[4, 16, 64])
    parser.add_argument("--eps", nargs="+", type=float, default=[0.01, 0.02, 0.05, 0.1, 0.2])
    parser.add_argument("--table-eps", type=float, default=0.05, help="stability: the eps of the Markdown table")
    parser.add_argument("--examples", type=int, default=400)
    parser.add_argument("--pgd-steps", type=int, default=5)
    parser.add_argument("--out", default="runs/pde_cnns")
    args = parser.parse_intermixed_args(argv)

    def job() -> None:
        from ode_nets.build import load_run
        from ode_nets.config import load_config
        from ode_nets.experiments import pde_cnns as study
        from ode_nets.plotting.pde_cnns import plot_perturbations, plot_toy

        out = Path(args.out)
        if args.study == "depth":
            configs = [load_config(path, args.runs) for path in args.configs]
            records = study.depth_study(configs, tuple(args.layers), out)
            table = study.depth_table(records)
            (out / "depth.md").write_text(table + "\n")
            print(table)
        elif args.study == "stability":
            runs = {}
            for run in args.runs:
                _, dataset, model = load_run(Path(run))
                runs[Path(run).name] = (model, dataset)
            results = study.stability_study(runs, args.eps, args.examples, out, args.pgd_steps)
            table = study.stability_table(results, args.table_eps)
            (out / "stability.md").write_text(table + "\n")
            print(table)
            print(f"figure: {plot_perturbations(results, out / 'perturbations.png')}")
        elif args.study == "table":
            import json

            depth = json.loads((out / "depth.json").read_text())
            stability = json.loads((out / "stability.json").read_text())
            table = study.combined_table(depth, stability, args.table_eps)
            table += "\n\n" + study.memory_table(depth)
            (out / "table.md").write_text(table + "\n")
            print(table)
            print(f"figure: {plot_perturbations(stability, out / 'perturbations.png')}")
        else:
            flows, colours = study.toy_flows()
            for name, flow in flows.items():
                print(f"{name}: {study.toy_amplification(flow, 21)}")
            print(f"figure: {plot_toy(flows, colours, out / 'tanh_toy.png')}")

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
