r"""Trains a LaBSE dual encoder on translation pairs.

    python -m labse_tf.train                      # the embedded demo: tiny config, sample corpus
    python -m labse_tf.train --config=small --strategy=tpu --tpu=NAME \
        --model_dir=gs://bucket/run --train_data='gs://bucket/pairs/*.tsv.gz'

Why an explicit loop instead of Keras `fit`: the cross-replica gather needs replica context
and exact gradients; `fit` under MirroredStrategy cannot run several steps per call, breaks
on nested inputs under MultiWorkerMirroredStrategy, and XLA-compiles across devices. Here
the order is fixed and readable: strategy → data → model/optimizer → restore → step → loop
→ export.
"""

import dataclasses
import functools

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from labse_tf import checkpoints, cli, config as config_lib, data, distribute, evaluate, export
from labse_tf import files, rundir, run_setup
from labse_tf.compat import seed_generators
from labse_tf.gradients import compute_gradients
from labse_tf.loop import RUN_ERRORS, LoopOptions, make_step, train_loop, write_run_summary
from labse_tf.model import build_encoder
from labse_tf.optimization import build_optimizer, retarget_decay
from labse_tf.run_setup import define_run_flags, prepare_run

FLAGS = flags.FLAGS


def define_train_flags():
    flags.DEFINE_multi_string("eval_data", None, "Held-out pairs; retrieval accuracy within "
                              "them is evaluated every train.eval_every steps and at the end. "
                              "Default: the sample held-out pairs when training on the sample "
                              "corpus.")
    flags.DEFINE_string("eval_tatoeba_dir", "", "Tatoeba directory evaluated like --eval_data.")
    flags.DEFINE_string("init_checkpoint", "", "A labse_tf.pretrain run directory (or "
                        "checkpoint) whose encoder and vocabulary initialise this run.")
    flags.DEFINE_bool("export", True, "Export TF Hub / TF Serving SavedModels at the end.")
    flags.DEFINE_string("export_dir", "", "Where to export; default MODEL_DIR/export.")


def distributed_pairs(strategy, manifest, preprocessor, cfg, start_step):
    """A distributed iterator of per-replica batches of pairs from `start_step` on."""
    return run_setup.distributed_batches(
        strategy, cfg, start_step, functools.partial(data.pair_dataset, manifest, preprocessor))


def make_train_step(encoder, optimizer, cfg):
    """The per-replica step: gradients of the global-batch ranking loss, then one update."""
    gradients = functools.partial(
        compute_gradients, cfg=cfg.loss, optimizer=optimizer, chunk_size=cfg.train.chunk_size,
        generators=seed_generators(encoder) if cfg.train.chunk_size else ())
    return make_step(gradients, lambda inputs: encoder(inputs, training=True)["embedding"],
                     encoder.trainable_variables, optimizer, jit_compile=cfg.train.jit_compile)


def _macro_retrieval(embed_fn, pairs: data.Pairs) -> float:
    """Retrieval accuracy within each language's pairs (both directions), averaged."""
    return float(np.mean([evaluate.pair_retrieval(embed_fn, s, t)["mean"]
                          for s, t in zip(pairs.src, pairs.tgt)]))


def _eval_fn(preprocessor, encoder, eval_sets):
    """Retrieval accuracy on held-out pairs and Tatoeba, macro-averaged over languages."""
    embed_fn = evaluate.encoder_embed_fn(preprocessor, encoder)

    def run(step):
        return {f"{name}_accuracy": _macro_retrieval(embed_fn, pairs)
                for name, pairs in eval_sets.items()}

    return run


# The model fields that fix the weights' shapes; dropout and pooling stay this run's choice.
_SHAPE_FIELDS = ("vocab_size", "num_layers", "hidden_dim", "num_heads", "intermediate_dim",
                 "max_sequence_length")


def inherit_pretrained(cfg: config_lib.Config, init_checkpoint: str, log=print) -> config_lib.Config:
    """This run's config with the pre-trained run's encoder shape, vocabulary and casing."""
    init_dir = (init_checkpoint if files.isdir(init_checkpoint)
                else files.dirname(files.dirname(init_checkpoint)))
    source = config_lib.load_config(files.join(init_dir, rundir.CONFIG_FILE))
    shape = {f: getattr(source.model, f) for f in _SHAPE_FIELDS}
    log(f"encoder shape and vocabulary from {init_dir}: "
        + ", ".join(f"{k}={v}" for k, v in shape.items()))
    return dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, **shape),
        data=dataclasses.replace(cfg.data, vocab_file=rundir.vocab_path(init_dir),
                                 lowercase=source.data.lowercase))


def init_from_pretrained(encoder, init_path: str, log=print) -> str:
    """Copies a pre-trained encoder's weights (shapes must match) into `encoder`."""
    path = init_path
    if files.isdir(init_path):
        path = checkpoints.find_checkpoint(init_path)
    tf.train.Checkpoint(encoder=encoder).read(path).expect_partial().assert_existing_objects_matched()
    log(f"initialised the encoder from {path}")
    return path


def train(cfg: config_lib.Config, *, strategy, model_dir: str, train_patterns,
          eval_sets: dict | None = None, init_checkpoint: str = "", log=print) -> dict:
    """Trains (or resumes) a run; returns the run summary (also written as summary.json)."""
    keras.utils.set_random_seed(cfg.train.seed)
    if cfg.train.time_budget_minutes and isinstance(
            strategy, tf.distribute.MultiWorkerMirroredStrategy):
        raise config_lib.ConfigError(
            "train.time_budget_minutes: each worker would read its own clock and stop at its "
            "own step; under --strategy=multi_worker set train.steps instead")
    if init_checkpoint:
        cfg = inherit_pretrained(cfg, init_checkpoint, log)
    cfg, manifest, preprocessor = prepare_run(cfg, model_dir, train_patterns, log, strategy)
    with strategy.scope():
        encoder = build_encoder(cfg.model, preprocessor.vocab_size, cfg.train.precision)
        optimizer = build_optimizer(cfg.optimizer, learning_rate=cfg.train.learning_rate,
                                    total_steps=cfg.train.steps, precision=cfg.train.precision)
        optimizer.build(encoder.trainable_variables)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    checkpoint = tf.train.Checkpoint(encoder=encoder, optimizer=optimizer, step=step)
    latest = tf.train.latest_checkpoint(files.join(model_dir, rundir.CHECKPOINT_DIR))
    if latest:
        checkpoint.restore(latest).assert_existing_objects_matched()
        log(f"resumed from {latest} at step {int(step.numpy())}")
    elif init_checkpoint:
        init_from_pretrained(encoder, init_checkpoint, log)
    log(f"encoder: {encoder.count_params():,} parameters, {cfg.model.num_layers} layers, "
        f"hidden {cfg.model.hidden_dim}, vocabulary {preprocessor.vocab_size}; "
        f"{strategy.num_replicas_in_sync} replica(s), precision {cfg.train.precision}")
    iterator = distributed_pairs(strategy, manifest, preprocessor, cfg, int(step.numpy()))
    names = ["loss", "src_to_tgt_accuracy"] + (["tgt_to_src_accuracy"] if cfg.loss.bidirectional else [])
    eval_sets = eval_sets or {}
    options = LoopOptions.from_train(
        cfg.train, eval_key=f"{next(iter(eval_sets))}_accuracy" if eval_sets else "",
        time_budget=cfg.train.time_budget_minutes * 60)
    result = train_loop(strategy, make_train_step(encoder, optimizer, cfg), names, iterator,
                        checkpoint, model_dir, options, optimizer,
                        evaluate=_eval_fn(preprocessor, encoder, eval_sets) if eval_sets else None,
                        retarget=lambda end: retarget_decay(optimizer, end), log=log)
    return write_run_summary(
        strategy, model_dir, step=result.step, checkpoint=result.checkpoint,
        best_checkpoint=result.best_checkpoint, final_metrics=result.metrics,
        evaluations=result.evals, data=manifest.summary(), seconds=round(result.seconds, 1))


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    train_patterns = FLAGS.train_data or [data.sample_corpus_path("train")]
    eval_patterns = FLAGS.eval_data or ([] if FLAGS.train_data else [data.sample_corpus_path("heldout")])
    with cli.exit_on(*RUN_ERRORS):
        cfg, strategy = run_setup.config_and_strategy()
        eval_sets = {}
        if eval_patterns:
            eval_sets["heldout"], _ = data.read_pairs(eval_patterns, log=cli.log)
        if FLAGS.eval_tatoeba_dir:
            tatoeba = evaluate.read_tatoeba(FLAGS.eval_tatoeba_dir)
            eval_sets["tatoeba"] = data.Pairs(tuple(tatoeba), *zip(*tatoeba.values()))
        summary = train(cfg, strategy=strategy, model_dir=FLAGS.model_dir,
                        train_patterns=train_patterns, eval_sets=eval_sets,
                        init_checkpoint=FLAGS.init_checkpoint, log=cli.log)
    cli.log(f"run directory: {summary['model_dir']}")
    cli.log(f"checkpoint:    {summary['checkpoint']}")
    for entry in summary["evaluations"][-1:]:
        shown = ", ".join(f"{k} {v:.1%}" for k, v in entry.items() if k.endswith("accuracy"))
        cli.log(f"retrieval at step {entry['step']}: {shown}")
    if FLAGS.export and distribute.is_chief(strategy):
        summary["export"] = export_run(FLAGS.model_dir, FLAGS.export_dir, eval_sets, cli.log)
        checkpoints.write_summary(summary, FLAGS.model_dir)
    cli.log(f"summary:       {files.join(summary['model_dir'], rundir.SUMMARY_FILE)}")


def export_run(model_dir: str, export_dir: str, eval_sets: dict, log) -> dict:
    """Exports the final checkpoint (in fp32) and scores the exported serving model."""
    _, preprocessor, encoder, _ = checkpoints.load_run(model_dir)
    paths = export.export_model(preprocessor, encoder,
                                export_dir or files.join(model_dir, rundir.EXPORT_DIR),
                                seq_length=preprocessor.seq_length)
    for name, path in paths.items():
        log(f"exported {name + ':':13s} {path}")
    result = {"paths": paths}
    if eval_sets:
        # Score what users get: the serving signature of the export, on pairs not trained on.
        embed_fn = evaluate.embed_fn_from_export(paths["serving"])
        for name, pairs in eval_sets.items():
            result[f"{name}_accuracy"] = _macro_retrieval(embed_fn, pairs)
            log(f"exported model, {name} retrieval accuracy (mean of both directions, "
                f"{len(pairs.langs)} languages): {result[f'{name}_accuracy']:.1%}")
    return result


if __name__ == "__main__":
    define_run_flags()
    define_train_flags()
    flags.adopt_module_key_flags(run_setup)
    app.run(main)
