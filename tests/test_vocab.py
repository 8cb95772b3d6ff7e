"""Vocabulary building: smoothed sampling, the learner's output and the command line."""

import json
import os
import subprocess
import sys
import unicodedata

import numpy as np
import pytest
import tensorflow as tf

from labse_tf import data, vocab
from labse_tf.preprocessing import SPECIAL_TOKENS, Preprocessor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _water_filling(counts, alpha, budget):
    """NumPy reference: x_i = min(n_i, c n_i^alpha) with sum x = budget, c by bisection."""
    counts = np.asarray(counts, np.float64)
    if budget >= counts.sum():
        return counts
    w = np.where(counts > 0, counts ** alpha, 0.0)
    lo, hi = 0.0, budget / w[w > 0].min() + 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.minimum(counts, mid * w).sum() < budget else (lo, mid)
    return np.minimum(counts, hi * w)


def test_smoothed_sample_sizes_by_hand():
    # p ∝ sqrt([100, 10, 1]) = [10, 3.16, 1]: 30 * p = [21.2, 6.7, 2.1], but the third
    # language has 1 sentence; its unused share goes to the others in proportion:
    # c (10 + 3.16) = 29 gives [22.03, 6.97, 1], rounded to [22, 7, 1].
    np.testing.assert_array_equal(vocab.smoothed_sample_sizes([100, 10, 1], 0.5, 30), [22, 7, 1])
    # alpha 0 is uniform, alpha 1 proportional; a budget over the total takes everything.
    np.testing.assert_array_equal(vocab.smoothed_sample_sizes([90, 30], 0.0, 40), [20, 20])
    np.testing.assert_array_equal(vocab.smoothed_sample_sizes([90, 30], 1.0, 40), [30, 10])
    np.testing.assert_array_equal(vocab.smoothed_sample_sizes([90, 0, 30], 0.3, 500), [90, 0, 30])


def test_smoothed_sample_sizes_match_water_filling():
    rng = np.random.default_rng(0)
    for _ in range(300):
        k = int(rng.integers(1, 10))
        counts = rng.integers(0, 3000, k) * (rng.random(k) > 0.1)
        alpha = float(rng.choice([0.0, 0.3, 0.7, 1.0]))
        budget = int(rng.integers(k, counts.sum() + 100))
        take = vocab.smoothed_sample_sizes(counts, alpha, budget)
        assert take.sum() == min(budget, counts.sum())
        assert (take <= counts).all() and (take[counts > 0] >= 1).all()
        np.testing.assert_array_less(np.abs(take - _water_filling(counts, alpha, budget)), 2.0)


def test_sample_sentences_follow_the_sizes(sample_pairs, sample_manifest):
    sample = vocab.sample_sentences(sample_manifest, 0.3, 200, seed=1)
    sizes = vocab.smoothed_sample_sizes([2 * len(s) for s in sample_pairs.src], 0.3, 200)
    assert list(sample) == list(sample_pairs.langs)
    for (lang, got), size, src, tgt in zip(sample.items(), sizes, sample_pairs.src,
                                           sample_pairs.tgt):
        assert len(got) == size
        pool = list(src) + list(tgt)
        # Drawn without replacement: no sentence more often than it occurs.
        assert all(got.count(s) <= pool.count(s) for s in set(got)), lang
        # Spread over the language (every k-th pair), not its first lines.
        assert got[-2] not in pool[:size]


def test_smoothed_word_counts_weigh_languages_as_their_sample_and_keep_rare_words():
    by_lang = {"aaa": {"x": 10, "y": 5, "once": 1}, "bbb": {"x": 1, "z": 3}}
    # Sizes [22, 8] of [100, 10] sentences (alpha 0.5, budget 30): weights 0.22 and 0.8,
    # divided by the smaller: 1 and 40/11. x = 10 + 40/11 = 13.6 -> 14, z = 10.9 -> 11, and
    # the word seen once in the down-weighted language still counts (scaled to the 30
    # sentences it would be 0.22 -> 0, and y 1.1 -> 1).
    counts = vocab.smoothed_word_counts(by_lang, {"aaa": 100, "bbb": 10}, 0.5, 30)
    assert counts == {"x": 14, "y": 5, "once": 1, "z": 11}
    assert counts["z"] / counts["y"] == pytest.approx((3 * 0.8) / (5 * 0.22), rel=0.05)
    # A budget covering every sentence keeps the counts exact, summed over languages.
    assert vocab.smoothed_word_counts(by_lang, {"aaa": 100, "bbb": 10}, 0.5, 1000) == {
        "x": 11, "y": 5, "once": 1, "z": 3}
    # A budget smaller than the languages leaves some out, as the sample would.
    assert set(vocab.smoothed_word_counts(by_lang, {"aaa": 100, "bbb": 10}, 0.5, 1)) in (
        {"x", "y", "once"}, {"x", "z"})


def test_words_are_counted_as_the_preprocessor_splits_them_in_any_order():
    # Case-folded, NFKC (full-width H), punctuation split off.
    assert vocab.count_words(["Hello, WORLD!", "\uff28ello"]) == {"hello": 2, ",": 1, "world": 1,
                                                                "!": 1}
    counts = vocab.count_words(["the cat sat", "the dog sat", "a cat ran"] * 5)
    reordered = dict(sorted(counts.items(), key=lambda wc: wc[0], reverse=True))
    assert vocab.learn_vocab(counts, 60) == vocab.learn_vocab(reordered, 60)


def _is_han(char: str) -> bool:
    return unicodedata.name(char, "").startswith("CJK UNIFIED IDEOGRAPH")


def test_build_vocab_on_the_sample_corpus(vocab_file, sample_pairs):
    with open(vocab_file, encoding="utf-8") as f:
        tokens = f.read().splitlines()
    assert tokens[:len(SPECIAL_TOKENS)] == list(SPECIAL_TOKENS) and tokens[0] == "[PAD]"
    assert len(set(tokens)) == len(tokens)
    # Han characters are words of their own to the tokenizer, so the vocabulary holds them
    # one character per token, and every character of the Chinese sentences is there.
    han_tokens = [t for t in tokens if any(_is_han(c) for c in t)]
    assert han_tokens and all(len(t.removeprefix("##")) == 1 for t in han_tokens)
    chinese = [s for lang, src, tgt in zip(sample_pairs.langs, sample_pairs.src, sample_pairs.tgt)
               if lang == "cmn" for s in tgt]
    chars = sorted({c for s in chinese for c in s if _is_han(c)})
    assert len(chars) > 100 and set(chars) <= set(tokens)
    pre = Preprocessor(vocab_file)
    pieces = pre.tokenize(tf.constant(chars))  # one word per character, one piece per word
    assert pieces.to_list() == [[[tokens.index(c)]] for c in chars]


def test_max_unique_chars_bounds_the_alphabet():
    # 40 distinct Han characters, each a word of its own; the rarer ones occur less.
    chars = [chr(0x4E00 + i) for i in range(40)]
    sentences = [" ".join(chars[:i + 1]) for i in range(40)] + ["hello world"] * 20
    small = vocab.build_vocab(sentences, 200, max_unique_chars=20)
    large = vocab.build_vocab(sentences, 200, max_unique_chars=100)
    alphabet = lambda tokens: {t.removeprefix("##") for t in tokens
                               if len(t.removeprefix("##")) == 1}
    assert len(alphabet(small)) <= 20 and chars[-1] not in small
    assert set(chars) <= alphabet(large)


@pytest.mark.slow
def test_vocab_command_line(tmp_path, sample_pairs):
    output = str(tmp_path / "out" / "vocab.txt")
    out = subprocess.run(
        [sys.executable, "-m", "labse_tf.vocab", f"--input={data.sample_corpus_path('train')}",
         "--vocab_size=500", f"--output={output}", "--max_sentences=100000"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    with open(output, encoding="utf-8") as f:
        tokens = f.read().splitlines()
    assert tokens[:len(SPECIAL_TOKENS)] == list(SPECIAL_TOKENS)
    with open(output + ".coverage.json", encoding="utf-8") as f:
        report = json.load(f)
    assert report["vocab_size"] == len(tokens)
    assert report["vocab_file"] == os.path.abspath(output)
    # The budget exceeds the corpus, so every sentence was sampled: recompute coverage.
    sentences = {lang: list(s) + list(t)
                 for lang, s, t in zip(sample_pairs.langs, sample_pairs.src, sample_pairs.tgt)}
    assert report["sampled_sentences"] == sum(len(s) for s in sentences.values())
    want = vocab.coverage(Preprocessor(output), sentences)
    assert set(report["languages"]) == set(sample_pairs.langs)
    for lang, got in report["languages"].items():
        assert got["sentences"] == want[lang]["sentences"]
        assert got["unk_rate"] == pytest.approx(want[lang]["unk_rate"], abs=1e-12)
        assert got["pieces_per_word"] == pytest.approx(want[lang]["pieces_per_word"], rel=1e-12)
        assert got["pieces_per_word"] >= 1.0


@pytest.mark.slow
def test_vocab_help():
    out = subprocess.run([sys.executable, "-m", "labse_tf.vocab", "--help"], cwd=REPO,
                         capture_output=True, text=True, timeout=120, check=False)
    # absl's --help prints the usage and exits with status 1, by design.
    assert out.returncode == 1 and not out.stderr, out.stderr[-2000:]
    assert "wordpiece vocabulary" in out.stdout
    for flag in ("--input", "--vocab_size", "--output", "--alpha", "--max_sentences"):
        assert flag in out.stdout
