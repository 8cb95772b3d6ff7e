"""The sentence encoder: a keras-hub BERT backbone, [CLS] → dense+tanh pooler → L2 norm.

One encoder serves both sides of the dual encoder. This file builds models; it never trains.
"""

from typing import Callable

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from labse_tf import compat
from labse_tf.config import ModelConfig

__all__ = ["INPUT_NAMES", "build_encoder", "copy_weights", "encoder_dtype_policy", "embed"]

# keras-hub input names; export.py maps them to the TF Hub names.
INPUT_NAMES = ("token_ids", "padding_mask", "segment_ids")

_POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}


def encoder_dtype_policy(precision: str) -> str:
    """The Keras dtype policy for a `train.precision` value."""
    return _POLICIES[precision]


class MaskedMean(keras.layers.Layer):
    """Mean of `[batch, seq, dim]` states over positions where `mask [batch, seq]` is 1."""

    def call(self, states, mask):
        mask = keras.ops.cast(mask, states.dtype)[:, :, None]
        total = keras.ops.sum(states * mask, axis=1)
        return total / keras.ops.maximum(keras.ops.sum(mask, axis=1), 1.0)


# keras-hub's attention projections: EinsumDense equation → kernel axes it contracts.
_FLAT_EQUATIONS = {"abc,cde->abde": 1, "abcd,cde->abe": 2}


def _project_as_matmul(layer: keras.layers.EinsumDense) -> None:
    """Computes an attention projection as one `[tokens, in] x [in, out]` MatMul.

    The product `EinsumDense` computes, by the fastest kernel: Keras 3's TensorFlow einsum
    makes it a broadcasting BatchMatMul when the sequence length is static, and tf.einsum
    when it is not, whose bfloat16 CPU kernel is slower still than MatMul's (bench/README.md
    section 1 measures both).
    """
    contracted = _FLAT_EQUATIONS[layer.equation]

    def call(inputs, training=None):
        kernel = tf.convert_to_tensor(layer.kernel)  # autocast to the compute dtype
        inner = int(np.prod(kernel.shape[:contracted]))
        flat = tf.matmul(tf.reshape(inputs, [-1, inner]), tf.reshape(kernel, [inner, -1]))
        outer = inputs.shape.rank - contracted
        x = tf.reshape(flat, tf.concat([tf.shape(inputs)[:outer], kernel.shape[contracted:]], 0))
        x.set_shape(inputs.shape[:outer].concatenate(kernel.shape[contracted:]))
        if layer.bias is not None:
            x = keras.ops.add(x, layer.bias)
        return x if layer.activation is None else layer.activation(x)

    compat.replace_call(layer, call)  # this instance only


def build_encoder(cfg: ModelConfig, vocab_size: int, precision: str = "fp32") -> keras.Model:
    """Builds the encoder.

    Args:
      cfg: ModelConfig. Encoder shape.
      vocab_size: int. Wordpiece vocabulary size (the token embedding rows).
      precision: str. `fp32`, `bf16` or `fp16`; variables stay float32 in every case.

    Returns:
      A functional keras.Model on `{token_ids, padding_mask, segment_ids}` (int32
      `[batch, seq]`) returning a dict: `embedding` (float32 `[batch, hidden]`,
      L2-normalised pooled [CLS]), `pooled_output` (the same, the TF Hub LaBSE v2 name),
      `sequence_output` (`[batch, seq, hidden]`) and `encoder_outputs` (list of L
      `[batch, seq, hidden]`, one per transformer layer).
    """
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=vocab_size, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
        hidden_dim=cfg.hidden_dim, intermediate_dim=cfg.intermediate_dim,
        dropout=cfg.dropout, max_sequence_length=cfg.max_sequence_length, num_segments=2,
        dtype=encoder_dtype_policy(precision), name="bert")
    for layer in compat.sublayers(backbone):
        if isinstance(layer, keras.layers.EinsumDense) and layer.equation in _FLAT_EQUATIONS:
            _project_as_matmul(layer)
    outputs = backbone.output
    pooled = outputs["pooled_output"]
    if cfg.pooling == "mean":
        # Masked mean of the token states through the same dense+tanh pooler as [CLS].
        mean = MaskedMean(name="mean_pool")(outputs["sequence_output"], backbone.input["padding_mask"])
        pooled = backbone.get_layer("pooled_dense")(mean)
    pooled = keras.layers.Activation("linear", dtype="float32", name="to_float32")(pooled)
    embedding = keras.layers.UnitNormalization(axis=-1, dtype="float32", name="l2_norm")(pooled)
    layers = [backbone.get_layer(f"transformer_layer_{i}").output for i in range(cfg.num_layers)]
    return keras.Model(
        backbone.input,
        {"embedding": embedding, "pooled_output": embedding,
         "sequence_output": outputs["sequence_output"], "encoder_outputs": layers},
        name="encoder")


def embed(encoder: keras.Model, inputs: dict, training: bool = False) -> tf.Tensor:
    """Sentence embeddings `[batch, hidden]` (float32, unit norm) for packed inputs."""
    return encoder({k: inputs[k] for k in INPUT_NAMES}, training=training)["embedding"]


def copy_weights(target: keras.Model, value_of: Callable[[str], object], *,
                 rename: Callable[[str], str] | None = None, what: str = "copying") -> None:
    """Sets every weight of `target` from its source, found by variable path.

    Args:
      target: keras.Model. The model whose weights are set.
      value_of: callable. A source path → the value for it (array, tensor or variable), or
        None when the source has none; called once per weight, so values may load lazily.
      rename: callable or None. A weight's path → its source's path; default the same.
      what: str. The copy, for the error message ("stacking a 2-layer model").

    Raises:
      ValueError: a weight has no source of its shape.
    """
    for weight in target.weights:
        path = rename(weight.path) if rename else weight.path
        value = value_of(path)
        if value is None or tuple(value.shape) != tuple(weight.shape):
            raise ValueError(f"{what}: {weight.path} {tuple(weight.shape)} has no source of "
                             f"that shape ({path})")
        weight.assign(value)
