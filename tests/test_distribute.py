"""Cross-replica negatives: 2 replicas give the loss and gradients of 1 replica on the same
global batch; gradient caching gives the gradients of the direct step."""

import numpy as np
import pytest
import tensorflow as tf

from labse_tf import config as config_lib, distribute
from labse_tf.compat import seed_generators
from labse_tf.gradients import compute_gradients
from labse_tf.model import build_encoder
from labse_tf.preprocessing import Preprocessor

# Float32 sums over a different reduction order: agreement to ~1e-6 is exact for our purposes.
RTOL, ATOL = 1e-4, 2e-6
GLOBAL_BATCH = 16


@pytest.fixture(scope="module")
def batch(vocab_file, sample_pairs):
    pre = Preprocessor(vocab_file, seq_length=16)
    _, src, tgt = sample_pairs.flat()
    pick = np.random.default_rng(0).choice(len(src), GLOBAL_BATCH, replace=False)
    return {"src": pre(tf.constant([src[i] for i in pick])),
            "tgt": pre(tf.constant([tgt[i] for i in pick]))}, pre.vocab_size


def _strategy(replicas):
    if replicas == 1:
        return tf.distribute.OneDeviceStrategy("/cpu:0")
    return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)],
                                          cross_device_ops=tf.distribute.ReductionToOneDevice())


def _run(batch, replicas, loss_cfg, *, dropout=0.0, chunk_size=0, chunkwise_forward=0, seed=7):
    """Gradients and the replica-averaged loss of one step, from fixed initial weights."""
    inputs, vocab_size = batch
    cfg = config_lib.ModelConfig(num_layers=2, hidden_dim=32, num_heads=2, intermediate_dim=64,
                                 dropout=dropout, pooling="mean")
    strategy = _strategy(replicas)
    with strategy.scope():
        tf.keras.utils.set_random_seed(seed)
        import keras
        keras.utils.set_random_seed(seed)
        encoder = build_encoder(cfg, vocab_size)
    variables = encoder.trainable_variables
    generators = seed_generators(encoder)

    def forward(x):
        if not chunkwise_forward:
            return encoder(x, training=True)["embedding"]
        n = x["token_ids"].shape[0]
        return tf.concat([encoder({k: v[i:i + chunkwise_forward] for k, v in x.items()},
                                  training=True)["embedding"] for i in range(0, n, chunkwise_forward)], 0)

    def step(local):
        grads, metrics = compute_gradients(forward, variables, local, loss_cfg,
                                           chunk_size=chunk_size, generators=generators)
        return [tf.convert_to_tensor(g) for g in grads], metrics["loss"]

    per_replica = GLOBAL_BATCH // replicas
    values = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.nest.map_structure(
            lambda t: t[ctx.replica_id_in_sync_group * per_replica:
                        (ctx.replica_id_in_sync_group + 1) * per_replica], inputs))
    grads, loss = tf.function(lambda v: strategy.run(step, args=(v,)))(values)
    loss = strategy.reduce(tf.distribute.ReduceOp.MEAN, loss, axis=None).numpy()
    replica_grads = [strategy.experimental_local_results(g) for g in grads]
    for copies in replica_grads:  # every replica applies the same update
        for other in copies[1:]:
            np.testing.assert_allclose(other.numpy(), copies[0].numpy(), rtol=RTOL, atol=ATOL)
    return loss, [copies[0].numpy() for copies in replica_grads]


def _assert_same(a, b):
    loss_a, grads_a = a
    loss_b, grads_b = b
    np.testing.assert_allclose(loss_a, loss_b, rtol=RTOL)
    assert len(grads_a) == len(grads_b)
    for ga, gb in zip(grads_a, grads_b):
        np.testing.assert_allclose(ga, gb, rtol=RTOL, atol=ATOL)


LOSS = config_lib.LossConfig(scale=20.0, margin=0.3, gather=True)


def test_two_replicas_equal_one_replica_on_the_global_batch(batch):
    one = _run(batch, 1, LOSS)
    two = _run(batch, 2, LOSS)
    _assert_same(one, two)
    assert any(np.abs(g).max() > 1e-4 for g in one[1])  # gradients are not trivially zero


def test_without_gathering_each_replica_sees_only_local_negatives(batch):
    local = config_lib.LossConfig(scale=20.0, margin=0.3, gather=False)
    two_local = _run(batch, 2, local)
    inputs, vocab_size = batch
    halves = [({k: {n: t[i * 8:(i + 1) * 8] for n, t in side.items()} for k, side in inputs.items()},
               vocab_size) for i in range(2)]
    per_half = [_run(h, 1, local) for h in halves]
    # The 2-replica loss is the mean of the two local losses; gradients are their mean.
    np.testing.assert_allclose(two_local[0], np.mean([p[0] for p in per_half]), rtol=RTOL)
    for i, g in enumerate(two_local[1]):
        np.testing.assert_allclose(g, (per_half[0][1][i] + per_half[1][1][i]) / 2, rtol=RTOL, atol=ATOL)
    assert abs(two_local[0] - _run(batch, 1, LOSS)[0]) > 1e-3  # fewer negatives, another loss


@pytest.mark.parametrize("replicas", [1, 2])
def test_gradient_caching_equals_the_direct_step(batch, replicas):
    _assert_same(_run(batch, replicas, LOSS), _run(batch, replicas, LOSS, chunk_size=4))


@pytest.mark.parametrize("replicas", [1, 2])
def test_gradient_caching_replays_dropout_masks(batch, replicas):
    # The direct step, run chunk by chunk, draws the masks the caching step's first pass
    # draws; equal gradients mean the second pass replayed exactly those masks.
    direct = _run(batch, replicas, LOSS, dropout=0.3, chunkwise_forward=4)
    cached = _run(batch, replicas, LOSS, dropout=0.3, chunk_size=4)
    _assert_same(direct, cached)
    unmatched = _run(batch, replicas, LOSS, dropout=0.3)  # other masks: other gradients
    assert not np.allclose(unmatched[0], direct[0], rtol=1e-6)


def test_chunk_size_must_divide_the_local_batch(batch):
    with pytest.raises(ValueError, match="chunk_size=5 must divide the per-replica batch"):
        _run(batch, 1, LOSS, chunk_size=5)


def test_batches_keep_static_shapes_only_where_needed():
    one = tf.distribute.OneDeviceStrategy("/cpu:0")
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert not distribute.needs_static_shapes(one, jit_compile=False)
    assert not distribute.needs_static_shapes(mirrored, jit_compile=False)
    assert distribute.needs_static_shapes(one, jit_compile=True)  # XLA compiles per shape
    # TPUs and cross-worker collectives need them too. Neither strategy can be built here (no
    # TPU; a multi-worker strategy fixes this process's collectives), so the instances are
    # made without their __init__: only their class is asked.
    for strategy in (tf.distribute.TPUStrategy, tf.distribute.MultiWorkerMirroredStrategy):
        assert distribute.needs_static_shapes(strategy.__new__(strategy), jit_compile=False)
