"""Per-replica gradients of the global-batch translation ranking loss.

Two ways to the same numbers:
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
from labse_tf.losses import translation_ranking_loss

__all__ = ["compute_gradients", "seed_generators"]

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
    """Sources then targets in one batch: one encoder call serves both sides."""
    return {k: tf.concat([batch["src"][k], batch["tgt"][k]], 0) for k in batch["src"]}


def seed_generators(model: keras.Model) -> list:
    """Every SeedGenerator (dropout randomness) inside `model`."""
    found = []
    for layer in model._flatten_layers(include_self=True, recursive=True):
        found += [g for g in getattr(layer, "_seed_generators", []) if g not in found]
    return found


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
      chunk_size: int. 0 = direct; else gradient caching with chunks of this many pairs
        (must divide the local batch).
      generators: SeedGenerators of the model's dropout, replayed for the second pass.

    Returns:
      (gradients, metrics): gradients identical on every replica; metrics are this
      replica's loss and in-batch accuracies.
    """
    ctx = tf.distribute.get_replica_context()
    replicas = ctx.num_replicas_in_sync if ctx else 1
    scale_loss = getattr(optimizer, "scale_loss", None) if isinstance(
        optimizer, keras.optimizers.LossScaleOptimizer) else None
    inputs = _both_sides(batch)
    local = tf.shape(batch["src"]["token_ids"])[0]

    def objective(embeddings):
        loss, metrics = _loss(embeddings[:local], embeddings[local:], cfg)
        # Each replica holds 1/replicas of the mean; the all-reduce below sums them.
        scaled = loss / replicas
        return (scale_loss(scaled) if scale_loss else scaled), loss, metrics

    if chunk_size <= 0:
        with tf.GradientTape() as tape:
            total, loss, metrics = objective(forward(inputs))
        grads = tape.gradient(total, variables)
    else:
        grads, loss, metrics = _cached_gradients(forward, variables, inputs, objective,
                                                 batch["src"]["token_ids"].shape[0],
                                                 chunk_size, generators)
    if ctx is not None and replicas > 1:
        grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
    return grads, {"loss": loss, **metrics}


def _cached_gradients(forward, variables, inputs, objective, local_batch, chunk_size,
                      generators):
    if local_batch is None or local_batch % chunk_size:
        raise ValueError(f"train.chunk_size={chunk_size} must divide the per-replica batch "
                         f"({local_batch})")
    # Sources and targets are concatenated, so there are 2 * local_batch rows.
    starts = range(0, 2 * local_batch, chunk_size)
    chunks = [{k: v[s:s + chunk_size] for k, v in inputs.items()} for s in starts]
    # Control dependencies chain the chunks: without them the graph executor may run every
    # chunk's forward pass before any backward pass, keeping all activations alive.
    states, first = [], []
    for chunk in chunks:
        with tf.control_dependencies(first[-1:]):
            states.append([tf.identity(g.state.value) for g in generators])
            first.append(tf.stop_gradient(forward(chunk)))
    embeddings = tf.concat(first, 0)
    with tf.GradientTape() as tape:
        tape.watch(embeddings)
        total, loss, metrics = objective(embeddings)
    cached = tape.gradient(total, embeddings)
    grads = [tf.zeros_like(v) for v in variables]
    after = [tf.identity(g.state.value) for g in generators]
    for start, chunk, state in zip(starts, chunks, states):
        with tf.control_dependencies(grads):
            for g, s in zip(generators, state):
                g.state.assign(s)
            with tf.GradientTape() as tape:
                surrogate = tf.reduce_sum(forward(chunk) * cached[start:start + chunk_size])
        grads = [a + tf.convert_to_tensor(b) for a, b in zip(grads, tape.gradient(surrogate, variables))]
    for g, s in zip(generators, after):
        g.state.assign(s)
    return grads, loss, metrics
