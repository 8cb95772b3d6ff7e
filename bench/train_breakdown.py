r"""Where a training step's time goes: forward, backward and optimizer update, per contender.

    python -m bench.train_breakdown                    # ~4 minutes on the loaded machine
    python -m bench.train_breakdown --parts=forward,gradients --contenders=labse_fp32,mg_fp32

The profiling companion of bench.train_throughput (same shape, batch and random batches, one
replica, no tf.distribute strategy). Each part runs --iterations times inside one
tf.function call on a fixed batch:

  forward    both sides through the encoder (training mode: dropout on) and the loss
  gradients  forward + backward (labse_tf: gradients.compute_gradients)
  update     the optimizer update alone, applying one fixed set of real gradients
  step       gradients + update (labse_tf: train.make_train_step)

The labse_tf batch has the shape labse_tf.data.pair_dataset gives its batches (the
sequence length unknown when trimmed, fixed for XLA), as in bench.train_throughput, whose
experiments are here too: `_static` / `_dynseq` make the sequence length known / unknown
to the graph (labse_tf.model computes the attention projections as 2-D MatMuls either way).

Parts run in interleaved windows like the other benchmarks; the table gives the median
milliseconds per iteration, so `gradients - forward` is the backward pass.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import statistics  # noqa: E402

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from bench import _common, _train_common  # noqa: E402

from labse_tf.gradients import compute_gradients  # noqa: E402
from labse_tf.losses import translation_ranking_loss  # noqa: E402
from labse_tf.model import build_encoder, embed  # noqa: E402
from labse_tf.optimization import build_optimizer  # noqa: E402
from labse_tf.train import make_train_step  # noqa: E402

NAME = "train_breakdown"
# name → (precision, jit_compile, experiment: "", "static" or "dynseq");
# None marks Model Garden.
CONTENDERS = {"labse_fp32": ("fp32", False, ""), "labse_bf16": ("bf16", False, ""),
              "labse_fp32_xla": ("fp32", True, ""), "labse_bf16_xla": ("bf16", True, ""),
              "labse_fp32_static": ("fp32", False, "static"),
              "labse_bf16_static": ("bf16", False, "static"),
              "labse_fp32_dynseq": ("fp32", False, "dynseq"),
              "labse_bf16_dynseq": ("bf16", False, "dynseq"),
              "mg_fp32": None}
PARTS = ("forward", "gradients", "update", "step")

FLAGS = flags.FLAGS
flags.DEFINE_list("contenders", ["labse_fp32", "labse_bf16", "mg_fp32"],
                  f"Which to run, of {list(CONTENDERS)}.")
flags.DEFINE_list("parts", ["forward", "gradients"],
                  f"Which parts to time, of {list(PARTS)}.")
flags.DEFINE_integer("global_batch", 128, "Pairs per step.")
flags.DEFINE_integer("seq_length", 32, "Tokens per sentence.")
flags.DEFINE_integer("vocab_size", 32000, "Synthetic vocabulary size.")
flags.DEFINE_integer("iterations", 1, "Iterations of a part per timed window.")
flags.DEFINE_integer("windows", 3, "Timed windows per part (the median is reported).")
flags.DEFINE_integer("warmup", 1, "Untimed windows per part first.")
flags.DEFINE_string("output", _common.default_output(NAME), "Where to write the JSON results.")


def _repeat(fn):
    """A window: a tf.function running `fn` (→ scalar) --iterations times; summing keeps
    every run alive."""

    @tf.function
    def run(n):
        total = tf.constant(0.0)
        for _ in tf.range(n):
            total += tf.cast(fn(), tf.float32)
        return total

    n = tf.constant(FLAGS.iterations)

    def window():
        float(run(n))
        return FLAGS.iterations

    return window


def labse_parts(precision: str, jit: bool, experiment: str, constant_batch: dict) -> dict:
    cfg = _train_common.bench_config(vocab_size=FLAGS.vocab_size, seq_length=FLAGS.seq_length,
                                     global_batch=FLAGS.global_batch, precision=precision,
                                     jit=jit)
    encoder = build_encoder(cfg.model, cfg.model.vocab_size, precision)
    optimizer = build_optimizer(cfg.optimizer, learning_rate=cfg.train.learning_rate,
                                total_steps=cfg.train.steps, precision=precision)
    optimizer.build(encoder.trainable_variables)
    variables = encoder.trainable_variables
    forward = lambda inputs: embed(encoder, inputs, training=True)
    if jit:
        forward = tf.function(forward, jit_compile=True)

    pipeline_length = _train_common.pipeline_shape(FLAGS.global_batch, FLAGS.seq_length, jit)[1]
    dynamic = experiment == "dynseq" or (experiment != "static" and pipeline_length is None)

    def batch():
        """The fixed batch inside the traced part, shaped like the pipeline's."""
        if not dynamic:
            return constant_batch
        return {side: _train_common.hide_sequence_length(packed)
                for side, packed in constant_batch.items()}

    def forward_loss():
        src, tgt = batch()["src"], batch()["tgt"]
        emb = forward({k: tf.concat([src[k], tgt[k]], 0) for k in src})
        n = FLAGS.global_batch
        return translation_ranking_loss(emb[:n], emb[n:], scale=cfg.loss.scale,
                                        margin=cfg.loss.margin)[0]

    def gradients():
        return tf.linalg.global_norm(compute_gradients(forward, variables, batch(), cfg.loss)[0])

    fixed, _ = compute_gradients(forward, variables, batch(), cfg.loss)
    step = make_train_step(encoder, optimizer, cfg)

    def update():
        optimizer.apply(fixed, variables)
        return tf.cast(optimizer.iterations, tf.float32)

    return {"forward": forward_loss, "gradients": gradients, "update": update,
            "step": lambda: step(batch())["loss"]}


def model_garden_parts(batch: dict) -> dict:
    cfg = _train_common.bench_config(vocab_size=FLAGS.vocab_size, seq_length=FLAGS.seq_length,
                                     global_batch=FLAGS.global_batch)
    model, optimizer, loss_fn = _train_common.model_garden(cfg, FLAGS.seq_length)
    inputs = _train_common.model_garden_inputs(batch)
    variables = model.trainable_variables

    def grads_and_loss():
        with tf.GradientTape() as tape:
            loss = loss_fn(model(inputs, training=True))
        return tape.gradient(loss, variables), loss

    fixed, _ = grads_and_loss()

    def update():
        optimizer.apply_gradients(zip(fixed, variables))
        return tf.cast(optimizer.iterations, tf.float32)

    def step():
        grads, loss = grads_and_loss()
        optimizer.apply_gradients(zip(grads, variables))
        return loss

    return {"forward": lambda: loss_fn(model(inputs, training=True)),
            "gradients": lambda: tf.linalg.global_norm(grads_and_loss()[0]),
            "update": update, "step": step}


def main(argv):
    del argv
    _common.check_names("contenders", FLAGS.contenders, CONTENDERS)
    _common.check_names("parts", FLAGS.parts, PARTS)
    logging.set_verbosity(logging.WARNING)
    # Quiet: strategy set-up chatter, and retracing warnings (one tf.function per contender).
    tf.get_logger().setLevel("ERROR")
    log = _common.log
    machine = _common.announce_machine()
    keras.utils.set_random_seed(42)
    batches = _train_common.random_batches(1, FLAGS.global_batch, FLAGS.seq_length,
                                           FLAGS.vocab_size)
    batch = tf.nest.map_structure(lambda x: tf.constant(x[0]), batches)
    windows = {}
    for name in FLAGS.contenders:
        parts = (model_garden_parts(batch) if CONTENDERS[name] is None
                 else labse_parts(*CONTENDERS[name], batch))
        for part in FLAGS.parts:
            windows[f"{name}/{part}"] = _repeat(parts[part])
        log(f"built {name}")
    rates, cpu_rates = _common.interleaved(windows, windows=FLAGS.windows,
                                           warmup=FLAGS.warmup, label="iterations")
    ms = {k: 1000 / statistics.median(r) for k, r in rates.items()}
    rows = []
    for name in FLAGS.contenders:
        row = [name] + [f"{ms[f'{name}/{p}']:.0f}" for p in FLAGS.parts]
        if {"forward", "gradients"} <= set(FLAGS.parts):
            row.append(f"{ms[f'{name}/gradients'] - ms[f'{name}/forward']:.0f}")
        rows.append(row)
    header = ["contender"] + [f"{p} ms" for p in FLAGS.parts]
    if {"forward", "gradients"} <= set(FLAGS.parts):
        header.append("backward ms (gradients - forward)")
    log("")
    log(_common.table(header, rows))
    machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    _common.write_results({
        "benchmark": NAME, "machine": machine,
        "setup": {"global_batch": FLAGS.global_batch, "seq_length": FLAGS.seq_length,
                  "vocab_size": FLAGS.vocab_size, "iterations": FLAGS.iterations,
                  "windows": FLAGS.windows, "warmup": FLAGS.warmup},
        "milliseconds_per_iteration": {k: round(v, 1) for k, v in ms.items()},
        "cpu_milliseconds_per_iteration": {k: round(1000 / statistics.median(r), 1)
                                           for k, r in cpu_rates.items()},
        "iterations_per_second": {k: _common.summarize(r) for k, r in rates.items()}},
        FLAGS.output)


if __name__ == "__main__":
    app.run(main)
