"""labse_tf.embed's library (shards, resuming) and evaluate.Embedder, on `ram://` files."""

import gzip
import io
import re
import uuid

import keras
import numpy as np
import pytest

from labse_tf import baselines, config as config_lib, embed, embeddings, evaluate, files
from labse_tf.model import build_encoder
from labse_tf.preprocessing import Preprocessor


def ram_dir() -> str:
    """A fresh directory on TensorFlow's in-memory filesystem."""
    return f"ram://{uuid.uuid4().hex[:8]}"


def fake_embedder(corpus, *, batch_size=4, dim=64, fail_after=None, calls=None):
    """An Embedder over hashed character trigrams (no model): deterministic and fast.

    Args:
      corpus: sentences for the trigram IDF.
      fail_after: int. Raise after this many batches (a killed run).
      calls: list. Each batch's sentences are appended to it.
    """
    trigrams = baselines.CharNgramTfidf(corpus, buckets=dim)

    def run_batch(strings):
        sentences = [s.decode("utf-8") for s in strings.numpy()]
        if calls is not None:
            if fail_after is not None and len(calls) == fail_after:
                raise KeyboardInterrupt("killed")
            calls.append(sentences)
        return trigrams(sentences)

    return evaluate.Embedder(run_batch, dim, batch_size)


LINES = ["Der Hund schläft.", "", "Ein sehr langer Satz über nichts Besonderes und mehr.",
         "Kurz.", "  ", "Der Hund schläft.", "Katzen trinken Milch.", "Es regnet.",
         "Morgen scheint die Sonne wieder.", "Ja."]
NON_BLANK = [1, 3, 4, 6, 7, 8, 9, 10]


def write_gz(path, lines):
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb") as f:
        f.write("".join(line + "\n" for line in lines).encode("utf-8"))
    files.write_bytes(path, buffer.getvalue())
    return path


def test_embedder_groups_by_length_and_keeps_the_order():
    calls = []
    embedder = fake_embedder(LINES, batch_size=3, calls=calls)
    sentences = [s for s in LINES if s.strip()]
    out = embedder(sentences)
    # Batches shortest first; rows come back in the order given.
    assert [len(s) for batch in calls for s in batch] == sorted(len(s) for s in sentences)
    assert [len(batch) for batch in calls] == [3, 3, 2]
    np.testing.assert_allclose(out, baselines.CharNgramTfidf(LINES, buckets=64)(sentences),
                               atol=1e-6)


@pytest.fixture(scope="module")
def tiny_encoder_embedder(vocab_file):
    """An untrained tiny mean-pooling encoder as an Embedder (packs to each batch's longest)."""
    cfg = config_lib.load_config("tiny", ["model.pooling=mean"])
    preprocessor = Preprocessor(vocab_file, lowercase=cfg.data.lowercase, seq_length=32)
    keras.utils.set_random_seed(0)
    encoder = build_encoder(cfg.model, preprocessor.vocab_size)
    return lambda batch_size: evaluate.encoder_embed_fn(preprocessor, encoder, batch_size)


def test_grouped_embeddings_equal_one_sentence_at_a_time(tiny_encoder_embedder):
    sentences = [s for s in LINES if s.strip()]
    grouped = tiny_encoder_embedder(4)(sentences)
    one_at_a_time = tiny_encoder_embedder(1)
    alone = np.concatenate([one_at_a_time([s]) for s in sentences])
    np.testing.assert_allclose(grouped, alone, atol=1e-5)


def read_all(directory):
    d = embeddings.EmbeddingDir(directory)
    return np.concatenate(list(d.vectors().shards())), d.line_numbers(), d


def test_embed_file_writes_shards_of_the_non_blank_lines():
    source = write_gz(f"{ram_dir()}/de.txt.gz", LINES)
    out = ram_dir() + "/emb"
    embedder = fake_embedder(LINES)
    writer = embeddings.ShardWriter.open(out, source=source, model="fake", dim=64,
                                         dtype="float16", shard_size=3)
    embed.embed_file(embedder, writer)
    vectors, lines, directory = read_all(out)
    assert lines.tolist() == NON_BLANK
    assert [s["rows"] for s in directory.shards] == [3, 3, 2]
    assert [(s["first_line"], s["last_line"]) for s in directory.shards] == [(1, 4), (6, 8),
                                                                             (9, 10)]
    assert directory.complete and directory.rows == 8 and directory.dtype == "float16"
    meta = files.read_json(f"{out}/index.json")
    assert meta["lines_read"] == 10 and meta["source"] == source and meta["model"] == "fake"
    assert vectors.dtype == np.float16
    np.testing.assert_allclose(vectors, embedder([LINES[i - 1] for i in NON_BLANK]), atol=2e-3)
    keep = np.array([True, False] * 4)
    kept = directory.vectors(keep)
    assert kept.count == 4
    np.testing.assert_array_equal(np.concatenate(list(kept.shards())), vectors[keep])


def embed_into(out, source, **kwargs):
    writer = embeddings.ShardWriter.open(out, source=source, model="fake", dim=64,
                                         dtype="float32", shard_size=2)
    return embed.embed_file(fake_embedder(LINES, batch_size=1, **kwargs), writer)


def test_a_killed_run_resumes_after_its_last_complete_shard():
    source = write_gz(f"{ram_dir()}/de.txt.gz", LINES)
    reference = read_all(embed_into(f"{ram_dir()}/whole", source).path)
    out = f"{ram_dir()}/killed"
    calls = []
    with pytest.raises(KeyboardInterrupt):
        embed_into(out, source, fail_after=5, calls=calls)  # killed in the third shard
    meta = files.read_json(f"{out}/index.json")
    assert len(meta["shards"]) == 2 and meta["rows"] == 4 and not meta["complete"]
    assert meta["lines_read"] == 6
    calls.clear()
    embed_into(out, source, calls=calls)
    # Only the rows after the complete shards were embedded (each shard shortest first).
    assert sorted(s for batch in calls for s in batch) == sorted(LINES[i - 1]
                                                                 for i in NON_BLANK[4:])
    vectors, lines, _ = read_all(out)
    np.testing.assert_array_equal(vectors, reference[0])
    np.testing.assert_array_equal(lines, reference[1])
    # A complete directory is left as it is.
    calls.clear()
    embed_into(out, source, calls=calls)
    assert calls == []


def test_a_shard_written_but_not_listed_is_written_again():
    """Killed between a shard's files and index.json: the shard does not count."""
    source = write_gz(f"{ram_dir()}/de.txt.gz", LINES)
    out = f"{ram_dir()}/emb"
    reference = read_all(embed_into(out, source).path)
    meta = files.read_json(f"{out}/index.json")
    last = meta["shards"].pop()
    meta.update(rows=meta["rows"] - last["rows"], lines_read=meta["shards"][-1]["last_line"],
                complete=False)
    files.write_json(f"{out}/index.json", meta)
    files.write_bytes(f"{out}/{last['embeddings']}", b"half a shard")
    calls = []
    embed_into(out, source, calls=calls)
    assert sorted(s for batch in calls for s in batch) == sorted(
        LINES[i - 1] for i in NON_BLANK[-last["rows"]:])
    np.testing.assert_array_equal(read_all(out)[0], reference[0])


def test_a_directory_continues_only_with_its_settings():
    source = write_gz(f"{ram_dir()}/de.txt.gz", LINES)
    out = f"{ram_dir()}/emb"
    embed_into(out, source)
    with pytest.raises(ValueError, match=r"index.json: started with dtype='float32', this "
                                         r"run has dtype='float16'"):
        embeddings.ShardWriter.open(out, source=source, model="fake", dim=64, dtype="float16",
                                    shard_size=2)
    with pytest.raises(ValueError, match="dtype must be one of"):
        embeddings.ShardWriter.open(out, source=source, model="fake", dim=64, dtype="int8",
                                    shard_size=2)


def test_unreadable_directories_name_what_is_wrong():
    missing = ram_dir()
    with pytest.raises(files.FileError, match=f"{missing}: no index.json"):
        embeddings.EmbeddingDir(missing)
    source = write_gz(f"{ram_dir()}/de.txt.gz", LINES)
    out = f"{ram_dir()}/emb"
    embed_into(out, source)
    files.remove(f"{out}/shard-00001.npy")
    with pytest.raises(files.FileError, match=f"{out}/shard-00001.npy: no such file"):
        read_all(out)


def test_progress_bar_line():
    stream = io.StringIO()
    bar = embed.ProgressBar(1000, done=200, stream=stream)
    bar.update(250)
    bar.close()
    assert re.fullmatch(r"\[#{9} {11}\]  45.0%  450/1,000 sentences  [\d,]+/s  ETA \S+ \S+\n",
                        stream.getvalue().splitlines(keepends=True)[-1])
