"""A no-training baseline: character n-gram TF-IDF vectors (hashed), compared by cosine.

A trained encoder that cannot beat this has learned nothing beyond shared spelling.
"""

import collections
import zlib
from typing import Iterable, Sequence

import numpy as np

__all__ = ["CharNgramTfidf"]


def _ngrams(sentence: str, n: int) -> list[str]:
    text = f" {' '.join(sentence.lower().split())} "
    return [text[i:i + n] for i in range(max(len(text) - n + 1, 1))]


class CharNgramTfidf:
    """Hashed character n-gram TF-IDF embeddings; an `EmbedFn` once fitted.

    Args:
      corpus: sentences the inverse document frequencies are counted on.
      n: int. N-gram length (3 = trigrams), over lowercased text with single spaces and
        a space at each end.
      buckets: int. Hash buckets (the embedding width); collisions are rare at 2^15 for
        evaluation-sized sets.
    """

    def __init__(self, corpus: Iterable[str], n: int = 3, buckets: int = 2 ** 15):
        self.n, self.buckets = n, buckets
        df = collections.Counter()
        docs = 0
        for sentence in corpus:
            df.update(set(self._ids(sentence)))
            docs += 1
        self.idf = np.full(buckets, np.log(docs + 1.0), np.float32)  # unseen: df = 0
        for bucket, count in df.items():
            self.idf[bucket] = np.log((docs + 1.0) / (count + 1.0)) + 1.0

    def _ids(self, sentence: str) -> list[int]:
        return [zlib.crc32(g.encode("utf-8")) % self.buckets for g in _ngrams(sentence, self.n)]

    def __call__(self, sentences: Sequence[str]) -> np.ndarray:
        """L2-normalised TF-IDF rows `[len(sentences), buckets]` (float32)."""
        out = np.zeros([len(sentences), self.buckets], np.float32)
        for row, sentence in enumerate(sentences):
            ids, counts = np.unique(self._ids(sentence), return_counts=True)
            out[row, ids] = counts * self.idf[ids]
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)
