"""Run set-up shared by dual-encoder training and pre-training, before step 0.

The flags every training command shares; counting the corpus (its manifest), settling
the vocabulary and writing the resolved config into the run directory, chief only; and
the distributed input: the batch's split over replicas, and how the data stream of each
input pipeline is keyed (its sampling, its position at a step).
"""

import os

import tensorflow as tf
from absl import flags

from labse_tf import config as config_lib, corpus, data, distribute, files, rundir, vocab
from labse_tf.preprocessing import Preprocessor
from labse_tf.rundir import CHECKPOINT_DIR, MANIFEST_FILE

__all__ = ["DEFAULT_MODEL_DIR", "config_and_strategy", "data_sampling", "define_run_flags",
           "distributed_batches", "pipeline_batches", "prepare_run"]

DEFAULT_MODEL_DIR = os.path.join("runs", "demo")  # a local default; any URL may be given


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
    vocab_file = rundir.vocab_path(model_dir)
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


def distributed_batches(strategy: tf.distribute.Strategy, cfg: config_lib.Config,
                        start_step: int, make_dataset):
    """A distributed iterator of per-replica batches, each input pipeline on its own shard.

    Args:
      strategy: tf.distribute.Strategy.
      cfg: Config. train.global_batch_size, the sampling fields, train.jit_compile.
      start_step: int. The run's step: the stream continues from there.
      make_dataset: callable. Keyword arguments batch_size, sampling, start_step,
        num_pipelines, pipeline and trim (those of data.pair_dataset) → one pipeline's
        tf.data.Dataset of per-replica batches.

    Raises:
      ConfigError: the global batch does not split into replicas, or a replica's batch
        into language groups.
    """
    replicas = strategy.num_replicas_in_sync
    if cfg.train.global_batch_size % replicas:
        raise config_lib.ConfigError(
            f"train.global_batch_size: {cfg.train.global_batch_size} is not divisible by the "
            f"{replicas} replicas")
    if (cfg.train.global_batch_size // replicas) % cfg.data.language_group:
        raise config_lib.ConfigError(
            f"data.language_group: {cfg.data.language_group} does not divide the batch of each "
            f"of the {replicas} replicas ({cfg.train.global_batch_size // replicas} pairs)")
    trim = not distribute.needs_static_shapes(strategy, cfg.train.jit_compile)

    def dataset_fn(ctx: tf.distribute.InputContext):
        return make_dataset(
            batch_size=ctx.get_per_replica_batch_size(cfg.train.global_batch_size),
            sampling=data_sampling(cfg), start_step=pipeline_batches(ctx, start_step),
            num_pipelines=ctx.num_input_pipelines, pipeline=ctx.input_pipeline_id, trim=trim)

    return iter(strategy.distribute_datasets_from_function(dataset_fn))


def config_and_strategy() -> tuple[config_lib.Config, tf.distribute.Strategy]:
    """The run's config and strategy from the shared flags (after `define_run_flags`).

    Before anything else the command runs: logical CPU replicas can only be set up before
    TensorFlow runs an op."""
    cfg = config_lib.load_config(flags.FLAGS.config, flags.FLAGS.set)
    return cfg, distribute.make_strategy(flags.FLAGS.strategy, tpu=flags.FLAGS.tpu,
                                         cpu_replicas=flags.FLAGS.cpu_replicas)


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
    path = files.join(model_dir, rundir.CONFIG_FILE)
    if not files.exists(path) or not tf.train.latest_checkpoint(
            files.join(model_dir, CHECKPOINT_DIR)):
        return
    old = config_lib.load_config(path)
    if old.model != cfg.model:
        raise config_lib.ConfigError(
            f"{path}: this run's model section differs from the checkpoints' "
            f"({old.model} vs {cfg.model}); use a new --model_dir")
