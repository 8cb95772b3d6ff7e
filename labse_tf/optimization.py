"""AdamW with warm-up and decay, set up for an explicit cross-replica training step."""

import keras
import tensorflow as tf

from labse_tf.config import OptimizerConfig

__all__ = ["WarmupDecay", "build_optimizer"]


@keras.saving.register_keras_serializable("labse_tf")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak`, then linear decay to 0 at `total_steps`, cosine, or constant."""

    def __init__(self, peak: float, warmup_steps: int, total_steps: int, schedule: str,
                 start_step: int = 0):
        self.peak, self.warmup_steps = peak, warmup_steps
        self.total_steps, self.schedule = total_steps, schedule
        self.start_step = start_step

    def __call__(self, step):
        # An optimizer made mid-run (a pre-training stage) counts from 0; the run does not.
        step = tf.cast(step, tf.float32) + self.start_step
        warmup = tf.cast(max(self.warmup_steps, 1), tf.float32)
        decay_steps = tf.cast(max(self.total_steps - self.warmup_steps, 1), tf.float32)
        progress = tf.clip_by_value((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        if self.schedule == "linear":
            decayed = 1.0 - progress
        elif self.schedule == "cosine":
            decayed = 0.5 * (1.0 + tf.cos(3.14159265 * progress))
        else:
            decayed = tf.ones_like(progress)
        return self.peak * tf.where(step < self.warmup_steps, (step + 1) / warmup, decayed)

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps, "schedule": self.schedule,
                "start_step": self.start_step}


class _AdamW(keras.optimizers.AdamW):
    """AdamW that expects gradients already summed over replicas.

    The training step all-reduces gradients itself so that global-norm clipping and the
    fp16 finiteness check see the global gradient; Keras would otherwise sum them again.
    """

    def _all_reduce_sum_gradients(self, grads_and_vars):
        return grads_and_vars


def build_optimizer(cfg: OptimizerConfig, *, learning_rate: float, total_steps: int,
                    precision: str, start_step: int = 0) -> keras.optimizers.Optimizer:
    """AdamW (no decay on biases and LayerNorm), wrapped for loss scaling under fp16.

    `start_step` is the run's step at the optimizer's first update (its schedule offset).
    """
    optimizer = _AdamW(
        learning_rate=WarmupDecay(learning_rate, cfg.warmup_steps, total_steps, cfg.schedule,
                                  start_step),
        weight_decay=cfg.weight_decay, beta_1=cfg.beta_1, beta_2=cfg.beta_2,
        epsilon=cfg.epsilon, global_clipnorm=cfg.clipnorm or None)
    optimizer.exclude_from_weight_decay(var_names=["bias", "beta", "gamma"])
    if precision == "fp16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
