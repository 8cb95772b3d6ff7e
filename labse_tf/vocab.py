r"""Builds a multilingual wordpiece vocabulary with per-language exponent smoothing.

    python -m labse_tf.vocab --input=data/train/*.tsv.gz --vocab_size=32000 --output=vocab.txt

Sentences are sampled per language with p(lang) ∝ n_lang^alpha (LaBSE's smoothing) up to
--max_sentences in all, so memory stays bounded on large inputs and small languages still
get tokens; both sides of translation pairs are used. Text is normalised exactly as the
Preprocessor does and split into words, and tensorflow-text's wordpiece learner picks the
pieces from the word counts (`learn_vocab`). A coverage summary per language (unknown-token
rate, pieces per word) is printed and written as JSON beside the vocabulary.

`labse_tf.prepare` learns from word counts of the whole corpus instead of a sample: it
splits with `split_words`, smooths the counts with `smoothed_word_counts` (the same
sizes as the sample here) and learns with `learn_vocab`.
"""

import collections
import time
from typing import Sequence

import numpy as np
import tensorflow as tf
from absl import app, flags
from tensorflow_text.tools.wordpiece_vocab import wordpiece_tokenizer_learner_lib as learner

from labse_tf import cli, data, files
from labse_tf.compat import BasicTokenizer
from labse_tf.corpus import Manifest
from labse_tf.preprocessing import SPECIAL_TOKENS, Preprocessor, normalize

__all__ = ["build_vocab", "count_words", "coverage", "learn_vocab", "print_coverage",
           "sample_sentences", "smoothed_sample_sizes", "smoothed_word_counts", "split_words",
           "write_coverage", "write_vocab"]


def smoothed_sample_sizes(counts: Sequence[int], alpha: float, budget: int) -> np.ndarray:
    """Sentences to take per language: ∝ n^alpha, capped at n, about `budget` in all.

    Budget freed by languages that have fewer sentences than their share is handed to the
    others, so the total is min(budget, sum(counts)).
    """
    counts = np.asarray(counts, np.int64)
    take = np.zeros_like(counts)
    open_ = counts > 0
    left = min(budget, int(counts.sum()))
    while left > 0 and open_.any():
        p = np.where(open_, counts.astype(np.float64) ** alpha, 0.0)
        share = np.floor(left * p / p.sum()).astype(np.int64)
        share = np.maximum(share, open_.astype(np.int64))  # at least one each while open
        share = np.minimum(share, counts - take)
        if share.sum() > left:  # rounding up of the minimum one can overshoot
            share[np.argsort(-share)[: share.sum() - left]] -= 1
        take += share
        left -= int(share.sum())
        open_ = take < counts
        if share.sum() == 0:
            break
    return take


def sample_sentences(manifest: Manifest, alpha: float, budget: int, seed: int) -> dict:
    """Per language, sentences from both sides of pairs spread evenly over its files.

    One streaming pass (data.spread_pairs); the seed shifts which pairs are taken.
    """
    counts = list(manifest.counts().values())
    sizes = smoothed_sample_sizes([2 * n for n in counts], alpha, budget)
    sample = {lang: [] for lang in manifest.langs}
    for pair in data.spread_pairs(manifest, -(-sizes // 2), seed).as_numpy_iterator():
        lang = manifest.langs[pair["lang"]]
        sample[lang] += [pair["src"].decode("utf-8"), pair["tgt"].decode("utf-8")]
    return {lang: sample[lang][:n] for lang, n in zip(manifest.langs, sizes) if n}


def split_words(sentences: tf.Tensor, lowercase: bool = True) -> tf.RaggedTensor:
    """Raw sentences `[n]` → their words `[n, (words)]`, normalised and split as the
    Preprocessor does (BERT's splitter without its own case folding: the text arrives
    normalised already)."""
    return BasicTokenizer(lower_case=False).tokenize(normalize(sentences, lowercase))


def count_words(sentences: Sequence[str | bytes], lowercase: bool = True,
                batch: int = 4096) -> collections.Counter:
    """Words of raw sentences (`split_words`, `lowercase` as the Preprocessor's), counted.

    Returns:
      Counter of str words.
    """
    sentences = list(sentences)
    counts = collections.Counter()
    for i in range(0, len(sentences), batch):
        words = split_words(tf.constant(sentences[i:i + batch], tf.string), lowercase)
        counts.update(words.flat_values.numpy().tolist())
    return collections.Counter({w.decode("utf-8"): n for w, n in counts.items()})


def smoothed_word_counts(counts_by_lang: dict, sentences: dict, alpha: float,
                         budget: int) -> collections.Counter:
    """Word counts of whole languages weighted as the smoothed sample `sample_sentences`
    takes, with no word of the corpus lost to rounding.

    Language l's counts are weighted by s_l / n_l, s = smoothed_sample_sizes(n, alpha,
    budget) with n_l its sentences, then all weights are divided by the smallest, so the
    most down-weighted language keeps its counts and every other one is counted up: the
    ratios a sample of s sentences would count in expectation, but a word seen once
    anywhere still counts (scaling down to the sample itself would round away every word
    rarer than n_l / s_l, most of a 6B-sentence corpus's). When the budget covers every
    sentence, s = n and the counts are those of the whole corpus, unchanged.

    Args:
      counts_by_lang: dict lang -> {word: count}. Words of all sentences of each language.
      sentences: dict lang -> int. Sentences each language's counts were taken from.
      alpha: float. Smoothing exponent, p(lang) ∝ n^alpha.
      budget: int. Sentences of the sample in all (languages it leaves out weigh 0).

    Returns:
      Counter of words summed over languages (zero counts dropped).
    """
    langs = sorted(counts_by_lang)
    n = np.array([sentences[lang] for lang in langs], np.float64)
    take = smoothed_sample_sizes(n.astype(np.int64), alpha, budget)
    weight = np.divide(take, n, out=np.zeros_like(n), where=n > 0)
    if weight.any():
        weight /= weight[weight > 0].min()
    total = collections.Counter()
    for lang, w in zip(langs, weight.tolist()):
        for word, count in counts_by_lang[lang].items():
            total[word] += count * w
    return collections.Counter({w: int(round(c)) for w, c in total.items() if round(c) > 0})


def learn_vocab(word_counts: dict, vocab_size: int, *, max_unique_chars: int = 0,
                max_words: int = 200_000) -> list[str]:
    """Learns a wordpiece vocabulary from word counts (reserved tokens first, [PAD] at id 0).

    Args:
      word_counts: dict word -> count, words as `count_words` splits them.
      vocab_size: int. Target size. The learner lowers its word-count threshold until
        it gets within 5% below it; a corpus too small for that can end above it.
      max_unique_chars: int. The most frequent characters kept as single tokens (words
        with any other character are dropped from learning and become [UNK]); 0 = a
        tenth of vocab_size, at least 1000 (the learner's own default), so a corpus with
        Han characters keeps the common ones even for a small vocabulary.
      max_words: int. Only the most frequent distinct words are learned from; the
        learner's time grows with them (rarer words still get characters and pieces).

    Returns:
      The vocabulary as a list of tokens.
    """
    # One order for equal counts (the learner's cut at max_words keeps the first ones),
    # so the vocabulary does not depend on the order the counts were gathered in.
    ordered = sorted(word_counts.items(), key=lambda wc: (-wc[1], wc[0]))
    return learner.learn(ordered, vocab_size, list(SPECIAL_TOKENS), lower_thresh=1,
                         max_input_tokens=max_words,
                         max_unique_chars=max_unique_chars or max(1000, vocab_size // 10))


def build_vocab(sentences: Sequence[str], vocab_size: int, *, lowercase: bool = True,
                max_unique_chars: int = 0, max_words: int = 200_000) -> list[str]:
    """Learns a wordpiece vocabulary from raw sentences: `count_words`, then `learn_vocab`
    (see there for the arguments; `lowercase` must match the Preprocessor's)."""
    return learn_vocab(count_words(sentences, lowercase), vocab_size,
                       max_unique_chars=max_unique_chars, max_words=max_words)


def write_vocab(tokens: Sequence[str], path: str) -> str:
    """Writes one token per line (whole or not at all); returns the path."""
    return files.write_text(path, "".join(t + "\n" for t in tokens))


def coverage(preprocessor: Preprocessor, sentences_by_lang: dict) -> dict:
    """Per language: unknown-token rate and wordpieces per word."""
    result = {}
    for lang, sentences in sentences_by_lang.items():
        pieces = preprocessor.tokenize(tf.constant(list(sentences), tf.string))
        flat = pieces.flat_values.numpy()
        words = int(pieces.values.nrows())
        result[lang] = {
            "sentences": len(sentences),
            "unk_rate": float(np.mean(flat == preprocessor.unk_id)) if flat.size else 0.0,
            "pieces_per_word": float(flat.size / words) if words else 0.0,
        }
    return result


def write_coverage(vocab_path: str, sentences_by_lang: dict, *, lowercase: bool,
                   **fields) -> tuple[str, dict]:
    """Coverage of `sentences_by_lang` by a vocabulary, written beside it as
    `<vocab>.coverage.json` with `fields` (how it was learned); returns (path, report)."""
    tokens = files.read_text(vocab_path).splitlines()
    report = coverage(Preprocessor(vocab_path, lowercase=lowercase), sentences_by_lang)
    summary = {"vocab_file": files.absolute(vocab_path), "vocab_size": len(tokens),
               "lowercase": lowercase, **fields, "languages": report}
    return files.write_json(vocab_path + ".coverage.json", summary), report


def print_coverage(report: dict, worst: int = 10) -> None:
    """The languages the vocabulary covers worst."""
    print("lang      unk%  pieces/word")
    for lang, r in sorted(report.items(), key=lambda kv: -kv[1]["unk_rate"])[:worst]:
        print(f"{lang:8s} {100 * r['unk_rate']:5.2f}  {r['pieces_per_word']:.2f}")


FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_multi_string("input", None, "Translation-pair files or globs (TSV, .gz, "
                              "TFRecord); both sides are used. Repeatable.")
    flags.DEFINE_integer("vocab_size", 32000, "Target vocabulary size.")
    flags.DEFINE_string("output", "vocab.txt", "Where to write the vocabulary; the coverage "
                        "summary goes beside it as <output>.coverage.json.")
    flags.DEFINE_float("alpha", 0.3, "Language smoothing exponent: p(lang) ∝ n_lang^alpha.")
    flags.DEFINE_integer("max_sentences", 400000, "Sentences sampled in all (bounds memory "
                         "and time: only the sample is counted, not the whole input).")
    flags.DEFINE_integer("max_words", 200_000, "Distinct words the learner learns from, the "
                         "most frequent first; its time grows with them.")
    flags.DEFINE_integer("max_unique_chars", 0, "Characters kept as single tokens, the most "
                         "frequent first (words with other characters become [UNK]); 0: a "
                         "tenth of --vocab_size, at least 1000. Raise it for data with many "
                         "Han characters.")
    flags.DEFINE_bool("lowercase", True, "Case-fold text (must match data.lowercase).")
    flags.DEFINE_integer("seed", 42, "Sampling seed.")
    flags.mark_flag_as_required("input")


def main(argv):
    del argv
    start = time.time()
    with cli.exit_on(data.DataError):
        manifest = data.load_manifest(FLAGS.input, log=cli.log)
    cli.log(f"{manifest.pairs:,} pairs in {len(manifest.langs)} languages "
            f"({manifest.malformed} malformed lines skipped)")
    sample = sample_sentences(manifest, FLAGS.alpha, FLAGS.max_sentences, FLAGS.seed)
    sentences = [s for group in sample.values() for s in group]
    print(f"learning a {FLAGS.vocab_size}-token vocabulary from {len(sentences)} sampled "
          "sentences ...", flush=True)
    tokens = build_vocab(sentences, FLAGS.vocab_size, lowercase=FLAGS.lowercase,
                         max_unique_chars=FLAGS.max_unique_chars, max_words=FLAGS.max_words)
    path = write_vocab(tokens, FLAGS.output)
    json_path, report = write_coverage(path, sample, lowercase=FLAGS.lowercase,
                                       alpha=FLAGS.alpha, sampled_sentences=len(sentences))
    print_coverage(report)
    print(f"wrote {path} ({len(tokens)} tokens) and {json_path} in {time.time() - start:.0f}s")


if __name__ == "__main__":
    define_flags()
    app.run(main)
