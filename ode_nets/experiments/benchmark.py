"""Benchmarks: compile time, step time, memory and FLOP/s of a training step over a grid of depths and
batch sizes, with a PyTorch + torchdiffeq peer of the conv model (`ode_nets.experiments.peer_torch`).

A bench YAML (`configs/bench/*.yaml`) names a model preset, the solver, a list of gradient
settings, and the depth and batch-size grid; every combination is one case. Data are random
arrays of the right shapes. Results go to `<out>/results.json`, `results.md` and PNG plots.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import yaml

from ode_nets.build import build_model
from ode_nets.config import Config, ConfigError, SolverName, Strategy, from_dict, parse, read_yaml, require
from ode_nets.experiments.conv_ceiling import ceiling_table, conv_ceiling
from ode_nets.fields.cubic import conv3x3_im2col, conv3x3_xla
from ode_nets.models import ODENet, count_parameters
from ode_nets.training import Objective, train_step

# model presets: the experiment-config sections, input shape (no batch axis) and number of classes
PRESETS: dict[str, dict[str, Any]] = {
    "mnist_conv": {  # §5.2: 1 + 9 zero channels, 3x3 kernels, global max pool over 10 channels
        "model": {"field": "conv_cubic", "augment": 9, "readout": "max_pool_softmax", "gamma": 0.01,
                  "init": "normal", "init_scale": 0.01},
        "input_shape": (1, 28, 28), "classes": 10},
    "circles_dense": {  # §5.1 model 1: N = 2, softmax of the final state
        "model": {"field": "cubic", "readout": "softmax", "gamma": 0.01, "init": "normal", "init_scale": 0.1},
        "input_shape": (2,), "classes": 2},
}


@dataclass(frozen=True)
class GradientCase:
    """One gradient setting of the grid (`gradient.strategy`, `gradient.checkpoints`), and for mnist_conv how the
    same function is computed: `channels_last` (the `conv_cubic_nhwc` field behind the `channels_last` stem),
    `hand_vjp` (`model.hand_vjp`: the field's reverse mode by its hand-derived terms) and `conv_impl` (this case's
    `model.conv_impl` in place of the bench's)."""

    strategy: Strategy = "discretize_then_optimize"
    checkpoints: Optional[int] = None
    channels_last: bool = False
    hand_vjp: bool = False
    conv_impl: Optional[str] = None

    @property
    def label(self) -> str:
        short = {"discretize_then_optimize": "DTO", "optimize_then_discretize": "OTD"}.get(self.strategy, self.strategy)
        layout = ((" NHWC" if self.channels_last else "") + (" hand-VJP" if self.hand_vjp else "")
                  + (f" {self.conv_impl}" if self.conv_impl else ""))
        if self.strategy != "discretize_then_optimize":
            return short + layout
        return f"{short} ckpt={'every step' if self.checkpoints is None else self.checkpoints}{layout}"


@dataclass(frozen=True)
class BenchConfig:
    """A bench YAML: model preset x solver x gradient settings x depths x batch sizes."""

    name: str = "bench"
    model: str = "mnist_conv"
    solver: SolverName = "euler"
    layers: tuple[int, ...] = (20,)
    batch_sizes: tuple[int, ...] = (128,)
    gradients: tuple[GradientCase, ...] = (GradientCase(),)
    warmup: int = 3
    steps: int = 20
    rounds: int = 1  # timed steps in this many rounds, each with a matmul peak and the peer's steps (interleaved)
    smoothness: float = 0.1  # lambda of eq 113
    learning_rate: float = 0.01
    peer: bool = False  # also time the PyTorch + torchdiffeq twin (mnist_conv only)
    threads: Optional[int] = None  # torch threads (null: os.cpu_count(), what XLA's CPU client uses)
    seed: int = 0
    out_dir: str = "runs/bench"
    conv_impl: Optional[str] = None  # mnist_conv: model.conv_impl of the cases (null: the schema's default)
    conv_probe: bool = False  # also time 20 3x3 convs inside a lax.scan vs unrolled (mnist_conv; see conv_loop_probe)
    conv_ceiling: bool = False  # also time the convolutions alone: the floor of a step (experiments/conv_ceiling.py)

    def __post_init__(self) -> None:
        need = require
        need(self.model in PRESETS, "model", f"expected one of {', '.join(PRESETS)}, got {self.model!r}")
        for key in ("layers", "batch_sizes"):
            values = getattr(self, key)
            need(len(values) > 0 and all(v > 0 for v in values), key,
                 f"expected a non-empty list of positive integers, got {list(values)!r}")
        need(len(self.gradients) > 0, "gradients",
             f"expected a non-empty list of {{strategy, checkpoints}} mappings, got {list(self.gradients)!r}")
        need(self.warmup >= 1, "warmup", f"must be >= 1 (the first call compiles), got {self.warmup}")
        need(self.steps >= 20, "steps", f"must be >= 20 timed steps, got {self.steps}")
        need(1 <= self.rounds <= self.steps // 2, "rounds",
             f"must be between 1 and steps / 2 = {self.steps // 2} (at least 2 steps a round), got {self.rounds}")
        need(self.smoothness >= 0, "smoothness", f"must be >= 0, got {self.smoothness}")
        need(self.learning_rate > 0, "learning_rate", f"must be > 0, got {self.learning_rate}")
        need(not self.peer or self.model == "mnist_conv", "peer", "the torchdiffeq peer exists for mnist_conv only")
        need(not self.conv_probe or self.model == "mnist_conv", "conv_probe", "needs model: mnist_conv")
        need(not self.conv_ceiling or self.model == "mnist_conv", "conv_ceiling", "needs model: mnist_conv")
        need(self.conv_impl is None or self.model == "mnist_conv", "conv_impl", "needs model: mnist_conv")
        need(self.threads is None or self.threads > 0, "threads", f"must be > 0 or null, got {self.threads}")
        for i, g in enumerate(self.gradients):
            need(not g.channels_last or self.model == "mnist_conv", f"gradients[{i}].channels_last",
                 "needs model: mnist_conv")
            need(not g.hand_vjp or self.model == "mnist_conv", f"gradients[{i}].hand_vjp", "needs model: mnist_conv")
            need(g.conv_impl is None or self.model == "mnist_conv", f"gradients[{i}].conv_impl",
                 "needs model: mnist_conv")
            # validated by the experiment schema, so errors name the real key
            experiment_config(self, 20, 8, g, source=f"gradients[{i}]")


def load_bench_config(path: str | Path, overrides: list[str] | None = None) -> BenchConfig:
    """Parse and validate a bench YAML (plus `key=value` overrides); `ConfigError` names file and key."""
    data = read_yaml(path, overrides, what="bench config")
    try:
        return parse(BenchConfig, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def experiment_config(bench: BenchConfig, layers: int, batch_size: int, gradient: GradientCase,
                      source: str = "bench") -> Config:
    """The experiment `Config` of one case (validated by the experiment schema)."""
    preset = PRESETS[bench.model]
    conv_impl = gradient.conv_impl or bench.conv_impl
    impl = {} if conv_impl is None else {"conv_impl": conv_impl}  # validated by the schema
    variant = {"field": "conv_cubic_nhwc", "stem": "channels_last"} if gradient.channels_last else {}
    variant |= {"hand_vjp": True} if gradient.hand_vjp else {}
    data = {"name": bench.name, "seed": bench.seed, "model": {**preset["model"], **impl, **variant, "layers": layers},
            "solver": {"method": bench.solver},
            "gradient": {"strategy": gradient.strategy, "checkpoints": gradient.checkpoints},
            "loss": {"smoothness": bench.smoothness}, "train": {"batch_size": batch_size}}
    return from_dict(data, source)


# ---------------------------------------------------------------------------------------------
# measurements


def random_batch(model: str, batch_size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random inputs in [0, 1), labels and an all-ones mask of the preset's shapes."""
    rng = np.random.default_rng(seed)
    preset = PRESETS[model]
    x = rng.random((batch_size, *preset["input_shape"]), dtype=np.float32)
    y = rng.integers(0, preset["classes"], batch_size).astype(np.int32)
    return x, y, np.ones(batch_size, np.float32)


def compiled_step(model: ODENet, optimizer: optax.GradientTransformation, lam: float, example: tuple
                  ) -> tuple[Callable, Any, Any, float]:
    """`train_step` jitted on (params, opt_state, x, y, mask) and compiled ahead of time.

    Returns the compiled executable, the initial params and optimizer state, and the compile time
    (tracing + lowering + XLA compilation) in seconds.
    """
    params, static = eqx.partition(model, eqx.is_array)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))

    def step(params, opt_state, x, y, mask):
        new, opt_state, metrics = train_step(optimizer, eqx.combine(params, static), opt_state, x, y, mask,
                                             Objective(smoothness=lam))
        return eqx.filter(new, eqx.is_array), opt_state, metrics["loss"]

    start = time.perf_counter()
    compiled = jax.jit(step).lower(params, opt_state, *example).compile()
    return compiled, params, opt_state, time.perf_counter() - start


def time_steps(compiled: Callable, params: Any, opt_state: Any, example: tuple, warmup: int, steps: int
               ) -> list[float]:
    """Wall time of each of `steps` training steps after `warmup` ones (block_until_ready)."""
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        params, opt_state, loss = compiled(params, opt_state, *example)
        jax.block_until_ready((params, opt_state, loss))
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def memory_report(compiled: Any) -> dict[str, int]:
    """XLA's buffer assignment: peak = arguments + outputs + temporaries - aliased (bytes)."""
    stats = compiled.memory_analysis()
    if stats is None:
        return {}
    out = {k: int(getattr(stats, f"{k}_size_in_bytes")) for k in ("argument", "output", "temp", "alias")}
    out["peak"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    return out


def cost_report(compiled: Any) -> dict[str, float]:
    """FLOPs and bytes accessed from XLA's cost analysis (each while-loop body counted once)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, list):
        cost = cost[0] if cost else {}
    return {"flops": float(cost.get("flops", 0.0)), "bytes": float(cost.get("bytes accessed", 0.0))}


def conv_flops(batch: int, layers: int, channels: int = 10, size: int = 28, convs_per_layer: int = 3) -> float:
    """Multiply-adds x 2 of the 3x3 convolutions of one training step (forward, input-grad, kernel-grad)."""
    return 2.0 * batch * size * size * channels * channels * 9 * layers * convs_per_layer


def best_time(f: Callable, arg: Any, repeats: int) -> float:
    """Shortest wall time of `repeats` calls of the jitted f(arg) (compiled before)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(f(arg))
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_peak(repeats: int = 5) -> float:
    """Measured (not nominal) peak FLOP/s: float32 matmul, 2048^2 on CPU, 8192^2 on accelerators, at JAX's default
    precision, which the model's convolutions use too (TF32 on recent NVIDIA GPUs); best of `repeats`."""
    n = 2048 if jax.devices()[0].platform == "cpu" else 8192
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    jax.block_until_ready(_square(a))
    return 2.0 * n ** 3 / best_time(_square, a, repeats)


_square = jax.jit(lambda a: a @ a)  # one function object, so that each round's peak reuses its compilation


def device_peaks(repeats: int = 5) -> dict[str, float]:
    """Measured peak FLOP/s (`matmul_peak`) and bytes/s (256 MiB add)."""
    n = 2048 if jax.devices()[0].platform == "cpu" else 8192
    big = jnp.ones((64 * 1024 * 1024,), jnp.float32)
    stream = jax.jit(lambda v: v + 1.0)
    jax.block_until_ready(stream(big))
    return {"flops_per_s": matmul_peak(repeats), "bytes_per_s": 2.0 * big.nbytes / best_time(stream, big, repeats),
            "how": f"best of {repeats}: jnp float32 {n}x{n} matmul; v + 1 over {big.nbytes >> 20} MiB (read + write)"}


def device_info() -> dict[str, Any]:
    """The auto-detected JAX device, and on accelerators its memory statistics."""
    device = jax.devices()[0]
    info = {"platform": device.platform, "device_kind": device.device_kind, "device_count": jax.device_count(),
            "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
            "jax": jax.__version__}
    if device.platform != "cpu":
        info["memory_stats"] = device.memory_stats()
    return info


def case_rows(bench: BenchConfig) -> list[tuple[int, int, GradientCase]]:
    """Every (layers, batch size, gradient) of the grid; checkpoints only matter for discretize-then-optimize."""
    rows = []
    for g in bench.gradients:
        for layers in bench.layers:
            for batch in bench.batch_sizes:
                rows.append((layers, batch, g))
    return rows


def run_case(bench: BenchConfig, layers: int, batch: int, gradient: GradientCase
             ) -> tuple[dict, ODENet, tuple, Callable[[int], list[float]]]:
    """Compile one case and run its warm-up steps; returns its record (without timings), the initial model, the batch
    and a timer: n -> the wall times of n more steps."""
    cfg = experiment_config(bench, layers, batch, gradient)
    preset = PRESETS[bench.model]
    model = build_model(cfg, preset["input_shape"], preset["classes"], jax.random.PRNGKey(bench.seed))
    example = random_batch(bench.model, batch, bench.seed)
    compiled, params, opt_state, compile_s = compiled_step(model, optax.sgd(bench.learning_rate), bench.smoothness,
                                                           example)
    time_steps(compiled, params, opt_state, example, bench.warmup, 0)
    record = {"layers": layers, "batch_size": batch, "strategy": gradient.strategy,
              "checkpoints": gradient.checkpoints, "label": gradient.label, "parameters": count_parameters(model),
              "compile_s": compile_s, "memory": memory_report(compiled), "cost": cost_report(compiled)}
    device = jax.devices()[0]
    if device.platform != "cpu":  # the allocator's own peak (cumulative over the process) on accelerators
        record["device_memory_stats"] = device.memory_stats()
    return record, model, example, lambda n: time_steps(compiled, params, opt_state, example, 0, n)


def timed_rounds(bench: BenchConfig, own: Callable[[int], list[float]], twin: Optional["PeerProcess"],
                 peak: bool) -> list[dict]:
    """The case's timed steps in `bench.rounds` rounds of steps / rounds steps. Each round measures the matmul peak
    (best of 3), then times the case's steps and the peer's, which side goes first alternating: on a shared machine
    whose speed drifts, both sides and the peak are then measured under the same load."""
    per_round = bench.steps // bench.rounds
    rounds = []
    for r in range(bench.rounds):
        entry: dict[str, Any] = {"peak_flops_per_s": matmul_peak(3) if peak else None}
        sides = [("own", own)] + ([("peer", twin.steps)] if twin else [])
        for name, timer in (sides if r % 2 == 0 else sides[::-1]):
            entry[name] = timer(per_round)
        rounds.append(entry)
    return rounds


def add_step_times(record: dict, rounds: list[dict]) -> None:
    """Median, min, max and IQR of the case's steps over all rounds, and each round's median."""
    times = [t for r in rounds for t in r["own"]]
    median = statistics.median(times)
    record.update(step_median_s=median, step_min_s=min(times), step_max_s=max(times),
                  step_iqr_s=float(np.subtract(*np.percentile(times, [75, 25]))),
                  examples_per_s=record["batch_size"] / median,
                  round_medians_s=[statistics.median(r["own"]) for r in rounds])


def add_throughput(record: dict, peaks: dict[str, float], rounds: list[dict]) -> None:
    """Achieved FLOP/s and bytes/s of an MNIST step, against the measured device peaks: the run's (measured once, at
    its start) and each round's own (`timed_rounds`; `fraction_of_round_peak` is the median over the rounds).

    XLA's cost analysis counts each while-loop body once, so `xla x L` scales it by the number
    of solver steps; `conv` counts only the 3x3 convolutions (3 per step; 4 for the continuous
    adjoint, which re-solves the state backwards).
    """
    median, layers, batch = record["step_median_s"], record["layers"], record["batch_size"]
    convs = 4 if record["strategy"] == "optimize_then_discretize" else 3
    flops_conv = conv_flops(batch, layers, convs_per_layer=convs)
    flops_xla, bytes_xla = record["cost"]["flops"] * layers, record["cost"]["bytes"] * layers
    per_round = [flops_conv / statistics.median(r["own"]) / r["peak_flops_per_s"] for r in rounds]
    record["throughput"] = {"conv_flops": flops_conv, "conv_flops_per_s": flops_conv / median,
                            "xla_x_L_flops_per_s": flops_xla / median, "xla_x_L_bytes_per_s": bytes_xla / median,
                            "fraction_of_peak_flops": flops_conv / median / peaks["flops_per_s"],
                            "fraction_of_peak_bytes": bytes_xla / median / peaks["bytes_per_s"],
                            "round_peaks_flops_per_s": [r["peak_flops_per_s"] for r in rounds],
                            "round_fractions_of_peak_flops": per_round,
                            "fraction_of_round_peak": statistics.median(per_round)}


def conv_nhwc(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """The NCHW 3x3 'SAME' cross-correlation computed in NHWC/HWIO layout (explicit transposes around it)."""
    out = jax.lax.conv_general_dilated(jnp.transpose(x, (0, 2, 3, 1)), jnp.transpose(kernel, (2, 3, 1, 0)), (1, 1),
                                       "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.transpose(out, (0, 3, 1, 2))


def conv_shift(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """The same cross-correlation as a sum of 9 shifted 1x1 convolutions (no 9x patch tensor)."""
    height, width = x.shape[-2:]
    padded = jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(1, 1), (1, 1)])
    return sum(jnp.einsum("...chw,oc->...ohw", padded[..., i:i + height, j:j + width], kernel[:, :, i, j])
               for i in range(3) for j in range(3))


def conv_loop_probe(batch: int, layers: int, repeats: int = 3) -> dict[str, Any]:
    """Where XLA CPU's conv time goes: `layers` residual conv steps x + conv(x) - 0.01 x^3 as a `lax.scan`
    (a while loop, as inside diffrax) or unrolled, for each conv implementation; forward, and forward +
    gradient. Also the conv's dimension labels in the compiled HLO (bf01 = NCHW kept, b01f = NHWC)."""
    import re


    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((batch, 10, 28, 28), dtype=np.float32))
    kernels = jnp.asarray(0.01 * rng.standard_normal((layers, 10, 10, 3, 3), dtype=np.float32))

    def net(conv, unroll):
        def f(x, ks):
            final = jax.lax.scan(lambda s, k: (s + conv(s, k) - 0.01 * s ** 3, None), x, ks, unroll=unroll)[0]
            return jnp.sum(final ** 2)
        return f

    variants = {}
    for conv_name, conv in (("xla", conv3x3_xla), ("im2col", conv3x3_im2col), ("nhwc", conv_nhwc), ("shift", conv_shift)):
        for loop, unroll in (("scan", 1), ("unrolled", layers)):
            f = net(conv, unroll)
            variants[f"{conv_name} {loop} fwd"] = jax.jit(f)
            variants[f"{conv_name} {loop} fwd+grad"] = jax.jit(jax.grad(f, argnums=(0, 1)))
    labels = {}
    for name, f in variants.items():
        if name.startswith("xla") and name.endswith("fwd"):
            labels[name] = sorted(set(re.findall(r"dim_labels=([\w>-]+)", f.lower(x, kernels).compile().as_text())))
        jax.block_until_ready(f(x, kernels))
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):  # interleaved, so that load changes hit every variant alike
        for name, f in variants.items():
            start = time.perf_counter()
            jax.block_until_ready(f(x, kernels))
            times[name].append(time.perf_counter() - start)
    return {"batch": batch, "layers": layers, "median_s": {k: statistics.median(v) for k, v in times.items()},
            "min_s": {k: min(v) for k, v in times.items()}, "dim_labels": labels}


def probe_table(probe: dict) -> str:
    """The conv probe as a markdown table."""
    lines = [f"Conv probe: {probe['layers']} residual 3x3 conv steps, batch {probe['batch']}, 10 channels, 28x28 "
             "(`conv_loop_probe`).", "", "| variant | median (ms) | min (ms) |", "|---|---|---|"]
    for name, median in probe["median_s"].items():
        lines.append(f"| {name} | {1e3 * median:.1f} | {1e3 * probe['min_s'][name]:.1f} |")
    lines.append("")
    lines += [f"XLA conv dim_labels, {name}: {', '.join(v)}" for name, v in probe["dim_labels"].items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# the torchdiffeq peer


def peer_arrays(model: ODENet, example: tuple) -> dict[str, np.ndarray]:
    """Weights, layer grid and data of a conv model as NumPy arrays for `ode_nets.experiments.peer_torch`."""
    field_ = model.field
    return {"kernel": np.asarray(field_.kernel.values), "b": np.asarray(field_.b.values),
            "gamma": np.asarray(field_.gamma, np.float32), "grid": model.grid.times(),
            "x": example[0], "y": example[1]}


def check_peer_installed(bench: BenchConfig) -> None:
    """Before any measurement: `peer: true` needs torch and torchdiffeq (the optional `bench` extra)."""
    import importlib.util

    missing = [m for m in ("torch", "torchdiffeq") if importlib.util.find_spec(m) is None]
    if bench.peer and missing:
        raise ConfigError(f"peer: true needs {' and '.join(missing)}, not installed: pip install -e '.[bench]', "
                          f"or run without the peer (--set peer=false)")


class PeerProcess:
    """`ode_nets.experiments.peer_torch --serve` in a subprocess (own threads, own peak RSS): on start its loss,
    gradient and memory (`first`), then `steps(n)`, the times of n more of its training steps."""

    def __init__(self, arrays: dict[str, np.ndarray], options: dict) -> None:
        self._tmp = tempfile.TemporaryDirectory()
        source, self._log = Path(self._tmp.name) / "in.npz", Path(self._tmp.name) / "stderr.txt"
        np.savez(source, options=json.dumps(options), **arrays)
        with open(self._log, "w") as err:
            self._proc = subprocess.Popen([sys.executable, "-m", "ode_nets.experiments.peer_torch", "--serve",
                                           str(source)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                          text=True)
        self.first = self._answer()

    def _answer(self) -> dict:
        line = self._proc.stdout.readline()
        if not line:
            self._proc.wait()
            raise RuntimeError(f"torch peer failed (exit code {self._proc.returncode}):\n"
                               f"{self._log.read_text()[-3000:]}")
        return json.loads(line)

    def steps(self, n: int) -> list[float]:
        self._proc.stdin.write(f"{n}\n")
        self._proc.stdin.flush()
        return self._answer()["step_times_s"]

    def __enter__(self) -> "PeerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self._proc.stdin.close()
        try:
            self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        self._proc.stdout.close()
        self._tmp.cleanup()


def jax_loss_and_grads(model: ODENet, example: tuple, lam: float) -> tuple[float, dict[str, np.ndarray]]:
    """Loss and gradient (kernel, b, gamma) of the JAX model at its weights."""
    (loss, _), grads = eqx.filter_value_and_grad(Objective(smoothness=lam).__call__, has_aux=True)(model, *example)
    g = grads.field
    return float(loss), {"kernel": np.asarray(g.kernel.values), "b": np.asarray(g.b.values),
                         "gamma": np.asarray(g.gamma)}


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||b||."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def peer_device() -> str:
    """Where the torch twin runs: on the GPU when JAX runs on one (a like-for-like comparison), else the CPU."""
    return "cuda" if jax.devices()[0].platform == "gpu" else "cpu"


def peer_options(bench: BenchConfig, record: dict, model: ODENet) -> dict:
    """The torch twin's settings for one case (`peer_torch.TorchTwin`)."""
    return {"horizon": model.grid.horizon, "lam": bench.smoothness,
            "adjoint": record["strategy"] == "optimize_then_discretize", "threads": bench.threads or os.cpu_count(),
            "warmup": bench.warmup, "learning_rate": bench.learning_rate, "device": peer_device()}


def peer_record(bench: BenchConfig, record: dict, model: ODENet, example: tuple, first: dict, rounds: list[dict]
                ) -> dict:
    """The torchdiffeq twin of one case: agreement of loss and gradient, its step time and memory, and the time
    ratio (the medians over all rounds, and the median of the rounds' ratios)."""
    loss, grads = jax_loss_and_grads(model, example, bench.smoothness)
    flat = lambda d: np.concatenate([np.ravel(d[k]) for k in ("kernel", "b", "gamma")])  # noqa: E731
    times = [t for r in rounds for t in r["peer"]]
    median = statistics.median(times)
    ratios = [statistics.median(r["own"]) / statistics.median(r["peer"]) for r in rounds]
    return {"method": "odeint_adjoint" if record["strategy"] == "optimize_then_discretize" else "odeint",
            "torch_version": first["torch_version"], "device": first["device"], "threads": first["threads"],
            "loss_rel_diff": abs(loss - first["loss"]) / abs(first["loss"]),
            "grad_rel_diff": relative_difference(flat(grads), flat(first["grads"])),
            "step_median_s": median, "step_min_s": min(times), "step_max_s": max(times),
            "peak_rss_delta_bytes": first["peak_rss_delta_bytes"], "time_ratio": record["step_median_s"] / median,
            "round_ratios": ratios, "time_ratio_round_median": statistics.median(ratios),
            "memory_ratio": record["memory"].get("peak", float("nan")) / max(first["peak_rss_delta_bytes"], 1)}


# ---------------------------------------------------------------------------------------------
# the run


def run_bench(bench: BenchConfig, out: Path, log: Callable[[str], None] = print) -> dict:
    """Every case of the grid; writes results.json, results.md and plots into `out`."""
    check_peer_installed(bench)
    out.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()  # the CPU is shared: record how busy it was
    info = device_info()
    log(f"device: {info['platform']} ({info['device_kind']}), {info['device_count']} device(s), "
        f"{info['cpu_count']} CPU cores")
    peaks = device_peaks() if bench.model == "mnist_conv" else None
    if peaks:
        log(f"measured peak: {peaks['flops_per_s'] / 1e9:.1f} GFLOP/s, {peaks['bytes_per_s'] / 1e9:.1f} GB/s")
    records = []
    for layers, batch, gradient in case_rows(bench):
        record, model, example, own = run_case(bench, layers, batch, gradient)
        peer = PeerProcess(peer_arrays(model, example), peer_options(bench, record, model)) if bench.peer else None
        with peer or contextlib.nullcontext():
            rounds = timed_rounds(bench, own, peer, peak=peaks is not None)
        add_step_times(record, rounds)
        if peaks:
            add_throughput(record, peaks, rounds)
        if peer:
            record["peer"] = peer_record(bench, record, model, example, peer.first, rounds)
        records.append({**record, "rounds": rounds})
        log(format_case(record))
    probe = conv_loop_probe(max(bench.batch_sizes), max(bench.layers)) if bench.conv_probe else None
    ceiling = (conv_ceiling(max(bench.batch_sizes), max(bench.layers), peaks["flops_per_s"])
               if bench.conv_ceiling else None)
    if ceiling:
        log(ceiling_table(ceiling))
    results = {"bench": dataclasses.asdict(bench), "device": info, "peaks": peaks, "cases": records, "conv_probe": probe,
               "conv_ceiling": ceiling, "loadavg_start": load_start, "loadavg": os.getloadavg(), "time": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown_table(results) + ("\n" + probe_table(probe) if probe else "")
                                    + ("\n" + ceiling_table(ceiling) if ceiling else ""))
    for path in plot_depth(records, out):
        log(f"figure: {path}")
    log(f"results: {out / 'results.json'}, {out / 'results.md'}")
    return results


def format_case(r: dict) -> str:
    line = (f"L={r['layers']:4d} B={r['batch_size']:4d} {r['label']:<20s} compile {r['compile_s']:6.2f} s  "
            f"step {1e3 * r['step_median_s']:8.1f} ms  peak {r['memory'].get('peak', 0) / 2**20:8.1f} MiB")
    if "peer" in r:
        p = r["peer"]
        line += (f"  | torch {p['method']} {1e3 * p['step_median_s']:7.1f} ms, ratio {p['time_ratio']:.2f} "
                 f"(rounds {p['time_ratio_round_median']:.2f}), grad rel diff {p['grad_rel_diff']:.1e}")
    if "throughput" in r:
        t = r["throughput"]
        line += (f"  | {100 * t['fraction_of_peak_flops']:.0f} % of the run's peak, "
                 f"{100 * t['fraction_of_round_peak']:.0f} % of the rounds'")
    return line


def markdown_table(results: dict) -> str:
    """The cases as a markdown table (and the peer columns when present)."""
    peer = any("peer" in r for r in results["cases"])
    throughput = any("throughput" in r for r in results["cases"])
    head = ["L", "batch", "gradient", "compile (s)", "step median (ms)", "step min-max (ms)", "examples/s",
            "XLA peak (MiB)"]
    if throughput:
        head += ["conv GFLOP/s", "% peak FLOP/s", "% round peak", "XLA bytes accessed GB/s (x L)",
                 "vs streaming B/s"]
    if peer:
        head += ["torchdiffeq", "torch step (ms)", "torch peak RSS delta (MiB)", "time ratio", "round ratio",
                 "memory ratio", "loss rel diff", "grad rel diff"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results["cases"]:
        cells = [r["layers"], r["batch_size"], r["label"], f"{r['compile_s']:.2f}", f"{1e3 * r['step_median_s']:.1f}",
                 f"{1e3 * r['step_min_s']:.1f}-{1e3 * r['step_max_s']:.1f}", f"{r['examples_per_s']:.0f}",
                 f"{r['memory'].get('peak', 0) / 2**20:.1f}"]
        if throughput:
            t = r["throughput"]
            cells += [f"{t['conv_flops_per_s'] / 1e9:.1f}", f"{100 * t['fraction_of_peak_flops']:.0f}%",
                      f"{100 * t['fraction_of_round_peak']:.0f}%",
                      f"{t['xla_x_L_bytes_per_s'] / 1e9:.1f}", f"{100 * t['fraction_of_peak_bytes']:.0f}%"]
        if peer:
            p = r["peer"]
            cells += [p["method"], f"{1e3 * p['step_median_s']:.1f}", f"{p['peak_rss_delta_bytes'] / 2**20:.1f}",
                      f"{p['time_ratio']:.2f}", f"{p['time_ratio_round_median']:.2f}", f"{p['memory_ratio']:.2f}",
                      f"{p['loss_rel_diff']:.1e}", f"{p['grad_rel_diff']:.1e}"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n\n" + "\n".join(table_notes(results)) + "\n"


def table_notes(results: dict) -> list[str]:
    """The lines under the table: device and load, the run's peaks, how the rounds were timed."""
    d, load = results["device"], results["loadavg"]
    start = results["loadavg_start"]
    notes = [f"Device: {d['platform']} ({d['device_kind']}), {d['cpu_count']} cores; jax {d['jax']}; "
             f"1-min load average {start[0]:.2f} at the start, {load[0]:.2f} at the end of the run (shared CPU)."]
    if results["peaks"]:
        p = results["peaks"]
        notes.append(f"Peaks measured in the same run ({p['how']}): {p['flops_per_s'] / 1e9:.1f} GFLOP/s, "
                     f"{p['bytes_per_s'] / 1e9:.1f} GB/s.")
        round_peaks = [g / 1e9 for r in results["cases"] for g in r["throughput"]["round_peaks_flops_per_s"]]
        notes.append(f"Timed in {results['bench']['rounds']} round(s) per case (`rounds`): each round measures the "
                     f"matmul peak (best of 3; {min(round_peaks):.1f}-{max(round_peaks):.1f} GFLOP/s over the run), "
                     "then the case's steps and the twin's, alternating which goes first. '% round peak' is the median "
                     "over the rounds of the round's conv FLOP/s over its peak; 'round ratio' the median of the "
                     "rounds' step-time ratios.")
    return notes


def plot_depth(records: list[dict], out: Path) -> list[Path]:
    """Step time, compile time and XLA peak memory against depth L, one line per gradient setting and batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len({r["layers"] for r in records}) < 2:
        return []
    series: dict[str, list[dict]] = {}
    for r in records:
        series.setdefault(f"{r['label']}, B={r['batch_size']}", []).append(r)
    paths = []
    for name, key, scale, unit in (("step_time_vs_L", "step_median_s", 1e3, "step time (ms)"),
                                   ("compile_time_vs_L", "compile_s", 1.0, "compile time (s)"),
                                   ("memory_vs_L", "peak", 2.0 ** -20, "XLA peak memory (MiB)")):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for label, rows in series.items():
            rows = sorted(rows, key=lambda r: r["layers"])
            ys = [(r["memory"].get("peak", 0) if key == "peak" else r[key]) * scale for r in rows]
            ax.plot([r["layers"] for r in rows], ys, "o-", label=label)
        ax.set_xlabel("depth L (Euler steps)")
        ax.set_ylabel(unit)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths
