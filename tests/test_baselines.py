"""The character-trigram TF-IDF baseline against a direct computation."""

import zlib

import numpy as np

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
