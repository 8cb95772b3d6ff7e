r"""Peak memory and throughput of training with and without gradient caching (issue #7).

    python -m bench.memory_chunking                               # batches 128 and 1024
    python -m bench.memory_chunking --batches=128,1024,4096 --steps=2   # the README

For each global batch and train.chunk_size (0 = the whole batch at once; 64 = gradient
caching in chunks of 64 pairs, gradients.compute_gradients), a fresh subprocess builds the
`small` encoder (fp32, 1 replica, OneDeviceStrategy, synthetic vocabulary of --vocab_size),
and runs labse_tf's own step (train.make_train_step in loop.compile_loop) on pre-tokenized
random batches shaped like data.pair_dataset's: one untimed step (tracing; the first step
also allocates everything a step needs), then timed steps of one loop call each until
--steps are done or --time_budget seconds have passed (at least one). It reports pairs/s (median of the timed
steps) and max RSS (getrusage) after building the model and after the steps.

The two chunk sizes of one batch run back to back, alternating which goes first, so they
see similar load. Batches run in increasing order, and a run whose max RSS, extrapolated
from the smaller batches of the same chunk size (a line through two or more, or the growth
over the built model scaled from one), would exceed --max_rss_gb is skipped: the machine is
shared. Results are rewritten to --output after every run; --resume keeps the runs already
there.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

from absl import app, flags  # noqa: E402

from bench import _common  # noqa: E402

NAME = "memory_chunking"
GIB = 2**30

FLAGS = flags.FLAGS
flags.DEFINE_list("batches", ["128", "1024"], "Global batch sizes (pairs per step).")
flags.DEFINE_list("chunk_sizes", ["0", "64"], "train.chunk_size values; 0 = no chunking.")
flags.DEFINE_integer("steps", 3, "Timed steps per setting, at most.")
flags.DEFINE_float("time_budget", 60.0, "Seconds of timed steps per setting, at most (at "
                   "least one step always runs).")
flags.DEFINE_float("max_rss_gb", 16.0, "Skip a run predicted to exceed this max RSS.")
flags.DEFINE_bool("resume", False, "Keep the runs already in --output (same settings) and "
                  "measure only the missing ones.")
flags.DEFINE_list("memory_gb", ["4", "8", "16"], "Memory sizes for which the largest batch "
                  "that fits is extrapolated.")
flags.DEFINE_integer("seq_length", 32, "Tokens per sentence.")
flags.DEFINE_integer("vocab_size", 32000, "Synthetic vocabulary size.")
flags.DEFINE_integer("timeout", 3600, "Seconds before a worker subprocess is abandoned.")
flags.DEFINE_string("output", _common.default_output(NAME), "Where to write the JSON results.")
# Set only in the worker subprocess.
flags.DEFINE_bool("worker", False, "Internal: run one setting and print its result.")
flags.DEFINE_integer("batch", 0, "Internal: global batch for --worker.")
flags.DEFINE_integer("chunk", 0, "Internal: chunk size for --worker.")


def worker() -> dict:
    """One (batch, chunk_size) setting in this fresh process."""
    import keras
    import tensorflow as tf

    from bench import _train_common
    from labse_tf.loop import compile_loop
    from labse_tf.model import build_encoder
    from labse_tf.optimization import build_optimizer
    from labse_tf.train import make_train_step

    keras.utils.set_random_seed(42)
    cfg = _train_common.bench_config(vocab_size=FLAGS.vocab_size, seq_length=FLAGS.seq_length,
                                     global_batch=FLAGS.batch, chunk_size=FLAGS.chunk)
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    batches = _train_common.random_batches(2, FLAGS.batch, FLAGS.seq_length, FLAGS.vocab_size)
    dataset = _train_common.shaped_like_pipeline(
        tf.data.Dataset.from_tensor_slices(batches).repeat()).prefetch(1)
    with strategy.scope():
        encoder = build_encoder(cfg.model, cfg.model.vocab_size, "fp32")
        optimizer = build_optimizer(cfg.optimizer, learning_rate=cfg.train.learning_rate,
                                    total_steps=cfg.train.steps, precision="fp32")
        optimizer.build(encoder.trainable_variables)
    iterator = iter(strategy.experimental_distribute_dataset(dataset))
    loop = compile_loop(strategy, make_train_step(encoder, optimizer, cfg), ["loss"])
    one = tf.constant(1)
    rss_built = _common.max_rss_bytes()
    tick = time.perf_counter()
    float(loop(iterator, one)["loss"])  # traced here
    first = time.perf_counter() - tick
    rss_first = _common.max_rss_bytes()
    seconds = []
    while len(seconds) < max(1, FLAGS.steps) and (
            not seconds or sum(seconds) < FLAGS.time_budget):
        tick = time.perf_counter()
        loss = float(loop(iterator, one)["loss"])
        seconds.append(time.perf_counter() - tick)
    return {"batch": FLAGS.batch, "chunk_size": FLAGS.chunk,
            "pairs_per_second": FLAGS.batch / statistics.median(seconds),
            "step_seconds": [round(s, 2) for s in seconds],
            "first_call_seconds": round(first, 1), "loss": loss,
            "rss_built_bytes": rss_built, "rss_after_first_step_bytes": rss_first,
            "rss_peak_bytes": _common.max_rss_bytes()}


def _fit(points):
    """Least-squares line (intercept, slope) through (batch, bytes) points; None if < 2."""
    if len(points) < 2:
        return None
    xs, ys = zip(*points)
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x in xs)
    return my - slope * mx, slope


def _write(machine: dict, runs, skipped, costs: dict, fits: dict, quiet: bool = False) -> None:
    machine = {**machine, "load_average_end": [round(x, 2) for x in os.getloadavg()]}
    results = {
        "benchmark": NAME, "machine": machine,
        "setup": {"seq_length": FLAGS.seq_length, "vocab_size": FLAGS.vocab_size,
                  "steps": FLAGS.steps, "time_budget": FLAGS.time_budget, "precision": "fp32",
                  "replicas": 1, "model": "configs/small.yaml"},
        "runs": runs, "skipped": skipped, "chunking_throughput_cost": costs,
        "rss_linear_fit": fits}
    if quiet:
        _common.write_json(results, FLAGS.output)
    else:
        _common.write_results(results, FLAGS.output)


def _resumed_runs() -> list:
    """With --resume, the runs in --output measured with the same settings as now."""
    if not (FLAGS.resume and os.path.exists(FLAGS.output)):
        return []
    with open(FLAGS.output, encoding="utf-8") as f:
        old = json.load(f)
    keys = ("seq_length", "vocab_size")
    if any(old["setup"].get(k) != getattr(FLAGS, k) for k in keys):
        raise app.UsageError(f"--resume: {FLAGS.output} was measured with other settings "
                             f"({ {k: old['setup'].get(k) for k in keys} })")
    _common.log(f"resuming: {len(old['runs'])} runs kept from {FLAGS.output}")
    return old["runs"]


def _predicted_rss(runs, batch: int, chunk: int):
    """Max RSS expected at `batch` from the smaller runs of the same chunk size, or None."""
    same = [r for r in runs if r["chunk_size"] == chunk]
    if len(same) == 1:
        # What the step added to the built model, scaled with the batch (an over-estimate
        # where part of it is fixed).
        (r,) = same
        grown = r["rss_peak_bytes"] - r["rss_built_bytes"]
        return r["rss_built_bytes"] + grown * batch / r["batch"]
    line = _fit([(r["batch"], r["rss_peak_bytes"]) for r in same])
    return line and line[0] + line[1] * batch


def main(argv):
    del argv
    if FLAGS.worker:
        _common.emit_worker_result(worker())
        return
    log = _common.log
    machine = _common.announce_machine()
    chunks = [int(c) for c in FLAGS.chunk_sizes]
    runs, skipped = _resumed_runs(), []
    for i, batch in enumerate(sorted(map(int, FLAGS.batches))):
        for chunk in (chunks if i % 2 == 0 else chunks[::-1]):
            if chunk and batch % chunk:
                log(f"skipped batch {batch} chunk {chunk}: the chunk must divide the batch")
                continue
            if any(r["batch"] == batch and r["chunk_size"] == chunk for r in runs):
                continue  # kept from --output by --resume
            predicted = _predicted_rss(runs, batch, chunk)
            if predicted and predicted > FLAGS.max_rss_gb * GIB:
                why = (f"batch {batch}, chunk_size {chunk}: predicted max RSS "
                       f"{predicted / GIB:.1f} GiB > --max_rss_gb={FLAGS.max_rss_gb:g} "
                       "(extrapolated from the smaller batches)")
                log(f"skipped {why}")
                skipped.append({"batch": batch, "chunk_size": chunk,
                                "predicted_rss_bytes": predicted, "why": why})
                continue
            log(f"batch {batch}, chunk_size {chunk}: fresh process ...")
            tick = time.perf_counter()
            result = _common.run_worker(
                NAME, ["--worker", f"--batch={batch}", f"--chunk={chunk}",
                       f"--steps={FLAGS.steps}", f"--time_budget={FLAGS.time_budget}",
                       f"--seq_length={FLAGS.seq_length}", f"--vocab_size={FLAGS.vocab_size}"],
                timeout=FLAGS.timeout)
            result["process_seconds"] = round(time.perf_counter() - tick, 1)
            result["load_average_1"] = round(os.getloadavg()[0], 2)
            runs.append(result)
            log(f"  {result['pairs_per_second']:.1f} pairs/s (steps {result['step_seconds']} s, "
                f"first call {result['first_call_seconds']} s), max RSS "
                f"{result['rss_peak_bytes'] / GIB:.2f} GiB")
            _write(machine, runs, skipped, {}, {}, quiet=True)

    by = {(r["batch"], r["chunk_size"]): r for r in runs}
    costs = {}
    for batch in sorted({r["batch"] for r in runs}):
        base = by.get((batch, 0))
        for chunk in chunks:
            if chunk and base and (batch, chunk) in by:
                costs[f"batch {batch}, chunk {chunk}"] = (
                    1 - by[(batch, chunk)]["pairs_per_second"] / base["pairs_per_second"])
    fits = {}
    for chunk in chunks:
        line = _fit([(r["batch"], r["rss_peak_bytes"]) for r in runs if r["chunk_size"] == chunk])
        if line:
            intercept, slope = line
            fits[str(chunk)] = {
                "intercept_gib": intercept / GIB, "mib_per_pair": slope / 2**20,
                "largest_batch": {gb: (int((float(gb) * GIB - intercept) / slope) if slope > 0
                                       else None) for gb in FLAGS.memory_gb}}
    log("")
    log(_common.table(
        ["batch", "chunk_size", "pairs/s", "step s", "first call s", "max RSS GiB"],
        [[r["batch"], r["chunk_size"], f"{r['pairs_per_second']:.1f}",
          " ".join(map(str, r["step_seconds"])), r["first_call_seconds"],
          f"{r['rss_peak_bytes'] / GIB:.2f}"]
         for r in sorted(runs, key=lambda r: (r["batch"], r["chunk_size"]))]
        + [[s["batch"], s["chunk_size"], "skipped", "", "",
            f"~{s['predicted_rss_bytes'] / GIB:.1f} predicted" if s["predicted_rss_bytes"]
            else ""] for s in skipped]))
    if costs:
        log("")
        log(_common.table(["throughput cost of chunking (1 - chunked/unchunked)", "value",
                           "target"], [[k, f"{v:.0%}", "< 35%"] for k, v in costs.items()]))
    if fits:
        log("")
        log(_common.table(
            ["chunk_size", "RSS = a + b x batch",
             *[f"largest batch in {gb} GiB" for gb in FLAGS.memory_gb]],
            [[c, f"{f['intercept_gib']:.2f} GiB + {f['mib_per_pair']:.2f} MiB x batch",
              *[f["largest_batch"][gb] for gb in FLAGS.memory_gb]] for c, f in fits.items()]))
    _write(machine, runs, skipped, costs, fits)


if __name__ == "__main__":
    app.run(main)
