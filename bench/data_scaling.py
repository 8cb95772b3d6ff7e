r"""Start-up time and memory of training against corpus size; input pipeline throughput.

    python -m bench.data_scaling --sizes=1000000,10000000,30000000          # scaling
    python -m bench.data_scaling --mode=input --data=../shared/data/train   # input vs step

`--mode=scaling` writes synthetic corpora of each size over `--languages` languages
(Zipf-sized, one gzipped TSV per language, short sentences) under `--work_dir`, then runs
`python -m labse_tf.train` (tiny config, 20 steps, no export, a fixed vocabulary) on each
in a fresh subprocess and records its peak RSS, the time to its first training step and
the manifest pass's pairs/s from its log; then again from that run's manifest.json (a
prepared corpus: no counting pass). `--old_rev=REV` also runs the training command of
that git revision (checked out in a temporary worktree) for the side-by-side figure.

`--mode=input` measures, on real data and the `--config` recipe, the tokenized pairs/s
the input pipeline delivers with no model, and the pairs/s of a short training run of
the same config, in one run: their ratio says whether input is the bottleneck.

`--mode=repeats` counts, in the `--config` recipe's batches of real data, the sentences
that come more than once in a batch (each copy a false negative of the ranking loss), against
the same count for pairs drawn independently with the same language proportions.
"""

import gzip
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

from bench import _common

FLAGS = flags.FLAGS
flags.DEFINE_enum("mode", "scaling", ["scaling", "input", "repeats"], "What to measure.")
flags.DEFINE_list("sizes", ["1000000", "10000000", "30000000"], "Corpus sizes in pairs.")
flags.DEFINE_integer("languages", 100, "Languages of the synthetic corpora.")
flags.DEFINE_string("work_dir", os.path.join(tempfile.gettempdir(), "labse_data_scaling"),
                    "Where the synthetic corpora and runs go (reused when present).")
flags.DEFINE_string("old_rev", "", "Also run this git revision's training command.")
flags.DEFINE_integer("old_max_pairs", 10_000_000, "Largest corpus the --old_rev reader (which "
                     "holds the corpus in memory) is run on.")
flags.DEFINE_string("vocab_file", "", "Vocabulary for --mode=input; default one learned as "
                    "bench/budget_recipe.sh learns it (~2 minutes).")
flags.DEFINE_string("data", "../shared/data/train", "Real data for --mode=input.")
flags.DEFINE_string("config", "budget_30min", "Config for --mode=input.")
flags.DEFINE_integer("batches", 60, "Batches timed in --mode=input, counted in --mode=repeats.")
flags.DEFINE_string("output", "", "Results JSON; default bench/results/data_scaling[_input].json.")

_WORDS = [f"w{i:04d}" for i in range(2000)]  # one width, so lines are built as byte arrays
_CHUNK = 1_000_000


def _lines(rng: np.random.Generator, m: int, lang: int) -> bytes:
    """`m` lines `<6 words>\t<the same reversed> <lang>`, built as one byte array."""
    table = np.frombuffer("".join(_WORDS).encode(), np.uint8).reshape(len(_WORDS), 5)
    words = table[rng.integers(0, len(_WORDS), (m, 6))]  # [m, 6, 5]
    space = np.full((m, 6, 1), ord(" "), np.uint8)
    src = np.concatenate([words, space], 2).reshape(m, 36)
    tgt = np.concatenate([words[:, ::-1], space], 2).reshape(m, 36)
    src[:, -1] = ord("\t")
    suffix = np.frombuffer(f"{lang:03d}\n".encode(), np.uint8)
    return np.concatenate([src, tgt, np.broadcast_to(suffix, (m, 4))], 1).tobytes()


def _write_corpus(directory: str, size: int, languages: int, seed: int = 0) -> None:
    """`languages` files `l<k>.tsv.gz` with Zipf-distributed pair counts summing to `size`."""
    if os.path.exists(os.path.join(directory, "done")):
        return
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, languages + 1)
    counts = np.maximum(1, np.round(size * weights / weights.sum())).astype(int)
    for lang, n in enumerate(counts):
        with gzip.open(os.path.join(directory, f"l{lang:03d}.tsv.gz"), "wb", compresslevel=1) as f:
            for start in range(0, n, _CHUNK):
                f.write(_lines(rng, min(_CHUNK, n - start), lang))
        if (lang + 1) % 10 == 0:
            _common.log(f"  {directory}: {lang + 1}/{languages} languages written")
    open(os.path.join(directory, "done"), "w").close()


def _vocab(path: str) -> str:
    from labse_tf.preprocessing import SPECIAL_TOKENS
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(t + "\n" for t in list(SPECIAL_TOKENS) + _WORDS
                     + [f"{i:03d}" for i in range(1000)])
    return path


def _run_train(python_path: str, data_glob: str, vocab: str, model_dir: str) -> dict:
    """One training command: peak RSS, seconds to the first step line, manifest pairs/s."""
    shutil.rmtree(model_dir, ignore_errors=True)
    cmd = [sys.executable, "-c",
           "import resource, runpy, sys; sys.argv = ['labse_tf.train'] + sys.argv[1:]\n"
           "try:\n    runpy.run_module('labse_tf.train', run_name='__main__')\n"
           "finally:\n    print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,"
           " flush=True)",
           "--config=tiny", f"--model_dir={model_dir}", f"--train_data={data_glob}",
           "--noexport", "--set=train.steps=20", "--set=train.steps_per_loop=10",
           "--set=train.eval_every=0", f"--set=data.vocab_file={vocab}"]
    env = dict(os.environ, PYTHONPATH=python_path, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    start, first_step, lines = time.time(), None, []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=python_path)
    for line in proc.stdout:
        lines.append(line.rstrip())
        if first_step is None and re.match(r"step \d+/", line):
            first_step = time.time() - start
    proc.wait()
    out = "\n".join(lines)
    if proc.returncode:
        return {"error": out[-2000:], "seconds": round(time.time() - start, 1)}
    rss = int(re.search(r"^MAXRSS (\d+)", out, re.M).group(1)) * 1024
    counted = re.search(r"counted ([\d,]+) pairs .* in ([\d.]+)s", out)
    result = {"peak_rss_gib": round(rss / 2**30, 3), "seconds_to_first_step": round(first_step, 1),
              "seconds": round(time.time() - start, 1)}
    if counted:
        pairs, seconds = int(counted.group(1).replace(",", "")), float(counted.group(2))
        result["manifest_pairs_per_second"] = round(pairs / max(seconds, 1e-9))
    return result


def scaling() -> dict:
    os.makedirs(FLAGS.work_dir, exist_ok=True)
    vocab = _vocab(os.path.join(FLAGS.work_dir, "vocab.txt"))
    readers = {"new": _common.REPO_ROOT}
    if FLAGS.old_rev:
        old_tree = os.path.join(FLAGS.work_dir, f"old-{FLAGS.old_rev}")
        if not os.path.exists(old_tree):
            subprocess.run(["git", "-C", _common.REPO_ROOT, "worktree", "add", "--detach",
                            old_tree, FLAGS.old_rev], check=True)
        readers["old"] = old_tree
    results = []
    for size in map(int, FLAGS.sizes):
        corpus = os.path.join(FLAGS.work_dir, f"corpus-{size}")
        _common.log(f"corpus of {size:,} pairs in {FLAGS.languages} languages: {corpus}")
        _write_corpus(corpus, size, FLAGS.languages)
        runs = [("new", "cold", os.path.join(corpus, "*.tsv.gz"))]
        # The same corpus again through the first run's manifest (no counting pass).
        runs.append(("new", "manifest", os.path.join(FLAGS.work_dir, f"run-new-cold-{size}",
                                                      "manifest.json")))
        if "old" in readers and size <= FLAGS.old_max_pairs:
            runs.append(("old", "cold", os.path.join(corpus, "*.tsv.gz")))
        for name, start, data_glob in runs:
            _common.log(f"  training with the {name} reader ({start}) ...")
            run = _run_train(readers[name], data_glob, vocab,
                             os.path.join(FLAGS.work_dir, f"run-{name}-{start}-{size}"))
            _common.log(f"  {name} ({start}): {run}")
            results.append({"pairs": size, "reader": name, "start": start, **run})
    rows = [[r["pairs"], r["reader"], r["start"], r.get("peak_rss_gib", "-"),
             r.get("seconds_to_first_step", "-"), r.get("manifest_pairs_per_second", "-")]
            for r in results]
    print(_common.table(["pairs", "reader", "start", "peak RSS GiB", "s to first step",
                         "manifest pairs/s"], rows))
    return {"runs": results, "languages": FLAGS.languages}


def input_throughput() -> dict:
    import tensorflow as tf

    from labse_tf import config as config_lib, data, run_setup, vocab as vocab_lib
    from labse_tf.preprocessing import Preprocessor

    cfg = config_lib.load_config(FLAGS.config)
    manifest = data.load_manifest([os.path.join(FLAGS.data, "*.tsv.gz")], log=_common.log)
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = FLAGS.vocab_file
        if not vocab_file:
            _common.log("learning a vocabulary as bench/budget_recipe.sh does ...")
            sample = vocab_lib.sample_sentences(manifest, 0.5, 50_000, 0)
            vocab_file = vocab_lib.write_vocab(vocab_lib.build_vocab(
                [s for g in sample.values() for s in g], cfg.data.build_vocab_size,
                max_words=40_000, max_unique_chars=4000), os.path.join(tmp, "vocab.txt"))
        pre = Preprocessor(vocab_file, lowercase=cfg.data.lowercase, seq_length=cfg.data.seq_length)
        sampling = run_setup.data_sampling(cfg)
        batch = cfg.train.global_batch_size
        it = iter(data.pair_dataset(manifest, pre, batch_size=batch, sampling=sampling))
        start = time.time()
        next(it)
        first = time.time() - start
        start, cpu = time.time(), time.process_time()
        for _ in range(FLAGS.batches):
            next(it)
        wall, cpu = time.time() - start, time.process_time() - cpu
        pipeline = FLAGS.batches * batch / wall
        _common.log(f"input pipeline: {pipeline:,.0f} tokenized pairs/s (first batch {first:.1f}s)")
        run = os.path.join(tmp, "run")
        proc = subprocess.run(
            [sys.executable, "-m", "labse_tf.train", f"--config={FLAGS.config}",
             f"--model_dir={run}", f"--train_data={os.path.join(FLAGS.data, '*.tsv.gz')}",
             "--noexport", "--set=train.steps=100", "--set=train.steps_per_loop=25",
             "--set=train.time_budget_minutes=0", "--set=train.eval_every=0",
             f"--set=data.vocab_file={vocab_file}", "--set=model.vocab_size=0"],
            capture_output=True, text=True, cwd=_common.REPO_ROOT,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        rates = [float(x) for x in re.findall(r"pairs/s ([\d.]+)", proc.stdout)][1:]
        if not rates:
            raise RuntimeError(proc.stdout[-2000:] + proc.stderr[-2000:])
        step = float(np.median(rates))
    _common.log(f"training step: {step:,.0f} pairs/s; input / step = {pipeline / step:.2f}")
    return {"config": FLAGS.config, "pipeline_pairs_per_second": round(pipeline),
            "pipeline_pairs_per_cpu_second": round(FLAGS.batches * batch / max(cpu, 1e-9)),
            "first_batch_seconds": round(first, 1), "train_pairs_per_second": round(step),
            "input_over_step": round(pipeline / step, 2), "tf": tf.__version__}


def _repeats(batch: dict) -> dict:
    """Sentences of a batch that are copies of another in the same column."""
    return {side: len(batch[side]) - len(set(batch[side])) for side in ("src", "tgt")}


def batch_repeats() -> dict:
    from labse_tf import config as config_lib, data, run_setup

    cfg = config_lib.load_config(FLAGS.config)
    pattern = os.path.join(FLAGS.data, "*.tsv.gz")
    manifest = data.load_manifest([pattern], log=_common.log)
    batch = cfg.train.global_batch_size
    stream = data.pair_strings(manifest, batch_size=batch, sampling=run_setup.data_sampling(cfg))
    streamed = [_repeats(b) for b in stream.take(FLAGS.batches).as_numpy_iterator()]
    pairs, _ = data.read_pairs([pattern], log=_common.log)
    langs, src, tgt = pairs.flat()
    counts = pairs.counts()
    weight = data.language_weights(list(counts.values()), cfg.data.alpha)
    per_pair = dict(zip(counts, weight / np.array(list(counts.values()))))
    p = np.array([per_pair[lang] for lang in langs])
    rng = np.random.default_rng(0)
    src, tgt = np.array(src, object), np.array(tgt, object)
    drawn = [rng.choice(len(p), batch, p=p / p.sum()) for _ in range(FLAGS.batches)]
    independent = [_repeats({"src": src[i], "tgt": tgt[i]}) for i in drawn]
    result = {"config": FLAGS.config, "batch": batch, "batches": FLAGS.batches}
    for name, runs in (("streamed", streamed), ("independent", independent)):
        for side in ("src", "tgt"):
            result[f"{name}_{side}_repeats_per_batch"] = round(
                float(np.mean([r[side] for r in runs])), 2)
    _common.log(str(result))
    return result


def main(argv):
    del argv
    machine = _common.announce_machine()
    modes = {"scaling": (scaling, "data_scaling"), "input": (input_throughput, "data_scaling_input"),
             "repeats": (batch_repeats, "data_scaling_repeats")}
    measure, name = modes[FLAGS.mode]
    results = measure()
    _common.write_results({"machine": machine, **results}, FLAGS.output or _common.default_output(name))


if __name__ == "__main__":
    app.run(main)
