"""Stochastic weight averaging of checkpoints (ode_nets.experiments.averaging, scripts/average.py)."""

from pathlib import Path

import equinox as eqx
import numpy as np
import pytest

from ode_nets.training import checkpoint as ckpt
from ode_nets.experiments.averaging import average_models, average_run
from ode_nets.config import load_config
from ode_nets.build import build_run, checkpoint_template, evaluate_run, fit_run, prepare_folder
from ode_nets.errors import RunDirError

CIRCLES_CFG = Path(__file__).parent.parent / "configs" / "circles_model2.yaml"


def test_average_models_is_the_elementwise_mean(tmp_path):
    run = build_run(load_config(CIRCLES_CFG, ["model.init=normal"]), tmp_path)
    a = run.model
    b = eqx.tree_at(lambda m: m.field.w.values, a, a.field.w.values * 3.0 + 1.0)
    mean = average_models([a, b])
    np.testing.assert_allclose(np.asarray(mean.field.w.values), np.asarray(a.field.w.values) * 2.0 + 0.5, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(mean.field.b.values), np.asarray(a.field.b.values))
    assert eqx.tree_equal(average_models([a]), a)
    with pytest.raises(ValueError, match="no models"):
        average_models([])


def test_average_run_writes_a_run_of_the_mean_checkpoint(tmp_path):
    cfg = load_config(CIRCLES_CFG, ["train.epochs=4", "train.keep_checkpoints=10", "optim.schedule=constant"])
    source = tmp_path / "run"
    prepare_folder(source, cfg, overwrite=False, resume=False)
    run = build_run(cfg, source)
    fit_run(run, progress=False)
    paths = ckpt.list_checkpoints(source / "checkpoints")
    assert len(paths) == 4  # one per epoch
    before = {p: p.read_bytes() for p in (source / "checkpoints").iterdir()}
    last_two = [ckpt.load_tree(p, checkpoint_template(run))["model"] for p in paths[2:]]
    from_step = ckpt.checkpoint_step(paths[2])

    results = average_run(source, tmp_path / "avg", from_step)
    assert results["steps"] == [ckpt.checkpoint_step(p) for p in paths[2:]]
    saved = ckpt.load_tree(tmp_path / "avg" / "model.eqx", run.model)
    expected = (np.asarray(last_two[0].field.w.values) + np.asarray(last_two[1].field.w.values)) / 2
    np.testing.assert_allclose(np.asarray(saved.field.w.values), expected, rtol=1e-6)
    evaluated = evaluate_run(tmp_path / "avg")
    assert evaluated["accuracy"] == pytest.approx(results["test_acc"])
    assert results["test_non_finite"] == evaluated["non_finite"]
    assert before == {p: p.read_bytes() for p in (source / "checkpoints").iterdir()}  # the source is only read

    with pytest.raises(RunDirError, match="already exists"):
        average_run(source, tmp_path / "avg", from_step)
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint .* with step in"):
        average_run(source, tmp_path / "none", from_step=10**6)
    with pytest.raises(RunDirError, match="own folder"):
        average_run(source, source, from_step)


def test_average_script_reports_bad_input_in_one_line(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("average", Path(__file__).parent.parent / "scripts" / "average.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    code = script.main([str(tmp_path / "missing"), str(tmp_path / "out"), "--from-step", "0"])
    assert code == 2 and "is not a run folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
