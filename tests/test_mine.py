"""labse_tf.mine's library (mine_files) on `ram://` files, against the NumPy reference.

The command line itself runs in tests/test_evaluate.py (test_commands_in_ram).
"""

import numpy as np
import pytest

from labse_tf import embed, embeddings, files, mine, mining
from test_embed import fake_embedder, ram_dir


@pytest.fixture(scope="module")
def corpus():
    """German sentences (with a blank and a repeated line) against English ones.

    Words shared by a pair make its trigram embeddings close, so most pairs are found.
    """
    words = ["Hund", "Katze", "Haus", "Baum", "Sonne", "Regen", "Stadt", "Fluss", "Berg",
             "Brot", "Wasser", "Buch", "Musik", "Schule", "Zug", "Garten"]
    src = [f"{a} und {b} am {c}" for a, b, c in zip(words, words[3:] + words[:3],
                                                     words[7:] + words[:7])]
    tgt = [f"the {b} and {a} at {c}" for a, b, c in zip(words, words[3:] + words[:3],
                                                         words[7:] + words[:7])]
    tgt = tgt[::-1] + ["nothing to see here", "another distractor line"]
    directory = ram_dir()
    files.write_text(f"{directory}/src.txt", "\n".join(src[:5] + ["", src[2]] + src[5:]) + "\n")
    files.write_text(f"{directory}/tgt.txt", "\n".join(tgt) + "\n")
    files.write_text(f"{directory}/gold.tsv", "".join(f"{s}\t{t}\n" for s, t in
                                                      zip(src, tgt[:len(src)][::-1])))
    return directory, src, tgt


def reference(src, tgt, k, strategy):
    """(score, src sentence, tgt sentence) mined by the NumPy reference."""
    embedder = fake_embedder(src + tgt)
    scores, xs, ys = mining.mine(embedder(src), embedder(tgt), k=k, strategy=strategy)
    return [(float(s), src[i], tgt[j]) for s, i, j in zip(scores, xs, ys)]


def read_pairs(path):
    rows = [line.split("\t") for line in files.read_text(path).splitlines()]
    return [(float(s), x, y) for s, x, y in rows]


def test_read_side_keeps_first_occurrences():
    path = f"{ram_dir()}/s.txt"
    files.write_text(path, "a\n\nb\na\n  \nc\nb\n")
    side = mine.read_side(path, keep_texts=True, wanted={"b", "z"})
    assert side.lines.tolist() == [1, 3, 6]
    assert side.non_blank.tolist() == [1, 3, 4, 6, 7]
    assert side.first.tolist() == [True, True, False, True, False]
    assert side.texts == ["a", "b", "c"]
    assert side.rows_of == {"b": 1}
    assert mine.fetch_lines(path, [6, 1]) == {1: "a", 6: "c"}


@pytest.mark.parametrize("strategy", mining.STRATEGIES)
def test_mine_files_matches_the_reference(corpus, strategy):
    directory, src, tgt = corpus
    expected = reference(src, tgt, 3, strategy)
    threshold = (expected[5][0] + expected[6][0]) / 2   # keeps 6
    out = f"{ram_dir()}/out/pairs.tsv"
    summary = mine.mine_files(f"{directory}/src.txt", f"{directory}/tgt.txt", out,
                              embed_fn_for=lambda texts: fake_embedder(src + tgt),
                              selection=mine.Selection(k=3, strategy=strategy,
                                                       threshold=threshold),
                              gold_path=f"{directory}/gold.tsv")
    got = read_pairs(out)
    assert [(x, y) for _, x, y in got] == [(x, y) for _, x, y in expected[:6]]
    np.testing.assert_allclose([s for s, _, _ in got], [s for s, _, _ in expected[:6]],
                               atol=1e-6)
    gold = {(s, t) for s, t in zip(src, tgt[:len(src)][::-1])}
    correct = sum((x, y) in gold for _, x, y in got)
    assert summary["candidates"] == len(expected) and summary["written"] == 6
    assert summary["at_threshold"] == pytest.approx(
        dict(zip(["precision", "recall", "f1"],
                 mining.precision_recall_f1(correct, 6, len(gold)))))
    assert summary["best"]["f1"] >= summary["at_threshold"]["f1"]


def embed_side(path, corpus, *, dim=64, shard_size=4):
    """labse_tf.embed's directory of `path`, with trigram IDFs fitted on `corpus`."""
    out = f"{ram_dir()}/emb"
    writer = embeddings.ShardWriter.open(out, source=path, model="fake", dim=dim,
                                         dtype="float32", shard_size=shard_size)
    embed.embed_file(fake_embedder(corpus, dim=dim), writer)
    return out


def test_mining_embedding_directories_gives_the_same_pairs(corpus):
    directory, src, tgt = corpus
    src_path, tgt_path = f"{directory}/src.txt", f"{directory}/tgt.txt"
    # Shards of 4 and 3 rows; the IDF fitted on both sides, as mine_files fits it.
    src_emb = embed_side(src_path, src + tgt, shard_size=4)
    tgt_emb = embed_side(tgt_path, src + tgt, shard_size=3)
    from_text, from_dirs = f"{ram_dir()}/a.tsv", f"{ram_dir()}/b.tsv"
    args = dict(selection=mine.Selection(k=3, threshold=0.0, max_pairs=10))
    mine.mine_files(src_path, tgt_path, from_text,
                    embed_fn_for=lambda texts: fake_embedder(src + tgt), **args)
    mine.mine_files(src_path, tgt_path, from_dirs, src_embeddings=src_emb,
                    tgt_embeddings=tgt_emb, **args)
    text_pairs, dir_pairs = read_pairs(from_text), read_pairs(from_dirs)
    assert len(text_pairs) == 10   # max_pairs
    assert [(x, y) for _, x, y in dir_pairs] == [(x, y) for _, x, y in text_pairs]
    np.testing.assert_allclose([s for s, _, _ in dir_pairs], [s for s, _, _ in text_pairs],
                               atol=1e-5)


def test_mine_files_errors_name_the_input(corpus):
    directory, src, tgt = corpus
    src_path, tgt_path, out = f"{directory}/src.txt", f"{directory}/tgt.txt", f"{ram_dir()}/o"
    with pytest.raises(files.FileError, match=f"{directory}/nope.txt: no such file"):
        mine.mine_files(f"{directory}/nope.txt", tgt_path, out,
                        embed_fn_for=lambda t: fake_embedder(t))
    with pytest.raises(ValueError, match="a model .* is needed unless both sides come embedded"):
        mine.mine_files(src_path, tgt_path, out, src_embeddings="ram://x")
    # Embeddings of another file: the target's directory given for the source.
    tgt_emb = embed_side(tgt_path, tgt)
    with pytest.raises(ValueError, match=rf"{tgt_emb}: its 18 rows are not the 17 non-blank "
                                         rf"lines of {src_path} \(it embedded {tgt_path}; "
                                         r"first difference at row 5\)"):
        mine.mine_files(src_path, tgt_path, out, src_embeddings=tgt_emb, tgt_embeddings=tgt_emb)
    # Embeddings of two widths.
    narrow = embed_side(src_path, src, dim=32)
    with pytest.raises(ValueError, match=rf"the source embeddings \({narrow}\) have dimension "
                                         rf"32 but the target embeddings \({tgt_emb}\) have 64"):
        mine.mine_files(src_path, tgt_path, out, src_embeddings=narrow, tgt_embeddings=tgt_emb)
    # An unfinished directory.
    meta = files.read_json(f"{narrow}/index.json")
    files.write_json(f"{narrow}/index.json", {**meta, "complete": False})
    with pytest.raises(ValueError, match=rf"{narrow}: incomplete \(17 rows so far\)"):
        mine.mine_files(src_path, tgt_path, out, src_embeddings=narrow, tgt_embeddings=tgt_emb)
