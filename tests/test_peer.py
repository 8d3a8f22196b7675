"""Benchmark plumbing: bench-config validation, memory scaling with depth, and the torchdiffeq twin's
loss and gradient against ode_nets (skipped when the optional `bench` extra, torch + torchdiffeq, is absent)."""

from __future__ import annotations

import importlib.util

import numpy as np
import optax
import pytest

from helpers import net_from_config
from ode_nets.experiments.benchmark import (BenchConfig, GradientCase, compiled_step, experiment_config, jax_loss_and_grads,
                                memory_report, peer_arrays, random_batch, relative_difference, PRESETS)
from ode_nets.config import parse
from ode_nets.errors import ConfigError

HAS_TORCH = all(importlib.util.find_spec(m) is not None for m in ("torch", "torchdiffeq"))


def bench_from_dict(data: dict) -> BenchConfig:
    """A validated bench config (the schema's `parse`, as `load_bench_config` does for a file)."""
    return parse(BenchConfig, data)


def small_model(bench, layers, batch, gradient):
    cfg = experiment_config(bench, layers, batch, gradient)
    preset = PRESETS[bench.model]
    model = net_from_config(cfg, preset["input_shape"], preset["classes"])
    return model, random_batch(bench.model, batch, 0)


@pytest.mark.parametrize("data, match", [
    ({"layres": [20]}, "did you mean 'layers'"),
    ({"layers": [20, 0]}, "layers: expected a non-empty list of positive integers"),
    ({"gradients": [{"strategy": "backsolve"}]}, "gradients\\[0\\].strategy"),
    ({"gradients": [{"strategy": "discretize_then_optimize", "checkpoints": 0}]}, "gradient.checkpoints"),
    ({"steps": 5}, "steps: must be >= 20"),
    ({"rounds": 11}, "rounds: must be between 1 and steps / 2 = 10"),
    ({"model": "circles_dense", "peer": True}, "peer"),
    ({"conv_impl": "fft"}, "model.conv_impl: expected one of"),
    ({"model": "circles_dense", "conv_impl": "xla"}, "conv_impl: needs model: mnist_conv"),
])
def test_bench_config_errors_name_the_key(data, match):
    with pytest.raises(ConfigError, match=match):
        bench_from_dict(data)


def test_conv_impl_reaches_the_cases():
    bench = bench_from_dict({"conv_impl": "xla"})
    assert experiment_config(bench, 20, 8, GradientCase()).model.conv_impl == "xla"


def test_memory_grows_with_depth_only_when_every_step_is_stored():
    """XLA peak temp memory: ~linear in L with one checkpoint per step, flat for the continuous adjoint."""
    bench = bench_from_dict({"model": "circles_dense"})
    temp = {}
    for label, gradient in (("dto", GradientCase()), ("otd", GradientCase("optimize_then_discretize"))):
        for layers in (16, 64):
            model, example = small_model(bench, layers, 256, gradient)
            compiled, *_ = compiled_step(model, optax.sgd(0.1), 0.0, example)
            temp[label, layers] = memory_report(compiled)["temp"]
    state_bytes = 256 * 2 * 4  # one saved state (batch 256, N = 2, float32)
    assert temp["dto", 64] - temp["dto", 16] >= 48 * state_bytes  # at least one stored state per extra step
    assert temp["otd", 64] - temp["otd", 16] < 8 * state_bytes  # independent of depth


@pytest.mark.skipif(not HAS_TORCH, reason="optional bench extra (torch, torchdiffeq) not installed")
@pytest.mark.parametrize("strategy", ["discretize_then_optimize", "optimize_then_discretize"])
def test_torchdiffeq_twin_gives_the_same_loss_and_gradient(strategy):
    """odeint (through the Euler steps) and odeint_adjoint (continuous adjoint on the shifted backward grid)
    agree with ode_nets' two strategies to float32 rounding on the same weights and data."""
    from ode_nets.experiments.peer_torch import run

    bench = bench_from_dict({"model": "mnist_conv"})
    model, example = small_model(bench, 4, 3, GradientCase(strategy))
    out = run(peer_arrays(model, example), horizon=1.0, lam=0.1, adjoint=strategy == "optimize_then_discretize",
              threads=1, warmup=0, steps=0, learning_rate=0.01)
    loss, grads = jax_loss_and_grads(model, example, 0.1)
    assert abs(loss - out["loss"]) <= 1e-5 * abs(loss)
    for name in ("kernel", "b", "gamma"):
        assert np.linalg.norm(grads[name]) > 0
        assert relative_difference(grads[name], out["grads"][name]) < 1e-4, name


def test_rounds_interleave_the_two_sides_and_measure_a_peak_each():
    """Each round: one peak, then steps / rounds steps of each side, the side that goes first alternating."""
    from ode_nets.experiments import benchmark

    calls = []

    class Twin:
        def steps(self, n):
            calls.append(("peer", n))
            return [2.0] * n

    bench = bench_from_dict({"steps": 21, "rounds": 4})
    own = lambda n: calls.append(("own", n)) or [1.0] * n  # noqa: E731
    rounds = benchmark.timed_rounds(bench, own, Twin(), peak=False)
    assert calls == [("own", 5), ("peer", 5), ("peer", 5), ("own", 5)] * 2
    assert [len(r["own"]) for r in rounds] == [5] * 4 and all(r["peak_flops_per_s"] is None for r in rounds)


@pytest.mark.skipif(not HAS_TORCH, reason="optional bench extra (torch, torchdiffeq) not installed")
def test_peer_process_serves_its_gradient_then_timed_steps():
    """The twin in its own process answers with the same loss as in-process, then with n step times per request."""
    from ode_nets.experiments.benchmark import PeerProcess
    from ode_nets.experiments.peer_torch import run

    bench = bench_from_dict({"model": "mnist_conv"})
    model, example = small_model(bench, 2, 2, GradientCase())
    options = {"horizon": 1.0, "lam": 0.1, "adjoint": False, "threads": 1, "warmup": 1, "learning_rate": 0.01}
    with PeerProcess(peer_arrays(model, example), options) as twin:
        times = [twin.steps(3), twin.steps(1)]
    assert [len(t) for t in times] == [3, 1] and all(s > 0 for t in times for s in t)
    assert twin.first["loss"] == pytest.approx(run(peer_arrays(model, example), steps=0, **options)["loss"], rel=1e-6)


def test_peer_process_failure_shows_its_error():
    """A twin that cannot start (here: options missing) is an error that carries the subprocess's traceback."""
    from ode_nets.experiments.benchmark import PeerProcess

    with pytest.raises(RuntimeError, match=r"(?s)torch peer failed \(exit code 1\).*TypeError"):
        PeerProcess({"x": np.zeros(1)}, {"horizon": 1.0})


def test_peer_without_torch_is_refused_before_measuring(tmp_path, monkeypatch):
    import importlib.util

    from ode_nets.experiments import benchmark

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchdiffeq" else real(name, *a))
    bench = bench_from_dict({"name": "p", "model": "mnist_conv", "layers": [2], "batch_sizes": [2], "peer": True})
    with pytest.raises(ConfigError, match=r"torchdiffeq.*\[bench\].*peer=false"):
        benchmark.run_bench(bench, tmp_path / "out")
    assert not (tmp_path / "out").exists()
