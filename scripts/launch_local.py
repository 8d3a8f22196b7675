"""Start N processes of a multi-process run on this machine, e.g.

    python scripts/launch_local.py -n 2 -- scripts/train.py --config configs/circles_model2.yaml

Each process gets JAX_COORDINATOR_ADDRESS=127.0.0.1:<free port>, JAX_NUM_PROCESSES=N, JAX_PROCESS_ID=i and CPU
collectives through gloo; output is prefixed with [i]. Exits with the first failing process's code (the others are
stopped) or 0; no process is left running.
"""

from __future__ import annotations

import argparse
import sys

from ode_nets.cli import run_cli
from ode_nets.launch import launch_local


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--num-processes", type=int, required=True, help="number of processes")
    parser.add_argument("--port", type=int, help="coordinator port on 127.0.0.1 (default: a free one)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- script.py [its arguments]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    codes: list[int] = []
    status = run_cli(lambda: codes.append(launch_local(command, args.num_processes, port=args.port)))
    return codes[0] if codes else status


if __name__ == "__main__":
    sys.exit(main())
