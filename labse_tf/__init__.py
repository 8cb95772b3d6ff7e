"""labse_tf: train, evaluate and ship LaBSE-style multilingual sentence encoders.

Command lines: python -m labse_tf.{train,pretrain,vocab,export,evaluate,embed,mine,convert,
prune_vocab} --help.
"""

import os

# Quiet TensorFlow's C++ start-up chatter on the command lines (users may override).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from labse_tf.config import Config, ConfigError, load_config  # noqa: E402
from labse_tf.corpus import Manifest  # noqa: E402
from labse_tf.data import Pairs, load_manifest, read_pairs  # noqa: E402
from labse_tf.losses import masked_lm_loss, translation_ranking_loss  # noqa: E402
from labse_tf.model import build_encoder  # noqa: E402
from labse_tf.preprocessing import Preprocessor  # noqa: E402

__all__ = [
    "Config",
    "ConfigError",
    "Manifest",
    "Pairs",
    "Preprocessor",
    "build_encoder",
    "load_config",
    "load_manifest",
    "masked_lm_loss",
    "read_pairs",
    "translation_ranking_loss",
]

__version__ = "0.1.0"
