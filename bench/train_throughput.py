r"""Training throughput (pairs/s) of labse_tf against Model Garden, and the fraction of the
CPU's measured matmul rate each step reaches.

    python -m bench.train_throughput                  # the default contenders, ~5 min loaded
    python -m bench.train_throughput --contenders=labse_fp32,labse_fp32_dynseq,mg_fp32 --windows=6
    python -m bench.train_throughput --shape=base --contenders=labse_fp32,labse_bf16,mg_fp32

Shapes: `small` (configs/small.yaml: 4 layers, hidden 256; global batch 128, sequence 32)
and `base`, the paper's BERT-base (configs/labse_base.yaml: 12 layers, hidden 768, 12 heads,
intermediate 3072; global batch 32, sequence 64), both with a --vocab_size vocabulary.
In the same run, before the steps, one MatMul of the step's largest product ([tokens of a
step, hidden] x [hidden, intermediate]) is timed in fp32 and bf16: the CPU's attainable
rate. A step's matmul FLOPs per pair (`step_gflop_per_pair`) times its pairs/s over that
rate is the fraction reported (model FLOPs utilisation against this CPU, not a datasheet).

One training step = both sides through the encoder (training mode, dropout 0.1), the
bidirectional in-batch softmax ranking loss (scale 20, margin 0.3), gradients, and an AdamW
update with global-norm clipping at 1.0. Batches are pre-tokenized random token ids (lengths
8..seq_length, a synthetic vocabulary of --vocab_size ids), fixed before timing and cycled,
so neither tokenization nor the input pipeline is measured.

Contenders (all in this one process, timed in interleaved windows):
  labse_*        labse_tf's own step: train.make_train_step (gradients.compute_gradients,
                 the Keras 3 AdamW of optimization.build_optimizer) run by loop.compile_loop
                 under a tf.distribute strategy, as labse_tf.train runs it, fed batches
                 with the shape data.pair_dataset gives (_train_common.pipeline_shape:
                 a trimmed, unknown sequence length; the static one for `_xla`).
                 `_xla` sets train.jit_compile=true; `_2rep` is MirroredStrategy over 2
                 logical CPU devices at the same global batch (1 replica: OneDeviceStrategy);
                 `_chunk64` sets train.chunk_size=64 (see also bench.memory_chunking).
                 Experiments around Keras's einsum (see bench/README.md): `_static` and
                 `_dynseq` make the sequence length known or unknown to the graph whatever
                 the pipeline does (labse_tf.model computes the attention projections as
                 2-D MatMuls either way, so neither should be a slow path).
  mg_fp32        Model Garden (tf-models-official, tf_keras): networks.BertEncoder inside
                 models.DualEncoder(output="logits"), the loss written here, the AdamW of
                 Model Garden's OptimizerFactory ("adamw" = AdamWeightDecay, clip 1.0),
                 several steps per tf.function call like labse_tf's loop.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from labse_tf import distribute  # noqa: E402

# Two logical CPU devices must exist before TensorFlow initialises its devices.
distribute.set_cpu_devices(2)

import math  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from bench import _common, _train_common  # noqa: E402
from labse_tf.loop import compile_loop  # noqa: E402
from labse_tf.model import build_encoder  # noqa: E402
from labse_tf.optimization import build_optimizer  # noqa: E402
from labse_tf.train import make_train_step  # noqa: E402

NAME = "train_throughput"
# name → (precision, jit_compile, replicas, experiment, chunk_size); experiment is "" (the
# pipeline's shapes), "static" or "dynseq" (sequence length known or not); None marks
# Model Garden.
CONTENDERS = {
    "labse_fp32": ("fp32", False, 1, "", 0),
    "labse_bf16": ("bf16", False, 1, "", 0),
    "labse_fp32_xla": ("fp32", True, 1, "", 0),
    "labse_bf16_xla": ("bf16", True, 1, "", 0),
    "labse_fp32_2rep": ("fp32", False, 2, "", 0),
    "labse_bf16_2rep": ("bf16", False, 2, "", 0),
    "labse_fp32_static": ("fp32", False, 1, "static", 0),
    "labse_bf16_static": ("bf16", False, 1, "static", 0),
    "labse_fp32_xla_static": ("fp32", True, 1, "static", 0),
    "labse_fp32_dynseq": ("fp32", False, 1, "dynseq", 0),
    "labse_bf16_dynseq": ("bf16", False, 1, "dynseq", 0),
    "labse_fp32_chunk64": ("fp32", False, 1, "", 64),
    "mg_fp32": None,
}
DEFAULT_CONTENDERS = ["labse_fp32", "labse_bf16", "labse_fp32_xla", "labse_bf16_xla",
                      "labse_fp32_2rep", "mg_fp32"]
# (numerator, denominator, target): the ratios reported.
RATIOS = [("labse_fp32", "mg_fp32", ">= 1.0"), ("labse_bf16", "mg_fp32", ">= 2.0"),
          ("labse_fp32_2rep", "labse_fp32", ">= 0.9"), ("labse_bf16_2rep", "labse_bf16", ">= 0.9"),
          ("labse_bf16", "labse_fp32", None), ("labse_fp32_xla", "labse_fp32", None),
          ("labse_bf16_xla", "labse_bf16", None), ("labse_fp32_xla", "mg_fp32", None),
          ("labse_bf16_xla", "mg_fp32", None),
          ("labse_fp32_static", "mg_fp32", None), ("labse_fp32", "labse_fp32_static", None),
          ("labse_bf16_static", "mg_fp32", None), ("labse_bf16", "labse_bf16_static", None),
          ("labse_fp32_xla_static", "labse_fp32_static", None),
          ("labse_fp32_dynseq", "mg_fp32", None), ("labse_fp32_dynseq", "labse_fp32", None),
          ("labse_bf16_dynseq", "mg_fp32", None), ("labse_bf16_dynseq", "labse_bf16", None),
          ("labse_fp32_chunk64", "labse_fp32", ">= 0.65")]

# shape → (config, global batch, sequence length).
SHAPES = {"small": ("small", 128, 32), "base": ("labse_base", 32, 64)}

FLAGS = flags.FLAGS
flags.DEFINE_list("contenders", DEFAULT_CONTENDERS, f"Which to run, of {list(CONTENDERS)}.")
flags.DEFINE_enum("shape", "small", list(SHAPES), "small: configs/small.yaml at batch 128, "
                  "sequence 32; base: BERT-base (configs/labse_base.yaml) at batch 32, "
                  "sequence 64.")
flags.DEFINE_integer("global_batch", 0, "Pairs per optimizer step (all replicas); 0: the "
                     "shape's.")
flags.DEFINE_integer("seq_length", 0, "Tokens per sentence; 0: the shape's.")
flags.DEFINE_integer("matmul_windows", 3, "Timed windows of the matmul-rate measurement.")
flags.DEFINE_integer("vocab_size", 32000, "Synthetic vocabulary size (embedding rows).")
flags.DEFINE_integer("steps_per_window", 1, "Optimizer steps per timed window (one "
                     "tf.function call of labse_tf's loop).")
flags.DEFINE_integer("windows", 4, "Timed windows per contender (the median is reported).")
flags.DEFINE_integer("warmup", 1, "Untimed windows per contender first (tracing, XLA).")
flags.DEFINE_integer("distinct_batches", 4, "Distinct random batches cycled through.")
flags.DEFINE_string("output", _common.default_output(NAME), "Where to write the JSON results.")


def _config(precision: str = "fp32", jit: bool = False, chunk_size: int = 0):
    return _train_common.bench_config(config=SHAPES[FLAGS.shape][0],
                                      vocab_size=FLAGS.vocab_size, seq_length=FLAGS.seq_length,
                                      global_batch=FLAGS.global_batch, precision=precision,
                                      jit=jit, chunk_size=chunk_size)


def step_gflop_per_pair(cfg, seq_length: int) -> float:
    """Matmul GFLOP of one training pair: both sides of `seq_length` tokens, backward twice
    the forward. Per token and layer 2(4h² + 2hi) for the projections and feed-forward and
    4sh for attention scores and mixing; embeddings, pooler and loss left out (small)."""
    m = cfg.model
    h, i, s = m.hidden_dim, m.intermediate_dim, seq_length
    forward = 2 * s * m.num_layers * (2 * (4 * h * h + 2 * h * i) + 4 * s * h)
    return 3 * forward / 1e9


def matmul_window(m: int, k: int, n: int, precision: str, repeats: int = 10):
    """A window function running `repeats` [m, k] x [k, n] MatMuls; returns the GFLOP."""
    dtype = tf.bfloat16 if precision == "bf16" else tf.float32
    a = tf.cast(tf.random.normal([m, k]), dtype)
    b = tf.cast(tf.random.normal([k, n]), dtype)

    @tf.function
    def run():
        total = tf.constant(0.0)
        for _ in tf.range(repeats):  # each product is needed: one element of it is summed
            total += tf.cast(tf.matmul(a, b)[0, 0], tf.float32)
        return total

    def window():
        run().numpy()
        return repeats * 2 * m * k * n / 1e9

    return window


def _check(loss: float, name: str) -> None:
    if not math.isfinite(loss):
        raise FloatingPointError(f"{name}: non-finite loss {loss}")


def labse_contender(name: str, strategy, precision: str, jit: bool, experiment: str,
                    chunk_size: int, batches: dict):
    """A window function running labse_tf's own step and loop; returns the pairs done."""
    cfg = _config(precision, jit, chunk_size)
    per_replica = FLAGS.global_batch // strategy.num_replicas_in_sync
    # One input pipeline hands consecutive elements to consecutive replicas, so each
    # global batch is split into per-replica batches in order.
    split = tf.nest.map_structure(lambda x: x.reshape([-1, per_replica, FLAGS.seq_length]),
                                  batches)

    def dataset_fn(ctx):
        dataset = tf.data.Dataset.from_tensor_slices(split).repeat()
        length = {"static": "static", "dynseq": "dynamic"}.get(experiment, "pipeline")
        return _train_common.shaped_like_pipeline(dataset, length, static=jit).prefetch(2)

    with strategy.scope():
        encoder = build_encoder(cfg.model, cfg.model.vocab_size, precision)
        optimizer = build_optimizer(cfg.optimizer, learning_rate=cfg.train.learning_rate,
                                    total_steps=cfg.train.steps, precision=precision)
        optimizer.build(encoder.trainable_variables)
    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    loop = compile_loop(strategy, make_train_step(encoder, optimizer, cfg),
                        ["loss", "src_to_tgt_accuracy", "tgt_to_src_accuracy"])
    steps = tf.constant(FLAGS.steps_per_window)

    def window():
        _check(float(loop(iterator, steps)["loss"]), name)
        return FLAGS.steps_per_window * FLAGS.global_batch

    return window


def model_garden_contender(batches: dict):
    """A window function training Model Garden's dual encoder on the same batches."""
    model, optimizer, loss_fn = _train_common.model_garden(_config(), FLAGS.seq_length)
    inputs = _train_common.model_garden_inputs(batches)
    iterator = iter(tf.data.Dataset.from_tensor_slices(inputs).repeat().prefetch(2))

    @tf.function
    def loop(num_steps):
        # Several steps per call, like labse_tf's loop (and Model Garden's Orbit trainers).
        total = tf.constant(0.0)
        for _ in tf.range(num_steps):
            with tf.GradientTape() as tape:
                loss = loss_fn(model(next(iterator), training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            total += loss
        return total / tf.cast(num_steps, tf.float32)

    steps = tf.constant(FLAGS.steps_per_window)

    def window():
        _check(float(loop(steps)), "mg_fp32")
        return FLAGS.steps_per_window * FLAGS.global_batch

    return window, model.network.count_params()


def main(argv):
    del argv
    _common.check_names("contenders", FLAGS.contenders, CONTENDERS)
    logging.set_verbosity(logging.WARNING)
    # Quiet: strategy set-up chatter, and retracing warnings (one tf.function per contender).
    tf.get_logger().setLevel("ERROR")
    log = _common.log
    _, batch, length = SHAPES[FLAGS.shape]
    FLAGS.global_batch = FLAGS.global_batch or batch
    FLAGS.seq_length = FLAGS.seq_length or length
    machine = _common.announce_machine()
    cfg = _config()
    gflop = step_gflop_per_pair(cfg, FLAGS.seq_length)
    product = (2 * FLAGS.global_batch * FLAGS.seq_length, cfg.model.hidden_dim,
               cfg.model.intermediate_dim)
    log(f"shape {FLAGS.shape}: {cfg.model.num_layers} layers, hidden {cfg.model.hidden_dim}, "
        f"batch {FLAGS.global_batch}, sequence {FLAGS.seq_length}: {gflop:.2f} GFLOP a pair; "
        f"timing the MatMul {list(product[:2])} x {list(product[1:])}")
    matmul, _ = _common.interleaved(
        {p: matmul_window(*product, p) for p in ("fp32", "bf16")},
        windows=FLAGS.matmul_windows, warmup=1, label="GFLOP")
    matmul = {p: statistics.median(r) for p, r in matmul.items()}
    keras.utils.set_random_seed(42)
    batches = _train_common.random_batches(FLAGS.distinct_batches, FLAGS.global_batch,
                                           FLAGS.seq_length, FLAGS.vocab_size)
    strategies = {1: tf.distribute.OneDeviceStrategy("/cpu:0"),
                  2: tf.distribute.MirroredStrategy(
                      ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice())}
    contenders, notes = {}, {}
    for name in FLAGS.contenders:
        tick = time.perf_counter()
        if CONTENDERS[name] is None:
            try:
                contenders[name], params = model_garden_contender(batches)
            except ImportError as e:
                notes[name] = f"skipped: cannot import Model Garden ({type(e).__name__}: {e})"
                log(f"{name}: {notes[name]}")
                continue
            notes[name] = f"BertEncoder, {params:,} parameters"
        else:
            precision, jit, replicas, experiment, chunk_size = CONTENDERS[name]
            contenders[name] = labse_contender(name, strategies[replicas], precision, jit,
                                               experiment, chunk_size, batches)
        log(f"built {name} in {time.perf_counter() - tick:.1f} s")

    log(f"timing {len(contenders)} contenders: {FLAGS.warmup} warm-up + {FLAGS.windows} "
        f"windows of {FLAGS.steps_per_window} step(s) x {FLAGS.global_batch} pairs each")
    rates, cpu_rates = _common.interleaved(contenders, windows=FLAGS.windows,
                                           warmup=FLAGS.warmup, label="pairs")
    report = _common.rate_report(rates, cpu_rates, RATIOS, unit="pairs/s", notes=notes)
    utilisation = {name: statistics.median(r) * gflop / matmul[
        CONTENDERS[name][0] if CONTENDERS[name] else "fp32"] for name, r in rates.items()}
    log(_common.table(["contender", "step GFLOP/s", "of the MatMul rate"],
                      [[n, f"{statistics.median(rates[n]) * gflop:.1f}", f"{u:.1%}"]
                       for n, u in utilisation.items()]))
    log(f"MatMul rate: fp32 {matmul['fp32']:.1f}, bf16 {matmul['bf16']:.1f} GFLOP/s")
    machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    _common.write_results({
        "benchmark": NAME, "machine": machine,
        "setup": {"shape": FLAGS.shape, "global_batch": FLAGS.global_batch, "seq_length": FLAGS.seq_length,
                  "vocab_size": FLAGS.vocab_size, "steps_per_window": FLAGS.steps_per_window,
                  "windows": FLAGS.windows, "warmup": FLAGS.warmup,
                  "model": f"configs/{SHAPES[FLAGS.shape][0]}.yaml",
                  "gflop_per_pair": round(gflop, 3), "matmul_shape": product},
        "matmul_gflop_per_second": matmul, "matmul_utilisation": utilisation,
        "pairs_per_second": report["rates"], "ratios": report["ratios"], "notes": notes},
        FLAGS.output)


if __name__ == "__main__":
    app.run(main)
