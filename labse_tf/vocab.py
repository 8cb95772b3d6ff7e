r"""Builds a multilingual wordpiece vocabulary with per-language exponent smoothing.

    python -m labse_tf.vocab --input=data/train/*.tsv.gz --vocab_size=32000 --output=vocab.txt

Sentences are sampled per language with p(lang) ∝ n_lang^alpha (LaBSE's smoothing) up to
--max_sentences in all, so memory stays bounded on large inputs and small languages still
get tokens; both sides of translation pairs are used. Text is normalised exactly as the
Preprocessor does, then tensorflow-text's wordpiece learner picks the pieces. A coverage
summary per language (unknown-token rate, pieces per word) is printed and written as JSON
beside the vocabulary.
"""

import time
from typing import Sequence

import numpy as np
import tensorflow as tf
from absl import app, flags
from tensorflow_text.tools.wordpiece_vocab import bert_vocab_from_dataset as bert_vocab

from labse_tf import cli, data, files
from labse_tf.corpus import Manifest
from labse_tf.preprocessing import SPECIAL_TOKENS, Preprocessor, normalize

__all__ = ["build_vocab", "coverage", "sample_sentences", "smoothed_sample_sizes", "write_vocab"]


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


def _normalized(sentences: Sequence[str], lowercase: bool) -> tf.data.Dataset:
    return (tf.data.Dataset.from_tensor_slices(tf.constant(list(sentences), tf.string))
            .batch(1024).map(lambda s: normalize(s, lowercase)))


def build_vocab(sentences: Sequence[str], vocab_size: int, *, lowercase: bool = True,
                max_unique_chars: int = 0, max_words: int = 200_000) -> list[str]:
    """Learns a wordpiece vocabulary (reserved tokens first, [PAD] at id 0).

    Args:
      sentences: raw sentences (normalised here as the Preprocessor will).
      vocab_size: int. Target size. The learner lowers its word-count threshold until
        it gets within 5% below it; a corpus too small for that can end above it.
      lowercase: bool. Must match the Preprocessor's.
      max_unique_chars: int. The most frequent characters kept as single tokens (words
        with any other character are dropped from learning and become [UNK]); 0 = a
        tenth of vocab_size, at least 1000 (the learner's own default), so a corpus with
        Han characters keeps the common ones even for a small vocabulary.
      max_words: int. Only the most frequent distinct words are learned from; the
        learner's time grows with them (rarer words still get characters and pieces).

    Returns:
      The vocabulary as a list of tokens.
    """
    # Text arrives normalised, so the learner's own splitter must not change it again.
    return bert_vocab.bert_vocab_from_dataset(
        _normalized(sentences, lowercase), vocab_size, list(SPECIAL_TOKENS),
        bert_tokenizer_params={"lower_case": False},
        learn_params={"lower_thresh": 1, "max_input_tokens": max_words,
                      "max_unique_chars": max_unique_chars or max(1000, vocab_size // 10)})


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
    report = coverage(Preprocessor(path, lowercase=FLAGS.lowercase), sample)
    summary = {"vocab_file": files.absolute(path), "vocab_size": len(tokens),
               "alpha": FLAGS.alpha, "lowercase": FLAGS.lowercase,
               "sampled_sentences": len(sentences), "languages": report}
    json_path = files.write_json(path + ".coverage.json", summary)
    worst = sorted(report.items(), key=lambda kv: -kv[1]["unk_rate"])[:10]
    print("lang      unk%  pieces/word")
    for lang, r in worst:
        print(f"{lang:8s} {100 * r['unk_rate']:5.2f}  {r['pieces_per_word']:.2f}")
    print(f"wrote {path} ({len(tokens)} tokens) and {json_path} in {time.time() - start:.0f}s")


if __name__ == "__main__":
    define_flags()
    app.run(main)
