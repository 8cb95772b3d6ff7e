"""The one place labse_tf reaches into Keras, TensorFlow and tensorflow-text internals.

Each function below wraps one private name that no public API replaces; tests/test_compat.py
exercises each on a real small object. Importing this module checks that the installed
versions are the pinned ones (setup.cfg, major.minor), so an upgrade fails here, loudly,
rather than in a training step or, worse, silently (an optimizer override that Keras no
longer calls). The optimizer subclass in optimization.py overrides `OPTIMIZER_OVERRIDES`,
checked at import to still exist on Keras's AdamW.
"""

import keras
import tensorflow as tf
import tensorflow_text
# BERT's pre-tokenization (whitespace, punctuation, CJK characters) alone: tensorflow-text
# exports it only inside BertTokenizer, with its table-based wordpiece.
from tensorflow_text.python.ops.bert_tokenizer import BasicTokenizer

__all__ = ["BasicTokenizer", "OPTIMIZER_OVERRIDES", "PINNED", "adam_slots", "built_variables",
           "check_versions", "decays", "learning_rate_schedule", "replace_call",
           "seed_generators", "sublayers", "variable_key"]

# The versions (major.minor) whose internals this module was written against.
PINNED = {"keras": "3.15", "tensorflow": "2.20", "tensorflow_text": "2.20"}

# Methods of Keras's optimizer that optimization._AdamW overrides.
OPTIMIZER_OVERRIDES = ("_all_reduce_sum_gradients", "_clip_gradients", "_apply_weight_decay")


def check_versions(installed: dict[str, str]) -> None:
    """Raises ImportError unless every package in PINNED is installed at its major.minor.

    Args:
      installed: dict. Package name → installed version string (e.g. "3.15.1").
    """
    wrong = [f"{name} {installed[name]} (expected {pinned}.x)"
             for name, pinned in PINNED.items()
             if ".".join(installed[name].split(".")[:2]) != pinned]
    if wrong:
        raise ImportError(
            "labse_tf uses private internals of these packages, checked only at the pinned "
            f"versions (setup.cfg): installed {', '.join(wrong)}. Install the pinned set, or "
            "port labse_tf/compat.py (and run tests/test_compat.py) first.")


def _check_optimizer_overrides() -> None:
    missing = [name for name in OPTIMIZER_OVERRIDES
               if not callable(getattr(keras.optimizers.AdamW, name, None))]
    if missing:
        raise ImportError(f"keras {keras.__version__}: keras.optimizers.AdamW has no "
                          f"{missing}, which labse_tf.optimization overrides")


check_versions({"keras": keras.__version__, "tensorflow": tf.__version__,
                "tensorflow_text": tensorflow_text.__version__})
_check_optimizer_overrides()


def sublayers(layer: keras.layers.Layer, include_self: bool = False) -> list:
    """Every layer inside `layer`, recursively (Keras's `_flatten_layers`)."""
    return list(layer._flatten_layers(include_self=include_self, recursive=True))


def seed_generators(model: keras.Model) -> list:
    """Every SeedGenerator (dropout randomness) inside `model`, each once."""
    found = []
    for layer in sublayers(model, include_self=True):
        found += [g for g in getattr(layer, "_seed_generators", []) if g not in found]
    return found


def replace_call(layer: keras.layers.Layer, call) -> None:
    """Makes `call` this one layer instance's forward computation (not its class's).

    `object.__setattr__` because Keras's own would try to track the function.
    """
    object.__setattr__(layer, "call", call)


def learning_rate_schedule(optimizer: keras.optimizers.Optimizer):
    """The schedule object an optimizer was built with (its `learning_rate` is the value)."""
    return optimizer._learning_rate


def variable_key(optimizer: keras.optimizers.Optimizer, variable) -> object:
    """The optimizer's key for `variable`, the same for a distributed variable's parts."""
    return optimizer._var_key(variable)


def adam_slots(optimizer: keras.optimizers.Optimizer, variable) -> tuple:
    """Adam's first and second moment variables (as tf.Variables) for `variable`."""
    index = optimizer._get_variable_index(variable)
    return optimizer._momentums[index].value, optimizer._velocities[index].value


def built_variables(optimizer: keras.optimizers.Optimizer) -> list:
    """The variables `optimizer.build` was given (what `apply` updates by default)."""
    return optimizer._trainable_variables


def decays(optimizer: keras.optimizers.Optimizer, variable) -> bool:
    """Whether the optimizer's weight decay applies to `variable` (see
    `exclude_from_weight_decay`)."""
    return optimizer._use_weight_decay(variable)
