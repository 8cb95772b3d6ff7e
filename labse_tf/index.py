"""k-nearest-neighbour search by cosine through FAISS, exact or approximate by size.

The one module that imports faiss. `knn` returns what `labse_tf.mining.knn` (the NumPy
reference it is tested against) returns, so the margin and mining maths take either.
Vectors come a shard at a time (`Vectors`): an index is trained on a sample, then filled
shard by shard, and queries are searched shard by shard, so memory is the index plus one
shard, never `[n, m]`.

Kinds (`--index`), measured in bench/README.md section 6:

  flat   `IndexFlatIP`: exact. Index memory 4·dim bytes a vector; time n·m·dim.
  ivf    `IVF{nlist},SQ8`: vectors bucketed by k-means into nlist lists, stored with one byte
         per dimension (cosine error ~1e-3); a query scans the `nprobe` lists nearest to
         it. Memory dim bytes a vector; trains in seconds.
  ivfpq  `IVF{nlist},PQ{pq_m}`: the same lists with product-quantised codes of pq_m bytes
         a vector: the smallest index, for corpora whose SQ8 codes do not fit in memory.
         Its cosines are coarser (at 4 dimensions a byte, recall@4 0.65 where ivf has
         0.97) and PQ training is slow on CPU (minutes at pq_m=64).
  hnsw   `HNSW{hnsw_m}` over the full vectors: a neighbour graph; exact cosines for what it
         finds. On 2 CPU cores it built and searched slower than ivf at lower recall.
  auto   flat when queries × candidates ≤ flat_max_pairs (exact search is then about as
         fast as training an approximate index), else ivf.

Results are sorted by decreasing cosine, equal cosines by increasing index, as in the
reference. The exact index finds the reference's neighbours up to float32 rounding: it
computes the same inner products with another BLAS call order, so two candidates whose
cosines differ by less than ~1e-6 may swap places, and among candidates tied exactly at
the k-th place it may keep another one than the reference (which keeps the lowest index).
"""

import dataclasses
import math
import time
from typing import Callable, Iterable, Sequence

import faiss
import numpy as np
from absl import flags

from labse_tf import mining

__all__ = ["KINDS", "IndexOptions", "Vectors", "build", "choose_kind", "define_flags", "knn",
           "knn_both_ways", "options_from_flags", "search", "trained"]

KINDS = ("auto", "flat", "ivf", "ivfpq", "hnsw")

# Candidates per block of FAISS's exact search (its default is 1,024): blocks of 4,096 queries
# × 16,384 candidates (256 MB of scores) ran 1.6× faster on this project's 2-core machine.
_FLAT_CANDIDATE_BLOCK = 16384
# Rows per FAISS search call: results come back (and progress is reported) this often.
_SEARCH_ROWS = 65536
# Seconds between progress lines.
_PROGRESS_SECONDS = 30.0


@dataclasses.dataclass(frozen=True)
class IndexOptions:
    """Which index to build and how hard it searches; 0 means "chosen from the size"."""

    kind: str = "auto"               # one of KINDS
    flat_max_pairs: float = 4e10     # auto: exact search up to this many query × candidate pairs
    nlist: int = 0                   # ivf/ivfpq lists; 0: 4·sqrt(candidates), a power of 2
    nprobe: int = 32                 # ivf/ivfpq lists scanned per query
    train_size: int = 0              # ivf/ivfpq training sample; 0: 64 per list
    pq_m: int = 0                    # ivfpq bytes a vector; 0: dim / 4
    hnsw_m: int = 32                 # hnsw links per node
    ef_construction: int = 40        # hnsw candidate list while building
    ef_search: int = 64              # hnsw candidate list while searching (at least k)
    seed: int = 0                    # the training sample's draw


@dataclasses.dataclass(frozen=True)
class Vectors:
    """Rows to index or search, read one shard at a time.

    Attributes:
      shards: callable. Each call starts a new pass: an iterable of float `[rows, dim]`
        arrays, in row order, together `count` rows.
      count: int. Rows in all shards.
      dim: int. Columns.
    """

    shards: Callable[[], Iterable[np.ndarray]]
    count: int
    dim: int

    @classmethod
    def of(cls, array: np.ndarray) -> "Vectors":
        """An in-memory `[n, dim]` array as one shard."""
        array = np.asarray(array)
        if array.ndim != 2:
            raise ValueError(f"expected vectors of shape [n, dim], got shape {array.shape}")
        return cls(lambda: [array], len(array), array.shape[1])


def choose_kind(options: IndexOptions, num_queries: int, num_candidates: int) -> str:
    """The kind `options.kind` names; for "auto", flat or ivf by the pairs to score."""
    if options.kind not in KINDS:
        raise ValueError(f"index kind must be one of {KINDS}, got {options.kind!r}")
    if options.kind != "auto":
        return options.kind
    return "flat" if num_queries * num_candidates <= options.flat_max_pairs else "ivf"


def _nlist(options: IndexOptions, count: int) -> int:
    if options.nlist:
        return options.nlist
    # FAISS's guideline is 4·sqrt(n) to 16·sqrt(n) lists; the low end keeps training short.
    return max(1, 2 ** round(math.log2(max(1.0, 4 * math.sqrt(count)))))


def _shard_rows(shard: np.ndarray, dim: int, what: str) -> np.ndarray:
    """A shard as float32 unit rows, checked to have `dim` columns."""
    if shard.ndim != 2 or shard.shape[1] != dim:
        raise ValueError(f"{what}: expected vectors of shape [rows, {dim}], got {shard.shape}")
    return np.ascontiguousarray(mining.normalize(shard))


def _sample(vectors: Vectors, size: int, seed: int) -> np.ndarray:
    """`size` rows drawn uniformly without replacement, in one pass over the shards."""
    chosen = np.sort(np.random.default_rng(seed).choice(vectors.count, size, replace=False))
    rows, start = [], 0
    for shard in vectors.shards():
        stop = start + len(shard)
        lo, hi = np.searchsorted(chosen, [start, stop])
        rows.append(_shard_rows(shard, vectors.dim, "index sample")[chosen[lo:hi] - start])
        start = stop
    return np.concatenate(rows)


def _empty(kind: str, dim: int, count: int, options: IndexOptions) -> faiss.Index:
    """An index of `kind` for `count` vectors, not yet trained or filled."""
    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, options.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = options.ef_construction
        return index
    if kind not in ("ivf", "ivfpq"):
        raise ValueError(f"index kind must be one of {KINDS[1:]}, got {kind!r}")
    nlist = min(_nlist(options, count), count)
    if kind == "ivf":
        return faiss.index_factory(dim, f"IVF{nlist},SQ8", faiss.METRIC_INNER_PRODUCT)
    pq_m = options.pq_m or max(1, dim // 4)
    if dim % pq_m:
        raise ValueError(f"ivfpq: pq_m={pq_m} must divide the dimension {dim}")
    index = faiss.index_factory(dim, f"IVF{nlist},PQ{pq_m}", faiss.METRIC_INNER_PRODUCT)
    # Polysemous codes serve Hamming-distance filtering, which nothing here uses; training
    # them is most of PQ's training time.
    faiss.downcast_index(index).do_polysemous_training = False
    return index


def trained(kind: str, samples: Sequence[Vectors], count: int,
            options: IndexOptions = IndexOptions(), *,
            log: Callable[[str], None] = lambda msg: None) -> faiss.Index:
    """An empty index of `kind` for `count` candidates, trained if its kind trains.

    The training sample is drawn from `samples` in proportion to their sizes: the vectors
    to be indexed, or several sets that share their space (both sides of a bitext).
    """
    dim = samples[0].dim
    index = _empty(kind, dim, count, options)
    if index.is_trained:
        return index
    total = sum(v.count for v in samples)
    size = min(total, options.train_size or 64 * faiss.extract_index_ivf(index).nlist)
    log(f"  training {kind} ({faiss.extract_index_ivf(index).nlist} lists) on {size:,} of "
        f"{total:,} vectors")
    tick = time.monotonic()
    parts = [_sample(v, round(size * v.count / total), options.seed + i)
             for i, v in enumerate(samples)]
    index.train(np.concatenate(parts))
    log(f"  trained in {time.monotonic() - tick:.1f} s")
    return index


def build(candidates: Vectors, kind: str, options: IndexOptions = IndexOptions(), *,
          trained_index: faiss.Index | None = None,
          log: Callable[[str], None] = lambda msg: None) -> faiss.Index:
    """An inner-product index of `kind` over the candidates, trained on a sample of them.

    Args:
      candidates: Vectors. Normalised on the way in (cosine = inner product).
      kind: str. A kind of KINDS other than "auto" (see `choose_kind`).
      options: IndexOptions.
      trained_index: optional faiss.Index. An empty trained index (`trained`) to fill a copy
        of, instead of training one here.
      log: progress printer.
    """
    if candidates.count == 0:
        raise ValueError("index: there are no candidates to search")
    index = (faiss.clone_index(trained_index) if trained_index is not None
             else trained(kind, [candidates], candidates.count, options, log=log))
    tick = time.monotonic()
    for shard in candidates.shards():
        index.add(_shard_rows(shard, candidates.dim, "index"))
    log(f"  {kind} index of {index.ntotal:,} vectors built in {time.monotonic() - tick:.1f} s")
    return index


def _set_search_effort(index: faiss.Index, options: IndexOptions, k: int,
                       exhaustive: bool = False) -> None:
    """nprobe / efSearch from the options (or their exhaustive settings); the exact
    search's block size."""
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = index.ntotal if exhaustive else max(options.ef_search, k)
    elif isinstance(index, faiss.IndexFlat):
        faiss.cvar.distance_compute_blas_database_bs = _FLAT_CANDIDATE_BLOCK
    else:
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = ivf.nlist if exhaustive else min(options.nprobe, ivf.nlist)


def search(index: faiss.Index, queries: Vectors, k: int,
           options: IndexOptions = IndexOptions(), *,
           log: Callable[[str], None] = lambda msg: None) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest indexed vectors of every query, in the layout of `mining.knn`.

    A query for which the approximate search found fewer than k neighbours (its probed
    lists held too few vectors) is searched again exhaustively.

    Returns:
      (cosines float32 `[n, min(k, ntotal)]`, indices int64 `[n, min(k, ntotal)]`), each
      row by decreasing cosine, then increasing index.
    """
    k = min(k, index.ntotal)
    _set_search_effort(index, options, k)
    sims = np.empty([queries.count, k], np.float32)
    ids = np.empty([queries.count, k], np.int64)
    start, tick = 0, time.monotonic()
    reported = tick
    for shard in queries.shards():
        shard = _shard_rows(shard, queries.dim, "queries")
        for lo in range(0, len(shard), _SEARCH_ROWS):
            rows = shard[lo:lo + _SEARCH_ROWS]
            sims[start:start + len(rows)], ids[start:start + len(rows)] = index.search(rows, k)
            missing = np.flatnonzero((ids[start:start + len(rows)] < 0).any(axis=1))
            if len(missing):
                _set_search_effort(index, options, k, exhaustive=True)
                sims[start + missing], ids[start + missing] = index.search(rows[missing], k)
                _set_search_effort(index, options, k)
            start += len(rows)
            now = time.monotonic()
            if now - reported > _PROGRESS_SECONDS:
                log(f"  searched {start:,}/{queries.count:,} queries "
                    f"({start / (now - tick):,.0f}/s)")
                reported = now
    order = np.lexsort((ids, -sims), axis=1)
    return np.take_along_axis(sims, order, axis=1), np.take_along_axis(ids, order, axis=1)


def _vectors(x: Vectors | np.ndarray) -> Vectors:
    return x if isinstance(x, Vectors) else Vectors.of(x)


def _check_dims(queries: Vectors, candidates: Vectors) -> None:
    if queries.dim != candidates.dim:
        raise ValueError(f"queries have dimension {queries.dim} but candidates have "
                         f"{candidates.dim}: were they embedded by the same model?")


def knn(queries: Vectors | np.ndarray, candidates: Vectors | np.ndarray, k: int,
        options: IndexOptions = IndexOptions(), *,
        log: Callable[[str], None] = lambda msg: None) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest candidates of every query by cosine, through the index `options` chooses.

    Args:
      queries: Vectors or float `[n, dim]`.
      candidates: Vectors or float `[m, dim]`, m ≥ 1.
      k: int. Neighbours per query; at most m are returned.
      options: IndexOptions.
      log: progress printer.

    Returns:
      As `mining.knn`: (cosines float32 `[n, min(k, m)]`, indices int64 `[n, min(k, m)]`).
    """
    queries, candidates = _vectors(queries), _vectors(candidates)
    _check_dims(queries, candidates)
    kind = choose_kind(options, queries.count, candidates.count)
    return search(build(candidates, kind, options, log=log), queries, k, options, log=log)


def knn_both_ways(x: Vectors | np.ndarray, y: Vectors | np.ndarray, k: int,
                  options: IndexOptions = IndexOptions(), *,
                  log: Callable[[str], None] = lambda msg: None) -> tuple[tuple, tuple]:
    """`knn(x, y, k)` and `knn(y, x, k)`: what margin scoring and retrieval need.

    Both sides live in one embedding space, so when both indexes would have as many lists,
    one quantizer trained on a sample of both sides serves both (half the training). One
    index is in memory at a time.

    Returns:
      ((x→y cosines, y ids), (y→x cosines, x ids)), each as `knn` returns it.
    """
    x, y = _vectors(x), _vectors(y)
    _check_dims(x, y)
    kind = choose_kind(options, x.count, y.count)
    shared = None
    if (kind in ("ivf", "ivfpq") and min(x.count, y.count) > 0
            and _nlist(options, x.count) == _nlist(options, y.count)):
        shared = trained(kind, [x, y], y.count, options, log=log)
    x2y = search(build(y, kind, options, trained_index=shared, log=log), x, k, options, log=log)
    y2x = search(build(x, kind, options, trained_index=shared, log=log), y, k, options, log=log)
    return x2y, y2x


def define_flags() -> None:
    """The flags that choose and tune the index (labse_tf.mine and labse_tf.evaluate)."""
    d = IndexOptions()
    flags.DEFINE_enum("index", d.kind, KINDS, "Nearest-neighbour index: flat (exact), ivf "
                      "(inverted lists, 8-bit codes), ivfpq (inverted lists, product-quantised "
                      "codes), hnsw (graph), auto (flat up to --flat_max_pairs, else ivf). "
                      "See labse_tf/index.py.")
    flags.DEFINE_float("flat_max_pairs", d.flat_max_pairs, "--index=auto: exact search when "
                       "queries × candidates is at most this.", lower_bound=0)
    flags.DEFINE_integer("nlist", d.nlist, "ivf/ivfpq: inverted lists; 0: 4·sqrt(candidates) "
                         "rounded to a power of 2.", lower_bound=0)
    flags.DEFINE_integer("nprobe", d.nprobe, "ivf/ivfpq: lists scanned per query (more: "
                         "higher recall, slower).", lower_bound=1)
    flags.DEFINE_integer("train_size", d.train_size, "ivf/ivfpq: vectors sampled to train the "
                         "index; 0: 64 per list.", lower_bound=0)
    flags.DEFINE_integer("pq_m", d.pq_m, "ivfpq: bytes per vector (divides the dimension); "
                         "0: dimension / 4.", lower_bound=0)
    flags.DEFINE_integer("hnsw_m", d.hnsw_m, "hnsw: links per node.", lower_bound=2)
    flags.DEFINE_integer("ef_construction", d.ef_construction, "hnsw: candidate list while "
                         "building.", lower_bound=1)
    flags.DEFINE_integer("ef_search", d.ef_search, "hnsw: candidate list while searching "
                         "(at least k is used).", lower_bound=1)


def options_from_flags() -> IndexOptions:
    f = flags.FLAGS
    return IndexOptions(kind=f.index, flat_max_pairs=f.flat_max_pairs, nlist=f.nlist,
                        nprobe=f.nprobe, train_size=f.train_size, pq_m=f.pq_m,
                        hnsw_m=f.hnsw_m, ef_construction=f.ef_construction,
                        ef_search=f.ef_search)
