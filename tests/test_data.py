"""Reading translation pairs, malformed lines, language-smoothed sampling."""

import collections
import gzip
import os

import numpy as np
import pytest
import tensorflow as tf

from labse_tf import corpus, data, files
from labse_tf.preprocessing import Preprocessor


def _write(path, text: bytes):
    path.write_bytes(text)
    return str(path)


def test_reads_two_and_three_column_tsv_plain_and_gzip(tmp_path):
    two = _write(tmp_path / "deu.tsv", "Hello\tHallo\nGood day\tGuten Tag\n".encode())
    three = tmp_path / "mixed.tsv.gz"
    with gzip.open(three, "wb") as f:
        f.write("fra\tYes\tOui\nrus\tNo\tНет\nfra\tThanks\tMerci\n".encode())
    pairs, manifest = data.read_pairs([two, str(three)])
    assert pairs.langs == ("deu", "fra", "rus")  # 2-column files: language = file name
    assert pairs.src == (("Hello", "Good day"), ("Yes", "Thanks"), ("No",))
    assert pairs.tgt[1] == ("Oui", "Merci")
    assert manifest.counts() == {"deu": 2, "fra": 2, "rus": 1} and manifest.malformed == 0
    assert [f.pairs for f in manifest.files] == [{"deu": 2}, {"fra": 2, "rus": 1}]


def test_reads_tfrecord_examples(tmp_path):
    path = str(tmp_path / "pairs.tfrecord")
    data.write_tfrecord(path, [{"src_raw": "Hi", "tgt_raw": "Salut", "lang": "fra"},
                               {"src_raw": "Bye", "tgt_raw": "Tschüss"},
                               {"src_raw": "no target"}])
    logged = []
    pairs, manifest = data.read_pairs([path], log=logged.append)
    assert pairs.counts() == {"fra": 1, "pairs": 1}  # no lang feature: the file name
    assert manifest.malformed == 1
    assert f"{path}:3: skipped malformed record: missing feature 'tgt_raw'" in logged


def test_malformed_lines_are_skipped_counted_and_reported(tmp_path):
    lines = [b"fra\tone\tun", b"only one field", b"fra\t\tvide", b"fra\tbad\t\xff\xfe",
             b"", b"a\tb\tc\td", b"fra\ttwo\tdeux", b"fra\t \tx"]
    path = _write(tmp_path / "x.tsv", b"\n".join(lines) + b"\n")
    logged = []
    pairs, manifest = data.read_pairs([path], report=3, log=logged.append)
    assert pairs.src == (("one", "two"),)
    assert manifest.malformed == 5  # the blank line is not malformed, just empty
    assert [m for m in logged if "malformed" in m] == [
        f"{path}:2: skipped malformed line: expected 2 or 3 tab-separated fields, got 1",
        f"{path}:3: skipped malformed line: empty source field",
        f"{path}:4: skipped malformed line: invalid UTF-8 at byte 8",
        "... 5 malformed lines skipped in all",
    ]
    assert manifest.summary()["malformed_lines"] == 5
    assert manifest.files[0].malformed_examples == (
        "2: expected 2 or 3 tab-separated fields, got 1", "3: empty source field",
        "4: invalid UTF-8 at byte 8")


def test_missing_inputs_are_clear_errors(tmp_path):
    for root in (str(tmp_path), "ram://missing_inputs"):
        with pytest.raises(data.DataError, match=f"{root}/nope.tsv: no such file"):
            data.read_pairs([f"{root}/nope.tsv"])
        with pytest.raises(data.DataError, match=r"\*.tsv.gz: the pattern matches no file"):
            data.read_pairs([f"{root}/*.tsv.gz"])
        files.write_text(f"{root}/dir/x.tsv", "a\tb\n")
        with pytest.raises(data.DataError, match=f"{root}/dir: is a directory, expected a file"):
            data.read_pairs([f"{root}/dir"])
    empty = _write(tmp_path / "empty.tsv", b"just garbage\n")
    with pytest.raises(data.DataError, match="no valid translation pair"):
        data.read_pairs([empty], log=lambda m: None)


def test_language_weights_follow_the_exponent():
    counts = [1000, 10, 1]
    np.testing.assert_allclose(data.language_weights(counts, 1.0), np.array(counts) / 1011)
    np.testing.assert_allclose(data.language_weights(counts, 0.0), [1 / 3] * 3)
    w = np.array(counts, float) ** 0.3
    np.testing.assert_allclose(data.language_weights(counts, 0.3), w / w.sum())


def _corpus(root, counts, per_file=1, gz=True):
    """Files `<lang>.<i>.tsv[.gz]` whose pairs name their language, file and index."""
    paths = []
    for lang, n in counts.items():
        for f in range(per_file):
            path = f"{root}/{lang}.{f}.tsv" + (".gz" if gz else "")
            with files.open_file(path, "w") as out:
                for i in range(f, n, per_file):
                    out.write(f"{lang} src {i}\t{lang} tgt {i}\n")
            paths.append(path)
    return data.load_manifest(paths, log=lambda m: None)


def test_manifest_counts_match_an_independent_count(tmp_path):
    """Pairs per file and language, against Python counting the same bytes."""
    rows = ([b"deu\tHello\tHallo"] * 5 + [b"fra\tYes\tOui"] * 3 + [b"bad line", b"",
            b"fra\t\tx", b"deu\tA\t\xff"])
    mixed = tmp_path / "mixed.tsv.gz"
    with gzip.open(mixed, "wb") as f:
        f.write(b"\n".join(rows) + b"\n")
    two = _write(tmp_path / "ukr.tsv", "a\tб\nb\tв\n".encode())
    record = str(tmp_path / "x.tfrecord")
    data.write_tfrecord(record, [{"src_raw": "a", "tgt_raw": "b", "lang": "pol"}] * 4
                        + [{"src_raw": "a"}])
    manifest = data.load_manifest([str(mixed), two, record], log=lambda m: None)
    expected = []
    for path in (str(mixed), two):
        opener = gzip.open if path.endswith(".gz") else open
        counts, bad = collections.Counter(), 0
        with opener(path, "rb") as f:
            for line in f.read().splitlines():
                fields = line.split(b"\t")
                if not line.strip():
                    continue
                if len(fields) == 2:
                    fields = [path.split("/")[-1].split(".")[0].encode()] + fields
                try:
                    ok = len(fields) == 3 and all(x.decode("utf-8").strip() for x in fields)
                except UnicodeDecodeError:
                    ok = False
                if ok:
                    counts[fields[0].decode()] += 1
                else:
                    bad += 1
        expected.append((dict(counts), bad))
    expected.append(({"pol": 4}, 1))
    assert [(f.pairs, f.malformed) for f in manifest.files] == expected
    assert manifest.counts() == {"deu": 5, "fra": 3, "pol": 4, "ukr": 2}
    assert [f.bytes for f in manifest.files] == [os.path.getsize(p) for p in (mixed, two, record)]
    # The manifest round-trips through its JSON, relative paths from its own directory.
    saved = corpus.write_manifest(manifest, str(tmp_path / "manifest.json"))
    assert corpus.read_manifest(saved) == manifest
    raw = files.read_json(saved)
    for f in raw["files"]:
        f["path"] = os.path.basename(f["path"])
    files.write_json(str(tmp_path / "rel" / "manifest.json"), raw)
    assert [f.path for f in corpus.read_manifest(str(tmp_path / "rel" / "manifest.json")).files] \
        == [str(tmp_path / "rel" / os.path.basename(p)) for p in (mixed, two, record)]


def test_a_prepared_corpus_is_its_manifest(tmp_path):
    manifest = _corpus(str(tmp_path), {"aaa": 5})
    corpus.write_manifest(manifest, str(tmp_path / "manifest.json"))
    for given in (str(tmp_path), str(tmp_path / "manifest.json")):
        paths, found = corpus.resolve_inputs([given])
        assert found == manifest and paths == [f.path for f in manifest.files]
    with pytest.raises(data.DataError, match="cannot be mixed with other inputs"):
        corpus.resolve_inputs([str(tmp_path), str(tmp_path / "aaa.0.tsv.gz")])
    files.write_json(str(tmp_path / "bad" / "manifest.json"), {"version": 99})
    with pytest.raises(data.DataError, match="version: expected 1, got 99"):
        corpus.resolve_inputs([str(tmp_path / "bad")])


def _languages(batches):
    return [s.split()[0].decode() for b in batches for s in b["src"]]


def test_languages_are_mixed_in_proportion_to_the_smoothed_counts():
    counts = {"aaa": 900, "bbb": 90, "ccc": 10}
    manifest = _corpus("ram://mixing", counts)
    stream = data.pair_strings(manifest, batch_size=50,
                               sampling=data.Sampling(alpha=0.3, seed=1, window=64))
    batches = list(stream.take(80).as_numpy_iterator())
    seen = collections.Counter(_languages(batches))
    # Error diffusion: each language's share of the 4000 pairs to within a chunk's rounding.
    expected = data.language_weights(list(counts.values()), 0.3) * 4000
    np.testing.assert_allclose([seen[l] for l in counts], expected, atol=4)
    for b in batches:  # pairs stay aligned
        assert [s.split()[1:] for s in b["src"]] == [[b"src"] + t.split()[2:] for t in b["tgt"]]


def test_chunks_stay_small_when_languages_are_skewed():
    """1 pair against 3000 at alpha 1: an unbounded chunk would hold the whole corpus."""
    counts = {"aaa": 3000, "bbb": 1, "ccc": 30}
    rates = data.mixing_rates(list(counts.values()), 1.0)
    assert data.chunk_rounds(rates, 1, 10 ** 6) == 3000  # every language in every chunk
    rounds = data.chunk_rounds(rates, 2, 64)
    assert rounds == 64 // (2 * (1 + 1 / 3000 + 30 / 3000)) == 31
    assert data.chunk_rounds(rates, 512, 64) == 1
    manifest = _corpus("ram://skewed", counts)
    sampling = data.Sampling(alpha=1.0, seed=3, window=32, chunk=64)
    full = [b["src"] for b in data.pair_strings(manifest, batch_size=50, sampling=sampling)
            .take(121).as_numpy_iterator()]
    seen = collections.Counter(s.split()[0].decode() for b in full for s in b)
    np.testing.assert_allclose([seen[l] for l in counts],
                               np.array(list(counts.values())) / 3031 * 6050, atol=2)
    for start in (7, 60, 120):
        resumed = next(data.pair_strings(manifest, batch_size=50, sampling=sampling,
                                         start_step=start).as_numpy_iterator())["src"]
        np.testing.assert_array_equal(resumed, full[start])


def test_every_pair_of_a_language_comes_once_per_epoch():
    manifest = _corpus("ram://epochs", {"aaa": 37, "bbb": 500}, per_file=3)
    shard = data.language_shards(manifest, 1, 0)["aaa"]
    pairs = [p["src"] for p in data.language_stream(shard, seed=[4, 2], window=8).take(111)
             .as_numpy_iterator()]
    for epoch in range(3):
        assert sorted(pairs[37 * epoch:37 * (epoch + 1)]) == sorted(
            f"aaa src {i}".encode() for i in range(37))
    assert pairs[:37] != pairs[37:74]  # each epoch in its own order


def test_epochs_start_apart_in_multi_way_parallel_corpora(tmp_path):
    """Eight languages whose files list the same English sentences in the same order (as
    the shared corpus's do): batches hold about as many repeated English sentences as
    uniform draws from the corpus would (0.5 a batch), not one language's window's worth
    in every language (~7 a batch if epochs started together)."""
    paths = []
    for lang in "abcdefgh":
        paths.append(_write(tmp_path / f"l{lang}.tsv", "".join(
            f"english {i}\t{lang} {i}\n" for i in range(4096)).encode()))
    manifest = data.load_manifest(paths, log=lambda m: None)
    sampling = data.Sampling(alpha=1.0, seed=3, window=256)
    repeats = [64 - len(set(b["src"])) for b in data.pair_strings(
        manifest, batch_size=64, sampling=sampling).take(30).as_numpy_iterator()]
    assert np.mean(repeats) < 1.5, repeats


@pytest.mark.parametrize("chunk, combinations", [(16384, [(1, 1), (1, 4), (2, 1), (2, 4)]),
                                                  (4, [(1, 4), (2, 1)])])
def test_resumed_streams_continue_the_same_batches(chunk, combinations):
    """(pipelines, language group) combinations. With the default chunk every language
    gives a group to every chunk; with 4 pairs a chunk, most chunks lack the rare ones."""
    manifest = _corpus(f"ram://resume{chunk}", {"aaa": 300, "bbb": 40, "ccc": 7}, per_file=2)
    for pipelines, group in combinations:
        sampling = data.Sampling(alpha=0.5, seed=7, language_group=group, window=16,
                                 chunk=chunk)
        for pipeline in range(pipelines):
            args = dict(batch_size=8, sampling=sampling, num_pipelines=pipelines,
                        pipeline=pipeline)
            full = [b["src"] for b in data.pair_strings(manifest, **args).take(60)
                    .as_numpy_iterator()]
            for start in (1, 13, 41):
                resumed = [b["src"] for b in data.pair_strings(
                    manifest, start_step=start, **args).take(5).as_numpy_iterator()]
                np.testing.assert_array_equal(resumed, full[start:start + 5])
            if group > 1:
                for b in full:
                    langs = [s.split()[0] for s in b]
                    assert all(len(set(langs[i:i + group])) == 1 for i in range(0, 8, group))
    other = next(data.pair_strings(manifest, batch_size=8, sampling=data.Sampling(
        alpha=0.5, seed=8)).as_numpy_iterator())["src"]
    assert list(other) != list(full[0])
    with pytest.raises(ValueError, match="batch size 10 is not a multiple of the language group size 4"):
        data.pair_strings(manifest, batch_size=10, sampling=data.Sampling(0.3, 1, language_group=4))


def test_pipelines_read_their_own_files_or_every_nth_pair():
    manifest = _corpus("ram://shards", {"aaa": 60, "bbb": 12, "ccc": 5}, per_file=3)
    a = [data.language_shards(manifest, 2, p)["aaa"] for p in range(2)]
    # Whole files, balanced by pairs: 20 + 20 pairs against 20.
    assert sorted(len(s.paths) for s in a) == [1, 2] and all(s.stride == 1 for s in a)
    assert sorted(a[0].paths + a[1].paths) == sorted(
        f.path for f in manifest.files if "aaa" in f.pairs)
    # 3 files for 4 pipelines: each reads every file and takes every 4th pair of each.
    b = [data.language_shards(manifest, 4, p)["bbb"] for p in range(4)]
    assert [(s.counts, s.stride, s.offset) for s in b] == [((1, 1, 1), 4, p) for p in range(4)]
    taken = [p["src"] for s in b for p in data.language_stream(s, seed=[0, 0]).take(s.total)
             .as_numpy_iterator()]
    assert sorted(taken) == sorted(f"bbb src {i}".encode() for i in range(12))
    # Too few pairs for every pipeline to get one: each reads the language whole.
    c = data.language_shards(manifest, 4, 3)["ccc"]
    assert c.total == 5 and c.stride == 1


def test_positions_are_int64_for_languages_of_any_size():
    """A language of 2^33 pairs: resuming past 2^32 skips whole files by their counts."""
    big = 2 ** 33
    counts = tf.constant([big, 3, big], tf.int64)
    skip, take, drop = data.epoch_reads(counts, tf.constant(big + 1000, tf.int64),
                                        tf.constant(256, tf.int64))
    # The window boundary at or before 2^33 + 1000 is 2^33 + 768: file 0 skipped whole,
    # file 1 (3 pairs) too, 765 pairs into file 2; 232 dropped after the window's shuffle.
    np.testing.assert_array_equal(skip.numpy(), [big, 3, 765, 0, 0, 0])
    np.testing.assert_array_equal(take.numpy(), [0, 0, big - 765, 0, 0, 0])
    assert int(drop) == 232
    # Started at pair 2^33 + 1 (rotation) and resumed 2^33 + 1000 pairs later: the first
    # span is spent, the second reads from 2^33 + 1000 + (2^33 + 1) - total to the rotation.
    skip, take, drop = data.epoch_reads(counts, tf.constant(big + 1000, tf.int64),
                                        tf.constant(256, tf.int64), tf.constant(big + 1, tf.int64))
    start = big + 768 + big + 1 - (2 * big + 3)  # 766, in file 0
    np.testing.assert_array_equal(skip.numpy(), [big, 3, big, start, 0, 0])
    np.testing.assert_array_equal(take.numpy(), [0, 0, 0, big - start, 1, 0])
    assert int(drop) == 232
    rates, phases = np.array([1.0, 2.0 ** -20]), np.array([0.5, 0.25])
    np.testing.assert_array_equal(data.consumed_groups(rates, phases, 3 * big),
                                  [3 * big, 3 * big // 2 ** 20])


def test_batches_are_aligned_shaped_and_resumable(vocab_file, sample_manifest):
    pre = Preprocessor(vocab_file, seq_length=12)
    sampling = data.Sampling(alpha=0.3, seed=5)
    full = list(data.pair_dataset(sample_manifest, pre, batch_size=4, sampling=sampling).take(5))
    assert full[0]["src"]["token_ids"].shape[0] == 4
    assert full[0]["tgt"]["segment_ids"].dtype == tf.int32
    resumed = list(data.pair_dataset(sample_manifest, pre, batch_size=4, sampling=sampling,
                                     start_step=3).take(2))
    for a, b in zip(full[3:], resumed):  # a resumed run continues the same stream
        np.testing.assert_array_equal(a["src"]["token_ids"], b["src"]["token_ids"])


def test_batches_are_cut_to_their_longest_sentence(vocab_file, tmp_path):
    pre = Preprocessor(vocab_file, seq_length=16)
    manifest = data.load_manifest([_write(tmp_path / "x.tsv", b"alpha one\tone alpha two\n"
                                          b"beta\tbeta\n")], log=lambda m: None)
    sampling = data.Sampling(alpha=1.0, seed=0)
    trimmed = data.pair_dataset(manifest, pre, batch_size=8, sampling=sampling)
    static = data.pair_dataset(manifest, pre, batch_size=8, sampling=sampling, trim=False)
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
