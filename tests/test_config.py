"""Config files map onto typed dataclasses; bad keys and values fail naming their path."""

import os

import pytest
import yaml

from labse_tf import config as config_lib
from labse_tf.config import ConfigError, load_config
from labse_tf.model import build_encoder


def test_shipped_configs_load():
    for name in sorted(os.listdir(config_lib.CONFIG_DIR)):
        if name.endswith(".yaml"):
            load_config(name)  # raises on any unknown key or wrong type


def test_tiny_and_small_shapes():
    tiny, small = load_config("tiny"), load_config("small")
    assert (tiny.model.num_layers, tiny.model.hidden_dim) == (2, 32)
    assert (small.model.num_layers, small.model.hidden_dim, small.model.num_heads,
            small.model.intermediate_dim, small.data.seq_length) == (4, 256, 4, 1024, 32)


def test_set_overrides_are_typed():
    cfg = load_config("tiny", ["train.steps=7", "train.learning_rate=1e-4", "loss.gather=false",
                               "train.precision=bf16", "model.dropout=0", "data.alpha=1"])
    assert cfg.train.steps == 7 and cfg.train.learning_rate == 1e-4
    assert cfg.loss.gather is False and cfg.train.precision == "bf16"
    assert cfg.model.dropout == 0.0 and isinstance(cfg.model.dropout, float)
    assert cfg.data.alpha == 1.0


@pytest.mark.parametrize("assignment,message", [
    ("train.stepz=3", r"train\.stepz: unknown key"),
    ("trian.steps=3", r"trian: unknown key"),
    ("train.steps=many", r"train\.steps: expected int, got str"),
    ("loss.scale=[1]", r"loss\.scale: expected float, got list"),
    ("loss.scale=big", r"loss\.scale: expected float, got str"),
    ("train.steps=2.5", r"train\.steps: expected int, got float"),
    ("loss.gather=3", r"loss\.gather: expected bool, got int"),
    ("train.precision=fp8", r"train\.precision: must be one of"),
    ("model.num_heads=3", r"model\.num_heads: must divide model\.hidden_dim"),
    ("model.num_layers=-1", r"model\.num_layers: must be >= 0"),
    ("train.time_budget_minutes=-1", r"train\.time_budget_minutes: must be >= 0"),
    ("data.language_group=3",
     r"data\.language_group: must be >= 1 and divide train\.global_batch_size"),
    ("train.steps", r"expected KEY=VALUE"),
])
def test_bad_overrides_name_the_key(assignment, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", [assignment])


def test_no_transformer_layers_needs_mean_pooling():
    assert load_config("tiny", ["model.num_layers=0", "model.pooling=mean"]).model.num_layers == 0
    with pytest.raises(ConfigError, match=r"model\.pooling: must be mean with model\.num_layers=0"):
        load_config("tiny", ["model.num_layers=0", "model.pooling=cls"])


def test_bad_yaml_file_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"model": {"hidden": 8}}))
    with pytest.raises(ConfigError, match=r"bad\.yaml: model\.hidden: unknown key"):
        load_config(str(path))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "missing.yaml"))


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config("small", ["train.seed=3"])
    path = config_lib.write_config(cfg, str(tmp_path))
    assert load_config(path) == cfg


def test_labse_base_has_the_papers_parameter_count():
    cfg = load_config("labse_base")
    encoder = build_encoder(cfg.model, cfg.model.vocab_size)
    # BERT-base with a 501,153-token vocabulary: 385M embedding + 85M transformer parameters.
    assert encoder.count_params() == 470_926_848
    assert 470e6 < encoder.count_params() < 472e6
