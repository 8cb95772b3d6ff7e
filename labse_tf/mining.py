"""Cosine kNN, the ratio margin and bitext mining, as pure NumPy functions.

The ratio margin (Artetxe & Schwenk 2019, "Margin-based parallel corpus mining with
multilingual sentence embeddings") divides a pair's cosine by the average cosine of each
side's k nearest neighbours on the other side:

    margin(x, y) = cos(x, y) / (Σ_{z∈NN_k(x)} cos(x, z) / 2k + Σ_{z∈NN_k(y)} cos(y, z) / 2k)

so a "hub" sentence that is close to everything scores lower than a pair that stands out
from its neighbourhoods. Similarities are computed a block of query rows at a time, so no
function here holds an `[n, m]` matrix: beyond the embeddings, memory is `max_block_bytes`.

`knn` is the exact reference search. The scoring (`matches`) and the pair selection
(`select`) take neighbour lists, so the FAISS indexes of labse_tf.index, which search
corpora that `knn` cannot (its time grows as n·m), feed the very same maths.
"""

import dataclasses

import numpy as np

__all__ = ["MARGINS", "STRATEGIES", "Matches", "best_matches", "best_threshold", "knn",
           "matches", "mine", "normalize", "precision_recall_f1", "ratio_margin",
           "recall_at_k", "select"]

MARGINS = ("none", "ratio")
STRATEGIES = ("max", "intersect")

# Default size of one block of similarities (and its argpartition indices).
DEFAULT_BLOCK_BYTES = 256 * 2**20
# A float32 similarity plus the int64 index np.argpartition returns for it.
_BYTES_PER_SIMILARITY = 4 + 8


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (all-zero rows stay zero), as float32 `[n, dim]`."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn(queries: np.ndarray, candidates: np.ndarray, k: int, *,
        max_block_bytes: int = DEFAULT_BLOCK_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest candidates of every query by cosine, in blocks of query rows.

    Args:
      queries: float `[n, dim]`.
      candidates: float `[m, dim]`, m ≥ 1.
      k: int. Neighbours per query; at most m are returned.
      max_block_bytes: int. Memory for one block of `[rows, m]` similarities; at least one
        query row is processed at a time.

    Returns:
      (cosines float32 `[n, min(k, m)]`, candidate indices int64 `[n, min(k, m)]`), each row
      sorted by decreasing cosine, then increasing index.
    """
    if len(candidates) == 0:
        raise ValueError("knn: there are no candidates to search")
    queries, candidates = normalize(queries), normalize(candidates)
    m = len(candidates)
    k = min(k, m)
    rows = max(1, max_block_bytes // (_BYTES_PER_SIMILARITY * m))
    sims = np.empty([len(queries), k], np.float32)
    ids = np.empty([len(queries), k], np.int64)
    for start in range(0, len(queries), rows):
        block = queries[start:start + rows] @ candidates.T      # [rows, m]
        top = np.argpartition(block, m - k, axis=1)[:, m - k:]  # [rows, k], unordered
        top_sims = np.take_along_axis(block, top, axis=1)
        order = np.lexsort((top, -top_sims), axis=1)            # ties: lower index first
        sims[start:start + rows] = np.take_along_axis(top_sims, order, axis=1)
        ids[start:start + rows] = np.take_along_axis(top, order, axis=1)
    return sims, ids


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """The fraction of the exact k nearest neighbours that an approximate search found.

    Args:
      found: int `[n, k]`. Neighbour indices of an approximate search (any order).
      exact: int `[n, k]`. The exact neighbours, as from `knn`.
    """
    if found.shape != exact.shape:
        raise ValueError(f"recall_at_k: found {found.shape} but exact {exact.shape}")
    if exact.size == 0:
        return 1.0
    return float((exact[:, :, None] == found[:, None, :]).any(axis=2).mean())


def ratio_margin(cos: np.ndarray, x_knn_mean: np.ndarray, y_knn_mean: np.ndarray) -> np.ndarray:
    """The ratio margin: `cos / ((x_knn_mean + y_knn_mean) / 2)`, broadcasting.

    Args:
      cos: float. Cosines of (x, y) pairs.
      x_knn_mean: float. For each x, the mean cosine to its k nearest y.
      y_knn_mean: float. For each y, the mean cosine to its k nearest x.
    """
    return cos / ((x_knn_mean + y_knn_mean) / 2)


@dataclasses.dataclass(frozen=True)
class Matches:
    """Each x's best y and each y's best x, with the score that chose them."""

    x2y: np.ndarray          # int64 [n]: index of the best y for each x
    x2y_score: np.ndarray    # float32 [n]
    y2x: np.ndarray          # int64 [m]: index of the best x for each y
    y2x_score: np.ndarray    # float32 [m]


def matches(x_sims: np.ndarray, x_ids: np.ndarray, y_sims: np.ndarray, y_ids: np.ndarray, *,
            margin: str = "ratio") -> Matches:
    """Best match in both directions from the k nearest neighbours of each side.

    With `margin="ratio"` each query's match is the highest-margin one among its k nearest
    neighbours (the margin's neighbourhood means come from the same lists); with
    `margin="none"` it is the nearest neighbour and the score is the cosine. Any search that
    returns neighbour lists in the `knn` layout (sorted by decreasing cosine) can feed this.

    Args:
      x_sims, x_ids: float `[n, k]`, int `[n, k]`. Each x's nearest y and their cosines.
      y_sims, y_ids: float `[m, k]`, int `[m, k]`. Each y's nearest x and their cosines.
      margin: str. One of MARGINS.
    """
    if margin not in MARGINS:
        raise ValueError(f"margin must be one of {MARGINS}, got {margin!r}")
    if margin == "ratio":
        x_mean, y_mean = x_sims.mean(axis=1), y_sims.mean(axis=1)
        x_sims = ratio_margin(x_sims, x_mean[:, None], y_mean[x_ids])
        y_sims = ratio_margin(y_sims, y_mean[:, None], x_mean[y_ids])
        x_best, y_best = x_sims.argmax(axis=1), y_sims.argmax(axis=1)
    else:
        x_best, y_best = np.zeros(len(x_ids), np.int64), np.zeros(len(y_ids), np.int64)
    take = lambda a, i: np.take_along_axis(a, i[:, None], axis=1)[:, 0]
    return Matches(take(x_ids, x_best), take(x_sims, x_best),
                   take(y_ids, y_best), take(y_sims, y_best))


def best_matches(x: np.ndarray, y: np.ndarray, *, margin: str = "ratio", k: int = 4,
                 max_block_bytes: int = DEFAULT_BLOCK_BYTES) -> Matches:
    """Best match in both directions, by cosine or by ratio margin (see `matches`).

    Args:
      x: float `[n, dim]`.
      y: float `[m, dim]`.
      margin: str. One of MARGINS.
      k: int. Neighbourhood size of the ratio margin.
      max_block_bytes: int. See `knn`.
    """
    k = 1 if margin == "none" else k
    return matches(*knn(x, y, k, max_block_bytes=max_block_bytes),
                   *knn(y, x, k, max_block_bytes=max_block_bytes), margin=margin)


def select(found: Matches, strategy: str = "max") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate translation pairs from the best matches of both directions.

    Candidates are each x's best y (forward) and each y's best x (backward).
    `strategy="intersect"` keeps the pairs found in both directions. `strategy="max"` takes
    the union, then, from the highest score down, keeps a pair only if neither of its
    sentences is already in a kept pair (a one-to-one alignment).

    Returns:
      (scores float32 `[p]`, x indices int64 `[p]`, y indices int64 `[p]`), sorted by
      decreasing score (ties in x, then y order).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    n, m = len(found.x2y), len(found.y2x)
    if strategy == "intersect":
        xs = np.flatnonzero(found.y2x[found.x2y] == np.arange(n))
        ys, scores = found.x2y[xs], found.x2y_score[xs]
    else:
        xs = np.concatenate([np.arange(n), found.y2x])
        ys = np.concatenate([found.x2y, np.arange(m)])
        scores = np.concatenate([found.x2y_score, found.y2x_score])
        # Greedy from the top; a pair found in both directions is kept once.
        keep, used_x, used_y, xl, yl = [], set(), set(), xs.tolist(), ys.tolist()
        for p in np.lexsort((ys, xs, -scores)).tolist():
            if xl[p] not in used_x and yl[p] not in used_y:
                used_x.add(xl[p])
                used_y.add(yl[p])
                keep.append(p)
        keep = np.array(keep, np.int64)
        xs, ys, scores = xs[keep], ys[keep], scores[keep]
    order = np.lexsort((ys, xs, -scores))
    return scores[order], xs[order], ys[order]


def mine(x: np.ndarray, y: np.ndarray, *, k: int = 4, strategy: str = "max",
         max_block_bytes: int = DEFAULT_BLOCK_BYTES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate translation pairs between x and y, scored by the ratio margin (see `select`).

    Returns:
      (scores float32 `[p]`, x indices int64 `[p]`, y indices int64 `[p]`), by decreasing
      score.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    found = best_matches(x, y, margin="ratio", k=k, max_block_bytes=max_block_bytes)
    return select(found, strategy)


def precision_recall_f1(correct: int, predicted: int, gold: int) -> tuple[float, float, float]:
    """BUCC-style precision, recall and F1 from counts (0 where undefined)."""
    precision = correct / predicted if predicted else 0.0
    recall = correct / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def best_threshold(scores: np.ndarray, correct: np.ndarray, num_gold: int) -> dict:
    """The score threshold that maximises F1 when pairs with score ≥ threshold are kept.

    Args:
      scores: float `[p]`. Candidate pair scores.
      correct: bool `[p]`. Whether each candidate is a gold pair.
      num_gold: int. Number of gold pairs (recall's denominator).

    Returns:
      {threshold, precision, recall, f1}; the highest threshold among equal F1s; threshold
      inf (nothing kept) when no candidate is correct.
    """
    order = np.argsort(-np.asarray(scores), kind="stable")
    s = np.asarray(scores)[order]
    true_pos = np.cumsum(np.asarray(correct, bool)[order])
    # Only the last of a run of equal scores is a real cut: a threshold keeps all or none.
    cuts = np.flatnonzero(np.append(s[1:] != s[:-1], True)) if len(s) else np.array([], int)
    best = {"threshold": float("inf"), "precision": 0.0, "recall": 0.0, "f1": 0.0}
    for i in cuts:
        p, r, f1 = precision_recall_f1(int(true_pos[i]), int(i) + 1, num_gold)
        if f1 > best["f1"]:
            best = {"threshold": float(s[i]), "precision": p, "recall": r, "f1": f1}
    return best
