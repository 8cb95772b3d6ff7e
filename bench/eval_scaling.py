r"""Time, memory and recall of bitext mining's kNN as the corpus grows: NumPy against FAISS.

    python -m bench.eval_scaling                       # 10k and 100k a side, dim 256, ~10 min
    python -m bench.eval_scaling --sizes=1000000 --paths=ivf --dims=256   # ~10 min alone
    python -m bench.eval_scaling --sizes=100000 --paths=numpy,flat,ivf,hnsw --dims=256,768

What is measured: mining as labse_tf.mine does it, on synthetic embeddings (no model): the
k = 4 nearest neighbours both ways, then the ratio margin and the "max" one-to-one
selection (labse_tf.mining.matches, select). Paths:
  numpy   today's reference, labse_tf.mining.mine on in-memory arrays (block by block,
          time n·m); skipped above --numpy_max.
  flat, ivf, ivfpq, hnsw   labse_tf.index.knn_both_ways with that index kind (defaults of
          index.IndexOptions unless --nlist / --nprobe are given), fed a shard at a time.

The data: n sentences a side in shards of --shard_size, generated on the fly from seeds
(so no corpus is ever in memory on the FAISS paths; the NumPy path concatenates them).
Each source sentence is 0.6·topic + noise (one of --topics random topics: clustered, as
real embeddings are, so the neighbours after the first mean something) made unit; its
target is the same sentence plus noise of relative size --noise, made unit. Row i of one
side is the translation of row i of the other.

Each (path, n, dim) runs in a fresh subprocess, so its peak resident memory (getrusage
max RSS, after the imports: labse_tf imports TensorFlow) is its own. Reported per run:
  knn_seconds, select_seconds   the neighbour search both ways; margins and selection
  generate_seconds              one pass of generating both sides (the FAISS paths make
                                several passes: build sample, add, search), included above
  rss_before / rss_peak         max RSS after imports, and at the end
  recall_at_4                   of the index against exact search, on --recall_queries
                                source rows (exact: NumPy over every target shard)
  correct_fraction              mined pairs that are a row's own translation
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import dataclasses  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from bench import _common  # noqa: E402

NAME = "eval_scaling"
PATHS = ("numpy", "flat", "ivf", "ivfpq", "hnsw")
MIB = 2**20

FLAGS = flags.FLAGS
flags.DEFINE_list("sizes", ["10000", "100000"], "Sentences per side.")
flags.DEFINE_list("dims", ["256"], "Embedding dimensions (small: 256, LaBSE: 768).")
flags.DEFINE_list("paths", ["numpy", "flat", "ivf"], f"Paths to measure, of {list(PATHS)}.")
flags.DEFINE_integer("numpy_max", 100_000, "Largest n the NumPy path runs at (its time grows "
                     "as n^2: 240 s at 100k on 2 cores).")
flags.DEFINE_integer("topics", 100, "Topics the sentences cluster around.")
flags.DEFINE_float("noise", 1.0, "Size of a translation's noise relative to its sentence's "
                   "own noise.")
flags.DEFINE_integer("shard_size", 100_000, "Rows per generated shard.")
flags.DEFINE_integer("recall_queries", 2000, "Source rows on which recall@4 is measured.")
flags.DEFINE_integer("nlist", 0, "ivf/ivfpq lists (0: index.IndexOptions' default).")
flags.DEFINE_integer("nprobe", 0, "ivf/ivfpq lists scanned (0: index.IndexOptions' default).")
flags.DEFINE_integer("timeout", 3600, "Seconds before a worker subprocess is abandoned.")
flags.DEFINE_string("output", _common.default_output(NAME), "Where to write the JSON results.")
# Set only in the worker subprocess.
flags.DEFINE_enum("worker", None, PATHS, "Internal: run one measurement and print its result.")
flags.DEFINE_integer("n", 0, "Internal: sentences per side for --worker.")
flags.DEFINE_integer("dim", 0, "Internal: dimension for --worker.")


def synthetic_shards(n: int, dim: int, side: int):
    """A callable yielding side `side` (0: source, 1: target) in shards, the same each pass."""
    topics = np.random.default_rng(1).standard_normal([FLAGS.topics, dim], dtype=np.float32)
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)

    def shards():
        for number, start in enumerate(range(0, n, FLAGS.shard_size)):
            rows = min(FLAGS.shard_size, n - start)
            rng = np.random.default_rng([2, number])
            x = (0.6 * topics[rng.integers(0, FLAGS.topics, rows)]
                 + rng.standard_normal([rows, dim], dtype=np.float32) / np.sqrt(dim))
            if side == 1:
                x += FLAGS.noise * rng.standard_normal([rows, dim], dtype=np.float32) / np.sqrt(dim)
            yield x / np.linalg.norm(x, axis=1, keepdims=True)

    return shards


def exact_top4(queries: np.ndarray, candidates) -> np.ndarray:
    """Exact 4 nearest candidate ids of a few queries, merged over candidate shards."""
    from labse_tf import mining

    best_sims = np.full([len(queries), 0], -np.inf, np.float32)
    best_ids = np.zeros([len(queries), 0], np.int64)
    start = 0
    for shard in candidates():
        sims, ids = mining.knn(queries, shard, 4)
        sims, ids = np.concatenate([best_sims, sims], 1), np.concatenate([best_ids, ids + start], 1)
        order = np.lexsort((ids, -sims), axis=1)[:, :4]
        best_sims, best_ids = np.take_along_axis(sims, order, 1), np.take_along_axis(ids, order, 1)
        start += len(shard)
    return best_ids


def worker() -> dict:
    """One measurement in this (fresh) process."""
    from labse_tf import index, mining

    n, dim, path = FLAGS.n, FLAGS.dim, FLAGS.worker
    x_shards, y_shards = synthetic_shards(n, dim, 0), synthetic_shards(n, dim, 1)
    tick = time.perf_counter()
    for _ in x_shards():
        pass
    for _ in y_shards():
        pass
    generate = time.perf_counter() - tick
    rss_before = _common.max_rss_bytes()
    result = {"path": path, "n": n, "dim": dim, "generate_seconds": generate}
    tick = time.perf_counter()
    if path == "numpy":
        x, y = np.concatenate(list(x_shards())), np.concatenate(list(y_shards()))
        x2y, y2x = mining.knn(x, y, 4), mining.knn(y, x, 4)
    else:
        options = index.IndexOptions(kind=path, **{k: getattr(FLAGS, k) for k in ("nlist", "nprobe")
                                                   if getattr(FLAGS, k)})
        x, y = index.Vectors(x_shards, n, dim), index.Vectors(y_shards, n, dim)
        x2y, y2x = index.knn_both_ways(x, y, 4, options, log=_common.log)
        result["options"] = dataclasses.asdict(options)
    result["knn_seconds"] = time.perf_counter() - tick
    tick = time.perf_counter()
    scores, xs, ys = mining.select(mining.matches(*x2y, *y2x), "max")
    result["select_seconds"] = time.perf_counter() - tick
    result.update(seconds=result["knn_seconds"] + result["select_seconds"],
                  rss_before_bytes=rss_before, rss_peak_bytes=_common.max_rss_bytes(),
                  pairs_mined=int(len(scores)), correct_fraction=float(np.mean(xs == ys)))
    if path != "numpy" and path != "flat":
        rows = np.sort(np.random.default_rng(3).choice(n, min(n, FLAGS.recall_queries),
                                                       replace=False))
        exact = exact_top4(_rows_of(x_shards, rows), y_shards)
        result["recall_at_4"] = mining.recall_at_k(x2y[1][rows], exact)
        result["recall_queries"] = len(rows)
    return result


def _rows_of(shards, rows: np.ndarray) -> np.ndarray:
    """The given (sorted) global rows, gathered over one pass of the shards."""
    out, start = [], 0
    for shard in shards():
        lo, hi = np.searchsorted(rows, [start, start + len(shard)])
        out.append(shard[rows[lo:hi] - start])
        start += len(shard)
    return np.concatenate(out)


def _mib(b):
    return "" if b is None else f"{b / MIB:,.0f}"


def main(argv):
    del argv
    if FLAGS.worker:
        _common.emit_worker_result(worker())
        return
    _common.check_names("paths", FLAGS.paths, PATHS)
    log = _common.log
    machine = _common.announce_machine()
    runs = []
    for dim in map(int, FLAGS.dims):
        for n in map(int, FLAGS.sizes):
            for path in FLAGS.paths:
                if path == "numpy" and n > FLAGS.numpy_max:
                    log(f"numpy at {n:,}: skipped (above --numpy_max={FLAGS.numpy_max:,})")
                    continue
                log(f"{path} on {n:,} x {n:,} (dim {dim}) in a fresh process ...")
                args = [f"--worker={path}", f"--n={n}", f"--dim={dim}",
                        f"--topics={FLAGS.topics}", f"--noise={FLAGS.noise}",
                        f"--shard_size={FLAGS.shard_size}",
                        f"--recall_queries={FLAGS.recall_queries}", f"--nlist={FLAGS.nlist}",
                        f"--nprobe={FLAGS.nprobe}"]
                result = _common.run_worker("eval_scaling", args, timeout=FLAGS.timeout)
                result["load_average_1"] = round(os.getloadavg()[0], 2)
                runs.append(result)
                log(f"  kNN {result['knn_seconds']:.1f} s + select {result['select_seconds']:.1f}"
                    f" s, max RSS {_mib(result['rss_before_bytes'])} → "
                    f"{_mib(result['rss_peak_bytes'])} MiB, recall@4 "
                    f"{result.get('recall_at_4', 1.0):.3f}, correct {result['correct_fraction']:.3f}")
    log("")
    log(_common.table(
        ["path", "dim", "n per side", "kNN s", "select s", "generate s", "max RSS MiB",
         "RSS growth MiB", "recall@4", "mined correct"],
        [[r["path"], r["dim"], f"{r['n']:,}", f"{r['knn_seconds']:.1f}",
          f"{r['select_seconds']:.1f}", f"{r['generate_seconds']:.1f}",
          _mib(r["rss_peak_bytes"]), _mib(r["rss_peak_bytes"] - r["rss_before_bytes"]),
          f"{r.get('recall_at_4', 1.0):.3f}", f"{r['correct_fraction']:.3f}"] for r in runs]))
    machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    _common.write_results({
        "benchmark": NAME, "machine": machine,
        "setup": {"k": 4, "strategy": "max", "topics": FLAGS.topics, "noise": FLAGS.noise,
                  "shard_size": FLAGS.shard_size, "recall_queries": FLAGS.recall_queries,
                  "embeddings": "synthetic clustered unit vectors; no model"},
        "runs": runs}, FLAGS.output)


if __name__ == "__main__":
    app.run(main)
