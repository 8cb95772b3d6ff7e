"""Losses as pure functions of tensors: no strategy, config or model in sight."""

import tensorflow as tf

__all__ = ["ranking_loss", "translation_ranking_loss", "masked_lm_loss"]


def ranking_loss(queries: tf.Tensor, candidates: tf.Tensor, positions: tf.Tensor, *,
                 scale: float, margin: float) -> tuple[tf.Tensor, tf.Tensor]:
    """In-batch softmax ranking with an additive margin on the positive pair.

    Each query's positive is the candidate at `positions[i]`; every other candidate is a
    negative. The margin is subtracted from the positive's similarity only, so it must win
    by at least `margin` before its loss approaches zero.

    Args:
      queries: float `[b, d]`. Query embeddings (L2-normalised for cosine similarity).
      candidates: float `[n, d]`. Candidate embeddings, `n >= b`.
      positions: int `[b]`. Row of each query's positive in `candidates`.
      scale: float. Multiplier on similarities (inverse softmax temperature).
      margin: float. Additive margin subtracted from the positive similarity.

    Returns:
      (loss, accuracy): float32 scalars; the mean cross-entropy over queries and the
      fraction whose highest-scoring candidate is the positive (margin not applied).
    """
    queries = tf.cast(queries, tf.float32)
    candidates = tf.cast(candidates, tf.float32)
    sims = tf.matmul(queries, candidates, transpose_b=True)  # [b, n]
    onehot = tf.one_hot(positions, tf.shape(candidates)[0], dtype=tf.float32)
    logits = scale * (sims - margin * onehot)
    loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(onehot, logits))
    hits = tf.equal(tf.argmax(sims, axis=1, output_type=tf.int32), tf.cast(positions, tf.int32))
    return loss, tf.reduce_mean(tf.cast(hits, tf.float32))


def translation_ranking_loss(src: tf.Tensor, tgt: tf.Tensor, *, scale: float, margin: float,
                             bidirectional: bool = True, src_candidates: tf.Tensor | None = None,
                             tgt_candidates: tf.Tensor | None = None,
                             offset: tf.Tensor | int = 0) -> tuple[tf.Tensor, dict]:
    """LaBSE's bidirectional additive-margin loss for a batch of translation pairs.

    With cross-replica negatives, `src_candidates`/`tgt_candidates` are the embeddings of
    the global batch and this replica's pairs sit at rows `offset .. offset + b - 1`.

    Args:
      src: float `[b, d]`. Source embeddings of the local pairs.
      tgt: float `[b, d]`. Target embeddings; `tgt[i]` translates `src[i]`.
      scale: float. Softmax scale.
      margin: float. Additive margin on the positive pair.
      bidirectional: bool. Add the target→source loss to the source→target one.
      src_candidates: float `[n, d]` or None. Sources competing in target→source; default src.
      tgt_candidates: float `[n, d]` or None. Targets competing in source→target; default tgt.
      offset: int scalar. Row of `src[0]`'s pair in the candidate matrices.

    Returns:
      (loss, metrics): the float32 scalar loss (sum of both directions) and a dict of
      float32 scalars `src_to_tgt_accuracy`, `tgt_to_src_accuracy` (when bidirectional).
    """
    src_candidates = src if src_candidates is None else src_candidates
    tgt_candidates = tgt if tgt_candidates is None else tgt_candidates
    positions = tf.range(tf.shape(src)[0]) + tf.cast(offset, tf.int32)
    loss, s2t = ranking_loss(src, tgt_candidates, positions, scale=scale, margin=margin)
    metrics = {"src_to_tgt_accuracy": s2t}
    if bidirectional:
        loss_t2s, t2s = ranking_loss(tgt, src_candidates, positions, scale=scale, margin=margin)
        loss += loss_t2s
        metrics["tgt_to_src_accuracy"] = t2s
    return loss, metrics


def masked_lm_loss(logits: tf.Tensor, labels: tf.Tensor, weights: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Weighted mean cross-entropy over masked positions.

    Args:
      logits: float `[batch, predictions, vocab]`. Scores at the masked positions.
      labels: int `[batch, predictions]`. Original token ids.
      weights: float `[batch, predictions]`. 1 for real predictions, 0 for padding.

    Returns:
      (loss, accuracy): float32 scalars, both weighted means over real predictions
      (0 when there are none).
    """
    logits = tf.cast(logits, tf.float32)
    weights = tf.cast(weights, tf.float32)
    xent = tf.nn.sparse_softmax_cross_entropy_with_logits(tf.cast(labels, tf.int32), logits)
    total = tf.reduce_sum(weights)
    loss = tf.math.divide_no_nan(tf.reduce_sum(xent * weights), total)
    hits = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32),
                            tf.cast(labels, tf.int32)), tf.float32)
    return loss, tf.math.divide_no_nan(tf.reduce_sum(hits * weights), total)
