"""Choosing a tf.distribute strategy from a flag, and cross-replica gathering."""

import tensorflow as tf

__all__ = ["STRATEGIES", "barrier", "gather_global_batch", "is_chief", "make_strategy", "needs_static_shapes",
           "set_cpu_devices"]

STRATEGIES = ("cpu", "mirrored", "multi_worker", "tpu")


def set_cpu_devices(count: int) -> None:
    """Splits the physical CPU into `count` logical devices (before TF initialises them)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])


def make_strategy(name: str, *, tpu: str = "", cpu_replicas: int = 0) -> tf.distribute.Strategy:
    """Builds the strategy named by `--strategy`.

    Args:
      name: str. `cpu` (one device), `mirrored` (all local GPUs, or `cpu_replicas` logical
        CPU devices), `multi_worker` (cluster from TF_CONFIG) or `tpu`.
      tpu: str. TPU name or grpc address for TPUClusterResolver ("" = local/auto).
      cpu_replicas: int. With `mirrored` and no GPU: number of logical CPU replicas.

    Returns:
      A tf.distribute.Strategy.
    """
    if name == "cpu":
        return tf.distribute.OneDeviceStrategy("/cpu:0")
    if name == "mirrored":
        if cpu_replicas > 0:
            set_cpu_devices(cpu_replicas)
            return tf.distribute.MirroredStrategy(
                [f"/cpu:{i}" for i in range(cpu_replicas)],
                cross_device_ops=tf.distribute.ReductionToOneDevice())
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"--strategy={name!r}: expected one of {', '.join(STRATEGIES)}")


def gather_global_batch(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Gathers `x [b, ...]` from every replica in replica context.

    Every replica must hold the same `b` (training batches use drop_remainder). The
    gradient of the gather sums the upstream gradients of all replicas into the local
    rows, so gradients stay exact.

    Returns:
      (global_x `[replicas * b, ...]`, offset): offset is the row of this replica's
      first element in global_x.
    """
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return x, tf.constant(0, tf.int32)
    offset = tf.cast(ctx.replica_id_in_sync_group, tf.int32) * tf.shape(x)[0]
    return ctx.all_gather(x, axis=0), offset


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run directory (the chief, or worker 0 without one)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker" and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict())


def needs_static_shapes(strategy: tf.distribute.Strategy, jit_compile: bool) -> bool:
    """Whether input batches must keep their static sequence length (not be trimmed).

    XLA (TPUs, `train.jit_compile`) compiles once per shape; and across workers, the sparse
    gradient of the token embeddings (one row per token in the batch) is all-gathered by a
    collective that needs the same shape on every worker.
    """
    return jit_compile or isinstance(strategy, (tf.distribute.TPUStrategy,
                                                tf.distribute.MultiWorkerMirroredStrategy))



def barrier(strategy: tf.distribute.Strategy) -> None:
    """Returns on every worker once all have reached it (a no-op but under MultiWorkerMirroredStrategy; a TPU
    pod is driven by one process).

    The chief writes the run directory's manifest, vocabulary and config before it; the
    other workers read them after it. A one-element all-reduce is the rendezvous.
    """
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        strategy.reduce(tf.distribute.ReduceOp.SUM,
                        strategy.run(tf.function(lambda: tf.constant(1.0))), axis=None)
