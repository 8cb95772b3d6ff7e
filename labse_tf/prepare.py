r"""Prepares a corpus at scale on Apache Beam: validate, clean, count, shard, learn a vocabulary.

    python -m labse_tf.prepare --input='gs://b/raw/*.tsv.gz' --output=gs://b/prepared \
        [--exclude=gs://b/test/tatoeba.deu ...] [--vocab_size=501153] \
        [--runner=DataflowRunner --project=P --region=R --temp_location=gs://b/tmp ...]

Reads every format training reads (corpus.py; a prepared directory stands for its shards,
so a corpus can be prepared again, e.g. against a new --exclude), from any filesystem
TensorFlow reaches, and writes what training reads best; `--train_data=DIR` trains on it
with no other step:

    DIR/manifest.json     the corpus manifest: each shard and its pairs per language, and
                          (`preparation`) the inputs as counted, malformed and dropped pairs
    DIR/pairs/LANG-00000-of-00004.tfrecord   tf.train.Example `src_raw`, `tgt_raw`, `lang`
    DIR/malformed.txt     every malformed line, `file:line: why` (in no particular order)
    DIR/vocab.txt, DIR/vocab.txt.coverage.json   with --vocab_size
    DIR/summary.json      what was read, kept and dropped, per language, and the paths

Each line is validated by `corpus.parsed_file`, the reader training runs, so malformed
lines and their line numbers are the ones training reports. A file is one element: one
worker streams it whole, which keeps line numbers exact without a pass to number lines,
and the pipeline parallelises across files only: split a huge file into many for speed.
Valid pairs are normalised as the Preprocessor does (`preprocessing.normalize`: UTF-8
repair, NFKC, case folding with --lowercase) and stripped. Pairs are compared as training
sees them: also case-folded unless --nocompare_lowercase (training folds case by default,
so "Hello" and "hello" are one sentence to it). A pair is dropped when either side equals
a sentence of an --exclude file (test-set decontamination), or when it duplicates another
(same language and both sides); of duplicates differing in case the smallest text is kept.

The kept pairs of a language go into shards of about --shard_mb megabytes, each pair to
the shard its hash picks, sorted by that hash within the shard (so a shard is a fixed
pseudo-random sample of its language, the same on any runner; a shard is sorted in one
worker's memory). With --vocab_size the words of all kept sentences are counted per
language in the pipeline, smoothed (`vocab.smoothed_word_counts`: each language weighted
as the sample of --vocab_sentences that `labse_tf.vocab` takes, p(lang) ∝ n^alpha, the
smallest weight 1, so no word of the corpus rounds away) and learned from
(`vocab.learn_vocab`). Only the --max_words most frequent words of each language reach the learner (bounded memory), which
keeps the --max_words most frequent of all anyway; when a language has more distinct words
than that, the learner's alphabet (--max_unique_chars, picked from the character counts of
the words it is given) and its threshold search start from the top words only, and a word
frequent only as a sum over languages can be missed. With --vocab_sentences at least
the corpus's sentences (and no language over --max_words words), the smoothing keeps every
count and the vocabulary equals that of `labse_tf.vocab --input=DIR` with the same
settings (tested); with fewer, `labse_tf.vocab` learns from a random sample of that size
and prepare from the whole corpus weighted as that sample, so the two differ by sampling
noise (and `labse_tf.vocab` on the raw files also counts the duplicates and excluded pairs). Coverage is measured on up to
--coverage_sentences random sentences per language.

Runners: the default DirectRunner needs no set-up and runs in this process (Beam's
FnApiRunner; speed: bench/README.md); `--direct_num_workers=N
--direct_running_mode=multi_processing` uses N processes. PrismRunner downloads its binary
on first use. Other Beam options (`--project`, `--temp_location`, ...) are passed through.
"""

import collections
import dataclasses
import hashlib
import json
import re
import time

try:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.transforms import window
except ImportError:  # the core package does not need Beam
    raise ImportError(
        "labse_tf.prepare needs Apache Beam: pip install 'labse_tf[prepare]'") from None
import numpy as np
import tensorflow as tf
from absl import app, flags

from labse_tf import cli, corpus, files, vocab
from labse_tf.corpus import DataError, FileEntry, Manifest, Preparation
from labse_tf.preprocessing import normalize

__all__ = ["PrepareConfig", "prepare"]

PAIRS_DIR = "pairs"
MALFORMED_FILE = "malformed.txt"
SUMMARY_FILE = "summary.json"
VOCAB_FILE = "vocab.txt"
_WORK_DIR = "_prepare"  # the pipeline's results for the driver; removed at the end
_LOG_EVERY = 30.0  # seconds between progress lines within one file


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    """What `prepare` does; the command-line flags of the same names."""

    lowercase: bool = False        # case-fold the text written
    compare_lowercase: bool = True  # dedup and exclude case-folded (as data.lowercase trains)
    shard_mb: float = 128.0        # target shard size: GCS reads 100-200 MB objects well
    vocab_size: int = 0            # 0: no vocabulary
    vocab_lowercase: bool = True   # the vocabulary's case folding (must match data.lowercase)
    alpha: float = 0.3             # language smoothing of the word counts, p ∝ n^alpha
    vocab_sentences: int = 400_000  # the smoothed sample whose language weights counts take
    max_words: int = 200_000       # distinct words learned from (per language in the pipeline)
    max_unique_chars: int = 0      # as labse_tf.vocab's flag
    coverage_sentences: int = 2000  # per language, for the coverage report
    report: int = 5                # malformed examples kept per input file


def _safe_name(lang: str) -> str:
    """A file-name form of a language code (the records carry the code itself)."""
    if re.fullmatch(r"[A-Za-z0-9_-]+", lang):
        return lang
    digest = hashlib.md5(lang.encode("utf-8")).hexdigest()[:8]
    return re.sub(r"[^A-Za-z0-9_-]", "_", lang)[:32] + "-" + digest


def _hash(*parts: bytes) -> int:
    """A 64-bit hash of a pair that is the same in every process (unlike `hash`)."""
    return int.from_bytes(hashlib.blake2b(b"\t".join(parts), digest_size=8).digest(), "big")


def _normalized(texts, lowercase: bool) -> list:
    """bytes or str texts → normalised as the Preprocessor does, stripped (NFKC can turn
    an edge character into a space), as bytes."""
    return tf.strings.strip(normalize(tf.constant(texts, tf.string), lowercase)).numpy().tolist()


def _exclude_set(paths, lowercase: bool) -> frozenset:
    """Compared forms (`_normalized`) of the sentences of --exclude files: every
    tab-separated field of every line (so a test set of pairs can be given as it is),
    blank ones skipped. Held in memory (and sent to every worker): test sets are small.

    Raises:
      DataError: a line is not UTF-8 (naming file and line).
    """
    fields = []
    for path in paths:
        with files.open_file(path, "rb") as f:
            for number, line in enumerate(f, 1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{path}:{number}: not UTF-8 ({e.reason} at byte "
                                    f"{e.start})") from None
                fields += [x for x in line.rstrip(b"\r\n").split(b"\t") if x.strip()]
    return frozenset(_normalized(fields, lowercase)) if fields else frozenset()


def file_groups(paths, sizes, *, max_files: int = 64, max_bytes: int = 1 << 30) -> list:
    """Input files in groups of consecutive (index, path), each read by one worker.

    A reader costs ~1 s to build whatever the file's size (tf.data graph construction),
    so small files are read several to a reader (`corpus.parsed_files`, one graph); a
    group holds at most `max_files` files or `max_bytes` (a bigger file is alone).
    """
    groups, current, held = [], [], 0
    for index, (path, size) in enumerate(zip(paths, sizes)):
        if current and (len(current) >= max_files or held + size > max_bytes):
            groups.append(current)
            current, held = [], 0
        current.append((index, path))
        held += size
    return groups + [current] if current else groups


def _file_state(file: int) -> dict:
    return {"file": file, "pairs": collections.Counter(), "excluded": collections.Counter(),
            "malformed": 0, "examples": [], "start": time.time()}


class _ReadFiles(beam.DoFn):
    """A group of input files → their valid pairs, normalised, minus excluded ones.

    Main output: ((lang, src, tgt), text) with src, tgt the compared forms (bytes) and text
    the pair as written when that differs (compared case-folded, written not), else None.
    Tagged outputs: `malformed` (`file:line: why`), `excluded` ((lang, pairs) per file) and
    `input` (each file's FileEntry as JSON: valid pairs per language, malformed lines).
    """

    def __init__(self, cfg: PrepareConfig, exclude: frozenset):
        self._cfg, self._exclude = cfg, exclude

    def process(self, group):
        indices, paths = zip(*group)
        state, done = None, set()  # the file being read, its counts until it is done
        start = shown = time.time()
        lines = 0
        try:
            for batch in corpus.parsed_files(list(paths)).prefetch(2).as_numpy_iterator():
                current = int(batch["file"])
                if state is None or state["file"] != current:
                    if state is not None:
                        done.add(state["file"])
                        yield from self._done(indices[state["file"]], paths[state["file"]], state)
                    state = _file_state(current)
                lines += len(batch["error"])
                yield from self._batch(paths[current], batch, state)
                if time.time() - shown > _LOG_EVERY:
                    shown = time.time()
                    cli.log(f"prepare: {paths[current]}: {lines:,} lines of {len(paths)} file(s), "
                            f"{lines / (shown - start):,.0f} lines/s")
        except tf.errors.OpError:
            raise corpus.unreadable(list(paths), state["file"] if state else 0) from None
        if state is not None:
            done.add(state["file"])
            yield from self._done(indices[state["file"]], paths[state["file"]], state)
        for i in sorted(set(range(len(paths))) - done):  # an empty file gives no batch
            yield from self._done(indices[i], paths[i], _file_state(i))

    def _batch(self, path, batch, state):
        error = batch["error"]
        for i in np.flatnonzero(error != b""):
            why = error[i].decode("utf-8")
            state["malformed"] += 1
            if len(state["examples"]) < self._cfg.report:
                state["examples"].append(f"{batch['line'][i]}: {why}")
            yield beam.pvalue.TaggedOutput("malformed", f"{path}:{batch['line'][i]}: {why}")
        ok = np.flatnonzero((error == b"") & ~batch["blank"])
        if not ok.size:
            return
        cfg = self._cfg
        written = [_normalized(batch[side][ok], cfg.lowercase) for side in ("src", "tgt")]
        folds = cfg.compare_lowercase and not cfg.lowercase
        compared = ([_normalized(batch[side][ok], True) for side in ("src", "tgt")]
                    if folds else written)
        for lang, s, t, ws, wt in zip(batch["lang"][ok].tolist(), *compared, *written):
            lang = lang.decode("utf-8")
            state["pairs"][lang] += 1
            if s in self._exclude or t in self._exclude:
                state["excluded"][lang] += 1
            else:
                yield (lang, s, t), ((ws, wt) if folds else None)

    def _done(self, index, path, state):
        for lang, n in state["excluded"].items():
            yield beam.pvalue.TaggedOutput("excluded", (lang, n))
        entry = {"index": index, "path": path, "bytes": files.size(path),
                 "pairs": dict(state["pairs"]), "malformed": state["malformed"],
                 "malformed_examples": state["examples"]}
        yield beam.pvalue.TaggedOutput("input", json.dumps(entry, ensure_ascii=False))
        cli.log(f"prepare: read {path}: {sum(state['pairs'].values()):,} pairs, "
                f"{state['malformed']} malformed, {sum(state['excluded'].values())} excluded "
                f"({time.time() - state['start']:.1f}s)")


class _Dedup(beam.CombineFn):
    """The texts of one compared pair → (the smallest text as written or None, copies)."""

    def create_accumulator(self):
        return None, 0

    def add_input(self, accumulator, text):
        return self.merge_accumulators([accumulator, (text, 1)])

    def merge_accumulators(self, accumulators):
        texts, n = zip(*accumulators)
        texts = [t for t in texts if t is not None]
        return (min(texts) if texts else None), sum(n)

    def extract_output(self, accumulator):
        return accumulator


def _kept(item) -> tuple:
    """((lang, src, tgt), (text, copies)) → (lang, src, tgt) as written."""
    (lang, src, tgt), (text, _) = item
    return (lang, *text) if text is not None else (lang, src, tgt)


def _example(pair) -> tuple:
    """(lang, src, tgt) → (lang, (hash, serialized tf.train.Example))."""
    lang, src, tgt = pair
    record = corpus.example_bytes({"src_raw": src, "tgt_raw": tgt, "lang": lang})
    return lang, (_hash(lang.encode("utf-8"), src, tgt), record)


def _shard_key(item, sizes: dict, shard_bytes: float):
    """(lang, (hash, record)) → ((lang, shard, shards), (hash, record)); `sizes`: the
    bytes of each language's records."""
    lang, (key, record) = item
    shards = max(1, int(np.ceil(sizes[lang] / shard_bytes)))
    return (lang, key % shards, shards), (key, record)


class _WriteShard(beam.DoFn):
    """All records of one shard → DIR/pairs/LANG-SSSSS-of-NNNNN.tfrecord, sorted by hash."""

    def __init__(self, output: str):
        self._output = output

    def process(self, element):
        (lang, shard, shards), records = element
        name = f"{PAIRS_DIR}/{_safe_name(lang)}-{shard:05d}-of-{shards:05d}.tfrecord"
        n = 0
        with files.record_writer(files.join(self._output, name)) as writer:
            for _, record in sorted(records):
                writer.write(record)
                n += 1
        yield json.dumps({"lang": lang, "shard": shard, "path": name, "pairs": n},
                         ensure_ascii=False)


class _CountWords(beam.DoFn):
    """(lang, sentence) → ((lang, word), count) per batch of sentences, the words split by
    `vocab.split_words` (one TF call per batch of any languages)."""

    BATCH = 4096

    def __init__(self, lowercase: bool):
        self._lowercase = lowercase

    def start_bundle(self):
        self._pending = []

    def process(self, element):
        self._pending.append(element)
        if len(self._pending) >= self.BATCH:
            yield from self._flush()

    def finish_bundle(self):
        for item in self._flush():
            yield window.GlobalWindows.windowed_value(item)

    def _flush(self):
        if not self._pending:
            return
        langs, sentences = zip(*self._pending)
        self._pending = []
        words = vocab.split_words(tf.constant(sentences, tf.string), self._lowercase).to_list()
        counts = collections.Counter((lang, w) for lang, row in zip(langs, words) for w in row)
        for (lang, word), n in counts.items():
            yield (lang, word.decode("utf-8")), n


class _WriteLines(beam.PTransform):
    """str elements → one file through the file layer (in no particular order)."""

    def __init__(self, path: str):
        super().__init__()
        self._path = path

    def expand(self, lines):
        path = self._path

        def write(_, group):
            files.makedirs(files.dirname(path))
            with files.open_file(path, "w") as f:
                for line in group:
                    f.write(line + "\n")

        return (lines | beam.Map(lambda line: (None, line)) | beam.GroupByKey()
                | beam.MapTuple(write))


def build_pipeline(p: beam.Pipeline, inputs, output: str, exclude: frozenset,
                   cfg: PrepareConfig) -> None:
    """The pipeline's transforms; results go to files under `output` (see `prepare`)."""
    work = files.join(output, _WORK_DIR)
    groups = file_groups(inputs, [files.size(path) for path in inputs])
    read = (p | "files" >> beam.Create(groups) | beam.Reshuffle()
            | "read" >> beam.ParDo(_ReadFiles(cfg, exclude)).with_outputs(
                "malformed", "excluded", "input", main="pairs"))
    counted = read.pairs | "dedup" >> beam.CombinePerKey(_Dedup())
    (counted | beam.FlatMap(lambda kv: [(kv[0][0], kv[1][1] - 1)] if kv[1][1] > 1 else [])
     | "duplicates" >> beam.CombinePerKey(sum) | "dup json" >> beam.Map(json.dumps)
     | "write duplicates" >> _WriteLines(files.join(work, "duplicates.jsonl")))
    (read.excluded | "excluded" >> beam.CombinePerKey(sum) | "exc json" >> beam.Map(json.dumps)
     | "write excluded" >> _WriteLines(files.join(work, "excluded.jsonl")))
    read.input | "write inputs" >> _WriteLines(files.join(work, "inputs.jsonl"))
    read.malformed | "write malformed" >> _WriteLines(files.join(output, MALFORMED_FILE))

    kept = counted | "kept" >> beam.Map(_kept)
    records = kept | "serialize" >> beam.Map(_example)
    sizes = (records | beam.MapTuple(lambda lang, r: (lang, len(r[1])))
             | "bytes" >> beam.CombinePerKey(sum))
    (records
     | "assign" >> beam.Map(_shard_key, beam.pvalue.AsDict(sizes), cfg.shard_mb * 2 ** 20)
     | "shards" >> beam.GroupByKey() | "write" >> beam.ParDo(_WriteShard(output))
     | "write shard list" >> _WriteLines(files.join(work, "shards.jsonl")))
    if not cfg.vocab_size:
        return
    sentences = kept | "sides" >> beam.FlatMap(
        lambda pair: [(pair[0], pair[1]), (pair[0], pair[2])])
    (sentences | "count words" >> beam.ParDo(_CountWords(cfg.vocab_lowercase))
     | "sum words" >> beam.CombinePerKey(sum)
     | beam.MapTuple(lambda key, n: (key[0], (key[1], n)))
     | "top words" >> beam.combiners.Top.PerKey(cfg.max_words, key=lambda wc: (wc[1], wc[0]))
     | "words json" >> beam.MapTuple(lambda lang, wc: json.dumps([lang, wc], ensure_ascii=False))
     | "write words" >> _WriteLines(files.join(work, "words.jsonl")))
    (sentences | "sample" >> beam.combiners.Sample.FixedSizePerKey(cfg.coverage_sentences)
     | "sample json" >> beam.MapTuple(lambda lang, s: json.dumps(
         [lang, [x.decode("utf-8") for x in s]], ensure_ascii=False))
     | "write sample" >> _WriteLines(files.join(work, "sample.jsonl")))


def _json_lines(path: str) -> list:
    """The JSON values of a file `_WriteLines` wrote; [] when nothing was written."""
    if not files.exists(path):
        return []
    return [json.loads(line) for line in files.read_text(path).splitlines() if line]


def _manifest(output: str, exclude_files) -> Manifest:
    """The manifest of the shards the pipeline wrote, with what it read and dropped."""
    work = files.join(output, _WORK_DIR)
    shards = sorted(_json_lines(files.join(work, "shards.jsonl")),
                    key=lambda s: (s["lang"], s["shard"]))
    inputs = sorted(_json_lines(files.join(work, "inputs.jsonl")), key=lambda e: e["index"])
    preparation = Preparation(
        inputs=tuple(FileEntry(files.absolute(e["path"]), e["bytes"],
                               dict(sorted(e["pairs"].items())), e["malformed"],
                               tuple(e["malformed_examples"])) for e in inputs),
        excluded=dict(_json_lines(files.join(work, "excluded.jsonl"))),
        duplicates=dict(_json_lines(files.join(work, "duplicates.jsonl"))),
        exclude_files=tuple(files.absolute(p) for p in exclude_files))
    return Manifest(tuple(FileEntry(s["path"], files.size(files.join(output, s["path"])),
                                    {s["lang"]: s["pairs"]}) for s in shards), preparation)


def _learn_vocab(output: str, manifest: Manifest, cfg: PrepareConfig) -> dict:
    """Learns DIR/vocab.txt from the pipeline's word counts; returns its paths and time."""
    start = time.time()
    work = files.join(output, _WORK_DIR)
    by_lang = {lang: dict(words) for lang, words in _json_lines(files.join(work, "words.jsonl"))}
    sentences = {lang: 2 * n for lang, n in manifest.counts().items()}
    counts = vocab.smoothed_word_counts(by_lang, sentences, cfg.alpha, cfg.vocab_sentences)
    cli.log(f"prepare: learning a {cfg.vocab_size}-token vocabulary from {len(counts):,} distinct "
            f"words of {sum(sentences.values()):,} sentences ...")
    tokens = vocab.learn_vocab(counts, cfg.vocab_size, max_unique_chars=cfg.max_unique_chars,
                               max_words=cfg.max_words)
    path = vocab.write_vocab(tokens, files.join(output, VOCAB_FILE))
    sample = dict(_json_lines(files.join(work, "sample.jsonl")))
    json_path, report = vocab.write_coverage(
        path, dict(sorted(sample.items())), lowercase=cfg.vocab_lowercase, alpha=cfg.alpha,
        vocab_sentences=cfg.vocab_sentences, counted_sentences=sum(sentences.values()))
    vocab.print_coverage(report)
    return {"vocab_file": path, "coverage_file": json_path, "vocab_size": len(tokens),
            "vocab_seconds": round(time.time() - start, 1)}


def _summary(output: str, manifest: Manifest, seconds: float, extra: dict) -> dict:
    prep = manifest.preparation
    read = collections.Counter()
    for entry in prep.inputs:
        read.update(entry.pairs)
    kept = manifest.counts()
    shards = collections.Counter(lang for f in manifest.files for lang in f.pairs)
    pairs_in = sum(read.values())
    return {
        "output": files.absolute(output),
        "manifest": files.absolute(files.join(output, corpus.MANIFEST_FILE)),
        "malformed_file": files.absolute(files.join(output, MALFORMED_FILE)),
        **{k: files.absolute(v) if k.endswith("_file") else v for k, v in extra.items()},
        "input_files": len(prep.inputs), "pairs_in": pairs_in, "malformed_lines": prep.malformed,
        "kept": manifest.pairs,
        "dropped": {"excluded": sum(prep.excluded.values()),
                    "duplicates": sum(prep.duplicates.values())},
        "shards": len(manifest.files), "seconds": round(seconds, 1),
        "pairs_per_second": round(pairs_in / seconds, 1) if seconds else 0.0,
        "languages": {lang: {"in": read[lang], "excluded": prep.excluded.get(lang, 0),
                             "duplicates": prep.duplicates.get(lang, 0),
                             "kept": kept.get(lang, 0), "shards": shards[lang]}
                      for lang in sorted(read)},
    }


def prepare(inputs, output: str, *, exclude=(), cfg: PrepareConfig = PrepareConfig(),
            beam_args=(), runner: str = "DirectRunner") -> dict:
    """Runs the pipeline and writes DIR (module docstring); returns the summary.

    Raises:
      DataError: an input or exclude path is missing, or a glob matches no file (naming
        it), or an input is inside `output`, or no valid pair was kept; an argument is
        neither prepare's nor Beam's; the shard size is not positive.
    """
    start = time.time()
    if not cfg.shard_mb > 0:
        raise DataError(f"--shard_mb must be > 0, got {cfg.shard_mb:g}")
    paths, _ = corpus.resolve_inputs(inputs)  # a prepared corpus stands for its shards
    try:
        exclude_paths = files.expand(exclude, what="exclude") if exclude else []
    except files.FileError as e:
        raise DataError(str(e)) from None
    inside = files.absolute(output).rstrip("/") + "/"
    if any(files.absolute(path).startswith(inside) for path in paths):
        raise DataError(f"{output}: the output holds inputs, which the run would replace; "
                        "write to another directory")
    cli.log(f"prepare: {len(paths)} input file(s) → {output} (runner {runner})")
    excluded = _exclude_set(exclude_paths, cfg.lowercase or cfg.compare_lowercase)
    if exclude_paths:
        cli.log(f"prepare: {len(excluded):,} distinct sentences to exclude from "
                f"{len(exclude_paths)} file(s)")
    options = PipelineOptions(list(beam_args))
    unknown = sorted(set(options.get_all_options(retain_unknown_options=True))
                     - set(options.get_all_options()))
    if unknown:
        raise DataError(f"unknown flag(s), neither prepare's nor Beam's: "
                        f"{', '.join('--' + name for name in unknown)}")
    # A rerun replaces the previous output whole: nothing of it may outlive a failure.
    for stale in (PAIRS_DIR, _WORK_DIR):
        files.rmtree(files.join(output, stale))
    for stale in (corpus.MANIFEST_FILE, SUMMARY_FILE, MALFORMED_FILE, VOCAB_FILE,
                  VOCAB_FILE + ".coverage.json"):
        files.remove(files.join(output, stale))
    files.makedirs(output)
    # Beam 2.77's DirectRunner first tries to download and start the Prism runner; for a
    # batch pipeline it then falls back to the FnApiRunner, which runs here directly
    # (it honours --direct_num_workers and --direct_running_mode).
    chosen = FnApiRunner() if runner == "DirectRunner" else runner
    with beam.Pipeline(runner=chosen, options=options) as p:
        build_pipeline(p, paths, output, excluded, cfg)
    cli.log(f"prepare: pipeline done in {time.time() - start:.0f}s; writing the manifest")
    manifest = _manifest(output, exclude_paths)
    if not manifest.files:
        raise DataError(f"no valid translation pair kept from {inputs}")
    corpus.write_manifest(manifest, files.join(output, corpus.MANIFEST_FILE))
    if not files.exists(files.join(output, MALFORMED_FILE)):
        files.write_text(files.join(output, MALFORMED_FILE), "")
    extra = _learn_vocab(output, manifest, cfg) if cfg.vocab_size else {}
    files.rmtree(files.join(output, _WORK_DIR))
    summary = _summary(output, manifest, time.time() - start, extra)
    files.write_json(files.join(output, SUMMARY_FILE), summary)
    return summary


FLAGS = flags.FLAGS


def define_flags():
    defaults = PrepareConfig()
    flags.DEFINE_multi_string("input", None, "Translation-pair files or globs (TSV, .gz, "
                              "TFRecord) or one prepared directory, on any filesystem "
                              "TensorFlow reaches. Repeatable.")
    flags.DEFINE_string("output", None, "Output directory (a rerun replaces its shards).")
    flags.DEFINE_multi_string("exclude", [], "Files of sentences (one a line; each field of "
                              "a tab-separated line) whose pairs are dropped. Repeatable.")
    flags.DEFINE_string("runner", "DirectRunner", "Beam runner: DirectRunner (local, no "
                        "set-up), PrismRunner, DataflowRunner, FlinkRunner, SparkRunner. "
                        "Other Beam pipeline options are passed through.")
    flags.DEFINE_bool("lowercase", defaults.lowercase, "Case-fold the text written (off: "
                      "training folds case itself with data.lowercase).")
    flags.DEFINE_bool("compare_lowercase", defaults.compare_lowercase, "Compare pairs for "
                      "dedup and --exclude case-folded, as training with data.lowercase (the "
                      "default) sees them; --nocompare_lowercase for a cased model.")
    flags.DEFINE_float("shard_mb", defaults.shard_mb, "Target shard size in megabytes.")
    flags.DEFINE_integer("vocab_size", defaults.vocab_size, "Learn a wordpiece vocabulary of "
                         "about this many tokens from the whole corpus (0: none).")
    flags.DEFINE_bool("vocab_lowercase", defaults.vocab_lowercase, "The vocabulary's case "
                      "folding (must match data.lowercase).")
    flags.DEFINE_float("alpha", defaults.alpha, "Language smoothing exponent of the word "
                       "counts: p(lang) ∝ n_lang^alpha.")
    flags.DEFINE_integer("vocab_sentences", defaults.vocab_sentences, "Languages' word counts "
                         "are weighted as a smoothed sample of this many sentences would "
                         "hold them (labse_tf.vocab's --max_sentences); at least the "
                         "corpus's sentences: unweighted.")
    flags.DEFINE_integer("max_words", defaults.max_words, "Distinct words the learner learns "
                         "from, the most frequent first (also kept per language).")
    flags.DEFINE_integer("max_unique_chars", defaults.max_unique_chars, "As labse_tf.vocab's.")
    flags.DEFINE_integer("coverage_sentences", defaults.coverage_sentences, "Sentences per "
                         "language the coverage report is measured on.")
    flags.mark_flags_as_required(["input", "output"])


def main(argv):
    cfg = PrepareConfig(lowercase=FLAGS.lowercase, compare_lowercase=FLAGS.compare_lowercase,
                        shard_mb=FLAGS.shard_mb, vocab_size=FLAGS.vocab_size,
                        vocab_lowercase=FLAGS.vocab_lowercase,
                        alpha=FLAGS.alpha, vocab_sentences=FLAGS.vocab_sentences,
                        max_words=FLAGS.max_words, max_unique_chars=FLAGS.max_unique_chars,
                        coverage_sentences=FLAGS.coverage_sentences)
    with cli.exit_on(DataError):
        summary = prepare(FLAGS.input, FLAGS.output, exclude=FLAGS.exclude, cfg=cfg,
                          beam_args=argv[1:], runner=FLAGS.runner)
    print(f"prepare: {summary['pairs_in']:,} pairs in, {summary['kept']:,} kept; dropped "
          f"{summary['dropped']['duplicates']:,} duplicates, {summary['dropped']['excluded']:,} "
          f"excluded; {summary['malformed_lines']:,} malformed lines "
          f"({summary['malformed_file']})")
    print("lang        in      kept  duplicates  excluded  shards")
    for lang, c in summary["languages"].items():
        print(f"{lang:8s} {c['in']:>7,} {c['kept']:>9,} {c['duplicates']:>11,} "
              f"{c['excluded']:>9,} {c['shards']:>7}")
    print(f"prepare: {summary['shards']} shards, manifest {summary['manifest']}, summary "
          f"{files.join(summary['output'], SUMMARY_FILE)}"
          + (f", vocabulary {summary['vocab_file']}" if "vocab_file" in summary else "")
          + f" in {summary['seconds']:.0f}s ({summary['pairs_per_second']:,.0f} pairs/s)")


if __name__ == "__main__":
    define_flags()
    # Flags labse_tf does not know are Beam pipeline options, passed on in argv.
    app.run(main, flags_parser=lambda argv: flags.FLAGS(argv, known_only=True))
