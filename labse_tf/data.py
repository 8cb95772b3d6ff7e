"""Translation pairs: reading and checking files, language-smoothed sampling, tf.data.

Pairs are read once into memory, grouped by language, with every malformed line skipped,
counted and (the first few) reported as `file:line`. Training batches are then drawn with
replacement, language first (p(lang) ∝ n_lang^alpha, LaBSE's smoothing so that small
languages are seen), then a pair uniformly within it. The draw for step `s` depends only on
`(seed, pipeline, s)`, so a resumed run continues the exact data stream it left.
"""

import collections
import dataclasses
import glob
import gzip
import os
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import keras_hub
import numpy as np
import tensorflow as tf

from labse_tf.preprocessing import Preprocessor, trim_padding

__all__ = [
    "DataError",
    "Pairs",
    "ReadStats",
    "expand_paths",
    "language_weights",
    "masked_lm_dataset",
    "pair_dataset",
    "pair_strings",
    "read_pairs",
    "sample_corpus_path",
    "text_dataset",
    "write_tfrecord",
]

_TFRECORD_SUFFIXES = (".tfrecord", ".tfrecords", ".tfrec")


class DataError(ValueError):
    """Input data cannot be used: missing files, or nothing valid in them."""


@dataclasses.dataclass
class ReadStats:
    """What reading found: valid pairs per language and malformed lines."""

    pairs: dict = dataclasses.field(default_factory=collections.Counter)
    malformed: int = 0
    examples: list = dataclasses.field(default_factory=list)  # "file:line: why" strings

    def summary(self) -> dict:
        return {"pairs": int(sum(self.pairs.values())), "languages": len(self.pairs),
                "malformed_lines": self.malformed, "malformed_examples": list(self.examples)}


@dataclasses.dataclass(frozen=True)
class Pairs:
    """Translation pairs grouped by language, in first-seen order within each language."""

    langs: tuple        # language codes, sorted
    src: tuple          # per language, a tuple of source sentences
    tgt: tuple          # per language, a tuple of target sentences

    def counts(self) -> dict:
        return {lang: len(s) for lang, s in zip(self.langs, self.src)}

    def flat(self) -> tuple[list, list, list]:
        """All pairs as parallel lists (lang, src, tgt)."""
        langs, src, tgt = [], [], []
        for lang, s, t in zip(self.langs, self.src, self.tgt):
            langs += [lang] * len(s)
            src += s
            tgt += t
        return langs, src, tgt

    def shard(self, num_shards: int, index: int) -> "Pairs":
        """Every `num_shards`-th pair of each language; languages left empty are dropped."""
        kept = [(l, s[index::num_shards], t[index::num_shards])
                for l, s, t in zip(self.langs, self.src, self.tgt) if len(s) > index]
        return Pairs(*map(tuple, zip(*kept))) if kept else Pairs((), (), ())


def sample_corpus_path(split: str = "train") -> str:
    """Path of the sample corpus shipped with the package (`train` or `heldout`)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "sample_data", f"{split}.tsv")


def expand_paths(patterns: Iterable[str]) -> list[str]:
    """Expands paths and globs; a path that does not exist or a glob with no match is an error."""
    paths = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise DataError(f"{pattern}: the pattern matches no file")
        for path in matches:
            if not os.path.isfile(path):
                raise DataError(f"{path}: no such file")
        paths += matches
    if not paths:
        raise DataError("no input files given")
    return paths


def _file_language(path: str) -> str:
    """Language of a file without a language column: its name up to the first dot."""
    return os.path.basename(path).split(".")[0]


def _tsv_records(path: str) -> Iterator[tuple[int, bytes]]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        for number, line in enumerate(f, 1):
            yield number, line.rstrip(b"\r\n")


def _parse_tsv_line(raw: bytes, default_lang: str) -> tuple[str, str, str]:
    """(lang, src, tgt) from one line; raises ValueError saying what is wrong."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"invalid UTF-8 at byte {e.start}") from None
    fields = line.split("\t")
    if len(fields) == 2:
        lang, src, tgt = default_lang, *fields
    elif len(fields) == 3:
        lang, src, tgt = fields
    else:
        raise ValueError(f"expected 2 or 3 tab-separated fields, got {len(fields)}")
    lang, src, tgt = lang.strip(), src.strip(), tgt.strip()
    for name, value in (("language", lang), ("source", src), ("target", tgt)):
        if not value:
            raise ValueError(f"empty {name} field")
    return lang, src, tgt


def _tfrecord_records(path: str) -> Iterator[tuple[int, bytes]]:
    for number, record in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator(), 1):
        yield number, record


def _parse_example(record: bytes, default_lang: str) -> tuple[str, str, str]:
    example = tf.train.Example.FromString(record)
    features = example.features.feature

    def text(key: str, required: bool) -> str:
        if key not in features:
            if required:
                raise ValueError(f"missing feature {key!r}")
            return default_lang
        values = features[key].bytes_list.value
        if len(values) != 1:
            raise ValueError(f"feature {key!r} must hold one string, got {len(values)}")
        try:
            value = values[0].decode("utf-8").strip()
        except UnicodeDecodeError as e:
            raise ValueError(f"feature {key!r}: invalid UTF-8 at byte {e.start}") from None
        if not value:
            raise ValueError(f"feature {key!r} is empty")
        return value

    return text("lang", False), text("src_raw", True), text("tgt_raw", True)


def read_pairs(patterns: Iterable[str], *, report: int = 5,
               log: Callable[[str], None] = print) -> tuple[Pairs, ReadStats]:
    """Reads translation pairs from TSV (plain or .gz) and TFRecord files.

    TSV lines are `src<TAB>tgt` (the language is the file name up to its first dot) or
    `lang<TAB>src<TAB>tgt`. TFRecord files hold tf.train.Example records with string
    features `src_raw`, `tgt_raw` and optionally `lang`. Malformed lines or records are
    skipped and counted; the first `report` are logged as `file:line: why`.

    Args:
      patterns: paths or globs.
      report: int. Malformed lines logged individually.
      log: callable. Where reports go.

    Returns:
      (pairs, stats).

    Raises:
      DataError: a path is missing, a glob matches nothing, or no valid pair was found.
    """
    grouped = collections.defaultdict(lambda: ([], []))
    stats = ReadStats()
    for path in expand_paths(patterns):
        is_tfrecord = path.endswith(_TFRECORD_SUFFIXES)
        records = _tfrecord_records(path) if is_tfrecord else _tsv_records(path)
        parse = _parse_example if is_tfrecord else _parse_tsv_line
        default_lang = _file_language(path)
        for number, raw in records:
            if not is_tfrecord and not raw.strip():
                continue  # blank lines carry nothing
            try:
                lang, src, tgt = parse(raw, default_lang)
            except ValueError as e:
                stats.malformed += 1
                if len(stats.examples) < report:
                    message = f"{path}:{number}: skipped malformed {'record' if is_tfrecord else 'line'}: {e}"
                    stats.examples.append(message)
                    log(message)
                continue
            grouped[lang][0].append(src)
            grouped[lang][1].append(tgt)
            stats.pairs[lang] += 1
    if stats.malformed > len(stats.examples):
        log(f"... {stats.malformed} malformed lines skipped in all")
    if not grouped:
        raise DataError(f"no valid translation pair in {list(patterns)}")
    langs = tuple(sorted(grouped))
    return Pairs(langs, tuple(tuple(grouped[l][0]) for l in langs),
                 tuple(tuple(grouped[l][1]) for l in langs)), stats


def language_weights(counts: Sequence[int], alpha: float) -> np.ndarray:
    """Sampling probabilities p_i ∝ n_i^alpha (alpha=1: proportional, 0: uniform)."""
    counts = np.asarray(counts, np.float64)
    if np.any(counts <= 0):
        raise ValueError(f"every language needs at least one pair, got counts {counts}")
    weights = counts ** alpha
    return weights / weights.sum()


def pair_dataset(pairs: Pairs, preprocessor: Preprocessor, *, batch_size: int, alpha: float,
                 seed: int, start_step: int = 0, seq_length: int | None = None,
                 trim: bool = True, language_group: int = 1) -> tf.data.Dataset:
    """An endless dataset of tokenized batches of translation pairs.

    Args:
      pairs: Pairs. The pairs this input pipeline draws from (already sharded).
      preprocessor: Preprocessor. Tokenizes and packs both sides.
      batch_size: int. Pairs per batch (per replica under a strategy).
      alpha: float. Language smoothing exponent.
      seed: int. Seed of the draw; combine with the pipeline id under multi-worker.
      start_step: int. Index of the first batch, so a resumed run continues its stream.
      seq_length: int or None. Packed length; default the preprocessor's.
      trim: bool. Cut each batch (both sides alike) to its longest sentence. Besides
        skipping padding, this leaves the sequence length unknown to the graph, which keeps
        Keras's EinsumDense projections on a fast path (with a static length they become a
        broadcasting BatchMatMul, ~1.6x slower to train on CPU: bench/README.md). False
        keeps the static `seq_length` that XLA (TPUs, train.jit_compile) compiles once and
        that multi-worker collectives need (distribute.needs_static_shapes).
      language_group: int. Consecutive pairs drawn from one language (see `pair_strings`).

    Returns:
      tf.data.Dataset of `{"src": packed, "tgt": packed}`, each packed a dict of int32
      `[batch_size, length]` tensors (token_ids, padding_mask, segment_ids); length is
      `seq_length`, or at most that with `trim`. The batch size is static (gradient
      caching splits it).
    """

    def tokenize(batch):
        src, tgt = (preprocessor(batch[side], seq_length) for side in ("src", "tgt"))
        if trim:  # both sides alike: gradient caching embeds them as one batch
            src, tgt = trim_padding(src, tgt)
        length = None if trim else seq_length or preprocessor.seq_length
        return {"src": _static_batch(src, batch_size, length),
                "tgt": _static_batch(tgt, batch_size, length)}

    return (pair_strings(pairs, batch_size=batch_size, alpha=alpha, seed=seed,
                         start_step=start_step, language_group=language_group)
            .map(tokenize, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .prefetch(tf.data.AUTOTUNE))


def text_dataset(sentences: Sequence[str], preprocessor: Preprocessor, *, batch_size: int,
                 seq_length: int | None = None) -> tf.data.Dataset:
    """Sentences in order, tokenized in batches (the last one may be short), for embedding."""
    return (tf.data.Dataset.from_tensor_slices(tf.constant(list(sentences), tf.string))
            .batch(batch_size)
            .map(lambda s: preprocessor(s, seq_length), num_parallel_calls=tf.data.AUTOTUNE,
                 deterministic=True)
            .prefetch(tf.data.AUTOTUNE))


def _static_batch(packed: dict, batch_size: int, length: int | None) -> dict:
    """`[batch, seq]` tensors with a static batch size (gradient caching splits it) and
    the static `length`, or an unknown one (None) after trimming."""
    return {k: tf.ensure_shape(v, [batch_size, length]) for k, v in packed.items()}


def write_tfrecord(path: str, rows: Iterable[Mapping[str, str]]) -> None:
    """Writes tf.train.Example records of string features (e.g. src_raw, tgt_raw, lang)."""
    with tf.io.TFRecordWriter(path) as writer:
        for row in rows:
            feature = {k: tf.train.Feature(bytes_list=tf.train.BytesList(
                value=[v.encode("utf-8") if isinstance(v, str) else v])) for k, v in row.items()}
            writer.write(tf.train.Example(
                features=tf.train.Features(feature=feature)).SerializeToString())


def pair_strings(pairs: Pairs, *, batch_size: int, alpha: float, seed: int,
                 start_step: int = 0, language_group: int = 1) -> tf.data.Dataset:
    """The draws of `pair_dataset` as strings: `{"src": [batch_size], "tgt": [batch_size]}`.

    Language first (p ∝ n^alpha), then a pair uniformly within it, keyed on (seed, step)
    so that a resumed run continues the same stream. With `language_group` > 1 each drawn
    language gives that many consecutive pairs (the batch size must be a multiple).
    """
    if batch_size % language_group:
        raise ValueError(f"the batch size {batch_size} is not a multiple of the language group "
                         f"size {language_group}")

    counts = [len(s) for s in pairs.src]
    log_p = tf.constant(np.log(language_weights(counts, alpha))[None, :], tf.float32)
    starts = tf.constant(np.cumsum([0] + counts[:-1]), tf.int64)
    sizes = tf.constant(counts, tf.float32)
    _, src_all, tgt_all = pairs.flat()
    src_all, tgt_all = tf.constant(src_all), tf.constant(tgt_all)

    def draw(step):
        key = tf.cast(seed, tf.int64)
        lang = tf.random.stateless_categorical(log_p, batch_size // language_group,
                                               seed=tf.stack([key, 2 * step]))[0]
        lang = tf.repeat(lang, language_group)
        u = tf.random.stateless_uniform([batch_size], seed=tf.stack([key, 2 * step + 1]))
        index = tf.gather(starts, lang) + tf.cast(tf.floor(u * tf.gather(sizes, lang)), tf.int64)
        return {"src": tf.gather(src_all, index), "tgt": tf.gather(tgt_all, index)}

    return tf.data.Dataset.counter(start=start_step).map(draw)


def masked_lm_dataset(pairs: Pairs, preprocessor: Preprocessor, *, batch_size: int,
                      alpha: float, seed: int, tlm_fraction: float, mask_rate: float,
                      mask_token_rate: float, random_token_rate: float, max_predictions: int,
                      start_step: int = 0, seq_length: int | None = None,
                      trim: bool = True) -> tf.data.Dataset:
    """An endless dataset of masked MLM and TLM examples, built inside the tf.data graph.

    Pairs are drawn by `pair_strings`, as `pair_dataset` draws them. Each example is, with
    probability `tlm_fraction`, TLM: the pair packed as `[CLS] src [SEP] tgt [SEP]` with
    segment ids 0 then 1; otherwise MLM: one side of the pair, picked at random, as
    `[CLS] sentence [SEP]`. Then `mask_rate` of the wordpieces (rounded up, at most
    `max_predictions`; never [CLS], [SEP], [UNK] or padding) are selected, and of those
    `mask_token_rate` become [MASK], `random_token_rate` a random token and the rest
    stay as they are (BERT's 80/10/10), by tensorflow-text's masking ops. Those draw from
    TensorFlow's seeded but stateful random ops, so a resumed run continues the stream of
    pairs and MLM/TLM choices exactly, but not that of the masks.

    Args:
      pairs: Pairs. The pairs this input pipeline draws from (already sharded).
      preprocessor: Preprocessor. Tokenizes and packs.
      batch_size: int. Examples per batch (per replica under a strategy).
      alpha: float. Language smoothing exponent.
      seed: int. Seed of the draw of pairs and of the MLM/TLM choice.
      tlm_fraction: float. Probability that an example is TLM.
      mask_rate, mask_token_rate, random_token_rate: float. As described above.
      max_predictions: int. Predictions per example, padded to this length.
      start_step: int. Index of the first batch, so a resumed run continues its stream.
      seq_length: int or None. Packed length; default the preprocessor's.
      trim: bool. Cut each batch to its longest example, as `pair_dataset` does.

    Returns:
      tf.data.Dataset of dicts: int32 `[batch_size, length]` token_ids (masked),
      padding_mask, segment_ids; `[batch_size, max_predictions]` int32 mask_positions,
      int32 mask_ids (the original tokens there) and float32 mask_weights (1 for a real
      prediction, 0 for padding).
    """
    masker = keras_hub.layers.MaskedLMMaskGenerator(
        preprocessor.vocab_size, mask_rate, preprocessor.mask_id,
        mask_selection_length=max_predictions,
        unselectable_token_ids=[preprocessor.pad_id, preprocessor.cls_id, preprocessor.sep_id,
                                preprocessor.unk_id],
        mask_token_rate=mask_token_rate, random_token_rate=random_token_rate)
    strings = pair_strings(pairs, batch_size=batch_size, alpha=alpha, seed=seed,
                           start_step=start_step)

    # Straight-line TF ops: AutoGraph would only slow the tracing (by seconds).
    @tf.autograph.experimental.do_not_convert
    def example(batch, step):
        src, tgt = preprocessor.tokenize(batch["src"]), preprocessor.tokenize(batch["tgt"])
        size = tf.shape(batch["src"])[0]
        # A stream of randomness apart from pair_dataset's (seed, 2 step) and (seed, 2 step + 1).
        key = tf.random.experimental.stateless_fold_in(tf.stack([tf.cast(seed, tf.int64), step]), 1)
        is_tlm, is_src = tf.unstack(tf.random.stateless_uniform([2, size], seed=key))
        tlm = preprocessor.bert_pack_inputs([src, tgt], seq_length)
        # Row i of the MLM batch: src[i] or tgt[i], i.e. row i or size + i of [src; tgt].
        side = tf.gather(tf.concat([src, tgt], 0),
                         tf.range(size) + size * tf.cast(is_src >= 0.5, tf.int32))
        mlm = preprocessor.bert_pack_inputs([side], seq_length)
        packed = {k: tf.where(is_tlm[:, None] < tlm_fraction, tlm[k], mlm[k]) for k in tlm}
        masked = masker(packed["token_ids"])
        sequences = {**packed, "token_ids": masked["token_ids"]}
        if trim:
            (sequences,) = trim_padding(sequences)
        sequences = _static_batch(sequences, batch_size,
                                  None if trim else seq_length or preprocessor.seq_length)
        predictions = {"mask_positions": tf.cast(masked["mask_positions"], tf.int32),
                       "mask_ids": tf.cast(masked["mask_ids"], tf.int32),
                       "mask_weights": tf.cast(masked["mask_weights"], tf.float32)}
        return {**sequences, **{k: tf.ensure_shape(v, [batch_size, max_predictions])
                                for k, v in predictions.items()}}

    return (tf.data.Dataset.zip(strings, tf.data.Dataset.counter(start=start_step))
            .map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .prefetch(tf.data.AUTOTUNE))
