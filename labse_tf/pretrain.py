r"""Pre-trains the encoder with MLM and TLM, growing it by progressive stacking.

    python -m labse_tf.pretrain                   # the tiny demo: 1, 2, then 4 layers
    python -m labse_tf.pretrain --config=labse_pretrain --strategy=tpu --tpu=NAME \
        --model_dir=gs://bucket/pretrain --train_data='gs://bucket/pairs/*.tsv.gz' \
        --set data.vocab_file=gs://bucket/vocab.txt
    python -m labse_tf.train --init_checkpoint=gs://bucket/pretrain ...   # then the dual encoder

LaBSE's three stages (after Gong et al. 2019): train an L/4-layer encoder, initialise an
L/2-layer one by stacking copies of its layers (layer i = old layer i mod L/4), train it,
then grow to L layers the same way. One step counter runs through the stages, split by
`pretrain.stage_steps`; the learning-rate schedule spans the whole run, and each stage
starts a fresh AdamW (its moments would not fit the new shapes).

The run directory is labse_tf.train's (see rundir.py). The final stage checkpoints
into MODEL_DIR/checkpoints — the full-depth encoder under `encoder`, the MLM head under
`mlm_head` — so `labse_tf.train --init_checkpoint=MODEL_DIR` and `checkpoints.load_run`
read it like a training run. Earlier stages checkpoint into MODEL_DIR/stages/<k>/. A
resumed run restores the latest stage that has a checkpoint and goes on from there.
"""

import dataclasses
import functools
import os
import re

import keras
import keras_hub
import tensorflow as tf
from absl import app, flags, logging

from labse_tf import cli, config as config_lib, data, files, rundir, run_setup
from labse_tf.gradients import mlm_gradients
from labse_tf.loop import RUN_ERRORS, LoopOptions, make_step, train_loop, write_run_summary
from labse_tf.model import INPUT_NAMES, build_encoder, copy_weights, encoder_dtype_policy
from labse_tf.optimization import build_optimizer
from labse_tf.run_setup import define_run_flags, prepare_run
from labse_tf.rundir import CHECKPOINT_DIR

__all__ = ["Stage", "build_masked_lm", "mlm_variables", "plan_stages", "pretrain",
           "stack_layers"]

FLAGS = flags.FLAGS

# Each stage's depth as a fraction of model.num_layers: L/4, L/2, L.
_DIVISORS = (4, 2, 1)
_LAYER = re.compile(r"^transformer_layer_(\d+)/")


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of progressive stacking: steps `start + 1 .. end` of the run."""

    number: int       # 1, 2 or 3
    num_layers: int   # encoder depth in this stage
    start: int        # step counter when the stage begins
    end: int          # step counter when it ends
    model_dir: str    # where its checkpoints and summaries go


def plan_stages(cfg: config_lib.Config, model_dir: str) -> list[Stage]:
    """The stages with steps, in order; stages given 0 steps are skipped.

    Raises:
      ConfigError: stage_steps is not 3 counts summing to train.steps with a final stage,
        or model.num_layers does not divide by 4 (or 2) for a stage that needs it.
    """
    steps, layers = tuple(cfg.pretrain.stage_steps), cfg.model.num_layers
    if len(steps) != 3 or min(steps) < 0 or steps[2] < 1:
        raise config_lib.ConfigError(
            f"pretrain.stage_steps: expected 3 step counts (L/4, L/2 and L layers; the "
            f"last >= 1), got {list(steps)}")
    if sum(steps) != cfg.train.steps:
        raise config_lib.ConfigError(
            f"pretrain.stage_steps: {list(steps)} sum to {sum(steps)} but train.steps is "
            f"{cfg.train.steps}; set both")
    stages, start = [], 0
    for number, (count, divisor) in enumerate(zip(steps, _DIVISORS), 1):
        if count and layers % divisor:
            raise config_lib.ConfigError(
                f"model.num_layers: {layers} does not divide by {divisor}, which stage "
                f"{number} of pretrain.stage_steps ({count} steps) needs")
        if count:
            where = model_dir if number == 3 else rundir.stage_dir(model_dir, number)
            stages.append(Stage(number, layers // divisor, start, start + count, where))
        start += count
    return stages


def build_masked_lm(cfg: config_lib.ModelConfig, vocab_size: int,
                    precision: str = "fp32") -> keras.Model:
    """The encoder with BERT's masked-LM head, whose output layer is the token embedding.

    Returns:
      A functional keras.Model on `{token_ids, padding_mask, segment_ids}` (int32
      `[batch, seq]`) and `mask_positions` (int32 `[batch, predictions]`) returning logits
      `[batch, predictions, vocab_size]`. Its layers `encoder` (a build_encoder model) and
      `mlm_head` are what checkpoints hold.
    """
    encoder = build_encoder(cfg, vocab_size, precision)
    head = keras_hub.layers.MaskedLMHead(
        token_embedding=encoder.get_layer("token_embedding"), intermediate_activation="gelu",
        layer_norm_epsilon=1e-12,
        kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
        dtype=encoder_dtype_policy(precision), name="mlm_head")
    inputs = {k: keras.Input((None,), dtype="int32", name=k)
              for k in INPUT_NAMES + ("mask_positions",)}
    states = encoder({k: inputs[k] for k in INPUT_NAMES})["sequence_output"]
    return keras.Model(inputs, head(states, mask_positions=inputs["mask_positions"]),
                       name="masked_lm")


def _layer_count(model: keras.Model) -> int:
    return len({m.group(1) for v in model.weights if (m := _LAYER.match(v.path))})


def stack_layers(source: keras.Model, target: keras.Model) -> None:
    """Initialises `target` from the shallower `source` (both from build_masked_lm).

    Transformer layer i of `target` becomes a copy of layer i mod n of `source` (n its
    depth), so the old stack is repeated; embeddings, pooler and MLM head are copied.

    Raises:
      ValueError: a target weight has no source of the same shape.
    """
    depth = _layer_count(source)
    copy_weights(target, {v.path: v for v in source.weights}.get,
                 rename=lambda path: _LAYER.sub(
                     lambda m: f"transformer_layer_{int(m.group(1)) % depth}/", path),
                 what=f"stacking a {depth}-layer model")


def mlm_variables(model: keras.Model) -> list:
    """The variables the masked-LM loss trains: all but the pooler.

    The pooler feeds only the sentence embedding, which the dual encoder trains.
    """
    return [v for v in model.trainable_variables if not v.path.startswith("pooled_dense/")]


def _build_stage(cfg: config_lib.Config, stage: Stage, vocab_size: int, strategy):
    """The stage's masked LM and its fresh optimizer, variables created."""
    with strategy.scope():
        model = build_masked_lm(dataclasses.replace(cfg.model, num_layers=stage.num_layers),
                                vocab_size, cfg.train.precision)
        optimizer = build_optimizer(cfg.optimizer, learning_rate=cfg.train.learning_rate,
                                    total_steps=cfg.train.steps, precision=cfg.train.precision,
                                    start_step=stage.start)
        optimizer.build(mlm_variables(model))
    return model, optimizer


def _distributed_examples(strategy, manifest, preprocessor, cfg: config_lib.Config,
                          start_step: int):
    """A distributed iterator of masked MLM/TLM batches from `start_step` on."""
    p = cfg.pretrain
    masking = data.Masking(tlm_fraction=p.tlm_fraction, mask_rate=p.mask_rate,
                           mask_token_rate=p.mask_token_rate,
                           random_token_rate=p.random_token_rate,
                           max_predictions=p.max_predictions)
    return run_setup.distributed_batches(
        strategy, cfg, start_step,
        functools.partial(data.masked_lm_dataset, manifest, preprocessor, masking=masking))


def _make_step(model: keras.Model, optimizer, cfg: config_lib.Config):
    """The per-replica step: masked-LM gradients, then one update."""
    return make_step(functools.partial(mlm_gradients, optimizer=optimizer),
                     lambda batch: model({k: batch[k] for k in model.input}, training=True),
                     mlm_variables(model), optimizer, jit_compile=cfg.train.jit_compile)


def _check(cfg: config_lib.Config) -> None:
    """Checks the fields only pre-training reads, naming the key."""
    p = cfg.pretrain
    if not (p.mask_token_rate >= 0 and p.random_token_rate >= 0
            and p.mask_token_rate + p.random_token_rate <= 1):
        raise config_lib.ConfigError(
            f"pretrain.mask_token_rate + pretrain.random_token_rate: {p.mask_token_rate} + "
            f"{p.random_token_rate} must be in [0, 1]")
    if p.max_predictions < 1:
        raise config_lib.ConfigError(f"pretrain.max_predictions: {p.max_predictions} must be >= 1")
    if cfg.train.chunk_size:
        raise config_lib.ConfigError("train.chunk_size: gradient caching is for the dual "
                                     "encoder's global-batch loss; set 0 for pre-training")
    if cfg.train.time_budget_minutes:
        raise config_lib.ConfigError("train.time_budget_minutes: pre-training stages are "
                                     "counted in steps (pretrain.stage_steps); set 0")


def _resume_point(stages: list[Stage]) -> tuple[int, str | None]:
    """Index of the last stage with a checkpoint and that checkpoint; (0, None) if none."""
    for index in reversed(range(len(stages))):
        latest = tf.train.latest_checkpoint(files.join(stages[index].model_dir, CHECKPOINT_DIR))
        if latest:
            return index, latest
    return 0, None


def pretrain(cfg: config_lib.Config, *, strategy, model_dir: str, train_patterns,
             log=print) -> dict:
    """Pre-trains (or resumes) through every stage; returns the run summary (summary.json)."""
    keras.utils.set_random_seed(cfg.train.seed)
    stages = plan_stages(cfg, model_dir)
    _check(cfg)
    cfg, manifest, preprocessor = prepare_run(cfg, model_dir, train_patterns, log, strategy)
    with strategy.scope():
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    first, latest = _resume_point(stages)
    iterator, previous, results = None, None, []
    for stage in stages[first:]:
        model, optimizer = _build_stage(cfg, stage, preprocessor.vocab_size, strategy)
        checkpoint = tf.train.Checkpoint(encoder=model.get_layer("encoder"),
                                         mlm_head=model.get_layer("mlm_head"),
                                         optimizer=optimizer, step=step)
        if previous is not None:
            stack_layers(previous, model)
        elif latest:
            checkpoint.restore(latest).assert_existing_objects_matched()
            if not stage.start <= int(step.numpy()) <= stage.end:
                raise config_lib.ConfigError(
                    f"pretrain.stage_steps: {latest} is at step {int(step.numpy())}, outside "
                    f"stage {stage.number} (steps {stage.start}..{stage.end}); the schedule "
                    "changed since it was saved, use a new --model_dir")
            log(f"resumed stage {stage.number} from {latest} at step {int(step.numpy())}")
        how = f"stacked from {_layer_count(previous)} layers" if previous is not None else "new"
        log(f"stage {stage.number}: {stage.num_layers}-layer encoder ({how}), steps "
            f"{stage.start}..{stage.end}, {model.count_params():,} parameters with the MLM head")
        if iterator is None:
            iterator = _distributed_examples(strategy, manifest, preprocessor, cfg,
                                             int(step.numpy()))
        result = train_loop(strategy, _make_step(model, optimizer, cfg), ["loss", "accuracy"],
                            iterator, checkpoint, stage.model_dir,
                            LoopOptions.from_train(cfg.train, stop_at=stage.end), optimizer,
                            log=log)
        results.append({"stage": stage.number, "num_layers": stage.num_layers,
                        "start_step": stage.start, "end_step": stage.end,
                        "checkpoint": result.checkpoint, "final_metrics": result.metrics})
        previous = model
    return write_run_summary(strategy, model_dir, step=int(step.numpy()),
                             checkpoint=results[-1]["checkpoint"], stages=results,
                             data=manifest.summary())


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    with cli.exit_on(*RUN_ERRORS):
        cfg, strategy = run_setup.config_and_strategy()
        summary = pretrain(cfg, strategy=strategy, model_dir=FLAGS.model_dir,
                           train_patterns=FLAGS.train_data or [data.sample_corpus_path("train")],
                           log=cli.log)
    cli.log(f"run directory: {summary['model_dir']}")
    cli.log(f"checkpoint:    {summary['checkpoint']}")
    cli.log(f"next: python -m labse_tf.train --init_checkpoint={summary['model_dir']}")


if __name__ == "__main__":
    define_run_flags()
    FLAGS.set_default("config", "tiny_pretrain")
    FLAGS.set_default("model_dir", os.path.join("runs", "pretrain"))  # a local default
    flags.adopt_module_key_flags(run_setup)
    app.run(main)
