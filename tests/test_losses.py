"""The ranking loss against a NumPy reference written independently of losses.py."""

import numpy as np
import pytest
import tensorflow as tf

from labse_tf.losses import masked_lm_loss, ranking_loss, translation_ranking_loss


def _np_direction(q, c, pos, scale, margin):
    sims = q @ c.T
    logits = scale * sims
    logits[np.arange(len(q)), pos] -= scale * margin
    logits -= logits.max(1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return -logp[np.arange(len(q)), pos].mean(), np.mean(sims.argmax(1) == pos)


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("scale,margin", [(1.0, 0.0), (20.0, 0.3), (100.0, 0.5)])
def test_bidirectional_loss_matches_numpy(scale, margin):
    rng = np.random.default_rng(0)
    src, tgt = _unit(rng.normal(size=(6, 5))), _unit(rng.normal(size=(6, 5)))
    loss, metrics = translation_ranking_loss(tf.constant(src, tf.float32), tf.constant(tgt, tf.float32),
                                             scale=scale, margin=margin)
    pos = np.arange(6)
    l1, a1 = _np_direction(src, tgt, pos, scale, margin)
    l2, a2 = _np_direction(tgt, src, pos, scale, margin)
    np.testing.assert_allclose(loss.numpy(), l1 + l2, rtol=1e-5)
    np.testing.assert_allclose(metrics["src_to_tgt_accuracy"].numpy(), a1)
    np.testing.assert_allclose(metrics["tgt_to_src_accuracy"].numpy(), a2)


def test_unidirectional_loss_has_one_direction():
    rng = np.random.default_rng(1)
    src, tgt = _unit(rng.normal(size=(4, 3))), _unit(rng.normal(size=(4, 3)))
    loss, metrics = translation_ranking_loss(tf.constant(src, tf.float32), tf.constant(tgt, tf.float32),
                                             scale=10.0, margin=0.2, bidirectional=False)
    np.testing.assert_allclose(loss.numpy(), _np_direction(src, tgt, np.arange(4), 10.0, 0.2)[0], rtol=1e-5)
    assert set(metrics) == {"src_to_tgt_accuracy"}


def test_margin_applies_to_the_positive_only():
    # Identical embeddings: every similarity is 1; only the positive is lowered by the margin.
    x = tf.ones([3, 2]) / np.sqrt(2)
    loss, _ = ranking_loss(x, x, tf.range(3), scale=1.0, margin=0.5)
    expected = -np.log(np.exp(0.5) / (np.exp(0.5) + 2 * np.exp(1.0)))
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-6)


def test_candidates_from_the_global_batch_with_offset():
    # Local rows 2..3 of a 5-row global batch: positives are at offset 2.
    rng = np.random.default_rng(2)
    src_all, tgt_all = _unit(rng.normal(size=(5, 4))), _unit(rng.normal(size=(5, 4)))
    loss, _ = translation_ranking_loss(
        tf.constant(src_all[2:4], tf.float32), tf.constant(tgt_all[2:4], tf.float32), scale=5.0,
        margin=0.1, src_candidates=tf.constant(src_all, tf.float32),
        tgt_candidates=tf.constant(tgt_all, tf.float32), offset=2)
    l1, _ = _np_direction(src_all[2:4], tgt_all, np.array([2, 3]), 5.0, 0.1)
    l2, _ = _np_direction(tgt_all[2:4], src_all, np.array([2, 3]), 5.0, 0.1)
    np.testing.assert_allclose(loss.numpy(), l1 + l2, rtol=1e-5)


def test_bfloat16_embeddings_are_computed_in_float32():
    x = tf.cast(tf.eye(3), tf.bfloat16)
    loss, _ = translation_ranking_loss(x, x, scale=1.0, margin=0.0)
    assert loss.dtype == tf.float32
    np.testing.assert_allclose(loss.numpy(), 2 * -np.log(np.e / (np.e + 2)), rtol=1e-5)


def test_masked_lm_loss_matches_numpy():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(2, 3, 7)).astype(np.float32)
    labels = np.array([[1, 2, 3], [4, 5, 0]])
    weights = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
    loss, acc = masked_lm_loss(tf.constant(logits), tf.constant(labels), tf.constant(weights))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    xent = -np.take_along_axis(logp, labels[..., None], -1)[..., 0]
    np.testing.assert_allclose(loss.numpy(), (xent * weights).sum() / weights.sum(), rtol=1e-5)
    np.testing.assert_allclose(acc.numpy(), ((logits.argmax(-1) == labels) * weights).sum() / 3)
    zero, _ = masked_lm_loss(tf.constant(logits), tf.constant(labels), tf.zeros([2, 3]))
    assert zero.numpy() == 0.0
