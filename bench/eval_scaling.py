r"""Time and memory of retrieval evaluation and bitext mining as the sentence count grows.

    python -m bench.eval_scaling                          # 1k, 10k, 30k per side, ~3 min
    python -m bench.eval_scaling --sizes=1000,10000,100000   # the README table, ~20 min loaded

What is measured: labse_tf.evaluate.retrieval_accuracy (nearest neighbour by cosine, both
directions) and labse_tf.mining.mine (ratio margin, k=4, strategy "max"), on synthetic
embeddings: n random unit vectors of --dim dimensions on each side, the second side a noisy
copy of the first (so retrieval finds most pairs). No model runs: this measures the kNN,
margin and alignment code alone.

Each (operation, size) runs in a fresh subprocess, so its peak resident memory
(getrusage max RSS) is its own. Reported per run:
  seconds          wall time of the call (tracemalloc on; see --tracemalloc)
  traced_peak      peak of Python-side allocations during the call (tracemalloc sees
                   NumPy's buffers), the embeddings given to the call not included
  rss_before/peak  max RSS after imports and input generation, and after the call
  dense_matrix     what one `[n, n]` float32 similarity matrix would take, for scale
The kNN works through blocks of query rows of at most mining.DEFAULT_BLOCK_BYTES
(similarities plus argpartition indices), so traced_peak should stay near that block plus
terms linear in n, however large n gets.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import time  # noqa: E402
import tracemalloc  # noqa: E402

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from bench import _common  # noqa: E402

NAME = "eval_scaling"
OPS = ("retrieval", "mine")
MIB = 2**20

FLAGS = flags.FLAGS
flags.DEFINE_list("sizes", ["1000", "10000", "30000"], "Sentences per side (time grows as "
                  "n^2: 100000 takes ~10x longer than 30000).")
flags.DEFINE_list("ops", list(OPS), f"Operations to measure, of {list(OPS)}.")
flags.DEFINE_integer("dim", 256, "Embedding dimension (the `small` config's hidden size).")
flags.DEFINE_float("noise", 0.5, "Std of the noise added (per dimension, relative to 1/sqrt(dim)) "
                   "to make the second side.")
flags.DEFINE_bool("tracemalloc", True, "Trace allocations during the call (adds a little "
                  "time to Python-level allocations; NumPy work is unaffected).")
flags.DEFINE_integer("timeout", 1800, "Seconds before a worker subprocess is abandoned.")
flags.DEFINE_string("output", _common.default_output(NAME), "Where to write the JSON results.")
# Set only in the worker subprocess.
flags.DEFINE_enum("worker", None, OPS, "Internal: run one measurement and print its result.")
flags.DEFINE_integer("n", 0, "Internal: sentences per side for --worker.")


def synthetic_pairs(n: int, dim: int, noise: float, seed: int = 0):
    """(x, y) float32 `[n, dim]` unit rows; y[i] is x[i] plus Gaussian noise, renormalised."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal([n, dim], dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = x + rng.standard_normal([n, dim], dtype=np.float32) * (noise / np.sqrt(dim))
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    return x, y


def worker() -> dict:
    """One measurement in this (fresh) process."""
    # Both imports up front, so the RSS baseline includes them (evaluate imports TensorFlow).
    from labse_tf import evaluate, mining

    x, y = synthetic_pairs(FLAGS.n, FLAGS.dim, FLAGS.noise)
    rss_before = _common.max_rss_bytes()
    if FLAGS.tracemalloc:
        tracemalloc.start()
    tick = time.perf_counter()
    if FLAGS.worker == "retrieval":
        x2y, y2x = evaluate.retrieval_accuracy(x, y)
        check = {"x_to_y_accuracy": x2y, "y_to_x_accuracy": y2x}
    else:
        scores, xs, ys = mining.mine(x, y, k=4, strategy="max")
        check = {"pairs_mined": int(len(scores)), "correct_fraction": float(np.mean(xs == ys))}
    seconds = time.perf_counter() - tick
    traced = tracemalloc.get_traced_memory()[1] if FLAGS.tracemalloc else None
    tracemalloc.stop()
    return {"op": FLAGS.worker, "n": FLAGS.n, "seconds": seconds, "traced_peak_bytes": traced,
            "rss_before_bytes": rss_before, "rss_peak_bytes": _common.max_rss_bytes(),
            "inputs_bytes": x.nbytes + y.nbytes, **check}


def _mib(b):
    return "" if b is None else f"{b / MIB:,.0f}"


def main(argv):
    del argv
    if FLAGS.worker:
        _common.emit_worker_result(worker())
        return
    _common.check_names("ops", FLAGS.ops, OPS)
    from labse_tf import mining

    log = _common.log
    machine = _common.announce_machine()
    runs = []
    for i, n in enumerate(map(int, FLAGS.sizes)):
        # The order of the operations alternates by size, so neither always runs first.
        for op in (FLAGS.ops if i % 2 == 0 else FLAGS.ops[::-1]):
            log(f"{op} on {n:,} x {n:,} sentences (dim {FLAGS.dim}) in a fresh process ...")
            result = _common.run_worker(
                "eval_scaling", [f"--worker={op}", f"--n={n}", f"--dim={FLAGS.dim}",
                                 f"--noise={FLAGS.noise}", f"--tracemalloc={FLAGS.tracemalloc}"],
                timeout=FLAGS.timeout)
            result["dense_matrix_bytes"] = 4 * n * n
            result["load_average_1"] = round(os.getloadavg()[0], 2)
            runs.append(result)
            log(f"  {result['seconds']:.1f} s, traced peak {_mib(result['traced_peak_bytes'])} "
                f"MiB, max RSS {_mib(result['rss_before_bytes'])} → "
                f"{_mib(result['rss_peak_bytes'])} MiB")
    runs.sort(key=lambda r: (FLAGS.ops.index(r["op"]), r["n"]))
    log("")
    log(_common.table(
        ["op", "n per side", "seconds", "traced peak MiB", "max RSS before MiB",
         "max RSS peak MiB", "RSS growth MiB", "dense [n,n] f32 MiB", "check"],
        [[r["op"], f"{r['n']:,}", f"{r['seconds']:.2f}", _mib(r["traced_peak_bytes"]),
          _mib(r["rss_before_bytes"]), _mib(r["rss_peak_bytes"]),
          _mib(r["rss_peak_bytes"] - r["rss_before_bytes"]), _mib(r["dense_matrix_bytes"]),
          ", ".join(f"{k} {v:.3g}" for k, v in r.items()
                    if k in ("x_to_y_accuracy", "pairs_mined", "correct_fraction"))]
         for r in runs]))
    machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    _common.write_results({
        "benchmark": NAME, "machine": machine,
        "setup": {"dim": FLAGS.dim, "noise": FLAGS.noise, "tracemalloc": FLAGS.tracemalloc,
                  "block_bytes": mining.DEFAULT_BLOCK_BYTES, "retrieval": "margin none",
                  "mine": "ratio margin, k=4, strategy max",
                  "embeddings": "synthetic random unit vectors; no model"},
        "runs": runs}, FLAGS.output)


if __name__ == "__main__":
    app.run(main)
