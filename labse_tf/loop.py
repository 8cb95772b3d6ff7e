"""The training loop shared by dual-encoder training and pre-training.

The step (`make_step`): a loss's global-batch gradients, then one optimizer update. The
outer loop (`run_loop`, compiled steps by `compile_loop`; `train_loop` both) owns what
every run needs besides its step: several steps per tf.function call,
checkpoints every N steps (and resuming from them), TensorBoard summaries, a progress
line, a stop on a non-finite loss that keeps the last good checkpoint, periodic
evaluation with a copy of the best checkpoint (checkpoints.Saver), and an optional time
budget that ends the run and paces the learning-rate decay by the clock (pacing.Pacer).
Then the run's summary.json (`write_run_summary`).
"""

import dataclasses
import datetime
import math
import time
from typing import Callable, Iterator, Sequence

import tensorflow as tf

from labse_tf import checkpoints, config as config_lib, distribute, files, rundir
from labse_tf.corpus import DataError
from labse_tf.pacing import Pacer

__all__ = ["LoopOptions", "LoopResult", "NonFiniteLossError", "RUN_ERRORS", "compile_loop",
           "make_step", "run_loop", "train_loop", "write_run_summary"]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped without saving."""


# What ends a training command with `error: ...` (a user's data, config or path, or a
# diverged run) rather than a traceback.
RUN_ERRORS = (NonFiniteLossError, DataError, config_lib.ConfigError, FileNotFoundError,
              files.FileError)


@dataclasses.dataclass(frozen=True)
class LoopOptions:
    """How far a loop runs and how often it saves, evaluates and reports."""

    total_steps: int          # the schedule's last step
    steps_per_loop: int       # steps per tf.function call
    checkpoint_every: int
    keep_checkpoints: int
    examples_per_step: int    # the global batch, for throughput
    eval_every: int = 0       # 0 = evaluate only at the end (when there is an evaluation)
    eval_key: str = ""        # the metric that selects the best checkpoint (higher is better)
    stop_at: int | None = None  # stop early at this step (a stage of a longer schedule)
    time_budget: float = 0.0  # seconds of loop time, counted over resumes (0 = none)

    @classmethod
    def from_train(cls, train: config_lib.TrainConfig, **fields) -> "LoopOptions":
        return cls(total_steps=train.steps, steps_per_loop=train.steps_per_loop,
                   checkpoint_every=train.checkpoint_every,
                   keep_checkpoints=train.keep_checkpoints,
                   examples_per_step=train.global_batch_size, eval_every=train.eval_every,
                   **fields)

    @property
    def end(self) -> int:
        return min(self.total_steps, self.stop_at or self.total_steps)


@dataclasses.dataclass
class LoopResult:
    step: int
    metrics: dict
    evals: list
    checkpoint: str
    best_checkpoint: str | None
    seconds: float


def make_step(gradients: Callable, forward: Callable, variables: Sequence, optimizer, *,
              jit_compile: bool = False) -> Callable[[dict], dict]:
    """The per-replica step: gradients of the global-batch loss, then one update.

    Args:
      gradients: callable. `(forward, variables, batch)` → (gradients summed over
        replicas, metrics): gradients.compute_gradients with its loss options bound, or
        gradients.mlm_gradients.
      forward: callable. The model in training mode on a batch; XLA-compiled with
        `jit_compile`.
      variables: the trainable variables, those `optimizer` was built on.
      optimizer: keras.optimizers.Optimizer (optimization.build_optimizer).
      jit_compile: bool. train.jit_compile.

    Returns:
      A callable batch → metrics, for compile_loop.
    """
    if jit_compile:
        forward = tf.function(forward, jit_compile=True)

    def step(batch):
        grads, metrics = gradients(forward, variables, batch)
        optimizer.apply(grads, variables)
        return metrics

    return step


def compile_loop(strategy: tf.distribute.Strategy, step_fn: Callable, metric_names: Sequence[str]):
    """A tf.function running `num_steps` replica steps and returning their mean metrics.

    Args:
      strategy: tf.distribute.Strategy.
      step_fn: callable. Per-replica step on one batch, returning a dict of scalars that
        contains every name in `metric_names` (already equal across replicas or not).
      metric_names: names of the metrics to average over replicas and steps.
    """

    @tf.function
    def loop(iterator, num_steps):
        sums = {k: tf.constant(0.0) for k in metric_names}
        for _ in tf.range(num_steps):
            out = strategy.run(step_fn, args=(next(iterator),))
            sums = {k: sums[k] + strategy.reduce(tf.distribute.ReduceOp.MEAN, out[k], axis=None)
                    for k in metric_names}
        return {k: v / tf.cast(num_steps, tf.float32) for k, v in sums.items()}

    return loop


def run_loop(loop, iterator: Iterator, checkpoint: tf.train.Checkpoint, model_dir: str,
             options: LoopOptions, *, learning_rate: Callable[[], float],
             evaluate: Callable[[int], dict] | None = None,
             retarget: Callable[[float], None] | None = None, is_chief: bool = True,
             log: Callable[[str], None] = print) -> LoopResult:
    """Runs `loop` from `checkpoint.step` to `options.end` (or the time budget), saving as
    it goes.

    The caller restores `checkpoint` before building `iterator` (the data stream depends on
    the start step), so this function only continues from its step.

    Args:
      loop: from compile_loop.
      iterator: distributed iterator over training batches.
      checkpoint: tf.train.Checkpoint holding everything to save, including `step` (an
        int64 tf.Variable: steps done so far).
      model_dir: str. Run directory.
      options: LoopOptions.
      learning_rate: callable. The current learning rate, for logging.
      evaluate: callable or None. Step → dict of metrics; run every `options.eval_every`
        steps and when the run ends.
      retarget: callable or None. With a time budget, called after every loop call with the
        step at which the measured speed says the budget runs out (the schedule's end).
      is_chief: bool. Under multi-worker training only the chief writes into model_dir.
      log: callable. Progress output.

    Returns:
      LoopResult.
    """
    step, end = checkpoint.step, options.end
    with checkpoints.Saver(checkpoint, model_dir, options.keep_checkpoints, is_chief) as saver:
        writer = (tf.summary.create_file_writer(files.join(model_dir, rundir.SUMMARIES_DIR))
                  if is_chief else tf.summary.create_noop_writer())
        start_step, start_time = int(step.numpy()), time.time()
        pacer = Pacer(model_dir, options.time_budget, start_step, options.total_steps, retarget)
        metrics, evals = {}, []
        out_of_time = pacer.out_of_time
        if out_of_time:
            log(f"time budget of {options.time_budget / 60:.2f} min already spent at step "
                f"{start_step}")
        while int(step.numpy()) < end and not out_of_time:
            now = int(step.numpy())
            num_steps = _steps_to_boundary(now, options, evaluate is not None)
            tick = time.time()
            metrics = {k: float(v) for k, v in loop(iterator, tf.constant(num_steps)).items()}
            elapsed = time.time() - tick
            if not all(math.isfinite(v) for v in metrics.values()):
                raise NonFiniteLossError(
                    f"non-finite metrics {metrics} in steps {now + 1}..{now + num_steps}; stopped "
                    f"without saving. Last good checkpoint: {saver.latest.latest_checkpoint or 'none'}."
                    " Lower train.learning_rate or use train.precision=fp32/bf16.")
            step.assign_add(num_steps)
            now += num_steps
            pacer.update(now)
            out_of_time = pacer.out_of_time  # once, so the save and the evaluation agree
            rate = options.examples_per_step * num_steps / max(elapsed, 1e-9)
            metrics.update(learning_rate=learning_rate(), examples_per_second=rate)
            with writer.as_default(step=now):
                for k, v in metrics.items():
                    tf.summary.scalar(f"train/{k}", v)
            if is_chief:
                eta = min((time.time() - start_time) / max(now - start_step, 1) * (end - now),
                          max(pacer.left(), 0.0))
                log(_progress(now, options.total_steps, metrics, eta))
            finished = now == end or out_of_time
            if now % options.checkpoint_every == 0 or finished:
                saver.save(now)
                if is_chief:
                    pacer.save(now)
            if out_of_time:
                log(f"time budget of {options.time_budget / 60:.2f} min reached at step {now}")
            if evaluate and ((options.eval_every and now % options.eval_every == 0) or finished):
                evals.append(_evaluate(evaluate, now, saver, writer, options.eval_key, log))
        writer.flush()
        return LoopResult(step=int(step.numpy()), metrics=metrics, evals=evals,
                          checkpoint=saver.latest.latest_checkpoint,
                          best_checkpoint=saver.best.latest_checkpoint,
                          seconds=time.time() - start_time)


def train_loop(strategy: tf.distribute.Strategy, step_fn: Callable, metric_names: Sequence[str],
               iterator: Iterator, checkpoint: tf.train.Checkpoint, model_dir: str,
               options: LoopOptions, optimizer, **kwargs) -> LoopResult:
    """Compiles `step_fn` (compile_loop) and runs it (run_loop), reporting `optimizer`'s
    learning rate; only the chief writes `model_dir`. `kwargs` are run_loop's evaluate,
    retarget and log."""
    return run_loop(compile_loop(strategy, step_fn, metric_names), iterator, checkpoint,
                    model_dir, options, learning_rate=lambda: float(optimizer.learning_rate),
                    is_chief=distribute.is_chief(strategy), **kwargs)


def write_run_summary(strategy: tf.distribute.Strategy, model_dir: str, **fields) -> dict:
    """The run summary: MODEL_DIR, `fields` in order, the replicas; the chief writes it as
    MODEL_DIR/summary.json. Returns it."""
    summary = {"model_dir": files.absolute(model_dir), **fields,
               "replicas": strategy.num_replicas_in_sync}
    if distribute.is_chief(strategy):
        checkpoints.write_summary(summary, model_dir)
    return summary


def _steps_to_boundary(now: int, options: LoopOptions, evaluates: bool) -> int:
    """Steps of the next call: never past the end, a checkpoint or an evaluation."""
    boundaries = [options.end, (now // options.checkpoint_every + 1) * options.checkpoint_every,
                  now + options.steps_per_loop]
    if evaluates and options.eval_every:
        boundaries.append((now // options.eval_every + 1) * options.eval_every)
    return min(boundaries) - now


def _evaluate(evaluate, at: int, saver: checkpoints.Saver, writer, key: str, log) -> dict:
    """Evaluates at step `at`: summaries, a log line, and the best checkpoint by `key`."""
    result = evaluate(at)
    with writer.as_default(step=at):
        for k, v in result.items():
            if isinstance(v, (int, float)):
                tf.summary.scalar(f"eval/{k}", v)
    shown = "  ".join(f"{k} {v:.4f}" for k, v in result.items() if isinstance(v, float))
    log(f"eval at step {at}: {shown}")
    if key:
        saver.offer(at, key, result.get(key))
    return {"step": at, **result}


def _progress(now: int, total: int, metrics: dict, eta: float) -> str:
    shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                      if k not in ("learning_rate", "examples_per_second"))
    eta_text = str(datetime.timedelta(seconds=int(eta))) if math.isfinite(eta) else "?"
    return (f"step {now}/{total}  {shown}  lr {metrics['learning_rate']:.2e}  "
            f"pairs/s {metrics['examples_per_second']:.1f}  ETA {eta_text}")
