"""The encoder's attention projections: one 2-D MatMul, the same numbers as Keras's einsum."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from labse_tf import compat, config as config_lib
from labse_tf.model import build_encoder


def _inputs(batch=4, length=12, vocab=500):
    rng = np.random.default_rng(0)
    mask = np.ones([batch, length], np.int32)
    mask[1, 7:] = 0
    return {"token_ids": tf.constant(rng.integers(5, vocab, [batch, length]), tf.int32),
            "padding_mask": tf.constant(mask), "segment_ids": tf.zeros([batch, length], tf.int32)}


def _projections(encoder):
    return [layer for layer in compat.sublayers(encoder)
            if isinstance(layer, keras.layers.EinsumDense)]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("static", [True, False])
def test_projections_match_keras_einsum(precision, static):
    cfg = config_lib.load_config("tiny", ["model.dropout=0"])
    encoder = build_encoder(cfg.model, 500, precision)
    assert len(_projections(encoder)) == 4 * cfg.model.num_layers  # query, key, value, output
    length = 12 if static else None
    spec = {k: tf.TensorSpec([4, length], tf.int32) for k in _inputs()}
    forward = tf.function(lambda x: encoder(x)["sequence_output"], input_signature=[spec])
    graph = forward.get_concrete_function().graph
    batched = [op.type for op in graph.get_operations()
               if op.type in ("Einsum", "BatchMatMulV2", "BatchMatMulV3")]
    # Left: per layer, the query-key scores and the weighted values (batched by nature).
    assert len(batched) == 2 * cfg.model.num_layers, batched
    got = forward(_inputs()).numpy()
    for layer in _projections(encoder):
        del layer.__dict__["call"]  # back to EinsumDense.call
    want = encoder(_inputs())["sequence_output"].numpy()
    tolerance = 1e-5 if precision == "fp32" else 1e-2
    np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)
