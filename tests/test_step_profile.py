"""scripts/profile_step.py: a traced training step of a small bench case is summed per XLA operation."""

from __future__ import annotations

import json

import pytest

from ode_nets.config import parse
from ode_nets.errors import ConfigError
from ode_nets.experiments.benchmark import BenchConfig
from ode_nets.experiments.step_profile import op_name, profile_case, summarize

SMALL = {"model": "circles_dense", "layers": [4], "batch_sizes": [16], "warmup": 1, "peer": False,
         "conv_probe": False, "conv_ceiling": False,
         "gradients": [{"strategy": "discretize_then_optimize"}, {"strategy": "optimize_then_discretize"}]}


def test_a_traced_step_is_summed_per_operation(tmp_path):
    summary = profile_case(parse(BenchConfig, SMALL), 1, tmp_path, steps=2)
    assert summary["label"] == "OTD" and summary["layers"] == 4
    assert summary["ops"] and all(op["ms"] > 0 and op["calls"] > 0 for op in summary["ops"])
    assert not any(op["op"].startswith(("ThunkExecutor", "while")) for op in summary["ops"])  # operations only
    assert json.loads((tmp_path / "profile.json").read_text())["ops"] == summary["ops"]
    assert "| operation | ms per step |" in (tmp_path / "profile.md").read_text()


def test_summary_arithmetic_and_names():
    events = [("t0", "copy", 2_000_000), ("t1", "copy", 4_000_000), ("t0", "conv", 10_000_000)]
    summary = summarize(events, steps=2, wall_ms=9.0)
    assert summary["ops"] == [{"op": "conv", "ms": 5.0, "calls": 0.5}, {"op": "copy", "ms": 3.0, "calls": 1.0}]
    assert summary["busy_ms"] == [6.0, 2.0]
    assert op_name("copy.31") == "copy" and op_name("ode_nets_direct_conv_forward.16") == "ode_nets_direct_conv_forward"


def test_an_unknown_case_is_named(tmp_path):
    with pytest.raises(ConfigError, match="--case 5: .* has gradient cases 0..1"):
        profile_case(parse(BenchConfig, SMALL), 5, tmp_path)
