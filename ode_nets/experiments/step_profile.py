"""Where the time of one benchmark case's training step goes: the compiled step is traced with `jax.profiler` for a
few steps and the XLA CPU runtime's events are summed per operation (custom calls, fusions, copies), per step.

`scripts/profile_step.py --config configs/bench/mnist_peer.yaml --case 11` writes `profile.json` and `profile.md`
(and the raw trace, which TensorBoard / Perfetto open) into its output folder. The runtime runs independent
operations on two threads, so the per-operation sums can exceed the step's wall time (`busy_ms` per thread).
"""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import jax
import optax

from ode_nets.build import build_model
from ode_nets.config import ConfigError
from ode_nets.experiments.benchmark import (PRESETS, BenchConfig, compiled_step, experiment_config, random_batch,
                                            time_steps)

WRAPPERS = ("ThunkExecutor", "while", "conditional", "call", "SlinkyThreadPool", "end: ")  # not operations


def op_name(event: str) -> str:
    """An HLO instruction's name without its numeric suffix (`copy.31` -> `copy`)."""
    return re.sub(r"\.\d+$", "", event)


def runtime_events(trace_dir: Path) -> list[tuple[str, str, int]]:
    """(thread, operation, duration ns) of every XLA runtime operation in the trace written under `trace_dir`.

    The runtime marks the end of each operation it runs with an `end: <name>` event, on its worker threads or, for
    small computations, on the calling (Python) thread; those names, less loops and calls, are the operations."""
    (path,) = sorted(trace_dir.rglob("*.xplane.pb"))[-1:]
    data = jax.profiler.ProfileData.from_file(str(path))
    lines = [line for plane in data.planes for line in plane.lines]
    ops = {event.name[len("end: "):] for line in lines for event in line.events if event.name.startswith("end: ")}
    return [(line.name, op_name(event.name), event.duration_ns) for line in lines for event in line.events
            if event.name in ops and not event.name.startswith(WRAPPERS)]


def summarize(events: list[tuple[str, str, int]], steps: int, wall_ms: float, top: int = 25) -> dict[str, Any]:
    """Per-step milliseconds and counts of the `top` operations, busy time per runtime thread, and the step wall."""
    total, count, busy = Counter(), Counter(), Counter()
    for thread, name, ns in events:
        total[name] += ns
        count[name] += 1
        busy[thread] += ns
    ops = [{"op": name, "ms": ns / steps / 1e6, "calls": count[name] / steps} for name, ns in total.most_common(top)]
    return {"step_ms": wall_ms, "busy_ms": sorted((ns / steps / 1e6 for ns in busy.values()), reverse=True),
            "ops": ops}


def profile_case(bench: BenchConfig, case: int, out: Path, steps: int = 5) -> dict[str, Any]:
    """Compile gradient case `case` of `bench` (its first depth and batch size), time 10 steps, trace `steps` more."""
    if not 0 <= case < len(bench.gradients):
        raise ConfigError(f"--case {case}: {bench.name} has gradient cases 0..{len(bench.gradients) - 1}")
    gradient, layers, batch = bench.gradients[case], bench.layers[0], bench.batch_sizes[0]
    preset = PRESETS[bench.model]
    model = build_model(experiment_config(bench, layers, batch, gradient), preset["input_shape"], preset["classes"],
                        jax.random.PRNGKey(bench.seed))
    example = random_batch(bench.model, batch, bench.seed)
    compiled, params, opt_state, _ = compiled_step(model, optax.sgd(bench.learning_rate), bench.smoothness, example)
    wall = 1e3 * statistics.median(time_steps(compiled, params, opt_state, example, bench.warmup, 10))
    with jax.profiler.trace(str(out / "trace")):
        for _ in range(steps):
            params, opt_state, loss = compiled(params, opt_state, *example)
            jax.block_until_ready((params, opt_state, loss))
    summary = summarize(runtime_events(out / "trace"), steps, wall)
    summary |= {"case": case, "label": gradient.label, "layers": layers, "batch_size": batch}
    (out / "profile.json").write_text(json.dumps(summary, indent=2))
    (out / "profile.md").write_text(profile_table(summary))
    return summary


def profile_table(summary: dict[str, Any]) -> str:
    """Markdown: the case, its step time, and the operations by time."""
    head = (f"{summary['label']} (L = {summary['layers']}, batch {summary['batch_size']}): step {summary['step_ms']:.0f} ms"
            f" (median of 10), runtime threads busy {' + '.join(f'{b:.0f}' for b in summary['busy_ms'])} ms\n\n"
            "| operation | ms per step | calls per step |\n|---|---|---|\n")
    return head + "".join(f"| `{o['op']}` | {o['ms']:.1f} | {o['calls']:.0f} |\n" for o in summary["ops"])
