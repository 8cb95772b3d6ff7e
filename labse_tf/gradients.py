"""Per-replica gradients of a global-batch loss: the ranking loss and the masked-LM loss.

Each replica differentiates its share of the global-batch loss (loss-scaled under fp16),
and the gradients are summed over replicas here, so every replica applies the gradient of
the global batch. For the ranking loss, two ways to the same numbers:
- direct: embed the local batch with the tape on, gather, loss, backprop;
- gradient caching (Gao et al. 2021), `chunk_size > 0`: embed the local batch in chunks
  without keeping activations, take the loss gradient with respect to the embeddings,
  then re-run each chunk with the tape on and backprop the cached embedding gradient.
  Only one chunk's activations are alive at a time, so the batch can outgrow memory.
  The re-run restores the dropout seed state of the first pass, so it sees the same
  masks and the gradient is exact with dropout on too.
"""

from typing import Callable, Sequence

import keras
import tensorflow as tf

from labse_tf.config import LossConfig
from labse_tf.distribute import gather_global_batch
from labse_tf.losses import masked_lm_loss, translation_ranking_loss

__all__ = ["compute_gradients", "mlm_gradients"]

Forward = Callable[[dict], tf.Tensor]  # packed inputs → embeddings [batch, dim]


def _loss(src: tf.Tensor, tgt: tf.Tensor, cfg: LossConfig) -> tuple[tf.Tensor, dict]:
    """The local loss, with the global batch as candidates when gathering."""
    if not cfg.gather:
        return translation_ranking_loss(src, tgt, scale=cfg.scale, margin=cfg.margin,
                                        bidirectional=cfg.bidirectional)
    src_all, offset = gather_global_batch(src)
    tgt_all, _ = gather_global_batch(tgt)
    return translation_ranking_loss(src, tgt, scale=cfg.scale, margin=cfg.margin,
                                    bidirectional=cfg.bidirectional, src_candidates=src_all,
                                    tgt_candidates=tgt_all, offset=offset)


def _both_sides(batch: dict) -> dict:
    """Sources then targets in one batch, cut into the chunks of gradient caching."""
    return {k: tf.concat([batch["src"][k], batch["tgt"][k]], 0) for k in batch["src"]}


def compute_gradients(forward: Forward, variables: Sequence, batch: dict, cfg: LossConfig, *,
                      optimizer=None, chunk_size: int = 0,
                      generators: Sequence = ()) -> tuple[list, dict]:
    """Gradients of the mean global-batch loss, summed over replicas.

    Args:
      forward: callable. Packed inputs → embeddings `[n, dim]` (training mode).
      variables: the trainable variables.
      batch: `{"src": packed, "tgt": packed}` for this replica, `[b, seq]` each.
      cfg: LossConfig.
      optimizer: optional; a LossScaleOptimizer scales the loss (fp16).
      chunk_size: int. 0 = direct; else gradient caching with chunks of this many
        sentences (it must divide the local batch: the 2 x batch sentences of both sides
        make 2 x batch / chunk_size chunks).
      generators: SeedGenerators of the model's dropout (compat.seed_generators),
        replayed for the second pass.

    Returns:
      (gradients, metrics): gradients identical on every replica; metrics are this
      replica's loss and in-batch accuracies.
    """
    replicas = _replicas()
    local = tf.shape(batch["src"]["token_ids"])[0]

    def objective(embeddings):
        loss, metrics = _loss(embeddings[:local], embeddings[local:], cfg)
        # Each replica holds 1/replicas of the mean; the all-reduce below sums them.
        return _for_tape(loss / replicas, optimizer), loss, metrics

    if chunk_size <= 0:
        with tf.GradientTape() as tape:
            # One encoder call per side: two independent passes that a CPU runs side by
            # side (bench/README.md section 1, "Each side its own encoder call").
            embeddings = tf.concat([forward(batch["src"]), forward(batch["tgt"])], 0)
            total, loss, metrics = objective(embeddings)
        grads = tape.gradient(total, variables)
    else:
        grads, loss, metrics = _cached_gradients(
            forward, variables, _both_sides(batch), objective,
            batch["src"]["token_ids"].shape[0], chunk_size, generators)
    return _sum_over_replicas(grads), {"loss": loss, **metrics}


def mlm_gradients(forward: Callable[[dict], tf.Tensor], variables: Sequence, batch: dict, *,
                  optimizer=None) -> tuple[list, dict]:
    """Gradients of the masked-LM loss over the global batch, summed over replicas.

    Each replica weights its mean loss by its share of the global predictions, so the
    summed gradients are those of one weighted mean over every replica's predictions.

    Args:
      forward: callable. The batch → logits `[batch, predictions, vocab]` (training mode).
      variables: the trainable variables.
      batch: dict. This replica's examples from data.masked_lm_dataset.
      optimizer: optional; a LossScaleOptimizer scales the loss (fp16).

    Returns:
      (gradients, metrics): gradients identical on every replica; metrics are this
      replica's masked-LM loss and accuracy.
    """
    local = tf.reduce_sum(batch["mask_weights"])
    total = _sum_over_replicas(local)
    with tf.GradientTape() as tape:
        loss, accuracy = masked_lm_loss(forward(batch), batch["mask_ids"], batch["mask_weights"])
        scaled = _for_tape(loss * tf.math.divide_no_nan(local, total), optimizer)
    grads = tape.gradient(scaled, variables)
    return _sum_over_replicas(grads), {"loss": loss, "accuracy": accuracy}


def _replicas() -> int:
    ctx = tf.distribute.get_replica_context()
    return ctx.num_replicas_in_sync if ctx else 1


def _for_tape(share: tf.Tensor, optimizer) -> tf.Tensor:
    """What a replica differentiates: its share of the loss, scaled under fp16."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer.scale_loss(share)
    return share


def _sum_over_replicas(values):
    """`values` (a tensor or a list of gradients) summed over the replicas in sync."""
    if _replicas() == 1:
        return values
    return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, values)


def _cached_gradients(forward, variables, inputs, objective, local_batch, chunk_size,
                      generators):
    if local_batch is None or local_batch % chunk_size:
        raise ValueError(f"train.chunk_size={chunk_size} must divide the per-replica batch "
                         f"({local_batch})")
    # Sources and targets are concatenated, so there are 2 * local_batch rows. Both passes
    # are symbolic loops (one chunk per iteration, parallel_iterations=1): the graph stays
    # the same size for any number of chunks, and only one chunk's activations are alive.
    num_chunks = 2 * local_batch // chunk_size
    chunked = {k: tf.reshape(v, [num_chunks, chunk_size, -1]) for k, v in inputs.items()}
    take = lambda i: {k: v[i] for k, v in chunked.items()}

    def state():
        if not generators:
            return tf.zeros([0, 2], tf.int64)
        return tf.stack([tf.cast(g.state.value, tf.int64) for g in generators])

    def restore(values):
        for j, g in enumerate(generators):
            g.state.assign(tf.cast(values[j], g.state.dtype))

    def embed(i, states, outputs):
        states = states.write(i, state())
        return i + 1, states, outputs.write(i, tf.stop_gradient(forward(take(i))))

    _, states, outputs = tf.while_loop(
        lambda i, *_: i < num_chunks, embed,
        (0, tf.TensorArray(tf.int64, num_chunks, element_shape=[len(generators), 2]),
         tf.TensorArray(tf.float32, num_chunks, element_shape=[chunk_size, None])),
        parallel_iterations=1)
    embeddings = tf.reshape(outputs.stack(), [2 * local_batch, -1])
    with tf.GradientTape() as tape:
        tape.watch(embeddings)
        total, loss, metrics = objective(embeddings)
    cached = tf.reshape(tape.gradient(total, embeddings), [num_chunks, chunk_size, -1])

    def backprop(i, grads):
        restore(states.read(i))  # the first pass's dropout masks for this chunk
        with tf.GradientTape() as tape:
            surrogate = tf.reduce_sum(forward(take(i)) * cached[i])
        return i + 1, [_accumulate(a, b)
                       for a, b in zip(grads, tape.gradient(surrogate, variables))]

    # The second pass ends with the generators where the first one left them.
    _, grads = tf.while_loop(lambda i, _: i < num_chunks, backprop,
                             (0, [tf.zeros_like(v) for v in variables]), parallel_iterations=1)
    return grads, loss, metrics


def _accumulate(total: tf.Tensor, grad) -> tf.Tensor:
    """`total + grad`, adding the sparse rows of an embedding gradient in place rather
    than densifying each chunk's gradient first."""
    if grad is None:
        return total
    if isinstance(grad, tf.IndexedSlices):
        return tf.tensor_scatter_nd_add(total, grad.indices[:, None], grad.values)
    return total + grad
