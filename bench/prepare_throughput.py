r"""Pairs/s of `labse_tf.prepare` on the local runner, with and without the vocabulary.

    python -m bench.prepare_throughput --data=../shared/data/train            # all 1.1M pairs
    python -m bench.prepare_throughput --max_pairs=20000                      # a quick check

Runs the command in a fresh process per mode (`plain`: validate, clean, shard; `vocab`:
the same with --vocab_size) on the gzipped TSV files of `--data`, or on the first
`--max_pairs`-th share of every file (written once under `--work_dir`), and reads the
pairs in and the pipeline's seconds from its summary.json. The CPU seconds of the child
give the per-core rate that bench/README.md section 9 scales to Dataflow. The machine
should be otherwise idle (take /tmp/BENCH_LOCK).
"""

import glob
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from bench import _common

FLAGS = flags.FLAGS
flags.DEFINE_string("data", "../shared/data/train", "Directory of <lang>.tsv.gz pair files.")
flags.DEFINE_integer("max_pairs", 0, "Use about this many pairs (the same share of every "
                     "file); 0: all.")
flags.DEFINE_list("modes", ["plain", "vocab"], "plain: no vocabulary; vocab: --vocab_size.")
flags.DEFINE_integer("vocab_size", 32000, "The vocab mode's --vocab_size.")
flags.DEFINE_list("beam_args", [], "Extra Beam options for the runner, e.g. "
                  "--direct_num_workers=2,--direct_running_mode=multi_processing.")
flags.DEFINE_string("work_dir", os.path.join(tempfile.gettempdir(), "labse_prepare_bench"),
                    "Where the subset and the outputs go.")
flags.DEFINE_string("output", "", "Results JSON; default bench/results/prepare_throughput.json.")


def _subset(paths: list, max_pairs: int) -> str:
    """The first `max_pairs / total` of every file's lines, written once; returns its glob."""
    directory = os.path.join(FLAGS.work_dir, f"subset_{max_pairs}")
    if not os.path.exists(os.path.join(directory, "done")):
        os.makedirs(directory, exist_ok=True)
        lines = {}
        for path in paths:
            with gzip.open(path, "rb") as f:
                lines[path] = f.read().splitlines(keepends=True)
        share = max_pairs / sum(len(v) for v in lines.values())
        for path, rows in lines.items():
            with gzip.open(os.path.join(directory, os.path.basename(path)), "wb") as f:
                f.write(b"".join(rows[:max(1, round(len(rows) * share))]))
        open(os.path.join(directory, "done"), "w").close()
    return os.path.join(directory, "*.tsv.gz")


def _run(pattern: str, mode: str) -> dict:
    out = os.path.join(FLAGS.work_dir, f"out_{mode}")
    cmd = [sys.executable, "-m", "labse_tf.prepare", f"--input={pattern}", f"--output={out}",
           *([f"--vocab_size={FLAGS.vocab_size}"] if mode == "vocab" else []), *FLAGS.beam_args]
    # wait4 gives this child's own usage (with the worker processes it waited for): peak
    # RSS per mode, not the maximum over every child so far as RUSAGE_CHILDREN would.
    with tempfile.TemporaryFile("w+") as log:
        tick = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True,
                                cwd=_common.REPO_ROOT,
                                env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - tick
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            log.seek(0)
            raise RuntimeError(log.read()[-6000:])
    with open(os.path.join(out, "summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    cpu = usage.ru_utime + usage.ru_stime
    # The learner runs once in the driver after the pipeline, on at most --max_words words
    # whatever the corpus size: timed apart.
    learner = summary.get("vocab_seconds", 0.0)
    result = {"mode": mode, "pairs_in": summary["pairs_in"], "kept": summary["kept"],
              "shards": summary["shards"], "seconds": summary["seconds"],
              "learner_seconds": learner, "pipeline_seconds": round(summary["seconds"] - learner, 1),
              "process_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
              "pairs_per_second": round(summary["pairs_in"] / summary["seconds"]),
              "pipeline_pairs_per_second": round(summary["pairs_in"] / (summary["seconds"] - learner)),
              "pairs_per_cpu_second": round(summary["pairs_in"] / cpu),
              "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2)}
    _common.log(f"{mode}: {result['pairs_in']:,} pairs in {summary['seconds']:.0f}s: "
                f"{result['pairs_per_second']:,} pairs/s, {result['pairs_per_cpu_second']:,} "
                f"per CPU-second ({cpu / wall:.2f} cores busy)")
    return result


def main(argv):
    del argv
    machine = _common.announce_machine()
    paths = sorted(glob.glob(os.path.join(FLAGS.data, "*.tsv.gz")))
    if not paths:
        raise SystemExit(f"{FLAGS.data}: no *.tsv.gz files")
    pattern = _subset(paths, FLAGS.max_pairs) if FLAGS.max_pairs else os.path.join(
        FLAGS.data, "*.tsv.gz")
    runs = [_run(pattern, mode) for mode in FLAGS.modes]
    print(_common.table(["mode", "pairs", "pairs/s", "pipeline pairs/s", "pairs/CPU-s",
                         "pipeline s", "learner s", "process s", "peak RSS GiB"],
                        [[r["mode"], f"{r['pairs_in']:,}", f"{r['pairs_per_second']:,}",
                          f"{r['pipeline_pairs_per_second']:,}", f"{r['pairs_per_cpu_second']:,}",
                          r["pipeline_seconds"], r["learner_seconds"], r["process_seconds"],
                          r["peak_rss_gib"]] for r in runs]))
    _common.write_results({"machine": machine, "data": pattern, "beam_args": FLAGS.beam_args,
                           "runs": runs},
                          FLAGS.output or _common.default_output("prepare_throughput"))


if __name__ == "__main__":
    app.run(main)
