"""Config files map onto typed dataclasses; bad keys and values fail naming their path."""

import os

import pytest
import yaml

from labse_tf import config as config_lib
from labse_tf.config import ConfigError, load_config
from labse_tf.model import build_encoder


def _leaves(mapping, path=()):
    for key, value in mapping.items():
        if isinstance(value, dict):
            yield from _leaves(value, path + (key,))
        else:
            yield path + (key,), value


def test_shipped_configs_load_every_key_they_set():
    names = sorted(n for n in os.listdir(config_lib.CONFIG_DIR) if n.endswith(".yaml"))
    assert names == ["budget_30min.yaml", "labse_base.yaml", "labse_pretrain.yaml", "small.yaml",
                     "tiny.yaml", "tiny_pretrain.yaml"]
    for name in names:
        with open(os.path.join(config_lib.CONFIG_DIR, name), encoding="utf-8") as f:
            raw = list(_leaves(yaml.safe_load(f)))
        loaded = config_lib.to_dict(load_config(name.removesuffix(".yaml")))  # by name
        assert len(raw) >= 10, name
        for path, value in raw:
            got = loaded
            for key in path:
                got = got[key]
            want = float(value) if isinstance(got, float) else value  # YAML reads 1e-4 as str
            assert got == want, f"{name}: {'.'.join(path)} is {got!r}, the file says {value!r}"


@pytest.mark.parametrize("name,params,heads", [
    # BERT's count with a 1,000-token vocabulary, 64 positions and 2 segments:
    #   embeddings V·H + 64·H + 2·H + LayerNorm 2·H; per layer attention 4·(H² + H),
    #   feed-forward H·I + I + I·H + H, two LayerNorms 4·H; the pooler H² + H.
    # tiny (H 32, L 2, I 64): 34,176 + 2 · 8,544 + 1,056
    ("tiny", 52_320, 2),
    # small (H 256, L 4, I 1024): 273,408 + 4 · 789,760 + 65,792
    ("small", 3_498_240, 4),
])
def test_tiny_and_small_build_the_documented_shapes(name, params, heads):
    cfg = load_config(name)
    encoder = build_encoder(cfg.model, 1000)
    assert encoder.count_params() == params
    query = {w.path: w for w in encoder.weights}[
        "transformer_layer_0/self_attention_layer/query/kernel"]
    assert tuple(query.shape) == (cfg.model.hidden_dim, heads, cfg.model.hidden_dim // heads)


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
