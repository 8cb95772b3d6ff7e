"""AdamW with warm-up and decay, set up for an explicit cross-replica training step, with
fused dense updates and embedding gradients that are never densified more than once."""

import math

import keras
import tensorflow as tf

from labse_tf import compat
from labse_tf.config import OptimizerConfig

__all__ = ["WarmupDecay", "build_optimizer", "retarget_decay"]


@keras.saving.register_keras_serializable("labse_tf")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak`, then linear decay to 0 at `total_steps`, cosine, or constant.

    `retarget` moves the step where the decay ends while training (a run paced by the
    clock); the end is a variable, read at every step of the compiled loop.
    """

    def __init__(self, peak: float, warmup_steps: int, total_steps: int, schedule: str,
                 start_step: int = 0):
        self.peak, self.warmup_steps = peak, warmup_steps
        self.total_steps, self.schedule = total_steps, schedule
        self.start_step = start_step
        self.end_step = tf.Variable(float(total_steps), trainable=False, name="decay_end")

    def retarget(self, end_step: float) -> None:
        self.end_step.assign(float(end_step))

    def __call__(self, step):
        # An optimizer made mid-run (a pre-training stage) counts from 0; the run does not.
        step = tf.cast(step, tf.float32) + self.start_step
        warmup = tf.cast(max(self.warmup_steps, 1), tf.float32)
        decay_steps = tf.maximum(tf.cast(self.end_step, tf.float32) - self.warmup_steps, 1.0)
        progress = tf.clip_by_value((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        if self.schedule == "linear":
            decayed = 1.0 - progress
        elif self.schedule == "cosine":
            decayed = 0.5 * (1.0 + tf.cos(math.pi * progress))
        else:
            decayed = tf.ones_like(progress)
        return self.peak * tf.where(step < self.warmup_steps, (step + 1) / warmup, decayed)

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps, "schedule": self.schedule,
                "start_step": self.start_step}


class _AdamW(keras.optimizers.AdamW):
    """Keras's AdamW, with the same update computed in fewer passes over memory.

    The methods it overrides are Keras internals (compat.OPTIMIZER_OVERRIDES, checked at
    import against the pinned Keras).

    - Gradients arrive summed over replicas: the training step all-reduces them itself so
      that global-norm clipping and the fp16 finiteness check see the global gradient;
      Keras would otherwise sum them again.
    - Dense gradients go through TensorFlow's fused Adam kernel (one pass over the weights
      and both moments, where Keras's update is a dozen elementwise ops).
    - An embedding gradient (`tf.IndexedSlices`, one row per token in the batch) has its
      duplicate rows summed once; clipping scales its rows. Keras would densify it to the
      whole vocabulary several times per step, which dominated small models' steps on CPU.
      It is then made dense once for the exact AdamW update, or, with `lazy_embeddings`
      (not on TPUs), only its rows are updated (moments, decay and weights: LazyAdam).
      Lazy rows not in the batch keep their moments and skip the decay, so lazy is not
      AdamW; it is much faster when the vocabulary is large next to a batch's tokens.
    """

    def __init__(self, *, lazy_embeddings: bool = False, **kwargs):
        super().__init__(name="adamw", **kwargs)  # the class's own would not be a valid scope
        self.lazy_embeddings = lazy_embeddings
        self._lazy_keys = set()  # variables whose rows update lazily in this trace

    def _all_reduce_sum_gradients(self, grads_and_vars):
        return grads_and_vars

    def apply(self, grads, trainable_variables=None):
        # A TPU compiles the whole step with XLA, which cannot give tf.unique's
        # data-dependent shape: there, embedding gradients are made dense here, once.
        sparse = not isinstance(tf.distribute.get_strategy(), tf.distribute.TPUStrategy)
        grads = [(_sum_duplicates(g) if sparse else tf.convert_to_tensor(g))
                 if isinstance(g, tf.IndexedSlices) else g for g in grads]
        variables = (compat.built_variables(self) if trainable_variables is None
                     else trainable_variables)
        self._lazy_keys = {compat.variable_key(self, v) for g, v in zip(grads, variables)
                           if self.lazy_embeddings and isinstance(g, tf.IndexedSlices)}
        return super().apply(grads, trainable_variables)

    def _clip_gradients(self, grads):
        if not (self.global_clipnorm and self.global_clipnorm > 0):
            return super()._clip_gradients(grads)
        norm = tf.linalg.global_norm([g for g in grads if g is not None])  # rows of slices
        # As Keras: min(1, clip / norm), and NaN (caught by the step) for a non-finite norm.
        scale = self.global_clipnorm * tf.minimum(1.0 / norm, 1.0 / self.global_clipnorm)
        non_finite = norm - norm  # 0 for a finite norm, NaN for an infinite or NaN one
        scale += non_finite
        return [None if g is None
                else tf.IndexedSlices(g.values * scale, g.indices, g.dense_shape)
                if isinstance(g, tf.IndexedSlices) else g * scale for g in grads]

    def _apply_weight_decay(self, variables):
        # Lazily updated rows are decayed in update_step, with their Adam update.
        super()._apply_weight_decay([v for v in variables
                                     if compat.variable_key(self, v) not in self._lazy_keys])

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad:
            return super().update_step(gradient, variable, learning_rate)
        m, v = compat.adam_slots(self, variable)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        lr = tf.cast(learning_rate, dtype)
        if (isinstance(gradient, tf.IndexedSlices)
                and compat.variable_key(self, variable) in self._lazy_keys):
            return self._lazy_update(gradient, variable, m, v, lr, step)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=m.handle, v=v.handle, beta1_power=beta_1 ** step,
            beta2_power=beta_2 ** step, lr=lr, beta1=beta_1, beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(tf.convert_to_tensor(gradient), dtype))

    def _lazy_update(self, gradient, variable, m, v, lr, step):
        """Adam (and decoupled decay) on the gradient's rows only; they are unique."""
        rows, g = gradient.indices, tf.cast(gradient.values, variable.dtype)
        m_rows = tf.gather(m, rows) * self.beta_1 + g * (1 - self.beta_1)
        v_rows = tf.gather(v, rows) * self.beta_2 + tf.square(g) * (1 - self.beta_2)
        m.scatter_update(tf.IndexedSlices(m_rows, rows))
        v.scatter_update(tf.IndexedSlices(v_rows, rows))
        alpha = lr * tf.sqrt(1 - self.beta_2 ** step) / (1 - self.beta_1 ** step)
        delta = alpha * m_rows / (tf.sqrt(v_rows) + self.epsilon)
        if compat.decays(self, variable):
            # Rows of a dense read: a sparse read or scatter on the weights themselves would
            # put them in TensorFlow's copy-on-read mode, after which every dense read (the
            # forward pass's) copies the whole table.
            weights = tf.gather(variable.read_value(), rows)
            delta += weights * tf.cast(self.weight_decay, variable.dtype) * lr
        variable.assign_sub(tf.scatter_nd(rows[:, None], delta,
                                          tf.constant(variable.shape.as_list(), rows.dtype)))


def _sum_duplicates(grad: tf.IndexedSlices) -> tf.IndexedSlices:
    """The same gradient with each row index once (an embedding lookup repeats tokens)."""
    rows, position = tf.unique(grad.indices)
    values = tf.math.unsorted_segment_sum(grad.values, position, tf.shape(rows)[0])
    return tf.IndexedSlices(values, rows, grad.dense_shape)


def retarget_decay(optimizer: keras.optimizers.Optimizer, end_step: float) -> None:
    """Moves the end of `optimizer`'s learning-rate decay (from `build_optimizer`) to `end_step`."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # under fp16 loss scaling
    compat.learning_rate_schedule(inner).retarget(end_step)


def build_optimizer(cfg: OptimizerConfig, *, learning_rate: float, total_steps: int,
                    precision: str, start_step: int = 0) -> keras.optimizers.Optimizer:
    """AdamW (no decay on biases and LayerNorm), wrapped for loss scaling under fp16.

    `start_step` is the run's step at the optimizer's first update (its schedule offset).
    """
    optimizer = _AdamW(
        learning_rate=WarmupDecay(learning_rate, cfg.warmup_steps, total_steps, cfg.schedule,
                                  start_step),
        weight_decay=cfg.weight_decay, beta_1=cfg.beta_1, beta_2=cfg.beta_2,
        epsilon=cfg.epsilon, global_clipnorm=cfg.clipnorm or None,
        lazy_embeddings=cfg.lazy_embeddings)
    optimizer.exclude_from_weight_decay(var_names=["bias", "beta", "gamma"])
    if precision == "fp16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
