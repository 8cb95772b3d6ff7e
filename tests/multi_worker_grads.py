"""One worker of the 2-process MultiWorkerMirroredStrategy gradient test (run by test_multi_worker).

usage: python multi_worker_grads.py WORK_DIR   (TF_CONFIG set by the caller)
Reads WORK_DIR/batch.npz and WORK_DIR/init weights, writes WORK_DIR/worker<i>.npz.
"""

import os
import sys

import numpy as np
import tensorflow as tf

from labse_tf import config as config_lib
from labse_tf.gradients import compute_gradients
from labse_tf.model import build_encoder


def main(work_dir: str) -> None:
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    arrays = np.load(os.path.join(work_dir, "batch.npz"))
    vocab_size = int(arrays["vocab_size"])
    with strategy.scope():
        encoder = build_encoder(config_lib.ModelConfig(dropout=0.0, pooling="mean"), vocab_size)
    tf.train.Checkpoint(encoder=encoder).read(os.path.join(work_dir, "init")).assert_consumed()
    loss_cfg = config_lib.LossConfig(scale=20.0, margin=0.3, gather=True)
    half = arrays["src_token_ids"].shape[0] // 2

    def local_batch(ctx):
        rows = slice(ctx.replica_id_in_sync_group * half, (ctx.replica_id_in_sync_group + 1) * half)
        return {side: {k: tf.constant(arrays[f"{side}_{k}"][rows]) for k in
                       ("token_ids", "padding_mask", "segment_ids")} for side in ("src", "tgt")}

    def step(batch):
        grads, metrics = compute_gradients(lambda x: encoder(x, training=True)["embedding"],
                                           encoder.trainable_variables, batch, loss_cfg)
        return [tf.convert_to_tensor(g) for g in grads], metrics["loss"]

    values = strategy.experimental_distribute_values_from_function(local_batch)
    grads, loss = tf.function(lambda v: strategy.run(step, args=(v,)))(values)
    loss = strategy.reduce(tf.distribute.ReduceOp.MEAN, loss, axis=None)
    task = strategy.cluster_resolver.task_id
    np.savez(os.path.join(work_dir, f"worker{task}.npz"), loss=loss.numpy(),
             **{f"g{i}": strategy.experimental_local_results(g)[0].numpy() for i, g in enumerate(grads)})


if __name__ == "__main__":
    main(sys.argv[1])
