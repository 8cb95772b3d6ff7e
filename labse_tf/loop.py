"""The outer training loop and run set-up shared by dual-encoder training and pre-training.

It owns what every run needs besides its step: several steps per tf.function call,
checkpoints every N steps (and resuming from them), TensorBoard summaries, a progress
line, a stop on a non-finite loss that keeps the last good checkpoint, periodic
evaluation with a copy of the best checkpoint, and an optional time budget that ends the
run and paces the learning-rate decay by the clock.
"""

import dataclasses
import datetime
import math
import os
import tempfile
import time
from typing import Callable, Iterator, Sequence

import tensorflow as tf
from absl import flags

from labse_tf import checkpoints, config as config_lib, corpus, data, distribute, files, vocab
from labse_tf.checkpoints import BEST_DIR, CHECKPOINT_DIR, CLOCK_FILE, MANIFEST_FILE, SCORE_FILE
from labse_tf.preprocessing import Preprocessor

__all__ = ["LoopResult", "NonFiniteLossError", "compile_loop", "data_sampling", "define_run_flags",
           "pipeline_batches", "prepare_run", "run_loop"]

DEFAULT_MODEL_DIR = os.path.join("runs", "demo")  # a local default; any URL may be given


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped without saving."""


@dataclasses.dataclass
class LoopResult:
    step: int
    metrics: dict
    evals: list
    checkpoint: str
    best_checkpoint: str | None
    seconds: float


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


def _format_eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(seconds))) if math.isfinite(seconds) else "?"


def run_loop(*, loop, iterator: Iterator, checkpoint: tf.train.Checkpoint, step: tf.Variable,
             model_dir: str, total_steps: int, steps_per_loop: int, checkpoint_every: int,
             keep_checkpoints: int, examples_per_step: int, learning_rate: Callable[[], float],
             evaluate: Callable[[int], dict] | None = None, eval_every: int = 0,
             eval_key: str = "", log: Callable[[str], None] = print,
             stop_at: int | None = None, is_chief: bool = True, time_budget: float = 0.0,
             retarget: Callable[[float], None] | None = None) -> LoopResult:
    """Runs `loop` until `step` reaches `total_steps` (or `stop_at`, or the time budget),
    checkpointing as it goes.

    The caller restores `checkpoint` before building `iterator` (the data stream depends on
    the start step), so this function only continues from `step`.

    Args:
      loop: from compile_loop.
      iterator: distributed iterator over training batches.
      checkpoint: tf.train.Checkpoint holding everything to save (including `step`).
      step: int64 tf.Variable. Steps done so far.
      model_dir: str. Run directory.
      total_steps: int. Final step of the run.
      steps_per_loop: int. Steps per tf.function call.
      checkpoint_every: int. Checkpoint interval in steps.
      keep_checkpoints: int. Checkpoints kept.
      examples_per_step: int. Global batch size, for throughput.
      learning_rate: callable. The current learning rate, for logging.
      evaluate: callable or None. Step → dict of metrics; run every `eval_every` steps
        (and at the end).
      eval_every: int. 0 = evaluate only at the end.
      eval_key: str. Metric that selects the best checkpoint (higher is better).
      log: callable. Progress output.
      stop_at: int or None. Stop early at this step (a stage of a longer schedule).
      is_chief: bool. Under multi-worker training only the chief writes into model_dir;
        the other workers join every save (it is collective) into a scratch directory.
      time_budget: float. Seconds of loop time after which the run stops (0 = none),
        counted over resumes (`clock.json` beside the checkpoints).
      retarget: callable or None. With a time budget, called after every loop call with the
        step at which the measured speed says the budget runs out (the schedule's end).

    Returns:
      LoopResult.
    """
    # Checkpoint saves are collective: the other workers save too, into a scratch
    # directory of their own that is removed however the run ends.
    write_dir = model_dir if is_chief else tempfile.mkdtemp(prefix="labse_tf_worker_")
    try:
        manager = tf.train.CheckpointManager(
            checkpoint, files.join(write_dir, CHECKPOINT_DIR), max_to_keep=keep_checkpoints,
            step_counter=step)
        best_manager = tf.train.CheckpointManager(
            checkpoint, files.join(write_dir, BEST_DIR), max_to_keep=1, step_counter=step)
        writer = (tf.summary.create_file_writer(files.join(model_dir, checkpoints.SUMMARIES_DIR))
                  if is_chief
                  else tf.summary.create_noop_writer())
        end = min(total_steps, stop_at or total_steps)
        start_step, start_time = int(step.numpy()), time.time()
        metrics, evals, best = {}, [], _best_score(model_dir)
        spent_before, decay_end = _read_clock(model_dir) if time_budget and start_step else (0.0, None)
        if retarget and decay_end:
            retarget(decay_end)  # a resumed run keeps its decay until it has measured its speed
        paced_from = None  # (time, step) after the first call, which includes tracing

        def spent() -> float:
            return spent_before + time.time() - start_time

        def run_eval(at: int):
            nonlocal best
            result = evaluate(at)
            evals.append({"step": at, **result})
            with writer.as_default(step=at):
                for k, v in result.items():
                    if isinstance(v, (int, float)):
                        tf.summary.scalar(f"eval/{k}", v)
            shown = "  ".join(f"{k} {v:.4f}" for k, v in result.items() if isinstance(v, float))
            log(f"eval at step {at}: {shown}")
            score = result.get(eval_key)
            if eval_key and score is not None and (best is None or score > best):
                best = score
                best_manager.save(checkpoint_number=at)
                files.write_json(files.join(write_dir, BEST_DIR, SCORE_FILE), {"step": at, eval_key: score})

        out_of_time = bool(time_budget) and spent() >= time_budget
        if out_of_time:
            log(f"time budget of {time_budget / 60:.2f} min already spent at step {start_step}")
        while int(step.numpy()) < end and not out_of_time:
            now = int(step.numpy())
            # Never run past a checkpoint or evaluation boundary inside one call.
            boundaries = [end, (now // checkpoint_every + 1) * checkpoint_every, now + steps_per_loop]
            if evaluate and eval_every:
                boundaries.append((now // eval_every + 1) * eval_every)
            num_steps = min(boundaries) - now
            tick = time.time()
            metrics = {k: float(v) for k, v in loop(iterator, tf.constant(num_steps)).items()}
            elapsed = time.time() - tick
            if not all(math.isfinite(v) for v in metrics.values()):
                latest = manager.latest_checkpoint
                raise NonFiniteLossError(
                    f"non-finite metrics {metrics} in steps {now + 1}..{now + num_steps}; stopped "
                    f"without saving. Last good checkpoint: {latest or 'none'}. Lower "
                    "train.learning_rate or use train.precision=fp32/bf16.")
            step.assign_add(num_steps)
            now += num_steps
            if time_budget:
                left = time_budget - spent()
                out_of_time = left <= 0
                if paced_from is None:
                    paced_from = (time.time(), now)
                elif retarget:  # the steps/s of everything since (saves and evaluations too)
                    speed = (now - paced_from[1]) / max(time.time() - paced_from[0], 1e-9)
                    decay_end = min(now + max(left, 0.0) * speed, total_steps)
                    retarget(decay_end)
            rate = examples_per_step * num_steps / max(elapsed, 1e-9)
            metrics.update(learning_rate=learning_rate(), examples_per_second=rate)
            with writer.as_default(step=now):
                for k, v in metrics.items():
                    tf.summary.scalar(f"train/{k}", v)
            done = time.time() - start_time
            eta = done / max(now - start_step, 1) * (end - now)
            if time_budget:
                eta = min(eta, max(time_budget - spent(), 0.0))
            shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                              if k not in ("learning_rate", "examples_per_second"))
            if is_chief:
                log(f"step {now}/{total_steps}  {shown}  lr {metrics['learning_rate']:.2e}  "
                    f"pairs/s {rate:.1f}  ETA {_format_eta(eta)}")
            if now % checkpoint_every == 0 or now == end or out_of_time:
                manager.save(checkpoint_number=now)
                if time_budget and is_chief:
                    _write_clock(model_dir, now, spent(), decay_end)
            if out_of_time:
                log(f"time budget of {time_budget / 60:.2f} min reached at step {now}")
            if evaluate and ((eval_every and now % eval_every == 0) or now == total_steps
                             or out_of_time):
                run_eval(now)
        writer.flush()
        return LoopResult(step=int(step.numpy()), metrics=metrics, evals=evals,
                          checkpoint=manager.latest_checkpoint,
                          best_checkpoint=best_manager.latest_checkpoint,
                          seconds=time.time() - start_time)
    finally:
        if not is_chief:
            files.rmtree(write_dir)


def define_run_flags():
    """Flags every training command shares (train, pretrain)."""
    flags.DEFINE_string("config", "tiny", "YAML config file, or the name of one in configs/.")
    flags.DEFINE_multi_string("set", [], "Override a config key, e.g. --set train.steps=500. "
                              "Repeatable.")
    flags.DEFINE_enum("strategy", "cpu", distribute.STRATEGIES, "cpu: one device; mirrored: all "
                      "local GPUs or --cpu_replicas logical CPUs; multi_worker: TF_CONFIG; tpu.")
    flags.DEFINE_string("tpu", "", "TPU name or address for --strategy=tpu.")
    flags.DEFINE_integer("cpu_replicas", 0, "With --strategy=mirrored: split the CPU into this "
                         "many logical replicas (tests the multi-replica path without GPUs).")
    flags.DEFINE_string("model_dir", DEFAULT_MODEL_DIR, "Run directory: config, vocabulary, "
                        "checkpoints, summaries, export. An existing run is resumed.")
    flags.DEFINE_multi_string("train_data", None, "Translation pairs: TSV (src<TAB>tgt or "
                              "lang<TAB>src<TAB>tgt, plain or .gz) or TFRecord files, globs "
                              "allowed. Repeatable. Default: the sample corpus shipped with "
                              "labse_tf.")


def prepare_run(cfg: config_lib.Config, model_dir: str, train_patterns, log=print,
                strategy: tf.distribute.Strategy | None = None):
    """Counts the data, settles the vocabulary and writes the resolved config (before step 0).

    Only the chief writes the run directory: under multi-worker training the others wait
    at a barrier until it has, then read the manifest and vocabulary it wrote.

    Returns:
      (cfg with vocab fields resolved, corpus manifest, preprocessor).
    """
    is_chief = strategy is None or distribute.is_chief(strategy)
    vocab_file = checkpoints.vocab_path(model_dir)
    if is_chief:
        manifest = _settle_manifest(train_patterns, model_dir, cfg.data.report_malformed, log)
        log(f"training data: {manifest.pairs:,} pairs in {len(manifest.langs)} languages, "
            f"{manifest.malformed} malformed lines skipped")
        _settle_vocab(cfg, manifest, vocab_file, log)
    if strategy is not None:
        distribute.barrier(strategy)
    if not is_chief:
        manifest = corpus.read_manifest(files.join(model_dir, MANIFEST_FILE))
    preprocessor = Preprocessor(vocab_file, lowercase=cfg.data.lowercase,
                                seq_length=cfg.data.seq_length)
    if cfg.model.vocab_size not in (0, preprocessor.vocab_size):
        raise config_lib.ConfigError(
            f"model.vocab_size: {cfg.model.vocab_size} but {vocab_file} has "
            f"{preprocessor.vocab_size} tokens (set 0 to take it from the file)")
    cfg = config_lib.override(cfg, [f"model.vocab_size={preprocessor.vocab_size}",
                                    f"data.vocab_file={files.absolute(vocab_file)}"])
    _check_compatible(cfg, model_dir)
    if is_chief:
        config_lib.write_config(cfg, model_dir)
    return cfg, manifest, preprocessor


def data_sampling(cfg: config_lib.Config) -> data.Sampling:
    return data.Sampling(alpha=cfg.data.alpha, seed=cfg.train.seed,
                         language_group=cfg.data.language_group, window=cfg.data.shuffle_window)


def pipeline_batches(ctx: tf.distribute.InputContext, steps: int) -> int:
    """Batches an input pipeline gave in `steps` steps: one per replica it feeds."""
    return steps * (ctx.num_replicas_in_sync // ctx.num_input_pipelines)


def _settle_manifest(train_patterns, model_dir: str, report: int, log) -> corpus.Manifest:
    """The run's corpus manifest: the saved one while the files are unchanged, else new.

    A resumed run must read the same files (its data position counts their pairs); a
    run with no checkpoint yet recounts when they changed.
    """
    paths, prepared = corpus.resolve_inputs(train_patterns)
    path = files.join(model_dir, MANIFEST_FILE)
    saved = corpus.read_manifest(path) if files.exists(path) else None
    current = prepared.signature() if prepared else [(p, files.size(p)) for p in paths]
    if saved and saved.signature() == current:
        log(f"corpus manifest: {path} (reused)")
        return saved
    if saved and tf.train.latest_checkpoint(files.join(model_dir, CHECKPOINT_DIR)):
        raise data.DataError(
            f"{path}: the training files are not those this run started with (paths and "
            f"sizes differ: {len(saved.files)} files then, {len(current)} now); a resumed "
            "run continues its data stream only over the same files: use a new --model_dir")
    manifest = prepared or corpus.build_manifest(paths, report=report, log=log)
    corpus.write_manifest(manifest, path)
    log(f"corpus manifest: {path}")
    return manifest


def _settle_vocab(cfg: config_lib.Config, manifest: corpus.Manifest, vocab_file: str, log):
    """Copies the configured vocabulary into the run, or learns one from the data."""
    if cfg.data.vocab_file and files.absolute(cfg.data.vocab_file) != files.absolute(vocab_file):
        if not files.exists(cfg.data.vocab_file):
            raise config_lib.ConfigError(f"data.vocab_file: no such file {cfg.data.vocab_file!r}")
        files.copy(cfg.data.vocab_file, vocab_file)
    elif not files.exists(vocab_file):
        log(f"building a {cfg.data.build_vocab_size}-token vocabulary from the training data")
        sample = vocab.sample_sentences(manifest, cfg.data.alpha, 400_000, cfg.train.seed)
        vocab.write_vocab(vocab.build_vocab([s for g in sample.values() for s in g],
                                            cfg.data.build_vocab_size,
                                            lowercase=cfg.data.lowercase), vocab_file)


def _check_compatible(cfg: config_lib.Config, model_dir: str) -> None:
    """A resumed run must keep the encoder shape its checkpoints were saved with."""
    path = files.join(model_dir, checkpoints.CONFIG_FILE)
    if not files.exists(path) or not tf.train.latest_checkpoint(
            files.join(model_dir, CHECKPOINT_DIR)):
        return
    old = config_lib.load_config(path)
    if old.model != cfg.model:
        raise config_lib.ConfigError(
            f"{path}: this run's model section differs from the checkpoints' "
            f"({old.model} vs {cfg.model}); use a new --model_dir")


def _read_clock(model_dir: str) -> tuple[float, float | None]:
    """(loop seconds spent, decay end) of earlier parts of this run, as of its last checkpoint.

    The schedule's end is not in the checkpoint, so a resumed run would otherwise decay
    toward train.steps until it has measured its own speed."""
    path = files.join(model_dir, CLOCK_FILE)
    if not files.exists(path):
        return 0.0, None
    clock = files.read_json(path)
    return float(clock["seconds"]), clock.get("decay_end")


def _write_clock(model_dir: str, at: int, seconds: float, decay_end: float | None) -> None:
    # Written whole or not at all, so a kill mid-write leaves the previous clock.
    files.write_json(files.join(model_dir, CLOCK_FILE),
                     {"step": at, "seconds": round(seconds, 2), "decay_end": decay_end})


def _best_score(model_dir: str):
    """The best evaluation score saved by an earlier (resumed) part of this run."""
    path = files.join(model_dir, BEST_DIR, SCORE_FILE)
    if not files.exists(path):
        return None
    return next(v for k, v in files.read_json(path).items() if k != "step")
