"""kNN, ratio margin, mining and BUCC scoring against brute-force NumPy written here."""

import numpy as np
import pytest

from labse_tf import mining


def cosines(x, y):
    """The full `[n, m]` cosine matrix in float64."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = y / np.linalg.norm(y, axis=1, keepdims=True)
    return x.astype(np.float64) @ y.astype(np.float64).T


def brute_margins(x, y, k):
    """margin(i, j) for every pair, from the definition with explicit neighbourhood sums."""
    sims = cosines(x, y)
    margins = np.zeros_like(sims)
    for i in range(len(x)):
        for j in range(len(y)):
            nn_x = sum(sorted(sims[i, :], reverse=True)[:k])     # Σ_{z ∈ NN_k(x_i)} cos(x_i, z)
            nn_y = sum(sorted(sims[:, j], reverse=True)[:k])     # Σ_{z ∈ NN_k(y_j)} cos(y_j, z)
            margins[i, j] = sims[i, j] / (nn_x / (2 * k) + nn_y / (2 * k))
    return margins


def brute_best(sims, scores, k):
    """Per row: among the k highest `sims`, the column with the highest `scores`."""
    best = []
    for row_sims, row_scores in zip(sims, scores):
        neighbours = sorted(range(len(row_sims)), key=lambda j: -row_sims[j])[:k]
        best.append(max(neighbours, key=lambda j: row_scores[j]))
    return np.array(best)


def brute_mine(x, y, k, strategy):
    """Mined (score, i, j) triples, by decreasing score."""
    sims, margins = cosines(x, y), brute_margins(x, y, k)
    forward = brute_best(sims, margins, k)          # x_i → y
    backward = brute_best(sims.T, margins.T, k)     # y_j → x
    if strategy == "intersect":
        found = [(margins[i, j], i, j) for i, j in enumerate(forward) if backward[j] == i]
    else:
        candidates = sorted({(margins[i, j], i, j) for i, j in enumerate(forward)}
                            | {(margins[i, j], i, j) for j, i in enumerate(backward)},
                            key=lambda c: (-c[0], c[1], c[2]))
        found, used_x, used_y = [], set(), set()
        for score, i, j in candidates:
            if i not in used_x and j not in used_y:
                found.append((score, i, j))
                used_x.add(i)
                used_y.add(j)
    return sorted(found, key=lambda c: (-c[0], c[1], c[2]))


@pytest.fixture
def xy():
    """50 × 8 sources and 43 × 8 targets; the first 40 targets are noisy translations."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=[50, 8]).astype(np.float32)
    y = np.concatenate([x[:40] + 0.6 * rng.normal(size=[40, 8]),
                        rng.normal(size=[3, 8])]).astype(np.float32)
    return x, y


# 1 byte: one query row per block; 3,000 bytes: a few rows, the last block shorter; 1 GB: one.
BLOCKS = [1, 3_000, 2**30]


@pytest.mark.parametrize("max_block_bytes", BLOCKS)
def test_knn_matches_brute_force(xy, max_block_bytes):
    x, y = xy
    sims, ids = mining.knn(x, y, 4, max_block_bytes=max_block_bytes)
    expected = cosines(x, y)
    expected_ids = np.argsort(-expected, axis=1)[:, :4]
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(sims, np.take_along_axis(expected, expected_ids, 1), atol=1e-6)


def test_knn_returns_every_candidate_when_k_exceeds_them(xy):
    x, y = xy
    sims, ids = mining.knn(x, y[:3], 10)
    assert sims.shape == ids.shape == (50, 3)
    np.testing.assert_array_equal(ids, np.argsort(-cosines(x, y[:3]), axis=1))


def test_knn_orders_equal_cosines_by_index():
    # Candidates 1 and 3 are the same vector; candidate 0 is orthogonal to the query.
    sims, ids = mining.knn(np.array([[1.0, 0.0]]), np.array([[0, 1], [2, 1], [1, 0], [2, 1.0]]), 3)
    np.testing.assert_array_equal(ids, [[2, 1, 3]])


def test_knn_needs_candidates():
    with pytest.raises(ValueError, match="no candidates"):
        mining.knn(np.ones([2, 3]), np.zeros([0, 3]), 1)


def test_recall_at_k():
    exact = np.array([[0, 1, 2], [3, 4, 5]])
    # Row 0 found 2 of its 3 (order does not matter), row 1 all 3.
    assert mining.recall_at_k(np.array([[2, 0, 9], [5, 4, 3]]), exact) == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match=r"found \(2, 2\) but exact \(2, 3\)"):
        mining.recall_at_k(exact[:, :2], exact)


def test_ratio_margin_small_example():
    # Two x and two y, k = 2 (every candidate is a neighbour), worked by hand:
    #   cosines [[0.9, 0.7],   x means (0.9 + 0.7) / 2 = 0.8,  (0.8 + 0.6) / 2 = 0.7
    #            [0.8, 0.6]]   y means (0.9 + 0.8) / 2 = 0.85, (0.7 + 0.6) / 2 = 0.65
    #   margin(0, 0) = 0.9 / ((0.8 + 0.85) / 2) = 0.9 / 0.825 = 12/11, and so on.
    margins = mining.ratio_margin(np.array([[0.9, 0.7], [0.8, 0.6]]), np.array([[0.8], [0.7]]),
                                  np.array([[0.85, 0.65]]))
    np.testing.assert_allclose(margins, [[12 / 11, 28 / 29], [32 / 31, 8 / 9]], rtol=1e-12)


@pytest.mark.parametrize("max_block_bytes", BLOCKS)
def test_best_matches_ratio_margin_matches_brute_force(xy, max_block_bytes):
    x, y = xy
    found = mining.best_matches(x, y, margin="ratio", k=4, max_block_bytes=max_block_bytes)
    sims, margins = cosines(x, y), brute_margins(x, y, 4)
    forward, backward = brute_best(sims, margins, 4), brute_best(sims.T, margins.T, 4)
    np.testing.assert_array_equal(found.x2y, forward)
    np.testing.assert_array_equal(found.y2x, backward)
    np.testing.assert_allclose(found.x2y_score, margins[np.arange(50), forward], rtol=1e-5)
    np.testing.assert_allclose(found.y2x_score, margins[backward, np.arange(43)], rtol=1e-5)


def test_best_matches_without_margin_is_the_nearest_neighbour(xy):
    x, y = xy
    found = mining.best_matches(x, y, margin="none")
    sims = cosines(x, y)
    np.testing.assert_array_equal(found.x2y, sims.argmax(1))
    np.testing.assert_array_equal(found.y2x, sims.argmax(0))
    np.testing.assert_allclose(found.x2y_score, sims.max(1), atol=1e-6)


@pytest.mark.parametrize("strategy", mining.STRATEGIES)
def test_mine_matches_brute_force(xy, strategy):
    x, y = xy
    scores, xs, ys = mining.mine(x, y, k=4, strategy=strategy, max_block_bytes=3_000)
    expected = brute_mine(x, y, 4, strategy)
    assert [(i, j) for _, i, j in expected] == list(zip(xs.tolist(), ys.tolist()))
    np.testing.assert_allclose(scores, [s for s, _, _ in expected], rtol=1e-5)
    if strategy == "max":  # a one-to-one alignment
        assert len(set(xs.tolist())) == len(set(ys.tolist())) == len(xs)


def test_mine_rejects_unknown_strategy(xy):
    with pytest.raises(ValueError, match="strategy must be one of"):
        mining.mine(*xy, strategy="union")


def test_precision_recall_f1():
    # 3 of 4 predictions correct, 6 gold pairs.
    p, r, f1 = mining.precision_recall_f1(3, 4, 6)
    assert (p, r) == (0.75, 0.5)
    assert f1 == pytest.approx(2 * 0.75 * 0.5 / 1.25)
    assert mining.precision_recall_f1(0, 0, 6) == (0.0, 0.0, 0.0)


def test_best_threshold_matches_brute_force():
    rng = np.random.default_rng(1)
    scores = np.round(rng.uniform(0.9, 1.3, size=60), 2)      # rounding makes ties
    correct = rng.uniform(size=60) < scores - 0.9              # higher scores more often right
    num_gold = int(correct.sum()) + 5
    expected = {"f1": 0.0}
    for t in sorted(set(scores.tolist()), reverse=True):
        kept = scores >= t
        p, r = correct[kept].sum() / kept.sum(), correct[kept].sum() / num_gold
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        if f1 > expected["f1"]:
            expected = {"threshold": t, "precision": p, "recall": r, "f1": f1}
    assert mining.best_threshold(scores, correct, num_gold) == pytest.approx(expected)


def test_best_threshold_when_nothing_is_correct():
    best = mining.best_threshold(np.array([1.2, 1.1]), np.array([False, False]), 3)
    assert best == {"threshold": float("inf"), "precision": 0.0, "recall": 0.0, "f1": 0.0}
