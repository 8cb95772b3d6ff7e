"""Translation pairs as tf.data streams that never hold the corpus: mixing, sharding, resume.

Training reads its files as it goes (any filesystem `tf.io.gfile` reaches), from the
counts of a corpus manifest (corpus.py) computed by one pass before training. Each
input pipeline reads its share of every language: whole files where a language has
files enough to give every pipeline some (balanced by pair count), else every
`num_pipelines`-th pair of each of its files. A language with fewer pairs than there
are pipelines is read whole by every pipeline.

The stream for a pipeline is a pure function of (seed, pipeline, step), so a resumed
run continues exactly the batches it would have seen, on any strategy and any number
of workers, with no iterator state in the checkpoint:
- each slot of a batch gets a language drawn with p(lang) ∝ n_lang^alpha (LaBSE's
  smoothing), from stateless uniforms keyed on (seed, chunk of steps), so the number
  of pairs each language gave before step s is recomputed on resume in chunks;
- each language is an endless sequence of epochs; an epoch visits that pipeline's files
  of the language in an order drawn per epoch, from a starting pair drawn per epoch
  among the first ROTATION_PAIRS (wrapping round), and shuffles its pairs within
  windows of `window` pairs (a permutation drawn per window). The random start matters
  for multi-way parallel corpora, whose files list the same English sentences in about
  the same order in every language: read from the same place, every language's window
  would hold the same sentences, and a batch would hold many copies of one English
  sentence, each a false negative for the others (measured: bench/README.md section 8).
  The k-th pair a language gives is thus addressable: resuming skips whole files by
  their manifest counts, then at most one file's pairs, never the corpus. Every pair of
  a language comes once per epoch, of any size (int64 throughout).
Memory is a window per language plus the prefetched batches, whatever the corpus size.
"""

import dataclasses
import os
from typing import Callable, Iterable, Mapping, Sequence

import keras_hub
import numpy as np
import tensorflow as tf

from labse_tf import corpus, files
from labse_tf.corpus import DataError, Manifest
from labse_tf.preprocessing import Preprocessor, trim_padding

__all__ = [
    "DataError",
    "LanguageShard",
    "Masking",
    "Pairs",
    "Sampling",
    "chunk_rounds",
    "consumed_groups",
    "language_shards",
    "language_stream",
    "language_weights",
    "load_manifest",
    "masked_lm_dataset",
    "pair_dataset",
    "pair_strings",
    "read_pairs",
    "sample_corpus_path",
    "spread_pairs",
    "write_tfrecord",
]

# Lines parsed per call in a training stream (one stream per language is open at a time).
STREAM_PARSE_BATCH = 256
# An epoch of a language starts at a random pair among its first ROTATION_PAIRS (see the
# module doc); bounded, so starting an epoch reads at most that many pairs before its first.
ROTATION_PAIRS = 16384


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How a pipeline draws pairs: the knobs of `pair_strings` besides its position."""

    alpha: float             # language smoothing exponent: p(lang) ∝ n^alpha
    seed: int                # seed of the whole stream (combined with the pipeline id)
    language_group: int = 1  # consecutive pairs drawn from one language
    window: int = 1024       # pairs shuffled together within a language
    chunk: int = 16384       # pairs shuffled together across languages (about, at most)


@dataclasses.dataclass(frozen=True)
class Pairs:
    """Translation pairs grouped by language, in first-seen order within each language.

    For small sets read whole (evaluation pairs); training streams instead."""

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


def sample_corpus_path(split: str = "train") -> str:
    """Path of the sample corpus shipped with the package (`train` or `heldout`)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "sample_data", f"{split}.tsv")


def load_manifest(patterns: Iterable[str], *, report: int = 5,
                  log: Callable[[str], None] = print) -> Manifest:
    """The manifest of a corpus given as files/globs (counted now) or as a prepared one."""
    paths, manifest = corpus.resolve_inputs(patterns)
    if manifest is None:
        log(f"counting pairs in {len(paths)} file(s) ...")
        manifest = corpus.build_manifest(paths, report=report, log=log)
    return manifest


def read_pairs(patterns: Iterable[str], *, report: int = 5,
               log: Callable[[str], None] = print) -> tuple[Pairs, Manifest]:
    """Reads a small corpus whole (evaluation sets, vocabulary pruning corpora).

    Lines are validated as training validates them (corpus.parse_lines); malformed
    ones are skipped and counted, the first `report` logged as `file:line: why`.

    Returns:
      (pairs, manifest of the files read).

    Raises:
      DataError: a path is missing, a glob matches nothing, or no valid pair was found.
    """
    manifest = load_manifest(patterns, report=report, log=log)
    grouped = [([], []) for _ in manifest.langs]
    for pair in spread_pairs(manifest).as_numpy_iterator():
        grouped[pair["lang"]][0].append(pair["src"].decode("utf-8"))
        grouped[pair["lang"]][1].append(pair["tgt"].decode("utf-8"))
    return Pairs(manifest.langs, tuple(tuple(g[0]) for g in grouped),
                 tuple(tuple(g[1]) for g in grouped)), manifest


def language_weights(counts: Sequence[int], alpha: float) -> np.ndarray:
    """Sampling probabilities p_i ∝ n_i^alpha (alpha=1: proportional, 0: uniform)."""
    counts = np.asarray(counts, np.float64)
    if np.any(counts <= 0):
        raise ValueError(f"every language needs at least one pair, got counts {counts}")
    weights = counts ** alpha
    return weights / weights.sum()


@dataclasses.dataclass(frozen=True)
class LanguageShard:
    """What one input pipeline reads of one language: files, and pairs in each."""

    lang: str
    paths: tuple
    counts: tuple       # pairs of `lang` this pipeline takes from each file
    stride: int = 1     # take every stride-th pair of the language in each file ...
    offset: int = 0     # ... starting at this one

    @property
    def total(self) -> int:
        return sum(self.counts)


def language_shards(manifest: Manifest, num_pipelines: int, pipeline: int) -> dict:
    """Per language, the `LanguageShard` that input pipeline `pipeline` reads.

    Whole files when the language's files can give every pipeline some pairs: assigned
    largest first to the pipeline with the fewest pairs so far, which balances them.
    Otherwise every pipeline reads every file of the language and takes every
    `num_pipelines`-th pair of each; a language too small for that to give every
    pipeline a pair is read whole by each (its pairs then repeat across pipelines).
    """
    shards = {}
    for lang in manifest.langs:
        held = [(f.path, f.pairs[lang]) for f in manifest.files if f.pairs.get(lang)]
        load, assigned = [0] * num_pipelines, [[] for _ in range(num_pipelines)]
        for index in sorted(range(len(held)), key=lambda i: (-held[i][1], i)):
            target = min(range(num_pipelines), key=lambda p: (load[p], p))
            load[target] += held[index][1]
            assigned[target].append(index)
        lines = [[max(0, -(-(n - p) // num_pipelines)) for _, n in held]
                 for p in range(num_pipelines)]
        if min(load) > 0:
            mine = sorted(assigned[pipeline])
            shards[lang] = LanguageShard(lang, tuple(held[i][0] for i in mine),
                                         tuple(held[i][1] for i in mine))
        elif min(sum(c) for c in lines) > 0:
            shards[lang] = LanguageShard(lang, tuple(p for p, _ in held), tuple(lines[pipeline]),
                                         num_pipelines, pipeline)
        else:
            shards[lang] = LanguageShard(lang, tuple(p for p, _ in held),
                                         tuple(n for _, n in held))
    return shards


def _file_pairs(path, kind, default_lang, lang, stride, offset) -> tf.data.Dataset:
    """The valid pairs of `lang` in one file, in order, every stride-th from `offset`."""

    @tf.autograph.experimental.do_not_convert
    def valid(batch):
        keep = tf.logical_and(tf.equal(batch["error"], ""), tf.logical_not(batch["blank"]))
        keep = tf.logical_and(keep, tf.equal(batch["lang"], lang))
        return {k: tf.boolean_mask(batch[k], keep) for k in ("src", "tgt")}

    pairs = corpus.parsed_file(path, kind, default_lang, batch=STREAM_PARSE_BATCH,
                               parallel=False).map(valid).unbatch()
    return pairs.shard(stride, offset)


def _permutation(n, seed) -> tf.Tensor:
    return tf.argsort(tf.random.stateless_uniform(tf.reshape(n, [1]), seed=seed))


def epoch_reads(counts: tf.Tensor, offset: tf.Tensor, window,
                rotation=0) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Where an epoch resumed at pair `offset` reads (int64 throughout).

    The epoch reads the files' pairs in this order from pair `rotation` on, wrapping
    round to the first: two spans of the concatenated files, [rotation + begin, total)
    then [rotation + begin - total, rotation) clipped at 0, where `begin` is the window
    boundary at or before `offset`, so its shuffle is the one the uninterrupted stream had.

    Args:
      counts: int64 `[files]`. Pairs per file, in this epoch's file order.
      offset: int64 scalar. Pairs of the epoch already consumed.
      window: int64 scalar. The shuffle window.
      rotation: int64 scalar in [0, total). The epoch's first pair.

    Returns:
      (skip, take): int64 `[2 * files]`, pairs to skip and then take in each file, for the
      first span's files then the second's (take 0: not opened); drop: pairs to drop
      after shuffling the first window read.
    """
    counts = tf.convert_to_tensor(counts, tf.int64)
    total, begin = tf.reduce_sum(counts), offset // window * window
    starts = tf.cumsum(counts, exclusive=True)

    def span(lo, hi):
        skip = tf.clip_by_value(lo - starts, 0, counts)
        return skip, tf.clip_by_value(hi - starts, 0, counts) - skip

    first = tf.minimum(rotation + begin, total)
    skip1, take1 = span(first, total)
    skip2, take2 = span(tf.maximum(rotation + begin - total, 0), rotation)
    return tf.concat([skip1, skip2], 0), tf.concat([take1, take2], 0), offset - begin


@dataclasses.dataclass(frozen=True)
class _ShardTable:
    """Every language's shard as flat tensors, so one traced graph serves all languages."""

    langs: tf.Tensor      # string [L]
    splits: tf.Tensor     # int64 [L + 1]: language l's files are [splits[l], splits[l+1])
    paths: tf.Tensor      # string [F]
    kinds: tf.Tensor      # string [F]
    defaults: tf.Tensor   # string [F]: the language of 2-column lines
    counts: tf.Tensor     # int64 [F]: pairs this pipeline takes of the language there
    strides: tf.Tensor    # int64 [L]
    offsets: tf.Tensor    # int64 [L]

    @classmethod
    def build(cls, shards: Sequence[LanguageShard]) -> "_ShardTable":
        paths = [p for s in shards for p in s.paths]
        table = corpus.file_table(paths)
        return cls(tf.constant([s.lang for s in shards]),
                   tf.constant(np.cumsum([0] + [len(s.paths) for s in shards]), tf.int64),
                   *table, tf.constant([c for s in shards for c in s.counts], tf.int64),
                   tf.constant([s.stride for s in shards], tf.int64),
                   tf.constant([s.offset for s in shards], tf.int64))


def _language_pairs(table: _ShardTable, lang) -> tf.data.Dataset:
    """One pass over language `lang`'s pairs in file order, unshuffled."""
    lo, hi = table.splits[lang], table.splits[lang + 1]
    name, stride, offset = table.langs[lang], table.strides[lang], table.offsets[lang]
    return tf.data.Dataset.from_tensor_slices(
        (table.paths[lo:hi], table.kinds[lo:hi], table.defaults[lo:hi])).flat_map(
        lambda p, k, d: _file_pairs(p, k, d, name, stride, offset))


def spread_pairs(manifest: Manifest, take: Sequence[int] | None = None,
                 seed: int = 0) -> tf.data.Dataset:
    """Pairs of every language in one pass, in file order: all of them, or `take[l]` of
    language l spread evenly over it (every (n_l // take[l])-th, from an offset the seed
    picks). One traced graph for all languages.

    Returns:
      tf.data.Dataset of `{"lang": int64 index into manifest.langs, "src", "tgt"}`.
    """
    counts = np.array(list(manifest.counts().values()), np.int64)
    take = counts if take is None else np.minimum(np.asarray(take, np.int64), counts)
    strides = np.maximum(1, counts // np.maximum(take, 1))
    shards = language_shards(manifest, 1, 0)
    table = _ShardTable.build([shards[lang] for lang in manifest.langs])
    strides_t, take_t = tf.constant(strides), tf.constant(take)
    offsets_t = tf.constant(seed % strides)

    def one(lang):
        return (_language_pairs(table, lang).shard(strides_t[lang], offsets_t[lang])
                .take(take_t[lang]).map(lambda p: {"lang": lang, **p}))

    return tf.data.Dataset.range(len(counts)).filter(lambda l: take_t[l] > 0).flat_map(one)


def _language_stream(table: _ShardTable, lang, key, start, window) -> tf.data.Dataset:
    """Language `lang`'s endless shuffled pairs from its `start`-th on (see module doc)."""
    lo, hi = table.splits[lang], table.splits[lang + 1]
    paths, kinds, defaults, counts = (x[lo:hi] for x in (table.paths, table.kinds,
                                                        table.defaults, table.counts))
    name, stride, offset = table.langs[lang], table.strides[lang], table.offsets[lang]
    total = tf.reduce_sum(counts)
    window = tf.minimum(tf.cast(window, tf.int64), total)
    first_epoch, first_offset = start // total, start % total

    @tf.autograph.experimental.do_not_convert
    def epoch_pairs(epoch):
        epoch_key = tf.random.experimental.stateless_fold_in(key, epoch)
        order = _permutation(hi - lo, epoch_key)
        ordered = tf.gather(counts, order)
        resume = tf.where(tf.equal(epoch, first_epoch), first_offset, tf.constant(0, tf.int64))
        rotation = tf.random.stateless_uniform(
            [], tf.random.experimental.stateless_fold_in(epoch_key, -1),
            maxval=tf.minimum(total, ROTATION_PAIRS), dtype=tf.int64)
        skip, take, drop = epoch_reads(ordered, resume, window, rotation)
        read = take > 0
        files = tuple(tf.boolean_mask(tf.tile(tf.gather(x, order), [2]), read)
                      for x in (paths, kinds, defaults))
        pairs = tf.data.Dataset.from_tensor_slices(
            (*files, tf.boolean_mask(skip, read), tf.boolean_mask(take, read))).flat_map(
            lambda p, k, d, s, t: _file_pairs(p, k, d, name, stride, offset).skip(s).take(t))

        def shuffle(index, batch):
            perm = _permutation(tf.size(batch["src"]),
                                tf.random.experimental.stateless_fold_in(epoch_key, index))
            return {k: tf.gather(v, perm) for k, v in batch.items()}

        return (pairs.batch(window).enumerate(start=resume // window).map(shuffle).unbatch()
                .skip(drop))

    return tf.data.Dataset.counter(first_epoch).flat_map(epoch_pairs)


def language_stream(shard: LanguageShard, *, seed, start: int = 0,
                    window: int = 1024) -> tf.data.Dataset:
    """The endless, shuffled pairs of one language shard from its `start`-th pair on.

    Args:
      shard: LanguageShard. Must hold at least one pair.
      seed: int64 `[2]`. Key of this language's stream.
      start: int. Pairs of this stream already consumed (any size: int64).
      window: int. Pairs shuffled together (the last window of an epoch may be shorter).

    Returns:
      tf.data.Dataset of `{"src": tf.string, "tgt": tf.string}` scalars.
    """
    return _language_stream(_ShardTable.build([shard]), tf.constant(0, tf.int64),
                            tf.cast(seed, tf.int64), tf.constant(start, tf.int64), window)


def mixing_rates(counts: Sequence[int], alpha: float) -> np.ndarray:
    """Groups each language gives per round of the mix: q ∝ n^alpha, the largest 1."""
    p = language_weights(counts, alpha)
    return p / p.max()


def consumed_groups(rates: np.ndarray, phases: np.ndarray, rounds) -> np.ndarray:
    """Groups each language gave in its first `rounds` rounds: floor(r q + φ) (error
    diffusion: within one group of r q at every round). The pipeline's graph uses the
    same float64 expression, so host and graph agree exactly."""
    return np.floor(np.float64(rounds) * rates + phases).astype(np.int64)


def chunk_rounds(rates: np.ndarray, group: int, chunk: int) -> int:
    """Rounds per chunk: enough that every language gives a group in each, but at most
    `chunk` pairs' worth (at least one round). A chunk is held whole before it is
    shuffled, so with rates as skewed as 1 pair against 10^4 (alpha 1) an unbounded
    chunk would be the whole corpus; bounded, a rare language gives no group to most."""
    return int(max(1, min(np.ceil(1.0 / rates.min()), chunk // (group * rates.sum()))))


def _first_chunk(rates: np.ndarray, phases: np.ndarray, rounds: int, groups: int) -> int:
    """The last chunk whose start holds at most `groups` groups in all (binary search)."""
    total = lambda c: int(consumed_groups(rates, phases, c * rounds).sum())
    lo, hi = 0, 1
    while total(hi) <= groups:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if total(mid) <= groups else (lo, mid)
    return lo


def _pipeline_key(sampling: Sampling, pipeline: int) -> tf.Tensor:
    """The stateless-random key of one input pipeline's streams (its draws, its masks).

    Folded in with a language's index (>= 0) for its pairs, or with one of the negative
    stream ids below, so that no two kinds of draw share a key."""
    return tf.constant([sampling.seed, pipeline], tf.int64)


_PHASES, _CHUNK_SHUFFLE, _MLM_MASKS = -1, -2, -3


def pair_strings(manifest: Manifest, *, batch_size: int, sampling: Sampling,
                 start_step: int = 0, num_pipelines: int = 1,
                 pipeline: int = 0) -> tf.data.Dataset:
    """Batches of raw pairs for one input pipeline: `{"src": [batch_size], "tgt": ...}`.

    Languages are mixed by error diffusion: after r rounds language l has given
    floor(r q_l + φ_l) groups of `sampling.language_group` consecutive pairs, with
    q_l ∝ n_l^alpha (the largest 1) and a phase φ_l drawn from the seed, so every
    stretch of the stream holds each language's share to within one group. Rounds
    are taken in chunks of about `sampling.chunk` pairs (`chunk_rounds`); a chunk's
    groups are shuffled together and then batched. The stream is a pure function of
    the seed, the pipeline and the step; see the module docstring.
    """
    group = sampling.language_group
    if batch_size % group:
        raise ValueError(f"the batch size {batch_size} is not a multiple of the language group "
                         f"size {group}")
    if not 0 <= pipeline < num_pipelines:
        raise ValueError(f"pipeline {pipeline} is not in [0, {num_pipelines})")
    shards = language_shards(manifest, num_pipelines, pipeline)
    table = _ShardTable.build([shards[lang] for lang in manifest.langs])
    rates = mixing_rates(list(manifest.counts().values()), sampling.alpha)
    key = _pipeline_key(sampling, pipeline)
    fold = tf.random.experimental.stateless_fold_in
    phases = tf.random.stateless_uniform([len(rates)], seed=fold(key, _PHASES),
                                         dtype=tf.float64).numpy()
    rounds = chunk_rounds(rates, group, sampling.chunk)
    first = start_step * (batch_size // group)  # groups before this step
    first_chunk = _first_chunk(rates, phases, rounds, first)
    used = consumed_groups(rates, phases, first_chunk * rounds)
    rates_t, phases_t, used_t = (tf.constant(x) for x in (rates, phases, used))
    lang_keys = tf.stack([fold(key, i) for i in range(len(rates))])

    empty = tf.data.Dataset.from_tensors(
        {k: tf.zeros([0, group], tf.string) for k in ("src", "tgt")}).repeat()

    @tf.autograph.experimental.do_not_convert
    def chunks(lang):
        """Language `lang`'s groups, one batch per chunk (sized by the chunk's share)."""
        q, phi = rates_t[lang], phases_t[lang]
        given = lambda c: tf.cast(tf.floor(tf.cast(c * rounds, tf.float64) * q + phi), tf.int64)

        def chunk_of(index, _):
            k = used_t[lang] + index  # this group's index in the language's stream
            c = tf.cast(tf.floor((tf.cast(k, tf.float64) + 1 - phi) / (q * rounds)), tf.int64)
            c = tf.where(given(c) > k, c - 1, c)  # float rounding at the boundaries
            return tf.where(given(c + 1) <= k, c + 1, c)

        groups = (_language_stream(table, lang, lang_keys[lang], used_t[lang] * group,
                                   sampling.window)
                  .batch(group, drop_remainder=True).enumerate())
        filled = groups.group_by_window(
            chunk_of, lambda c, window: window.map(lambda i, g: g).batch(given(c + 1) - given(c))
            .map(lambda g: (c, g)), window_size_func=lambda c: given(c + 1) - given(c))
        # The chunks this language gives no group to, as empty batches before each filled
        # one: the interleave takes one batch per language and chunk.
        gaps = filled.scan(tf.constant(first_chunk - 1, tf.int64),
                           lambda last, element: (element[0], (element[0] - last - 1, element[1])))
        return gaps.flat_map(lambda gap, g: empty.take(gap).concatenate(
            tf.data.Dataset.from_tensors(g)))

    def shuffle(index, batch):
        merged = {k: v.merge_dims(0, 1) for k, v in batch.items()}  # [groups, group]
        perm = _permutation(tf.shape(merged["src"])[0], fold(fold(key, _CHUNK_SHUFFLE), index))
        return {k: tf.gather(v, perm) for k, v in merged.items()}

    return (tf.data.Dataset.range(len(rates))
            .interleave(chunks, cycle_length=len(rates), block_length=1,
                        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .ragged_batch(len(rates))  # one chunk: every language's batch of groups
            .enumerate(start=first_chunk).map(shuffle).unbatch()
            .skip(first - int(used.sum()))
            .unbatch().batch(batch_size, drop_remainder=True))


def pair_dataset(manifest: Manifest, preprocessor: Preprocessor, *, batch_size: int,
                 sampling: Sampling, start_step: int = 0, num_pipelines: int = 1,
                 pipeline: int = 0, seq_length: int | None = None,
                 trim: bool = True) -> tf.data.Dataset:
    """An endless dataset of tokenized batches of translation pairs for one pipeline.

    Args:
      manifest: Manifest. The corpus.
      preprocessor: Preprocessor. Tokenizes and packs both sides.
      batch_size: int. Pairs per batch (per replica under a strategy).
      sampling: Sampling. Language smoothing, seed, language groups, shuffle window.
      start_step: int. Index of the first batch, so a resumed run continues its stream.
      num_pipelines, pipeline: int. Input pipelines in all, and this one's id.
      seq_length: int or None. Packed length; default the preprocessor's.
      trim: bool. Cut each batch (both sides alike) to its longest sentence, skipping
        padding; False keeps the static `seq_length` that XLA (TPUs, train.jit_compile)
        compiles once and that multi-worker collectives need
        (distribute.needs_static_shapes).

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

    return (pair_strings(manifest, batch_size=batch_size, sampling=sampling,
                         start_step=start_step, num_pipelines=num_pipelines, pipeline=pipeline)
            .map(tokenize, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .prefetch(tf.data.AUTOTUNE))


def _static_batch(packed: dict, batch_size: int, length: int | None) -> dict:
    """`[batch, seq]` tensors with a static batch size (gradient caching splits it) and
    the static `length`, or an unknown one (None) after trimming."""
    return {k: tf.ensure_shape(v, [batch_size, length]) for k, v in packed.items()}


def write_tfrecord(path: str, rows: Iterable[Mapping[str, str]]) -> None:
    """Writes tf.train.Example records of string features (e.g. src_raw, tgt_raw, lang)."""
    with files.record_writer(path) as writer:
        for row in rows:
            writer.write(corpus.example_bytes(row))


@dataclasses.dataclass(frozen=True)
class Masking:
    """BERT masking for MLM/TLM examples (see `masked_lm_dataset`)."""

    tlm_fraction: float
    mask_rate: float
    mask_token_rate: float
    random_token_rate: float
    max_predictions: int


def masked_lm_dataset(manifest: Manifest, preprocessor: Preprocessor, *, batch_size: int,
                      sampling: Sampling, masking: Masking, start_step: int = 0,
                      num_pipelines: int = 1, pipeline: int = 0,
                      seq_length: int | None = None, trim: bool = True) -> tf.data.Dataset:
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
      manifest, preprocessor, batch_size, sampling, start_step, num_pipelines, pipeline,
        seq_length: as for `pair_dataset`.
      masking: Masking. TLM fraction and the masking rates.
      trim: bool. Cut each batch to its longest example, as `pair_dataset` does.

    Returns:
      tf.data.Dataset of dicts: int32 `[batch_size, length]` token_ids (masked),
      padding_mask, segment_ids; `[batch_size, max_predictions]` int32 mask_positions,
      int32 mask_ids (the original tokens there) and float32 mask_weights (1 for a real
      prediction, 0 for padding).
    """
    m = masking
    masker = keras_hub.layers.MaskedLMMaskGenerator(
        preprocessor.vocab_size, m.mask_rate, preprocessor.mask_id,
        mask_selection_length=m.max_predictions,
        unselectable_token_ids=[preprocessor.pad_id, preprocessor.cls_id, preprocessor.sep_id,
                                preprocessor.unk_id],
        mask_token_rate=m.mask_token_rate, random_token_rate=m.random_token_rate)
    strings = pair_strings(manifest, batch_size=batch_size, sampling=sampling,
                           start_step=start_step, num_pipelines=num_pipelines, pipeline=pipeline)
    seed = _pipeline_key(sampling, pipeline)

    # Straight-line TF ops: AutoGraph would only slow the tracing (by seconds).
    @tf.autograph.experimental.do_not_convert
    def example(batch, step):
        src, tgt = preprocessor.tokenize(batch["src"]), preprocessor.tokenize(batch["tgt"])
        size = tf.shape(batch["src"])[0]
        # A stream of randomness apart from the pair draws'.
        key = tf.random.experimental.stateless_fold_in(
            tf.random.experimental.stateless_fold_in(seed, _MLM_MASKS), step)
        is_tlm, is_src = tf.unstack(tf.random.stateless_uniform([2, size], seed=key))
        tlm = preprocessor.bert_pack_inputs([src, tgt], seq_length)
        # Row i of the MLM batch: src[i] or tgt[i], i.e. row i or size + i of [src; tgt].
        side = tf.gather(tf.concat([src, tgt], 0),
                         tf.range(size) + size * tf.cast(is_src >= 0.5, tf.int32))
        mlm = preprocessor.bert_pack_inputs([side], seq_length)
        packed = {k: tf.where(is_tlm[:, None] < m.tlm_fraction, tlm[k], mlm[k]) for k in tlm}
        masked = masker(packed["token_ids"])
        sequences = {**packed, "token_ids": masked["token_ids"]}
        if trim:
            (sequences,) = trim_padding(sequences)
        sequences = _static_batch(sequences, batch_size,
                                  None if trim else seq_length or preprocessor.seq_length)
        predictions = {"mask_positions": tf.cast(masked["mask_positions"], tf.int32),
                       "mask_ids": tf.cast(masked["mask_ids"], tf.int32),
                       "mask_weights": tf.cast(masked["mask_weights"], tf.float32)}
        return {**sequences, **{k: tf.ensure_shape(v, [batch_size, m.max_predictions])
                                for k, v in predictions.items()}}

    return (tf.data.Dataset.zip(strings, tf.data.Dataset.counter(start=start_step))
            .map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .prefetch(tf.data.AUTOTUNE))
