"""Config files: every shipped config loads; bad keys, types and values give errors naming key and file."""

from pathlib import Path

import pytest
import yaml

from ode_nets.continuous.experiments import load_continuous
from ode_nets.config import Config, ModelConfig, apply_overrides, coerce, from_dict, load_config, parse, to_dict
from ode_nets.errors import ConfigError, UserError

CONFIGS = sorted(Path(__file__).parent.parent.glob("configs/**/*.yaml"))
EXPERIMENT_CONFIGS = [p for p in CONFIGS if "bench" not in p.parts]


@pytest.mark.parametrize("path", EXPERIMENT_CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    """Classifier configs load as `Config`; the continuous-time ones (a `task:` key, scripts/train_continuous.py)
    with their task's schema."""
    if "task" in yaml.safe_load(path.read_text()):
        task, config, _ = load_continuous(path)
        assert isinstance(config, task.schema)
    else:
        assert isinstance(load_config(path), Config)


def test_continuous_config_points_at_its_script():
    with pytest.raises(ConfigError, match="train_continuous.py"):
        load_config(Path(__file__).parent.parent / "configs" / "cnf_two_moons.yaml")


def write(tmp_path, data) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_unknown_key_names_key_file_and_suggestion(tmp_path):
    path = write(tmp_path, {"model": {"layres": 5}})
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert "model.layres" in msg and str(path) in msg and "model.layers" in msg


def test_unknown_section(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'modle'.*did you mean 'model'"):
        load_config(write(tmp_path, {"modle": {}}))


@pytest.mark.parametrize("data,key", [
    ({"model": {"layers": "20"}}, "model.layers"),
    ({"model": {"layers": 2.5}}, "model.layers"),
    ({"model": {"learn_gamma": "yes"}}, "model.learn_gamma"),
    ({"optim": {"learning_rate": "fast"}}, "optim.learning_rate"),
    ({"solver": {"method": "rk45"}}, "solver.method"),
    ({"seed": True}, "seed"),
    ({"model": 3}, "model"),
])
def test_wrong_type_names_key(tmp_path, data, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(write(tmp_path, data))


@pytest.mark.parametrize("data,key", [
    ({"model": {"layers": 0}}, "model.layers"),
    ({"model": {"layers": -3}}, "model.layers"),
    ({"loss": {"smoothness": -1.0}}, "loss.smoothness"),
    ({"loss": {"label_smoothing": 1.0}}, "loss.label_smoothing"),
    ({"loss": {"logit_penalty": -0.1}}, "loss.logit_penalty"),
    ({"model": {"horizon": 0}}, "model.horizon"),
    ({"train": {"batch_size": 0}}, "train.batch_size"),
    ({"solver": {"rtol": -1e-3}}, "solver.rtol"),
    ({"train": {"eval_train_examples": 0}}, "train.eval_train_examples"),
    ({"train": {"input_noise": -0.1}}, "train.input_noise"),
    ({"train": {"random_crop": -1}}, "train.random_crop"),
    ({"optim": {"schedule": "step"}}, "optim.decay_at"),
    ({"optim": {"schedule": "step", "decay_at": [0.6, 0.3]}}, "optim.decay_at"),
    ({"optim": {"schedule": "step", "decay_at": [1.0]}}, "optim.decay_at"),
    ({"model": {"field": "conv_cubic_nhwc", "conv_impl": "direct"}}, "model.conv_impl"),  # channels-first only
])
def test_impossible_values_name_key(tmp_path, data, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as e:
        load_config(write(tmp_path, data))
    assert str(tmp_path) in str(e.value)


def test_int_accepted_for_float():
    assert from_dict({"model": {"horizon": 2}}).model.horizon == 2.0


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_overrides_reach_every_key(tmp_path):
    """`key.sub=value` works for every key of the schema: set each to its own default via an override."""
    defaults = to_dict(Config())
    overrides = [f"{section}.{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                 for section, values in defaults.items() if isinstance(values, dict) for k, v in values.items()]
    overrides += ["seed=7", "name=x"]
    cfg = load_config(write(tmp_path, {}), overrides)
    assert cfg.seed == 7 and to_dict(cfg)["model"] == defaults["model"]


def test_override_values_are_typed_and_validated(tmp_path):
    path = write(tmp_path, {"model": {"layers": 20}})
    assert load_config(path, ["model.layers=7", "optim.name=adam"]).model.layers == 7
    with pytest.raises(ConfigError, match="model.layers"):
        load_config(path, ["model.layers=0"])
    with pytest.raises(ConfigError, match="unknown key 'model.layer'"):
        load_config(path, ["model.layer=3"])
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides({}, ["model.layers"])


def test_scientific_notation_without_dot(tmp_path):
    """PyYAML reads 1e-3 as a string (YAML 1.1); float keys accept it anyway."""
    cfg = load_config(write(tmp_path, {"optim": {"learning_rate": "1e-3"}}), ["solver.rtol=1e-7"])
    assert cfg.optim.learning_rate == 1e-3 and cfg.solver.rtol == 1e-7


def test_config_errors_are_user_errors():
    """The CLI turns exactly `UserError`s into one line; callers catching ValueError still work."""
    with pytest.raises(UserError):
        from_dict({"model": {"layers": 0}})
    assert issubclass(ConfigError, ValueError)


def test_parse_names_keys_under_its_prefix():
    assert parse(ModelConfig, {"layers": 3}).layers == 3
    with pytest.raises(ConfigError, match=r"unknown key 'model\.layres'; did you mean 'model\.layers'"):
        parse(ModelConfig, {"layres": 3}, "model")
    with pytest.raises(ConfigError, match=r"model\.field: expected one of .*did you mean 'cubic'"):
        parse(ModelConfig, {"field": "cubik"}, "model")
    assert coerce([1, 2], tuple[int, ...], "train.levels") == (1, 2)
