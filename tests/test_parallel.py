"""Data parallelism: the batch sharded over 4 (forced host) devices trains exactly like one device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from ode_nets.config import ConfigError, from_dict

SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import jax, numpy as np
    from ode_nets.config import from_dict
    from ode_nets.build import build_run, fit_run, prepare_folder
    from ode_nets.training import checkpoint as ckpt

    assert jax.device_count() == 4, jax.devices()
    out = {}
    for devices in (1, 4):
        config = from_dict({"model": {"field": "cubic", "layers": 8, "augment": 1, "readout": "sigmoid_last",
                                      "gamma": 0.1, "learn_gamma": False, "init": "normal", "init_scale": 0.3},
                            "loss": {"smoothness": 0.5}, "optim": {"name": "adam", "learning_rate": 0.05},
                            "data": {"n_train": 64, "n_test": 16},
                            "train": {"batch_size": 16, "epochs": 2, "log_every": 1, "devices": devices}})
        folder = Path(sys.argv[1]) / f"d{devices}"
        prepare_folder(folder, config, overwrite=True, resume=False)
        run = build_run(config, folder)
        fit_run(run, progress=False)
        model = ckpt.load_tree(folder / "model.eqx", run.model)
        losses = [json.loads(l)["loss"] for l in (folder / "metrics.jsonl").read_text().splitlines()
                  if json.loads(l)["kind"] == "train"]
        flat = lambda m: np.concatenate([np.asarray(x).ravel() for x in jax.tree_util.tree_leaves(m)
                                         if hasattr(x, "shape")]).tolist()
        out[devices] = {"losses": losses, "params": flat(model), "initial": flat(run.model)}
    from ode_nets.training.parallel import batch_mesh, shard_batch
    (x,) = shard_batch((np.zeros((16, 3)),), batch_mesh(4))
    assert len(x.sharding.device_set) == 4 and x.addressable_shards[0].data.shape == (4, 3)
    print("RESULT " + json.dumps(out))
""")


def test_four_devices_match_one(tmp_path):
    """Same per-step losses and final parameters (8 Adam steps) with the batch split over 4 devices."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
    out = json.loads(line[len("RESULT "):])
    one, four = out["1"], out["4"]
    assert len(one["losses"]) == len(four["losses"]) == 8
    import numpy as np

    np.testing.assert_allclose(four["losses"], one["losses"], rtol=1e-5, atol=1e-6)
    p1, p4 = np.asarray(one["params"]), np.asarray(four["params"])
    assert np.abs(p1 - np.asarray(one["initial"])).max() > 1e-2  # training moved the parameters
    np.testing.assert_allclose(p4, p1, rtol=1e-4, atol=1e-5)


def test_batch_must_split_evenly():
    with pytest.raises(ConfigError, match="train.batch_size.*divisible by train.devices = 3"):
        from_dict({"train": {"batch_size": 16, "devices": 3}})


def test_more_devices_than_available():
    from ode_nets.training.parallel import check_devices

    import jax

    with pytest.raises(ConfigError, match="train.devices"):
        check_devices(jax.device_count() + 1, 16 * (jax.device_count() + 1))
