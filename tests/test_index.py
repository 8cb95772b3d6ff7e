"""The FAISS indexes against the NumPy reference (labse_tf.mining), exact and approximate."""

import numpy as np
import pytest

from labse_tf import index, mining

FLAT = index.IndexOptions(kind="flat")


def unit(a):
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def xy():
    """300 × 16 sources and 250 × 16 targets; the first 200 targets are noisy translations."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=[300, 16]).astype(np.float32)
    y = np.concatenate([x[:200] + 0.8 * rng.normal(size=[200, 16]),
                        rng.normal(size=[50, 16])]).astype(np.float32)
    return x, y


def in_shards(a, sizes):
    """`a` as index.Vectors in shards of the given sizes (the last takes the rest)."""
    bounds = np.cumsum([0, *sizes, len(a) - sum(sizes)])
    return index.Vectors(lambda: [a[s:e] for s, e in zip(bounds[:-1], bounds[1:])],
                         len(a), a.shape[1])


def test_flat_finds_the_reference_neighbours(xy):
    x, y = xy
    sims, ids = index.knn(x, y, 4, FLAT)
    ref_sims, ref_ids = mining.knn(x, y, 4)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(sims, ref_sims, atol=1e-6)
    # Shards of queries and of candidates (uneven, one empty) change nothing.
    sharded = index.knn(in_shards(x, [7, 0, 100]), in_shards(y, [128, 1]), 4, FLAT)
    np.testing.assert_array_equal(sharded[1], ref_ids)
    np.testing.assert_array_equal(sharded[0], sims)


def test_flat_returns_every_candidate_when_k_exceeds_them(xy):
    x, y = xy
    sims, ids = index.knn(x, y[:3], 10, FLAT)
    assert sims.shape == ids.shape == (300, 3)
    np.testing.assert_array_equal(ids, mining.knn(x, y[:3], 10)[1])


def test_flat_orders_equal_cosines_by_index():
    # Candidates 1 and 3 are the same vector; candidate 0 is orthogonal to the query.
    _, ids = index.knn(np.array([[1.0, 0.0]]), np.array([[0, 1], [2, 1], [1, 0], [2, 1.0]]), 3,
                       FLAT)
    np.testing.assert_array_equal(ids, [[2, 1, 3]])


@pytest.mark.parametrize("strategy", mining.STRATEGIES)
def test_flat_margins_and_mined_pairs_match_the_reference(xy, strategy):
    x, y = xy
    x2y, y2x = index.knn_both_ways(x, y, 4, FLAT)
    found = mining.matches(*x2y, *y2x)
    reference = mining.best_matches(x, y, k=4)
    np.testing.assert_array_equal(found.x2y, reference.x2y)
    np.testing.assert_array_equal(found.y2x, reference.y2x)
    np.testing.assert_allclose(found.x2y_score, reference.x2y_score, rtol=1e-5)
    np.testing.assert_allclose(found.y2x_score, reference.y2x_score, rtol=1e-5)
    scores, xs, ys = mining.select(found, strategy)
    ref_scores, ref_xs, ref_ys = mining.mine(x, y, k=4, strategy=strategy)
    np.testing.assert_array_equal(xs, ref_xs)
    np.testing.assert_array_equal(ys, ref_ys)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5)


def test_auto_is_exact_up_to_flat_max_pairs():
    options = index.IndexOptions(flat_max_pairs=1e6)
    assert index.choose_kind(options, 1000, 1000) == "flat"
    assert index.choose_kind(options, 1000, 1001) == "ivf"
    assert index.choose_kind(index.IndexOptions(kind="hnsw"), 1, 1) == "hnsw"
    with pytest.raises(ValueError, match="index kind must be one of"):
        index.choose_kind(index.IndexOptions(kind="lsh"), 1, 1)


def test_queries_found_short_by_the_lists_are_searched_again(xy):
    x, y = xy
    # 128 lists for 250 vectors, one probed: most queries' list holds fewer than 4.
    options = index.IndexOptions(kind="ivf", nlist=128, nprobe=1)
    sims, ids = index.knn(x, y, 4, options)
    assert (ids >= 0).all()
    # Those rows were searched exhaustively: exact up to SQ8's rounding of the cosines
    # (~1e-3), which may swap neighbours of nearly equal cosine.
    ivf = index.build(index.Vectors.of(y), "ivf", options)
    ivf.nprobe = 1
    short = (ivf.search(mining.normalize(x), 4)[1] < 0).any(axis=1)
    assert short.mean() > 0.5
    exact_sims, exact_ids = mining.knn(x, y, 4)
    assert mining.recall_at_k(ids[short], exact_ids[short]) > 0.95
    np.testing.assert_allclose(sims[short], exact_sims[short], atol=0.01)


def test_errors_name_the_mismatch(xy):
    x, y = xy
    with pytest.raises(ValueError, match="queries have dimension 16 but candidates have 8"):
        index.knn(x, y[:, :8], 4)
    with pytest.raises(ValueError, match="no candidates"):
        index.knn(x, y[:0], 4)
    with pytest.raises(ValueError, match="pq_m=5 must divide the dimension 16"):
        index.knn(x, y, 4, index.IndexOptions(kind="ivfpq", pq_m=5))
    wrong = index.Vectors(lambda: [y[:, :8]], len(y), 16)
    with pytest.raises(ValueError, match=r"expected vectors of shape \[rows, 16\], got \(250, 8\)"):
        index.knn(x, wrong, 4)


def bucc_like(num_pairs, num_distractors, dim, seed=0):
    """A BUCC-style set: `num_pairs` translations hidden among distractors on both sides.

    Sentences cluster around 40 topics (so distractors of one topic are near one another, as
    real embeddings are); a pair's two sides are one sentence plus independent noise whose
    size varies by pair, from easy to unfindable. Rows are shuffled.

    Returns:
      (x `[n, dim]`, y `[n, dim]`, gold set of (x row, y row)).
    """
    rng = np.random.default_rng(seed)
    topics = unit(rng.normal(size=[40, dim]))

    def sentences(n):
        return 0.6 * topics[rng.integers(0, 40, n)] + rng.normal(size=[n, dim]) / np.sqrt(dim)

    core = sentences(num_pairs)
    noise = rng.uniform(0.3, 1.2, size=[num_pairs, 1]) / np.sqrt(dim)
    x = np.concatenate([unit(core + noise * rng.normal(size=core.shape)),
                        unit(sentences(num_distractors))])
    y = np.concatenate([unit(core + noise * rng.normal(size=core.shape)),
                        unit(sentences(num_distractors))])
    x_order, y_order = rng.permutation(len(x)), rng.permutation(len(y))
    x_row, y_row = np.argsort(x_order), np.argsort(y_order)
    gold = set(zip(x_row[:num_pairs].tolist(), y_row[:num_pairs].tolist()))
    return x[x_order], y[y_order], gold


def mined_f1(x, y, gold, options):
    """Best-threshold F1 of max-strategy mining through `options`, and the x→y neighbours."""
    x2y, y2x = index.knn_both_ways(x, y, 4, options)
    scores, xs, ys = mining.select(mining.matches(*x2y, *y2x))
    correct = np.array([(i, j) in gold for i, j in zip(xs.tolist(), ys.tolist())])
    return mining.best_threshold(scores, correct, len(gold))["f1"], x2y[1]


@pytest.fixture(scope="module")
def bucc():
    """3,000 pairs among 10,000 sentences a side (dim 64) and exact search's F1 on them."""
    x, y, gold = bucc_like(3000, 7000, 64)
    f1, ids = mined_f1(x, y, gold, FLAT)
    assert 0.8 < f1 < 0.95  # neither trivial nor hopeless
    return x, y, gold, f1, ids


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_mining_f1_is_within_a_point_of_exact(bucc, kind):
    x, y, gold, exact_f1, exact_ids = bucc
    f1, ids = mined_f1(x, y, gold, index.IndexOptions(kind=kind))
    recall = mining.recall_at_k(ids, exact_ids)
    print(f"{kind}: F1 {f1:.4f} (exact {exact_f1:.4f}), recall@4 {recall:.3f}")
    assert abs(f1 - exact_f1) <= 0.01
    assert recall > 0.9


def test_ivfpq_finds_most_neighbours(bucc):
    """Product quantisation, on a slice small enough to train fast (see labse_tf/index.py)."""
    x, y, _, _, _ = bucc
    x, y = x[:2000, :32], y[:2000, :32]
    ids = index.knn(x, y, 4, index.IndexOptions(kind="ivfpq", pq_m=16))[1]
    recall = mining.recall_at_k(ids, mining.knn(x, y, 4)[1])
    print(f"ivfpq: recall@4 {recall:.3f}")
    assert recall > 0.7
