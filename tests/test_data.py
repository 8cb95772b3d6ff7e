"""Reading translation pairs, malformed lines, language-smoothed sampling."""

import collections
import gzip

import numpy as np
import pytest
import tensorflow as tf

from labse_tf import data
from labse_tf.preprocessing import Preprocessor


def _write(path, text: bytes):
    path.write_bytes(text)
    return str(path)


def test_reads_two_and_three_column_tsv_plain_and_gzip(tmp_path):
    two = _write(tmp_path / "deu.tsv", "Hello\tHallo\nGood day\tGuten Tag\n".encode())
    three = tmp_path / "mixed.tsv.gz"
    with gzip.open(three, "wb") as f:
        f.write("fra\tYes\tOui\nrus\tNo\tНет\nfra\tThanks\tMerci\n".encode())
    pairs, stats = data.read_pairs([two, str(three)])
    assert pairs.langs == ("deu", "fra", "rus")  # 2-column files: language = file name
    assert pairs.src == (("Hello", "Good day"), ("Yes", "Thanks"), ("No",))
    assert pairs.tgt[1] == ("Oui", "Merci")
    assert stats.pairs == {"deu": 2, "fra": 2, "rus": 1} and stats.malformed == 0


def test_reads_tfrecord_examples(tmp_path):
    path = str(tmp_path / "pairs.tfrecord")
    data.write_tfrecord(path, [{"src_raw": "Hi", "tgt_raw": "Salut", "lang": "fra"},
                               {"src_raw": "Bye", "tgt_raw": "Tschüss"},
                               {"src_raw": "no target"}])
    logged = []
    pairs, stats = data.read_pairs([path], log=logged.append)
    assert pairs.counts() == {"fra": 1, "pairs": 1}  # no lang feature: the file name
    assert stats.malformed == 1
    assert logged[0] == f"{path}:3: skipped malformed record: missing feature 'tgt_raw'"


def test_malformed_lines_are_skipped_counted_and_reported(tmp_path):
    lines = [b"fra\tone\tun", b"only one field", b"fra\t\tvide", b"fra\tbad\t\xff\xfe",
             b"", b"a\tb\tc\td", b"fra\ttwo\tdeux", b"fra\t \tx"]
    path = _write(tmp_path / "x.tsv", b"\n".join(lines) + b"\n")
    logged = []
    pairs, stats = data.read_pairs([path], report=3, log=logged.append)
    assert pairs.src == (("one", "two"),)
    assert stats.malformed == 5  # the blank line is not malformed, just empty
    assert logged == [
        f"{path}:2: skipped malformed line: expected 2 or 3 tab-separated fields, got 1",
        f"{path}:3: skipped malformed line: empty source field",
        f"{path}:4: skipped malformed line: invalid UTF-8 at byte 8",
        "... 5 malformed lines skipped in all",
    ]
    assert stats.summary()["malformed_lines"] == 5


def test_missing_inputs_are_clear_errors(tmp_path):
    with pytest.raises(data.DataError, match="no such file"):
        data.read_pairs([str(tmp_path / "nope.tsv")])
    with pytest.raises(data.DataError, match="matches no file"):
        data.read_pairs([str(tmp_path / "*.tsv.gz")])
    empty = _write(tmp_path / "empty.tsv", b"just garbage\n")
    with pytest.raises(data.DataError, match="no valid translation pair"):
        data.read_pairs([empty], log=lambda m: None)


def test_language_weights_follow_the_exponent():
    counts = [1000, 10, 1]
    np.testing.assert_allclose(data.language_weights(counts, 1.0), np.array(counts) / 1011)
    np.testing.assert_allclose(data.language_weights(counts, 0.0), [1 / 3] * 3)
    w = np.array(counts, float) ** 0.3
    np.testing.assert_allclose(data.language_weights(counts, 0.3), w / w.sum())


def _pairs(counts):
    langs = tuple(sorted(counts))
    return data.Pairs(langs, tuple(tuple(f"{l} src {i}" for i in range(counts[l])) for l in langs),
                      tuple(tuple(f"{l} tgt {i}" for i in range(counts[l])) for l in langs))


def test_sampling_frequencies_match_smoothed_weights(vocab_file):
    counts = {"aaa": 900, "bbb": 90, "ccc": 10}
    pre = Preprocessor(vocab_file, seq_length=8)
    pairs = _pairs(counts)
    # Recover the drawn languages through the untokenized stream: sample indices directly.
    ds = data.pair_dataset(pairs, pre, batch_size=500, alpha=0.3, seed=1)
    seen = collections.Counter()
    langs, src, _ = pairs.flat()
    ids = pre(tf.constant(src))["token_ids"].numpy()
    inverse = {tuple(row): lang for row, lang in zip(ids, langs)}  # the prefix tells the language
    for batch in ds.take(8):
        for row in batch["src"]["token_ids"].numpy():
            seen[inverse[tuple(row)]] += 1
    freq = np.array([seen[l] for l in pairs.langs]) / 4000
    expected = data.language_weights([900, 90, 10], 0.3)
    np.testing.assert_allclose(freq, expected, atol=0.03)  # 4000 draws: ~3 sigma


def test_language_groups_draw_consecutive_pairs_from_one_language():
    counts = {"aaa": 500, "bbb": 300, "ccc": 200}
    pairs = _pairs(counts)
    stream = data.pair_strings(pairs, batch_size=12, alpha=1.0, seed=3, language_group=4)
    seen = collections.Counter()
    for batch in stream.take(200):
        src = [s.decode() for s in batch["src"].numpy()]
        tgt = [t.decode() for t in batch["tgt"].numpy()]
        assert [s.split()[-1] for s in src] == [t.split()[-1] for t in tgt]  # aligned
        langs = [s.split()[0] for s in src]
        for g in range(3):
            assert len(set(langs[4 * g:4 * g + 4])) == 1, langs
            seen[langs[4 * g]] += 1
    # Groups are drawn like single pairs were (p ∝ n^alpha): 600 groups, ~3 sigma.
    freq = np.array([seen[l] for l in pairs.langs]) / 600
    np.testing.assert_allclose(freq, data.language_weights(list(counts.values()), 1.0), atol=0.06)
    with pytest.raises(ValueError,
                       match="batch size 10 is not a multiple of the language group size 4"):
        data.pair_strings(pairs, batch_size=10, alpha=1.0, seed=3, language_group=4)


def test_batches_are_aligned_shaped_and_resumable(vocab_file, sample_pairs):
    pre = Preprocessor(vocab_file, seq_length=12)
    full = list(data.pair_dataset(sample_pairs, pre, batch_size=4, alpha=0.3, seed=5).take(5))
    assert full[0]["src"]["token_ids"].shape == (4, 12)  # the sample has sentences > 12 pieces
    assert full[0]["tgt"]["segment_ids"].dtype == tf.int32
    resumed = list(data.pair_dataset(sample_pairs, pre, batch_size=4, alpha=0.3, seed=5,
                                     start_step=3).take(2))
    for a, b in zip(full[3:], resumed):  # a resumed run continues the same stream
        np.testing.assert_array_equal(a["src"]["token_ids"], b["src"]["token_ids"])
    other = next(iter(data.pair_dataset(sample_pairs, pre, batch_size=4, alpha=0.3, seed=6)))
    assert not np.array_equal(other["src"]["token_ids"], full[0]["src"]["token_ids"])


def test_batches_are_cut_to_their_longest_sentence(vocab_file):
    pre = Preprocessor(vocab_file, seq_length=16)
    pairs = data.Pairs(("x",), (("alpha one", "beta"),), (("one alpha two", "beta"),))
    trimmed = data.pair_dataset(pairs, pre, batch_size=8, alpha=1.0, seed=0)
    static = data.pair_dataset(pairs, pre, batch_size=8, alpha=1.0, seed=0, trim=False)
    # The batch size stays static (gradient caching splits it); the length is unknown
    # to the graph when trimmed, and the static seq_length otherwise.
    assert trimmed.element_spec["src"]["token_ids"].shape.as_list() == [8, None]
    assert static.element_spec["tgt"]["padding_mask"].shape.as_list() == [8, 16]
    a, b = next(iter(trimmed)), next(iter(static))
    longest = int(max(b[side]["padding_mask"].numpy().sum(1).max() for side in ("src", "tgt")))
    assert longest < 16
    for side in ("src", "tgt"):  # both sides alike, so that one encoder call embeds both
        for key in ("token_ids", "padding_mask", "segment_ids"):
            np.testing.assert_array_equal(a[side][key], b[side][key][:, :longest])


def test_pairs_stay_aligned_through_the_pipeline(vocab_file):
    pre = Preprocessor(vocab_file, seq_length=16)
    pairs = data.Pairs(("x",), (("alpha one", "beta two", "gamma three"),),
                       (("one alpha", "two beta", "three gamma"),))
    batch = next(iter(data.pair_dataset(pairs, pre, batch_size=64, alpha=1.0, seed=0)))
    unpadded = lambda row: tuple(np.trim_zeros(row, "b"))
    index = {unpadded(row): i for i, row in enumerate(pre(tf.constant(pairs.src[0]))["token_ids"].numpy())}
    tindex = {unpadded(row): i for i, row in enumerate(pre(tf.constant(pairs.tgt[0]))["token_ids"].numpy())}
    for s, t in zip(batch["src"]["token_ids"].numpy(), batch["tgt"]["token_ids"].numpy()):
        assert index[unpadded(s)] == tindex[unpadded(t)]


def test_sharding_splits_each_language():
    pairs = _pairs({"aaa": 5, "bbb": 1})
    first, second = pairs.shard(2, 0), pairs.shard(2, 1)
    assert first.counts() == {"aaa": 3, "bbb": 1}
    assert second.counts() == {"aaa": 2}  # a language with too few pairs leaves this shard
    assert set(first.src[0]) | set(second.src[0]) == set(pairs.src[0])
