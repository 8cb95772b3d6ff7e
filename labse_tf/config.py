"""Experiment configuration: frozen, typed dataclasses with YAML overrides.

A config is built from the dataclass defaults, then a YAML file, then `--set a.b=v`
overrides, in that order. Every key is checked against the dataclass fields and their
types, so a typo or a wrong type fails with the key's full path instead of being ignored.
"""

import collections.abc
import dataclasses
import json
import os
import typing
from typing import Any, Mapping, Sequence

import yaml

from labse_tf import files
from labse_tf.rundir import CONFIG_FILE

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "OptimizerConfig",
    "PretrainConfig",
    "TrainConfig",
    "load_config",
    "override",
    "to_dict",
    "write_config",
]

# The named configs: installed as labse_tf/configs (setup.cfg maps them there), and in a
# source checkout (or an editable install) the top-level configs/ folder.
_INSTALLED_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
CONFIG_DIR = (_INSTALLED_CONFIGS if os.path.isdir(_INSTALLED_CONFIGS) else
              os.path.join(os.path.dirname(os.path.dirname(_INSTALLED_CONFIGS)), "configs"))
PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULES = ("linear", "cosine", "constant")
POOLINGS = ("cls", "mean")


class ConfigError(ValueError):
    """A configuration value is unknown, mistyped or out of range."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape of the BERT encoder shared by both sides of the dual encoder."""

    # Wordpiece vocabulary size; 0 = take it from the vocabulary file.
    vocab_size: int = 0
    # Number of transformer layers (L); 0 = no transformer: the masked mean of the token
    # embeddings through the pooler (a bag of wordpieces, for the smallest budgets).
    num_layers: int = 2
    # Width of the hidden states and of the sentence embedding.
    hidden_dim: int = 32
    # Attention heads per layer; must divide hidden_dim.
    num_heads: int = 2
    # Width of the feed-forward sublayer.
    intermediate_dim: int = 64
    # Number of position embeddings: the longest sequence the encoder accepts.
    max_sequence_length: int = 64
    # Dropout rate in the encoder (embeddings, attention, feed-forward).
    dropout: float = 0.1
    # Sentence pooling before the dense+tanh pooler: cls (LaBSE) or mean (masked mean of
    # token states; learns faster from scratch, where [CLS] starts nearly constant).
    pooling: str = "cls"


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Vocabulary, tokenization and sampling of translation pairs."""

    # Wordpiece vocabulary file; "" = build one from the training data into MODEL_DIR/vocab.txt.
    vocab_file: str = ""
    # Target size when the vocabulary is built from the training data.
    build_vocab_size: int = 2000
    # Case-fold before wordpiece (accents are kept; NFKC is always applied).
    lowercase: bool = True
    # Tokens per sentence, [CLS] and [SEP] included.
    seq_length: int = 32
    # Language sampling exponent: p(lang) ∝ n_lang^alpha (LaBSE: 0.3; 1 = proportional).
    alpha: float = 0.3
    # Pairs in a row drawn from one language (1 = every pair's language drawn apart). The
    # batch then holds batch/group languages, so each positive also competes with
    # group-1 negatives of its own language, as in retrieval within one language pair
    # (it scored worse in the 30-minute recipe's short runs: bench/README.md section 5).
    language_group: int = 1
    # Malformed input lines reported with file:line before the rest are only counted.
    report_malformed: int = 5
    # Pairs of one language shuffled together as the stream reads them (memory: about
    # this many pairs per language per input pipeline; resuming rereads at most this many).
    shuffle_window: int = 256


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Bidirectional additive-margin translation ranking loss."""

    # Multiplier on the cosine similarities before the softmax (inverse temperature).
    scale: float = 20.0
    # Additive margin subtracted from the positive pair's similarity only.
    margin: float = 0.3
    # Gather both sides from all replicas so every positive competes with the global batch.
    gather: bool = True
    # Add the target->source direction to source->target.
    bidirectional: bool = True


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with warm-up and decay; the peak learning rate is train.learning_rate."""

    # Decoupled weight decay (not applied to biases and LayerNorm).
    weight_decay: float = 0.01
    # Adam first-moment decay.
    beta_1: float = 0.9
    # Adam second-moment decay.
    beta_2: float = 0.999
    # Adam epsilon.
    epsilon: float = 1e-6
    # Clip the global gradient norm to this value; 0 = no clipping.
    clipnorm: float = 1.0
    # Linear warm-up steps from 0 to the peak learning rate.
    warmup_steps: int = 10
    # Decay after warm-up: linear (to 0 at train.steps), cosine, or constant.
    schedule: str = "linear"
    # Update only the embedding rows of the tokens in each batch (LazyAdam: absent rows
    # keep their moments and skip the decay). Much faster when the vocabulary is large
    # next to a batch's tokens; false is exact AdamW.
    lazy_embeddings: bool = False


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Length, batch, precision and bookkeeping of a training run."""

    # Optimizer steps in the whole run (resumed runs continue to this total).
    steps: int = 200
    # Minutes of training-loop time after which the run ends (0 = no limit; train.steps
    # stays the most it runs). The learning-rate decay is then paced by the clock: it
    # ends at the step the measured speed says the time runs out. Counted over resumes.
    time_budget_minutes: float = 0.0
    # Pairs per step summed over all replicas; must divide evenly by the replica count.
    global_batch_size: int = 32
    # Peak learning rate.
    learning_rate: float = 1e-3
    # Compute precision: fp32, bf16 (mixed bfloat16), fp16 (mixed float16 with loss scaling).
    precision: str = "fp32"
    # Save a checkpoint every this many steps (and at the end).
    checkpoint_every: int = 100
    # Number of recent checkpoints kept on disk.
    keep_checkpoints: int = 3
    # Steps run inside one tf.function call; progress is reported between calls.
    steps_per_loop: int = 10
    # Seed of initialisation, data order, masking and dropout.
    seed: int = 42
    # Compile the per-replica encoder forward/backward pass with XLA.
    jit_compile: bool = False
    # Gradient-caching chunk size per replica; 0 = off (the whole local batch at once).
    chunk_size: int = 0
    # Evaluate retrieval every this many steps when eval data is given; 0 = only at the end.
    eval_every: int = 0


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """MLM/TLM pre-training with progressive stacking (used by labse_tf.pretrain)."""

    # Fraction of wordpieces selected for prediction.
    mask_rate: float = 0.15
    # Of the selected: fraction replaced by [MASK]; random tokens take half the rest.
    mask_token_rate: float = 0.8
    # Of the selected: fraction replaced by a random token.
    random_token_rate: float = 0.1
    # Upper bound on predictions per sequence.
    max_predictions: int = 20
    # Fraction of examples that are TLM (a packed translation pair) instead of MLM.
    tlm_fraction: float = 0.5
    # Steps of each progressive-stacking stage (L/4, L/2, L layers); they sum to train.steps.
    stage_steps: Sequence[int] = (0, 0, 0)


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole experiment."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    loss: LossConfig = LossConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    train: TrainConfig = TrainConfig()
    pretrain: PretrainConfig = PretrainConfig()


def _coerce(value: Any, hint: Any, path: str) -> Any:
    """Checks `value` against a field's type hint, allowing only lossless conversions."""
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    elif typing.get_origin(hint) in (collections.abc.Sequence, tuple, list):
        (item,) = typing.get_args(hint) or (Any,)
        if isinstance(value, (list, tuple)):
            return tuple(_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value))
    else:
        raise ConfigError(f"{path}: unsupported field type {hint!r}")
    name = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"{path}: expected {name}, got {type(value).__name__} {value!r}")


def _merge(obj: Any, updates: Mapping[str, Any], prefix: str) -> Any:
    """Returns a copy of dataclass `obj` with `updates` (a nested mapping) applied."""
    if not isinstance(updates, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {updates!r}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    changes = {}
    for key, value in updates.items():
        path = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"{path}: unknown key (known: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            changes[key] = _merge(current, value or {}, path + ".")
        else:
            changes[key] = _coerce(value, hints[key], path)
    return dataclasses.replace(obj, **changes)


def _validate(cfg: Config) -> Config:
    """Range checks that types alone cannot express."""
    checks = [
        ("model.num_layers", cfg.model.num_layers >= 0, "must be >= 0"),
        ("model.hidden_dim", cfg.model.hidden_dim >= 1, "must be >= 1"),
        ("model.num_heads", cfg.model.num_heads >= 1
         and cfg.model.hidden_dim % cfg.model.num_heads == 0, "must divide model.hidden_dim"),
        ("model.dropout", 0.0 <= cfg.model.dropout < 1.0, "must be in [0, 1)"),
        ("model.vocab_size", cfg.model.vocab_size >= 0, "must be >= 0"),
        ("model.pooling", cfg.model.pooling in POOLINGS, f"must be one of {POOLINGS}"),
        ("model.pooling", cfg.model.num_layers > 0 or cfg.model.pooling == "mean",
         "must be mean with model.num_layers=0 ([CLS] alone carries no sentence)"),
        ("data.seq_length", 3 <= cfg.data.seq_length <= cfg.model.max_sequence_length,
         "must be in [3, model.max_sequence_length]"),
        ("data.alpha", 0.0 <= cfg.data.alpha <= 1.0, "must be in [0, 1]"),
        ("data.language_group", cfg.data.language_group >= 1
         and cfg.train.global_batch_size % cfg.data.language_group == 0,
         "must be >= 1 and divide train.global_batch_size"),
        ("loss.scale", cfg.loss.scale > 0, "must be > 0"),
        ("loss.margin", cfg.loss.margin >= 0, "must be >= 0"),
        ("optimizer.schedule", cfg.optimizer.schedule in SCHEDULES, f"must be one of {SCHEDULES}"),
        ("optimizer.warmup_steps", cfg.optimizer.warmup_steps >= 0, "must be >= 0"),
        ("train.steps", cfg.train.steps >= 1, "must be >= 1"),
        ("train.time_budget_minutes", cfg.train.time_budget_minutes >= 0, "must be >= 0"),
        ("train.global_batch_size", cfg.train.global_batch_size >= 2, "must be >= 2"),
        ("data.shuffle_window", cfg.data.shuffle_window >= 1, "must be >= 1"),
        ("train.learning_rate", cfg.train.learning_rate > 0, "must be > 0"),
        ("train.precision", cfg.train.precision in PRECISIONS, f"must be one of {PRECISIONS}"),
        ("train.checkpoint_every", cfg.train.checkpoint_every >= 1, "must be >= 1"),
        ("train.steps_per_loop", cfg.train.steps_per_loop >= 1, "must be >= 1"),
        ("train.chunk_size", cfg.train.chunk_size >= 0, "must be >= 0"),
        ("pretrain.mask_rate", 0.0 < cfg.pretrain.mask_rate < 1.0, "must be in (0, 1)"),
        ("pretrain.tlm_fraction", 0.0 <= cfg.pretrain.tlm_fraction <= 1.0, "must be in [0, 1]"),
    ]
    for path, ok, why in checks:
        if not ok:
            raise ConfigError(f"{path}: {why}")
    return cfg


def _parse_set(assignment: str) -> tuple[list[str], Any]:
    """Parses `a.b=value`; the value is read as YAML so numbers, booleans and lists work."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. train.steps=100")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {assignment!r}: cannot parse value: {e}") from None
    return key.strip().split("."), value


def override(cfg: Config, assignments: Sequence[str] = (), updates: Mapping | None = None) -> Config:
    """Applies a nested mapping and then `a.b=value` assignments, validating the result."""
    if updates:
        cfg = _merge(cfg, updates, "")
    for assignment in assignments:
        keys, value = _parse_set(assignment)
        nested: Any = value
        for key in reversed(keys):
            nested = {key: nested}
        cfg = _merge(cfg, nested, "")
    return _validate(cfg)


def resolve_path(path: str) -> str:
    """Finds a config file as given (any filesystem), or by name in the shipped configs/."""
    if files.exists(path) and not files.isdir(path):
        return path
    for candidate in (os.path.join(CONFIG_DIR, path), os.path.join(CONFIG_DIR, path + ".yaml")):
        if os.path.exists(candidate):
            return candidate
    raise ConfigError(f"config file not found: {path!r} (also looked in {CONFIG_DIR})")


def load_config(path: str = "", assignments: Sequence[str] = ()) -> Config:
    """Builds a config from defaults, an optional YAML file and `a.b=value` overrides."""
    updates = {}
    if path:
        path = resolve_path(path)
        try:
            updates = yaml.safe_load(files.read_text(path)) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from None
        try:
            return override(Config(), assignments, updates)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    return override(Config(), assignments)


def to_dict(cfg: Config) -> dict:
    """The config as plain nested dicts and lists (YAML/JSON serialisable)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def write_config(cfg: Config, directory: str) -> str:
    """Writes the resolved config as `config.yaml` in `directory`; returns the path."""
    return files.write_text(files.join(directory, CONFIG_FILE),
                            yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True))
