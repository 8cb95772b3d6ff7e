"""The character-trigram TF-IDF baseline against a direct computation."""

import zlib

import numpy as np
import pytest

from labse_tf.baselines import CharNgramTfidf


def test_vectors_match_a_direct_tfidf_computation():
    corpus = ["abc", "abd", "xyz"]
    model = CharNgramTfidf(corpus, n=3, buckets=2 ** 20)
    grams = {s: [f" {s} "[i:i + 3] for i in range(3)] for s in corpus}  # " ab", "abc", "bc "
    df = {g: sum(g in grams[s] for s in corpus) for s in corpus for g in grams[s]}
    for s in corpus:
        expected = np.zeros(2 ** 20, np.float32)
        for g in grams[s]:
            expected[zlib.crc32(g.encode()) % 2 ** 20] += np.log(4 / (df[g] + 1)) + 1
        np.testing.assert_allclose(model([s])[0], expected / np.linalg.norm(expected), rtol=1e-5)


def test_normalises_case_and_spaces_and_embeds_empty_input():
    model = CharNgramTfidf(["Hello  World", "other"])
    a, b = model(["Hello  World", "hello world"])
    np.testing.assert_allclose(a, b)
    assert model([]).shape == (0, 2 ** 15)
    assert np.isfinite(model([""])).all()


def test_shared_spelling_retrieves_the_right_pair():
    src = ["the university library", "national park", "computer science"]
    tgt = ["national parc", "computer sciences", "universidad library"]
    model = CharNgramTfidf(src + tgt)
    sims = model(src) @ model(tgt).T
    assert list(sims.argmax(1)) == [2, 0, 1]


@pytest.mark.slow
def test_evaluate_command_scores_the_baseline(tmp_path):
    import json
    import subprocess
    import sys

    from labse_tf import data
    pairs, _ = data.read_pairs([data.sample_corpus_path("heldout")])
    i = pairs.langs.index("deu")
    (tmp_path / "tatoeba.deu-eng.deu").write_text("\n".join(pairs.tgt[i]) + "\n", encoding="utf-8")
    (tmp_path / "tatoeba.deu-eng.eng").write_text("\n".join(pairs.src[i]) + "\n", encoding="utf-8")
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "labse_tf.evaluate", "--trigram_baseline",
                           f"--tatoeba_dir={tmp_path}", f"--output={out}"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    model = CharNgramTfidf(list(pairs.tgt[i]) + list(pairs.src[i]))
    sims = model(list(pairs.tgt[i])) @ model(list(pairs.src[i])).T
    gold = np.arange(len(sims))
    expected = (np.mean(sims.argmax(1) == gold) + np.mean(sims.argmax(0) == gold)) / 2
    assert json.loads(out.read_text())["mean_accuracy"] == pytest.approx(expected)
